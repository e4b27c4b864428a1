"""Blockwise attention (bpt) against float64: outputs and dq/dk/dv, causal and not, odd lengths,
block sizes that do not divide S, one block; low precision within 2x of naive in that precision."""

from __future__ import annotations

import pytest
import torch

from harness.registry import REGISTRY
from harness.workloads.attention import naive_full
from implementations.bpt import bpt_attention, key_blocks, query_blocks
from implementations.naive import naive_attention

FP32_TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _inputs(seq: int, dtype: torch.dtype, heads: int = 2, dim: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(1, heads, seq, dim, generator=gen) for _ in range(4))
    return [t.to(dtype) for t in (q, k, v)], dout.to(dtype)


def _run(fn, qkv, dout, **kw):
    leaves = [t.clone().requires_grad_(True) for t in qkv]
    out = fn(*leaves, **kw)
    grads = torch.autograd.grad(out, leaves, dout)
    return out, grads


def _reference(qkv, dout, causal: bool):
    """float64 naive attention in the harness's public layout (bshd), back to bhsd."""
    leaves = [t.double().transpose(1, 2).requires_grad_(True) for t in qkv]
    out = naive_full(*leaves, causal=causal)
    grads = torch.autograd.grad(out, leaves, dout.double().transpose(1, 2))
    return out.transpose(1, 2), [g.transpose(1, 2) for g in grads]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("seq", "block_size"), [
    (97, 32),     # odd length, ragged last block
    (97, 97),     # one block
    (97, 4096),   # block larger than the sequence: one block
    (100, 33),    # a block size that divides nothing
    (1025, 256),  # odd long length, 4 full blocks and a 1-row block
])  # fmt: skip
def test_fp32_matches_float64(seq: int, block_size: int, causal: bool) -> None:
    qkv, dout = _inputs(seq, torch.float32)
    out, grads = _run(bpt_attention, qkv, dout, causal=causal, block_size=block_size)
    ref, ref_grads = _reference(qkv, dout, causal)
    assert out.shape == qkv[0].shape and out.dtype == torch.float32
    assert _rel(out, ref) <= FP32_TOL
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert _rel(g, r) <= FP32_TOL, f"d{name}"


@pytest.mark.parametrize("causal", [False, True])
def test_torch_kernel_path_matches_float64(causal: bool) -> None:
    qkv, dout = _inputs(70, torch.float32)
    out, grads = _run(bpt_attention, qkv, dout, causal=causal, block_size=24, kernel="torch")
    ref, ref_grads = _reference(qkv, dout, causal)
    assert _rel(out, ref) <= FP32_TOL
    assert all(_rel(g, r) <= FP32_TOL for g, r in zip(grads, ref_grads, strict=True))


@pytest.mark.parametrize("causal", [False, True])
def test_float64_inputs(causal: bool) -> None:
    qkv, dout = _inputs(45, torch.float64)
    out, grads = _run(bpt_attention, qkv, dout, causal=causal, block_size=16)
    ref, ref_grads = _reference(qkv, dout, causal)
    assert out.dtype == torch.float64
    assert _rel(out, ref) <= 1e-12
    assert all(_rel(g, r) <= 1e-12 for g, r in zip(grads, ref_grads, strict=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_within_twice_naive(dtype: torch.dtype, causal: bool) -> None:
    """flash-attention's rule: error vs float64 at most 2x naive attention's in the same dtype."""
    qkv, dout = _inputs(257, dtype, heads=4, dim=32)
    out, grads = _run(bpt_attention, qkv, dout, causal=causal, block_size=64)
    naive_out, naive_grads = _run(naive_attention, qkv, dout, causal=causal)
    ref, ref_grads = _reference(qkv, dout, causal)
    assert out.dtype == dtype
    assert _rel(out, ref) <= 2 * _rel(naive_out, ref) + 1e-4
    for name, g, n, r in zip("qkv", grads, naive_grads, ref_grads, strict=True):
        assert _rel(g, r) <= 2 * _rel(n, r) + 1e-4, f"d{name}"


def test_query_offset_gives_the_rows_of_the_full_causal_result() -> None:
    qkv, _ = _inputs(96, torch.float32)
    q, k, v = qkv
    full = bpt_attention(q, k, v, causal=True, block_size=32)
    part = bpt_attention(q[..., 64:, :], k, v, causal=True, block_size=32, q_offset=64)
    torch.testing.assert_close(part, full[..., 64:, :])


def test_causal_skips_blocks_above_the_diagonal() -> None:
    """4 blocks: 10 pairs causal (4 of them diagonal) instead of 16."""
    pairs = [(r, c, d) for r in query_blocks(100, 25) for c, d in key_blocks(r, 100, 25, True, 0)]
    assert len(pairs) == 10 and sum(d for _, _, d in pairs) == 4
    assert all(c.start <= r.start for r, c, _ in pairs)
    full = [c for r in query_blocks(100, 25) for c, _ in key_blocks(r, 100, 25, False, 0)]
    assert len(full) == 16


def test_bad_arguments_raise_value_errors() -> None:
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="block_size"):
        bpt_attention(q, q, q, causal=False, block_size=-1)


def test_registered_in_bhsd_layout() -> None:
    impl = REGISTRY.get("bpt")
    assert impl.layout == "bhsd" and impl.workload == "attention" and impl.supports_backward


@pytest.mark.parametrize("causal", [False, True])
def test_strided_inputs_and_upstream_gradient(causal: bool) -> None:
    """The harness hands bhsd views of bshd tensors; nothing may assume contiguity."""
    qkv, dout = _inputs(75, torch.float32)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (*qkv, dout)]
    assert not strided[0].is_contiguous()
    out, grads = _run(bpt_attention, strided[:3], strided[3], causal=causal, block_size=32)
    ref, ref_grads = _reference(qkv, dout, causal)
    assert _rel(out, ref) <= FP32_TOL
    assert all(_rel(g, r) <= FP32_TOL for g, r in zip(grads, ref_grads, strict=True))
