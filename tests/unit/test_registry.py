"""The registry: built-ins, availability reasons, unknown names, the entry-point plugin path."""

from __future__ import annotations

import pytest
import torch

import harness
from harness.registry import REGISTRY, Availability, Impl, Registry

BUILTINS = {"naive", "chunked", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"}


def test_builtins_registered_with_contract_fields():
    names = set(REGISTRY.names())
    assert names >= BUILTINS
    for name in BUILTINS:
        impl = REGISTRY.get(name)
        assert impl.label and impl.layout in ("bshd", "bhsd")
        assert isinstance(impl.available("cpu"), Availability)


def test_unknown_name_lists_allowed():
    with pytest.raises(harness.UnknownImplementation, match="allowed: .*chunked.*naive"):
        REGISTRY.get("flashy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only reasons")
@pytest.mark.parametrize("name", ["sdpa_efficient", "sdpa_cudnn"])
def test_cuda_only_backends_say_why_on_cpu(name):
    av = REGISTRY.get(name).available("cpu")
    assert not av.ok and "CUDA" in av.reason
    q = torch.randn(1, 8, 2, 8)
    with pytest.raises(harness.Unavailable, match="needs CUDA"):
        harness.attention(name, q, q, q)


def test_unsupported_case_raises_unavailable_with_reason():
    def refuse(case, device):
        return [f"head_dim {case.head_dim} is not 128"]

    reg = Impl(name="picky", label="picky", forward=lambda *a, **k: None, unsupported=refuse)
    REGISTRY.register(reg)
    try:
        q = torch.randn(1, 4, 1, 8)
        with pytest.raises(harness.Unavailable, match="head_dim 8 is not 128"):
            harness.attention("picky", q, q, q)
    finally:
        REGISTRY._impls.pop("picky")


def test_duplicate_registration_is_refused():
    reg = Registry()
    impl = Impl(name="x", label="x", forward=lambda *a, **k: None)
    reg.register(impl)
    with pytest.raises(Exception, match="registered twice"):
        reg.register(Impl(name="x", label="other", forward=lambda *a, **k: None))


def test_entry_point_plugins_register(plugin_site):
    impl = REGISTRY.get("plugin_sleepy")
    assert impl.label == "sleeps, then naive"
    q = torch.randn(1, 16, 2, 8, dtype=torch.float64)
    out = harness.attention("plugin_sleepy", q, q, q)
    ref = harness.attention("naive", q, q, q)
    torch.testing.assert_close(out, ref)
