"""The xformers adapter against the real xformers package (CI installs the pinned wheel).

The fakes in test_adapters.py pin down our logic; these tests pin down that xformers' real API
still has what the adapter calls (`fmha.Inputs`, `FwOp.not_supported_reasons`,
`dispatch._dispatch_fw`, `LowerTriangularMask`, `_cpp_lib._built_with_cuda`) and that the reasons
users read come from xformers and the dynamic loader. The wheel is a CUDA build for another torch
that links libcudart.so.12, so on this CPU machine its C++ library does not load: the situation the
reasons must explain.
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
