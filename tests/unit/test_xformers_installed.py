"""The xformers adapter against the real xformers package (CI installs the pinned wheel).

The fakes in test_adapters.py pin down our logic; these tests pin down that xformers' real API
still has what the adapter calls (`fmha.Inputs`, `FwOp.not_supported_reasons`,
`FwOp.is_available`, `dispatch._dispatch_fw`, `LowerTriangularMask`) and that the reasons users
read come from xformers itself. The wheel is a CUDA build for another torch, so on this CPU machine
its C++ library does not load: the situation the reasons must explain.
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


def _mismatch() -> str:
    import xformers._cpp_lib as cpp

    info = getattr(cpp._cpp_library_load_exception, "build_info", None)
    return "" if info is None else f"built for torch {info.torch_version}"


def _pretend_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_entry_is_skipped_on_cpu_and_says_why(name):
    availability = REGISTRY.get(name).available("cpu")
    assert not availability.ok
    assert availability.reason.startswith("needs CUDA: xformers'")
    mismatch = _mismatch()
    if mismatch:  # the build mismatch is named as a cause, with both torch versions
        assert mismatch in availability.reason and torch.__version__ in availability.reason


def test_cutlass_does_not_depend_on_xformers_cpp_build(monkeypatch):
    """cutlassF-pt is torch's own kernel: with a mismatched C++ build it must stay available."""
    _pretend_gpu(monkeypatch, (9, 0))
    assert REGISTRY.get("xformers_cutlass").available("cuda").ok
    assert REGISTRY.get("xformers").available("cuda").ok
    ck = REGISTRY.get("xformers_ck").available("cuda")
    assert not ck.ok and "ROCm" in ck.reason


def test_unbuilt_ops_name_the_op_and_the_cause(monkeypatch):
    import xformers.ops.fmha.flash3 as flash3

    if flash3.FwOp.is_available():
        pytest.skip("this xformers build has FlashAttention-3 ops")
    _pretend_gpu(monkeypatch, (9, 0))
    reason = REGISTRY.get("xformers_flash3").available("cuda").reason
    assert reason.startswith(f"xformers' {flash3.FwOp.NAME} operator is not available")
    assert _mismatch() in reason


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
