"""The per-block pieces against float64 naive attention: block_fwd (out, lse), block_bwd given the
merged out/lse of the rows, and the log-sum-exp merge (including fully masked rows)."""

from __future__ import annotations

import math

import pytest
import torch

from implementations.blockwise_ops import block_bwd, block_fwd, fused_kind, merge, merge_

FP32_TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _naive64(q, k, v, causal: bool):
    q, k, v = (t.double() for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def _qkv(sq: int, sk: int, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, sq, 16, generator=gen)
    k, v = (torch.randn(2, 3, sk, 16, generator=gen) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("kernel", ["auto", "torch"])
@pytest.mark.parametrize(("sq", "sk", "causal"),
                         [(33, 33, True), (33, 33, False), (17, 40, False), (40, 40, True)])
def test_block_fwd_matches_float64(kernel: str, sq: int, sk: int, causal: bool) -> None:
    q, k, v = _qkv(sq, sk)
    out, lse = block_fwd(q, k, v, scale=0.25, causal=causal, kernel=kernel)
    ref, ref_lse = _naive64(q, k, v, causal)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert out.shape == q.shape and lse.shape == q.shape[:-1]
    assert _rel(out, ref) <= FP32_TOL
    assert _rel(lse, ref_lse) <= FP32_TOL


def test_block_fwd_causal_is_top_left_when_not_square() -> None:
    q, k, v = _qkv(5, 9)
    out, lse = block_fwd(q, k, v, scale=0.25, causal=True)
    assert fused_kind(q, 5, 9, causal=True) is None  # non-square causal takes the torch path
    ref = torch.softmax(
        ((q.double() @ k.double().transpose(-1, -2)) * 0.25).masked_fill(
            torch.ones(5, 9, dtype=torch.bool).triu(1), float("-inf")), -1) @ v.double()
    assert _rel(out, ref) <= FP32_TOL


def test_float64_uses_the_torch_path_exactly() -> None:
    q, k, v = _qkv(20, 20, torch.float64)
    assert fused_kind(q, 20, 20, causal=False) is None
    out, lse = block_fwd(q, k, v, scale=0.25, causal=True)
    ref, ref_lse = _naive64(q, k, v, True)
    assert lse.dtype == torch.float64
    assert _rel(out, ref) <= 1e-13 and _rel(lse, ref_lse) <= 1e-13


@pytest.mark.parametrize("kernel", ["auto", "torch"])
@pytest.mark.parametrize("causal", [False, True])
def test_block_bwd_with_merged_out_and_lse_sums_to_full_gradients(kernel: str, causal: bool):
    """Split the keys in two blocks; each block's backward, given the rows' *merged* out and lse,
    is its exact share: dq adds up, dk/dv concatenate (FlashAttention-2's D = rowsum(dout*out))."""
    s, cut = 37, 16
    q, k, v = _qkv(s, s, seed=1)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref, _ = _naive64(*leaves, causal)
    # rows [cut, s) see keys [0, cut) fully and keys [cut, s) through a square diagonal block
    rows = slice(cut, s)
    o1, l1 = block_fwd(q[..., rows, :], k[..., :cut, :], v[..., :cut, :], scale=0.25, causal=False)
    o2, l2 = block_fwd(q[..., rows, :], k[..., rows, :], v[..., rows, :], scale=0.25, causal=causal)
    out, lse = merge(o1, l1, o2, l2)
    out = out.to(q.dtype)
    g1 = block_bwd(dout[..., rows, :], q[..., rows, :], k[..., :cut, :], v[..., :cut, :], out, lse,
                   scale=0.25, causal=False, kernel=kernel)
    g2 = block_bwd(dout[..., rows, :], q[..., rows, :], k[..., rows, :], v[..., rows, :], out, lse,
                   scale=0.25, causal=causal, kernel=kernel)
    # only rows [cut, s) took part: compare with the gradients those rows alone give
    ref_dq, ref_dk, ref_dv = torch.autograd.grad(ref[..., rows, :], leaves,
                                                 dout[..., rows, :].double())
    assert _rel(out, ref[..., rows, :].detach()) <= FP32_TOL
    assert _rel(g1[0] + g2[0], ref_dq[..., rows, :]) <= FP32_TOL
    assert _rel(torch.cat([g1[1], g2[1]], -2), ref_dk) <= FP32_TOL
    assert _rel(torch.cat([g1[2], g2[2]], -2), ref_dv) <= FP32_TOL


def test_merge_of_two_key_halves_equals_the_whole() -> None:
    q, k, v = _qkv(24, 50)
    whole, whole_lse = _naive64(q, k, v, False)
    a = block_fwd(q, k[..., :19, :], v[..., :19, :], scale=0.25, causal=False)
    b = block_fwd(q, k[..., 19:, :], v[..., 19:, :], scale=0.25, causal=False)
    out, lse = merge(*a, *b)
    assert out.dtype == torch.float32
    assert _rel(out, whole) <= FP32_TOL and _rel(lse, whole_lse) <= FP32_TOL
    acc_out, acc_lse = a[0].clone(), a[1].clone()
    merge_(acc_out, acc_lse, *b)
    torch.testing.assert_close(acc_out, out)
    torch.testing.assert_close(acc_lse, lse)


def test_merge_is_safe_for_fully_masked_rows() -> None:
    inf = float("-inf")
    out_a, out_b = torch.full((1, 1, 3, 2), 5.0), torch.full((1, 1, 3, 2), 7.0)
    lse_a = torch.tensor([[[inf, 0.0, inf]]])
    lse_b = torch.tensor([[[inf, inf, 1.0]]])
    out, lse = merge(out_a, lse_a, out_b, lse_b)
    assert not torch.isnan(out).any()
    assert lse[0, 0, 0] == inf and out[0, 0, 0].abs().sum() <= 10.0  # masked twice: stays finite
    torch.testing.assert_close(out[0, 0, 1], torch.tensor([5.0, 5.0]))  # b masked: a's output
    torch.testing.assert_close(out[0, 0, 2], torch.tensor([7.0, 7.0]))  # a masked: b's output
    torch.testing.assert_close(lse[0, 0, 1:], torch.tensor([0.0, 1.0]))


def test_merge_keeps_low_precision_parts_in_float32() -> None:
    q, k, v = _qkv(16, 32, torch.bfloat16)
    a = block_fwd(q, k[..., :16, :], v[..., :16, :], scale=0.25, causal=False)
    b = block_fwd(q, k[..., 16:, :], v[..., 16:, :], scale=0.25, causal=False)
    out, lse = merge(*a, *b)
    assert a[0].dtype == torch.bfloat16 and out.dtype == torch.float32 == lse.dtype
