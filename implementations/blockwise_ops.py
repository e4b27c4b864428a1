"""Per-block attention with log-sum-exp, and the log-sum-exp merge: the pieces of blockwise kernels.

Shared by the Blockwise Parallel Transformer (arXiv 2305.19370) and ring attention (arXiv
2310.01889): a long attention is a loop over (query block, key block) pairs; each pair gives a
normalized partial output and the log-sum-exp (lse) of its scores, and partial results of one query
block combine exactly by `merge`. The backward of a pair is FlashAttention-2's (arXiv 2307.08691):
given the *final* (merged) output and lse of the rows, P = exp(S - lse) is the pair's slice of the
full softmax and D = rowsum(dout * out) is the full row's, so per-pair gradients simply add up.

Kernels: torch's fused per-block ops that return lse (CPU flash; CUDA flash for float16/bfloat16,
CUDA memory-efficient otherwise), or a readable pure-torch path (float64, and `kernel="torch"`).
The causal mask of a block is aligned top-left: query i sees keys j <= i, counted from the starts
of the two blocks (a diagonal block of a blockwise loop). Fused kernels are used for causal blocks
only when they are square, where top-left and bottom-right alignments agree.

Strides: the fused kernels index the head dim as if its stride were 1; torch's CPU flash kernel
silently reads the wrong elements otherwise (relative error ~1.4), so every operand handed to a
fused kernel gets a unit last-dim stride first (`unit_last_stride`, a no-op when it has one).
Precision: scores are formed and accumulated in float32 whatever the input dtype (the fused
kernels do so inside, the torch path upcasts), so large logits cannot overflow float16.
Known limit (FlashAttention-2's too): the backward's D = rowsum(dout * out) and the recomputed
rowsum of P * dP agree only to rounding, so where the softmax saturates (scaled logits thousands
apart, P one-hot, the true dq and dk ~0) dq and dk are that rounding noise: relative errors of
O(1) in every dtype (q, k = 60 × randn, head_dim 64: dq 1.6 in float16, 8.9 in float32; dv and
the output unaffected): float32 rows there are above the 3x-naive rule (naive: 0.17), float16
rows, where naive overflows, are not gated on dq, dk (`harness.measure.tolerance`).

Legend: q_bhsd (batch, heads, seq, head_dim); lse_bhs (batch, heads, seq) in float32, float64 for
float64 inputs; a merged output is kept in the lse's dtype until it is cast once at the end.
"""

from __future__ import annotations

from typing import Literal

import torch

Kernel = Literal["auto", "torch"]
_LOW = (torch.float16, torch.bfloat16)
_aten = torch.ops.aten


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of statistics and accumulators for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if its last dim has stride 1 (or size 1), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def fused_kind(q_bhsd: torch.Tensor, sq: int, sk: int, causal: bool) -> str | None:
    """Which fused op serves this block, or None for the pure-torch path."""
    if causal and sq != sk:
        return None
    if q_bhsd.device.type == "cpu":
        return "cpu_flash" if q_bhsd.dtype in (torch.float32, *_LOW) else None
    if q_bhsd.device.type == "cuda":
        head_dim = q_bhsd.shape[-1]
        if q_bhsd.dtype in _LOW and head_dim % 8 == 0 and head_dim <= 256:
            return "cuda_flash"
        if q_bhsd.dtype == torch.float32:
            return "cuda_efficient"
    return None


# ---- forward -------------------------------------------------------------------------------------


def _causal_mask(sq: int, sk: int, device: torch.device) -> torch.Tensor:
    """True where key j lies in the future of query i (top-left aligned)."""
    return torch.ones(sq, sk, dtype=torch.bool, device=device).triu(1)


def torch_block_fwd(q_bhsd, k_bhsd, v_bhsd, *, scale: float, causal: bool):
    """The readable reference: scores, lse and output in the accumulator dtype."""
    acc = acc_dtype(q_bhsd.dtype)
    s = (q_bhsd.to(acc) @ k_bhsd.to(acc).transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(_causal_mask(s.shape[-2], s.shape[-1], s.device), float("-inf"))
    lse_bhs = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isfinite(lse_bhs), lse_bhs, torch.zeros_like(lse_bhs))
    p = torch.exp(s - safe[..., None])  # fully masked rows give p = 0 and out = 0
    return (p @ v_bhsd.to(acc)).to(q_bhsd.dtype), lse_bhs


def block_fwd(
    q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *, scale: float,
    causal: bool, kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One block's attention: (out_bhsd in the input dtype, lse_bhs in the accumulator dtype)."""
    sq, sk = q_bhsd.shape[-2], k_bhsd.shape[-2]
    kind = fused_kind(q_bhsd, sq, sk, causal) if kernel == "auto" else None
    if kind is not None:
        q_bhsd, k_bhsd, v_bhsd = (unit_last_stride(t) for t in (q_bhsd, k_bhsd, v_bhsd))
    if kind == "cpu_flash":
        return _aten._scaled_dot_product_flash_attention_for_cpu(
            q_bhsd, k_bhsd, v_bhsd, 0.0, causal, scale=scale
        )
    if kind == "cuda_flash":
        out = _aten._scaled_dot_product_flash_attention(
            q_bhsd, k_bhsd, v_bhsd, 0.0, causal, False, scale=scale
        )
        return out[0], out[1]
    if kind == "cuda_efficient":
        out, lse = _aten._scaled_dot_product_efficient_attention(
            q_bhsd, k_bhsd, v_bhsd, None, True, 0.0, causal, scale=scale
        )[:2]
        return out, lse[..., :sq]  # the kernel pads lse's seq dim to a multiple of 32
    return torch_block_fwd(q_bhsd, k_bhsd, v_bhsd, scale=scale, causal=causal)


# ---- backward ------------------------------------------------------------------------------------


def torch_block_bwd(dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs, *, scale: float,
                    causal: bool):  # fmt: skip
    """FlashAttention-2's backward of one block, given the rows' final out and lse."""
    acc = acc_dtype(q_bhsd.dtype)
    q, k, v, dout = (t.to(acc) for t in (q_bhsd, k_bhsd, v_bhsd, dout_bhsd))
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(_causal_mask(s.shape[-2], s.shape[-1], s.device), float("-inf"))
    lse = lse_bhs.to(acc)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(s - safe[..., None])
    dv = p.transpose(-1, -2) @ dout
    d_row = (dout * out_bhsd.to(acc)).sum(-1, keepdim=True)
    ds = p * (dout @ v.transpose(-1, -2) - d_row)
    dq = (ds @ k) * scale
    dk = (ds.transpose(-1, -2) @ q) * scale
    return dq.to(q_bhsd.dtype), dk.to(k_bhsd.dtype), dv.to(v_bhsd.dtype)


def block_bwd(
    dout_bhsd: torch.Tensor, q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor,
    out_bhsd: torch.Tensor, lse_bhs: torch.Tensor, *, scale: float, causal: bool,
    kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Gradients (dq, dk, dv) of one block; out and lse are the rows' final (merged) values.

    The fused kernels recompute D = rowsum(dout * out) from the `out` they are given, so passing the
    merged out and lse makes each block's gradients its exact share of the full ones.
    """
    sq, sk = q_bhsd.shape[-2], k_bhsd.shape[-2]
    kind = fused_kind(q_bhsd, sq, sk, causal) if kernel == "auto" else None
    if kind is not None:
        operands = (dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd)
        dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd = (unit_last_stride(t) for t in operands)
    if kind == "cpu_flash":
        return _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs, 0.0, causal, scale=scale
        )
    if kind == "cuda_flash":
        empty = torch.empty(0, device=q_bhsd.device)
        seed = torch.zeros((), dtype=torch.int64, device=q_bhsd.device)
        return _aten._scaled_dot_product_flash_attention_backward(
            dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs.contiguous(), empty, empty,
            sq, sk, 0.0, causal, seed, seed, scale=scale,
        )  # fmt: skip
    if kind == "cuda_efficient":
        seed = torch.zeros((), dtype=torch.int64, device=q_bhsd.device)
        grads = _aten._scaled_dot_product_efficient_attention_backward(
            dout_bhsd, q_bhsd, k_bhsd, v_bhsd, None, out_bhsd, lse_bhs.contiguous(), seed, seed,
            0.0, [True, True, True, False], causal, scale=scale,
        )  # fmt: skip
        return grads[0], grads[1], grads[2]
    return torch_block_bwd(dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs, scale=scale,
                           causal=causal)  # fmt: skip


# ---- merge ---------------------------------------------------------------------------------------


def merge(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two normalized partial results of the same rows over disjoint key sets.

    out = out_a + w_b (out_b - out_a) with w_b = exp(lse_b - lse), lse = logaddexp(lse_a, lse_b):
    w_b lies in [0, 1], and rows masked in both parts (lse -inf twice) give 0 instead of NaN.
    The result is in the lse's dtype so a chain of merges never rounds to low precision.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    w_b = torch.exp(lse_b - lse).nan_to_num_(0.0)[..., None]
    out_a = out_a.to(lse.dtype)
    return torch.lerp(out_a, out_b.to(lse.dtype), w_b), lse


def merge_(
    out_acc: torch.Tensor, lse_acc: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> None:
    """In-place `merge` into an accumulator (out_acc in the lse's dtype): the hot-loop form."""
    lse = torch.logaddexp(lse_acc, lse_b)
    w_b = torch.exp(lse_b - lse).nan_to_num_(0.0)[..., None]
    out_acc.lerp_(out_b.to(out_acc.dtype), w_b)
    lse_acc.copy_(lse)
