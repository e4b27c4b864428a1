"""Blockwise attention of the Blockwise Parallel Transformer (Liu & Abbeel, arXiv 2305.19370).

Forward: an outer loop over query blocks and an inner loop over key/value blocks; each pair gives a
normalized partial output and its log-sum-exp (`blockwise_ops.block_fwd`), merged into the query
block's accumulator (`blockwise_ops.merge_`), so no S×S matrix exists. A sequence the block size
does not divide ends in a shorter (ragged) block.

Masks (every kind of `harness.masks`; `causal=True` is bottom-right aligned causal): the pairs are
classified once per (mask, shape, block size) and cached (`blockwise_ops.tile_plan`): empty pairs
are never computed, forward or backward (a sparse pattern costs in proportion to the tiles it
touches), full pairs and square lower-triangular ones go to the fused kernel (without a mask / with
is_causal), partial ones get their tile mask. For a causal pattern the key grid starts at the
queries' phase (a first, shorter key block when needed) so its diagonal tiles are square:
causal does about half the work for any Sq, Sk and query offset.
GQA/MQA (k, v with Hkv heads dividing q's Hq; query head h uses kv head h // (Hq // Hkv)),
Sq != Sk, head_dim_v != head_dim and any softmax scale (default 1/sqrt(head_dim)).
Rows with no key at all give output 0, lse -inf and zero gradients.

Backward (FlashAttention-2 style, arXiv 2307.08691): only q, k, v, out and lse are saved; every
block's probabilities are recomputed from the final lse, so memory stays O(S·d).
Inputs of any strides: they get a unit last-dim stride once, on entry (the fused block kernels
need it). Scores in float32 and merges in the accumulator dtype (`blockwise_ops`); the output is
cast to the input dtype once.
Layout: q_bhsd (B, Hq, Sq, D), k_bhsd (B, Hkv, Sk, D), v_bhsd (B, Hkv, Sk, Dv) -> out_bhsd
(B, Hq, Sq, Dv); lse_bhs (see blockwise_ops' legend).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from harness.masks import MASK_KINDS, MaskSpec
from harness.registry import Impl, register
from implementations.blockwise_ops import (
    Kernel,
    TilePlan,
    acc_dtype,
    block_bwd,
    block_fwd,
    kv_groups,
    merge_,
    resolve_mask,
    tile_plan,
    unit_last_stride,
)

DEFAULT_BLOCK_SIZE = 1024


def query_blocks(seq_q: int, block_size: int) -> Iterator[slice]:
    for qs in range(0, seq_q, block_size):
        yield slice(qs, min(qs + block_size, seq_q))


def key_blocks(rows: slice, seq_k: int, block_size: int, causal: bool, q_offset: int
               ) -> Iterator[tuple[slice, bool]]:  # fmt: skip
    """(key slice, is-diagonal) of the key blocks the query rows `rows` attend to, on the plain
    grid (q_offset a multiple of block_size); the kernels use `bpt_plan`, which generalizes it."""
    for ks in range(0, seq_k, block_size):
        if causal and ks >= q_offset + rows.stop:
            break  # every key of this block is in the future of every query of the block
        yield slice(ks, min(ks + block_size, seq_k)), causal and ks == q_offset + rows.start


def bpt_plan(spec: MaskSpec, seq_q: int, seq_k: int, block_size: int, q_offset: int | None,
             device: str | torch.device) -> TilePlan:  # fmt: skip
    """The cached classification of the (query block, key block) pairs bpt computes."""
    return tile_plan(spec, seq_q, seq_k, block_size, block_size, q_offset=q_offset, device=device)


def _one_pair(plan: TilePlan, seq_k: int) -> bool:
    """One query block against one key block holding every key: the block result is the result."""
    return len(plan.rows) == 1 and len(plan.pairs[0]) == 1 and plan.pairs[0][0].cols == slice(
        0, seq_k)  # fmt: skip


def blockwise_fwd(
    q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *, scale: float,
    plan: TilePlan, kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(out_bhsd in the input dtype, lse_bhs in the accumulator dtype) over the plan's pairs."""
    seq_k = k_bhsd.shape[-2]
    if _one_pair(plan, seq_k):  # no copy into a new output
        pair = plan.pairs[0][0]
        return block_fwd(q_bhsd, k_bhsd, v_bhsd, scale=scale, causal=pair.kind == "causal",
                         kernel=kernel, mask_tile=_partial(plan, 0, pair))  # fmt: skip
    acc = acc_dtype(q_bhsd.dtype)
    shape = (*q_bhsd.shape[:-1], v_bhsd.shape[-1])
    out_bhsd = torch.empty(shape, dtype=q_bhsd.dtype, device=q_bhsd.device)
    lse_bhs = torch.empty(q_bhsd.shape[:-1], dtype=acc, device=q_bhsd.device)
    for i, rows in enumerate(plan.rows):
        # accumulate straight into the output when it has the accumulator's dtype: no extra copy
        acc_out = out_bhsd[..., rows, :] if out_bhsd.dtype == acc else None
        acc_lse = lse_bhs[..., rows]
        first = True
        for pair in plan.pairs[i]:
            cols = pair.cols
            o, lse = block_fwd(q_bhsd[..., rows, :], k_bhsd[..., cols, :], v_bhsd[..., cols, :],
                               scale=scale, causal=pair.kind == "causal", kernel=kernel,
                               mask_tile=_partial(plan, i, pair))  # fmt: skip
            if first:
                acc_lse.copy_(lse)
                acc_out = o.to(acc) if acc_out is None else acc_out.copy_(o)
                first = False
            else:
                merge_(acc_out, acc_lse, o, lse)
            del o, lse
        if first:  # no key at all: an empty softmax, zero output
            out_bhsd[..., rows, :] = 0
            acc_lse.fill_(float("-inf"))
        elif out_bhsd.dtype != acc:
            out_bhsd[..., rows, :] = acc_out
    return out_bhsd, lse_bhs


def blockwise_bwd(
    dout_bhsd: torch.Tensor, q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor,
    out_bhsd: torch.Tensor, lse_bhs: torch.Tensor, *, scale: float, plan: TilePlan,
    kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dq, dk, dv) in the input dtype, accumulated over the plan's pairs in the accumulator
    dtype; empty pairs contribute nothing and are never computed."""
    if _one_pair(plan, k_bhsd.shape[-2]):  # no accumulators needed
        pair = plan.pairs[0][0]
        return block_bwd(dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs, scale=scale,
                         causal=pair.kind == "causal", kernel=kernel,
                         mask_tile=_partial(plan, 0, pair))  # fmt: skip
    acc = acc_dtype(q_bhsd.dtype)
    dq = torch.zeros(q_bhsd.shape, dtype=acc, device=q_bhsd.device)
    dk = torch.zeros(k_bhsd.shape, dtype=acc, device=k_bhsd.device)
    dv = torch.zeros(v_bhsd.shape, dtype=acc, device=v_bhsd.device)
    for i, rows in enumerate(plan.rows):
        for pair in plan.pairs[i]:
            cols = pair.cols
            dq_ij, dk_ij, dv_ij = block_bwd(
                dout_bhsd[..., rows, :], q_bhsd[..., rows, :], k_bhsd[..., cols, :],
                v_bhsd[..., cols, :], out_bhsd[..., rows, :], lse_bhs[..., rows], scale=scale,
                causal=pair.kind == "causal", kernel=kernel, mask_tile=_partial(plan, i, pair),
            )  # fmt: skip
            dq[..., rows, :] += dq_ij
            dk[..., cols, :] += dk_ij
            dv[..., cols, :] += dv_ij
    return dq.to(q_bhsd.dtype), dk.to(k_bhsd.dtype), dv.to(v_bhsd.dtype)


def _partial(plan: TilePlan, i: int, pair) -> torch.Tensor | None:
    """The tile mask of a partial pair (full and causal pairs need none)."""
    return plan.tile(i, pair) if pair.kind == "partial" else None


class BlockwiseAttention(torch.autograd.Function):
    """Saves q, k, v, out and lse only; backward recomputes every non-empty block (O(S·d)
    memory). Operands get a unit last-dim stride here, once, not per block."""

    @staticmethod
    def forward(ctx, q_bhsd, k_bhsd, v_bhsd, plan: TilePlan, scale: float, kernel: Kernel):
        q_bhsd, k_bhsd, v_bhsd = (unit_last_stride(t) for t in (q_bhsd, k_bhsd, v_bhsd))
        out_bhsd, lse_bhs = blockwise_fwd(q_bhsd, k_bhsd, v_bhsd, scale=scale, plan=plan,
                                          kernel=kernel)  # fmt: skip
        ctx.save_for_backward(q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs)
        ctx.settings = {"plan": plan, "scale": scale, "kernel": kernel}
        return out_bhsd

    @staticmethod
    def backward(ctx, dout_bhsd):
        dout_bhsd = unit_last_stride(dout_bhsd)
        grads = blockwise_bwd(dout_bhsd, *ctx.saved_tensors, **ctx.settings)
        return (*grads, None, None, None)


def _check_shapes(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor) -> None:
    if q_bhsd.dim() != 4 or k_bhsd.dim() != 4 or v_bhsd.dim() != 4:
        raise ValueError("q, k, v must be 4-D (batch, heads, seq, head_dim)")
    if q_bhsd.shape[-1] != k_bhsd.shape[-1]:
        raise ValueError(f"q and k head_dim differ: {q_bhsd.shape[-1]} != {k_bhsd.shape[-1]}")
    if k_bhsd.shape[:-1] != v_bhsd.shape[:-1]:
        raise ValueError(f"k and v shapes differ before head_dim: {tuple(k_bhsd.shape)} vs "
                         f"{tuple(v_bhsd.shape)}")  # fmt: skip
    kv_groups(q_bhsd, k_bhsd)


def bpt_attention(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                  causal: bool, block_size: int | None = None, mask: MaskSpec | None = None,
                  softmax_scale: float | None = None, q_offset: int | None = None,
                  kernel: Kernel = "auto") -> torch.Tensor:  # fmt: skip
    """Blockwise attention, queries and keys in blocks of `block_size` (default 1024).

    `causal` is bottom-right aligned (query row i sees keys j <= i + Sk - Sq); `mask` (any kind
    of harness.masks; causal added when `causal`) gives the attended pairs exactly.
    `q_offset` (for a caller passing a slice of the queries, as bpt_layer does): query row r sits
    at key position q_offset + r, the rows being those of the square Sk × Sk mask; None is the
    bottom-right default, Sk - Sq.
    """
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    if block_size < 1:
        raise ValueError(f"block_size must be positive; got {block_size}")
    _check_shapes(q_bhsd, k_bhsd, v_bhsd)
    spec = resolve_mask(causal, mask)
    plan = bpt_plan(spec, q_bhsd.shape[-2], k_bhsd.shape[-2], block_size, q_offset,
                    q_bhsd.device)  # fmt: skip
    scale = 1.0 / math.sqrt(q_bhsd.shape[-1]) if softmax_scale is None else softmax_scale
    return BlockwiseAttention.apply(q_bhsd, k_bhsd, v_bhsd, plan, scale, kernel)


BPT = register(Impl(name="bpt", label="Blockwise (BPT)", forward=bpt_attention,
                    layout="bhsd", memory_exponent=1, uses_block_size=True,
                    features=frozenset({"gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale"}),
                    mask_kinds=MASK_KINDS))  # fmt: skip
