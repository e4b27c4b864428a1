"""Ring Attention (Liu, Zaharia & Abbeel, arXiv 2310.01889) over a torch.distributed process group.

Each of P ranks holds a shard of the sequence (see `seq_layouts`). Forward: P steps; at each, the
rank starts passing its K/V block to the next rank (and receiving from the previous), computes its
queries against the block in hand with the blockwise kernel (`blockwise_ops.block_fwd`, per-piece
masks from `seq_layouts.plan`), waits, and merges by log-sum-exp. Backward (FlashAttention-2 style,
arXiv 2307.08691): dQ stays local; the dK/dV partial sums of a block travel the ring with it, one
step behind, and a final hop returns them to the block's owner.

Numerics are the blockwise kernel's (`blockwise_ops`): scores in float32 (no float16 overflow),
partial outputs merged in the accumulator dtype, the output cast to the input dtype once.
Inputs of any strides: the transpose to bhsd makes them contiguous, and `block_fwd` / `block_bwd`
give any other operand the unit last-dim stride the fused kernels need.

Legend: *_bshd (batch, local_seq, heads, head_dim) at the API; *_bhsd inside; kv_2bhsd stacks K
and V so one message carries both; lse_bhs in the accumulator dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from implementations.blockwise_ops import acc_dtype, block_bwd, block_fwd, merge_
from implementations.ring.ring_exchange import Ring
from implementations.ring.seq_layouts import LAYOUTS, plan


def _world(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def ring_fwd(q_bhsd, k_bhsd, v_bhsd, *, causal: bool, seq_layout: str, scale: float, group: Any):
    """(out_bhsd in the input dtype, lse_bhs) of this rank's queries over the whole sequence."""
    rank, world = _world(group)
    n = q_bhsd.shape[-2]
    out_acc = torch.zeros(q_bhsd.shape, dtype=acc_dtype(q_bhsd.dtype), device=q_bhsd.device)
    lse_acc = torch.full(q_bhsd.shape[:-1], float("-inf"), dtype=out_acc.dtype,
                         device=q_bhsd.device)  # fmt: skip
    kv = torch.stack([k_bhsd, v_bhsd])
    ring = Ring(group) if world > 1 else None
    for step in range(world):
        pending = None
        if ring is not None and step < world - 1:
            incoming = torch.empty_like(kv)
            pending = ring.start([kv], [incoming])
        source = (rank - step) % world
        for piece in plan(seq_layout, rank=rank, source=source, world_size=world, local_len=n,
                          causal=causal):  # fmt: skip
            o, lse = block_fwd(q_bhsd[..., piece.q, :], kv[0][..., piece.kv, :],
                               kv[1][..., piece.kv, :], scale=scale,
                               causal=piece.mask != "full")  # fmt: skip
            merge_(out_acc[..., piece.q, :], lse_acc[..., piece.q], o, lse)
        if pending is not None:
            pending.wait()
            kv = incoming
    return out_acc.to(q_bhsd.dtype), lse_acc


def ring_bwd(dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs, *, causal: bool, seq_layout: str,
             scale: float, group: Any):  # fmt: skip
    """(dq, dk, dv) of this rank's shard; dK/dV of every block are summed over all ranks."""
    rank, world = _world(group)
    n = q_bhsd.shape[-2]
    acc = acc_dtype(q_bhsd.dtype)
    dout_bhsd = dout_bhsd.contiguous()
    dq = torch.zeros(q_bhsd.shape, dtype=acc, device=q_bhsd.device)
    kv = torch.stack([k_bhsd, v_bhsd])
    dkv_prev: torch.Tensor | None = None  # the finished accumulator of the previous step's block
    ring = Ring(group) if world > 1 else None
    for step in range(world):
        sends, recvs = [], []
        incoming = dkv_in = None
        if ring is not None:
            if step < world - 1:
                incoming = torch.empty_like(kv)
                sends.append(kv)
                recvs.append(incoming)
            if step > 0:  # this block's partial dK/dV from the ranks it has already visited
                dkv_in = torch.empty(kv.shape, dtype=acc, device=kv.device)
                sends.append(dkv_prev)
                recvs.append(dkv_in)
        pending = ring.start(sends, recvs) if sends else None
        source = (rank - step) % world
        dkv = torch.zeros(kv.shape, dtype=acc, device=kv.device)
        for piece in plan(seq_layout, rank=rank, source=source, world_size=world, local_len=n,
                          causal=causal):  # fmt: skip
            dq_p, dk_p, dv_p = block_bwd(
                dout_bhsd[..., piece.q, :], q_bhsd[..., piece.q, :], kv[0][..., piece.kv, :],
                kv[1][..., piece.kv, :], out_bhsd[..., piece.q, :], lse_bhs[..., piece.q],
                scale=scale, causal=piece.mask != "full",
            )  # fmt: skip
            dq[..., piece.q, :] += dq_p
            dkv[0][..., piece.kv, :] += dk_p
            dkv[1][..., piece.kv, :] += dv_p
        if pending is not None:
            pending.wait()
        if dkv_in is not None:
            dkv += dkv_in
        dkv_prev = dkv
        if incoming is not None:
            kv = incoming
    if ring is not None:  # the last block's sums belong to the next rank; ours come from the last
        own = torch.empty_like(dkv_prev)
        ring.start([dkv_prev], [own]).wait()
        dkv_prev = own
    dtype = q_bhsd.dtype
    return dq.to(dtype), dkv_prev[0].to(dtype), dkv_prev[1].to(dtype)


class RingAttention(torch.autograd.Function):
    """Saves the local q, k, v, out and lse; backward runs the ring again."""

    @staticmethod
    def forward(ctx, q_bhsd, k_bhsd, v_bhsd, causal: bool, seq_layout: str, scale: float,
                group: Any):  # fmt: skip
        out_bhsd, lse_bhs = ring_fwd(q_bhsd, k_bhsd, v_bhsd, causal=causal, seq_layout=seq_layout,
                                     scale=scale, group=group)  # fmt: skip
        ctx.save_for_backward(q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs)
        ctx.settings = {"causal": causal, "seq_layout": seq_layout, "scale": scale, "group": group}
        return out_bhsd

    @staticmethod
    def backward(ctx, dout_bhsd):
        grads = ring_bwd(dout_bhsd, *ctx.saved_tensors, **ctx.settings)
        return (*grads, None, None, None, None)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   seq_layout: str = "zigzag", group: Any = None) -> torch.Tensor:  # fmt: skip
    """Attention of this rank's shard over the whole ring; gradients flow through.

    q, k, v: (batch, local_seq, heads, head_dim), this rank's part laid out by
    `shard_sequence(x, seq_layout=seq_layout, rank=rank, world_size=world_size, dim=1)`; the
    output is this rank's part of the full output in the same seq_layout. Without an initialized
    process group (or with a group of one) it is plain blockwise attention on one device.
    """
    if seq_layout not in LAYOUTS:
        raise ValueError(f"unknown seq_layout {seq_layout!r}; allowed: {', '.join(LAYOUTS)}")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share the shape (batch, local_seq, heads, head_dim); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    _, world = _world(group)
    if 0 in q.shape:  # the block kernels divide by these sizes
        raise ValueError(f"q, k, v need every dimension >= 1; got shape {tuple(q.shape)}")
    if causal and seq_layout == "zigzag" and world > 1 and q.shape[1] % 2:
        raise ValueError(f"zigzag needs an even local length (two chunks); got {q.shape[1]}")
    scale = 1.0 / math.sqrt(q.shape[-1])
    q_bhsd, k_bhsd, v_bhsd = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    out = RingAttention.apply(q_bhsd, k_bhsd, v_bhsd, causal, seq_layout, scale, group)
    return out.transpose(1, 2)
