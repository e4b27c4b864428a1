"""Every registered attention implementation against the float64 reference (fwd and grads).

Tolerance rule (STYLE.md / flash-attention's tests): error ≤ 2 × the error of naive attention in
the same precision + a small floor; float32 must also be within 1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch

import harness
from harness.case import Case
from harness.measure.error import rel_l2
from harness.registry import REGISTRY
from harness.workloads.attention import naive_full

# Compiled implementations (flex) pay seconds of compilation per shape; tests/unit/test_flex.py
# checks them on a smaller matrix.
ATTENTION = [i.name for i in REGISTRY.all() if i.workload == "attention"
             and not i.needs_process_group and "compiled" not in i.tags
             and not i.name.startswith("plugin_")]  # fmt: skip


def _skip_unless_runs(name: str, case: Case) -> None:
    impl = REGISTRY.get(name)
    av = impl.available("cpu")
    if not av.ok:
        pytest.skip(av.reason)
    reasons = impl.unsupported(case, "cpu")
    if reasons:
        pytest.skip("; ".join(reasons))


def _qkv(seq, dtype, seed=0, batch=2, heads=3, dim=32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, heads, dim, generator=gen).to(dtype) for _ in range(3)]


def _run(name, q, k, v, causal, block):
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = harness.attention(name, *leaves, causal=causal, block_size=block)
    dout = torch.randn_like(out, dtype=torch.float32, generator=None).to(out.dtype)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves], dout


def _reference(q, k, v, dout, causal, dtype):
    leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = naive_full(*leaves, causal=causal)
    grads = torch.autograd.grad(out, leaves, dout.to(dtype))
    return out.detach(), grads


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(("seq", "block"), [(97, 32), (128, 128), (1025, 256)])
def test_float32_matches_float64(name, causal, seq, block):
    _skip_unless_runs(name, Case(seq_len=seq, num_heads=3, head_dim=32, causal=causal))
    torch.manual_seed(seq)
    q, k, v = _qkv(seq, torch.float32, seed=seq, batch=1 if seq > 500 else 2)
    out, grads, dout = _run(name, q, k, v, causal, block)
    ref_out, ref_grads = _reference(q, k, v, dout, causal, torch.float64)
    naive_out, naive_grads = _reference(q, k, v, dout, causal, torch.float32)
    assert rel_l2(out, ref_out) <= max(1e-5, 2 * rel_l2(naive_out, ref_out) + 1e-7)
    for g, rg, ng in zip(grads, ref_grads, naive_grads, strict=True):
        assert rel_l2(g, rg) <= max(1e-5, 3 * rel_l2(ng, rg) + 1e-7)


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_within_twice_naive(name, dtype):
    seq, causal = 200, True
    case = Case(seq_len=seq, num_heads=3, head_dim=32, causal=causal,
                dtype=str(dtype).removeprefix("torch."))  # fmt: skip
    _skip_unless_runs(name, case)
    torch.manual_seed(1)
    q, k, v = _qkv(seq, dtype, seed=1)
    out, grads, dout = _run(name, q, k, v, causal, 64)
    ref_out, ref_grads = _reference(q, k, v, dout, causal, torch.float64)
    naive_out, naive_grads = _reference(q, k, v, dout, causal, dtype)
    assert rel_l2(out, ref_out) <= 2 * rel_l2(naive_out, ref_out) + 1e-4
    for g, rg, ng in zip(grads, ref_grads, naive_grads, strict=True):
        assert rel_l2(g, rg) <= 3 * rel_l2(ng, rg) + 1e-4


@pytest.mark.parametrize("name", ATTENTION)
def test_float64_is_exact_to_rounding(name):
    _skip_unless_runs(name, Case(seq_len=65, num_heads=3, head_dim=32, dtype="float64"))
    q, k, v = _qkv(65, torch.float64, seed=2)
    out = harness.attention(name, q, k, v, causal=True, block_size=16)
    assert rel_l2(out, naive_full(q, k, v, causal=True)) < 1e-12
