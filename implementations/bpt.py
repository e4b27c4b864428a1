"""Blockwise attention of the Blockwise Parallel Transformer (Liu & Abbeel, arXiv 2305.19370).

Forward: an outer loop over query blocks and an inner loop over key/value blocks; each pair gives a
normalized partial output and its log-sum-exp (`blockwise_ops.block_fwd`), merged into the query
block's accumulator (`blockwise_ops.merge_`), so no S×S matrix exists. Causal: key blocks entirely
in the future of a query block are skipped and the diagonal block is masked, so causal does about
half the work. A sequence the block size does not divide ends in a shorter (ragged) block.

Backward (FlashAttention-2 style, arXiv 2307.08691): only q, k, v, out and lse are saved; every
block's probabilities are recomputed from the final lse, so memory stays O(S·d).
Inputs of any strides: they get a unit last-dim stride once, on entry (the fused block kernels
need it). Scores in float32 and merges in the accumulator dtype (`blockwise_ops`); the output is
cast to the input dtype once.
Layout: q_bhsd, k_bhsd, v_bhsd -> out_bhsd; lse_bhs (see blockwise_ops' legend).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from harness.registry import Impl, register
from implementations.blockwise_ops import (
    Kernel,
    acc_dtype,
    block_bwd,
    block_fwd,
    merge_,
    unit_last_stride,
)

DEFAULT_BLOCK_SIZE = 1024


def query_blocks(seq_q: int, block_size: int) -> Iterator[slice]:
    for qs in range(0, seq_q, block_size):
        yield slice(qs, min(qs + block_size, seq_q))


def key_blocks(rows: slice, seq_k: int, block_size: int, causal: bool, q_offset: int
               ) -> Iterator[tuple[slice, bool]]:  # fmt: skip
    """(key slice, is-diagonal) of the key blocks the query rows `rows` attend to."""
    for ks in range(0, seq_k, block_size):
        if causal and ks >= q_offset + rows.stop:
            break  # every key of this block is in the future of every query of the block
        yield slice(ks, min(ks + block_size, seq_k)), causal and ks == q_offset + rows.start


def _check(causal: bool, block_size: int, q_offset: int) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be positive; got {block_size}")
    if causal and q_offset % block_size:
        raise ValueError(
            f"causal blockwise attention needs q_offset to be a multiple of block_size "
            f"{block_size}, so query and key blocks share diagonals; got {q_offset}"
        )


def _one_pair(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, block_size: int, causal: bool,
              q_offset: int) -> bool:  # fmt: skip
    """One block of queries and one of keys, aligned on the diagonal when causal."""
    seq_q, seq_k = q_bhsd.shape[-2], k_bhsd.shape[-2]
    return seq_q <= block_size and seq_k <= block_size and (not causal or q_offset == 0)


def blockwise_fwd(
    q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *, scale: float,
    causal: bool, block_size: int, q_offset: int = 0, kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(out_bhsd in the input dtype, lse_bhs in the accumulator dtype).

    Query row r sits at position q_offset + r, key column c at position c (causal masks by those).
    """
    _check(causal, block_size, q_offset)
    if _one_pair(q_bhsd, k_bhsd, block_size, causal, q_offset):  # no copy into a new output
        return block_fwd(q_bhsd, k_bhsd, v_bhsd, scale=scale, causal=causal, kernel=kernel)
    acc = acc_dtype(q_bhsd.dtype)
    out_bhsd = torch.empty_like(q_bhsd)
    lse_bhs = torch.empty(q_bhsd.shape[:-1], dtype=acc, device=q_bhsd.device)
    for rows in query_blocks(q_bhsd.shape[-2], block_size):
        # accumulate straight into the output when it has the accumulator's dtype: no extra copy
        acc_out = out_bhsd[..., rows, :] if out_bhsd.dtype == acc else None
        acc_lse = lse_bhs[..., rows]
        first = True
        for cols, diag in key_blocks(rows, k_bhsd.shape[-2], block_size, causal, q_offset):
            o, lse = block_fwd(q_bhsd[..., rows, :], k_bhsd[..., cols, :], v_bhsd[..., cols, :],
                               scale=scale, causal=diag, kernel=kernel)  # fmt: skip
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
    out_bhsd: torch.Tensor, lse_bhs: torch.Tensor, *, scale: float, causal: bool,
    block_size: int, q_offset: int = 0, kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dq, dk, dv) in the input dtype, accumulated over block pairs in the accumulator dtype."""
    _check(causal, block_size, q_offset)
    if _one_pair(q_bhsd, k_bhsd, block_size, causal, q_offset):  # no accumulators needed
        return block_bwd(dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs, scale=scale,
                         causal=causal, kernel=kernel)  # fmt: skip
    acc = acc_dtype(q_bhsd.dtype)
    dq = torch.zeros(q_bhsd.shape, dtype=acc, device=q_bhsd.device)
    dk = torch.zeros(k_bhsd.shape, dtype=acc, device=k_bhsd.device)
    dv = torch.zeros(v_bhsd.shape, dtype=acc, device=v_bhsd.device)
    for rows in query_blocks(q_bhsd.shape[-2], block_size):
        for cols, diag in key_blocks(rows, k_bhsd.shape[-2], block_size, causal, q_offset):
            dq_ij, dk_ij, dv_ij = block_bwd(
                dout_bhsd[..., rows, :], q_bhsd[..., rows, :], k_bhsd[..., cols, :],
                v_bhsd[..., cols, :], out_bhsd[..., rows, :], lse_bhs[..., rows], scale=scale,
                causal=diag, kernel=kernel,
            )  # fmt: skip
            dq[..., rows, :] += dq_ij
            dk[..., cols, :] += dk_ij
            dv[..., cols, :] += dv_ij
    return dq.to(q_bhsd.dtype), dk.to(k_bhsd.dtype), dv.to(v_bhsd.dtype)


class BlockwiseAttention(torch.autograd.Function):
    """Saves q, k, v, out and lse only; backward recomputes every block (O(S·d) memory).
    Operands get a unit last-dim stride here, once, not per block."""

    @staticmethod
    def forward(ctx, q_bhsd, k_bhsd, v_bhsd, causal: bool, block_size: int, scale: float,
                q_offset: int, kernel: Kernel):  # fmt: skip
        q_bhsd, k_bhsd, v_bhsd = (unit_last_stride(t) for t in (q_bhsd, k_bhsd, v_bhsd))
        out_bhsd, lse_bhs = blockwise_fwd(q_bhsd, k_bhsd, v_bhsd, scale=scale, causal=causal,
                                          block_size=block_size, q_offset=q_offset,
                                          kernel=kernel)  # fmt: skip
        ctx.save_for_backward(q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs)
        ctx.settings = {"causal": causal, "block_size": block_size, "scale": scale,
                        "q_offset": q_offset, "kernel": kernel}  # fmt: skip
        return out_bhsd

    @staticmethod
    def backward(ctx, dout_bhsd):
        dout_bhsd = unit_last_stride(dout_bhsd)
        grads = blockwise_bwd(dout_bhsd, *ctx.saved_tensors, **ctx.settings)
        return (*grads, None, None, None, None, None)


def bpt_attention(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                  causal: bool, block_size: int | None = None, q_offset: int = 0,
                  kernel: Kernel = "auto") -> torch.Tensor:  # fmt: skip
    """Blockwise attention, queries and keys in blocks of `block_size` (default 1024).

    Causal: query row r sits at position q_offset + r and sees keys 0 .. q_offset + r; the layer
    passes one query block at a time with its offset.
    """
    scale = 1.0 / math.sqrt(q_bhsd.shape[-1])
    return BlockwiseAttention.apply(q_bhsd, k_bhsd, v_bhsd, causal,
                                    block_size or DEFAULT_BLOCK_SIZE, scale, q_offset,
                                    kernel)  # fmt: skip


BPT = register(Impl(name="bpt", label="Blockwise (BPT)", forward=bpt_attention,
                    layout="bhsd", memory_exponent=1, uses_block_size=True))  # fmt: skip
