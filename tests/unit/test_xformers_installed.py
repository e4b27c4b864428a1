"""The xformers adapter against the real xformers package (CI installs the pinned wheel).

The fakes in test_adapters.py pin down our logic; these tests pin down that xformers' real API
still has what the adapter calls (`fmha.Inputs`, `FwOp.not_supported_reasons`,
`dispatch._dispatch_fw`, `LowerTriangularMask`, `_cpp_lib._built_with_cuda`) and that the reasons
users read come from xformers and the dynamic loader, and that the biases and input layouts the
adapter builds mean, in xformers' own `materialize` and `validate_inputs`, what the harness's
masks mean. The wheel is a CUDA build for another torch that links libcudart.so.12, so on this
CPU machine its C++ library does not load: the situation the reasons must explain.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from harness.case import Case
from harness.registry import REGISTRY

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("xformers") is None,
    reason="xformers is not installed (make install adds it)",
)

FAMILIES = ("xformers", "xformers_cutlass", "xformers_flash", "xformers_flash3", "xformers_ck")


def _cpp_loads() -> bool:
    import xformers._cpp_lib as cpp

    return cpp._cpp_library_load_exception is None


def _pretend_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_entry_is_skipped_on_cpu_and_says_why(name):
    availability = REGISTRY.get(name).available("cpu")
    assert not availability.ok
    assert availability.reason.startswith("needs CUDA: xformers'")
    if not _cpp_loads():  # the loader's own message and both torch versions
        assert "xformers' C++ ops do not load (OSError: " in availability.reason
        assert f"this is {torch.__version__}" in availability.reason


@pytest.mark.parametrize("name", FAMILIES)
def test_without_its_cpp_library_xformers_refuses_cuda_and_we_say_so(monkeypatch, name):
    """xformers' own flag: without _C it is "built without CUDA" and every CUDA op refuses."""
    import xformers._cpp_lib as cpp

    if _cpp_loads():
        pytest.skip("xformers' C++ library loads here")
    assert cpp._built_with_cuda is False
    _pretend_gpu(monkeypatch, (9, 0))
    reason = REGISTRY.get(name).available("cuda").reason
    assert reason.startswith("xformers' C++ ops do not load (OSError: ")
    assert reason.endswith("so xformers refuses every CUDA op")


def test_case_reasons_are_xformers_own_words():
    """On CPU tensors every op refuses; the reasons are xformers' text, prefixed by the op name."""
    import xformers.ops.fmha.cutlass as cutlass

    case = Case(seq_len=4096, num_heads=4, head_dim=64, dtype="bfloat16", causal=True)
    reasons = REGISTRY.get("xformers_cutlass").unsupported(case, "cpu")
    assert reasons and all(r.startswith(f"xformers {cutlass.FwOp.NAME}: ") for r in reasons)
    assert any("device=cpu" in r for r in reasons)
    (dispatch,) = REGISTRY.get("xformers").unsupported(case, "cpu")
    assert dispatch.startswith("no xformers op supports this case: ")
    assert "device=cpu" in dispatch and "\n" not in dispatch


def test_the_forward_reaches_xformers_and_its_refusal_surfaces():
    """Our call matches the real signature: xformers itself refuses CPU tensors, with its reason."""
    q = torch.randn(1, 16, 2, 8, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="memory_efficient_attention"):
        REGISTRY.get("xformers").forward(q, q, q, causal=True)


# ---- the biases and input layouts the adapter builds, checked against the real xformers -----
def _window_case(sq: int, sk: int, window: tuple[int, int], causal: bool = False) -> Case:
    return Case(seqlen_q=sq, seqlen_k=sk, head_dim=8, num_heads=2, causal=causal,
                mask={"kind": "sliding_window", "window": list(window)})  # fmt: skip


BIAS_CASES = {
    "causal q<k": Case(seqlen_q=5, seqlen_k=9, head_dim=8, causal=True),
    "causal q>k": Case(seqlen_q=9, seqlen_k=5, head_dim=8, causal=True),
    "causal_top_left q<k": Case(seqlen_q=5, seqlen_k=9, head_dim=8, mask="causal_top_left"),
    "swa (16, 0)": _window_case(40, 40, (16, 0)),
    "swa (3, 0) q<k": _window_case(7, 12, (3, 0)),
    "window (4, 2) q<k": _window_case(20, 33, (4, 2)),
    "window (-1, 3) q>k": _window_case(12, 10, (-1, 3)),
    "window (2, -1) q<k": _window_case(6, 10, (2, -1)),
    "window (5, 7) causal": _window_case(30, 30, (5, 7), causal=True),
}


@pytest.mark.parametrize("label", list(BIAS_CASES))
def test_the_biases_mask_what_the_harness_masks(label):
    """xformers' own `materialize` of the bias we pass == harness.masks' dense mask."""
    from implementations.xformers import attn_bias

    case = BIAS_CASES[label]
    causal = case.mask.kind == "causal"
    bias = attn_bias(causal, None if causal else case.mask, case.sq, case.sk, 1, "cpu")
    keep = bias.materialize((case.sq, case.sk)).exp() > 0
    assert torch.equal(keep, case.mask.dense(case.sq, case.sk))


@pytest.mark.parametrize("causal", [False, True])
def test_the_document_bias_is_the_harness_mask_of_every_batch_row(causal):
    from implementations.xformers import attn_bias

    case = Case(batch=2, seq_len=97, head_dim=8, causal=causal,
                mask={"kind": "document", "doc_lens": [30, 50, 17]})  # fmt: skip
    bias = attn_bias(False, case.mask, 97, 97, 2, torch.device("cpu"))
    keep = bias.materialize((194, 194)).exp() > 0
    assert torch.equal(keep, torch.block_diag(*[case.mask.dense(97, 97)] * 2))


@pytest.mark.parametrize(
    "case",
    [
        Case(batch=3, seqlen_q=300, seqlen_k=600, num_heads=8, num_kv_heads=2, head_dim=64,
             head_dim_v=32, dtype="bfloat16", causal=True, softmax_scale=0.1),
        Case(batch=2, seq_len=4096, num_heads=4, num_kv_heads=1, head_dim=64, dtype="float16",
             mask={"kind": "document", "num_docs": 7}, causal=True),
        Case(batch=2, seq_len=1024, num_heads=4, head_dim=64, dtype="float16",
             mask={"kind": "sliding_window", "window": [128, 0]}),
    ],
    ids=["gqa", "mqa-documents", "swa"],
)  # fmt: skip
def test_the_probe_inputs_are_valid_xformers_inputs(case):
    """xformers' own validation accepts the probe's layout: 5-D GQA with expanded k/v, batch 1
    for a block-diagonal bias, the bias on the tensors' device; its dispatcher reads them."""
    from implementations.xformers import _probe_inputs

    inp = _probe_inputs(case, "cpu")
    inp.validate_inputs()
    if case.kv_heads != case.num_heads:
        assert inp.query.ndim == 5 and inp.key.stride(3) == 0
    (reason,) = REGISTRY.get("xformers").unsupported(case, "cpu")
    assert reason.startswith("no xformers op supports this case: ") and "device=cpu" in reason
