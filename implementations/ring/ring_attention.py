"""Ring Attention (Liu, Zaharia & Abbeel, arXiv 2310.01889) over a torch.distributed process group.

Each of P ranks holds a shard of the sequence (see `seq_layouts`). Forward: P steps; at each, the
rank starts passing its K/V block to the next rank (and receiving from the previous), computes its
queries against the block in hand with the blockwise kernel (`blockwise_ops.block_fwd`, per-piece
masks from `seq_layouts.plan`), waits, and merges by log-sum-exp. Backward (FlashAttention-2 style,
arXiv 2307.08691): dQ stays local; the dK/dV partial sums of a block travel the ring with it, one
step behind, and a final hop returns them to the block's owner.

Memory (what a rank holds beyond its inputs; w = one local q-sized block):
- nothing is copied to another layout: the kernels take bhsd *views* of the bshd inputs;
- K and V travel as they are, with num_kv_heads heads (GQA/MQA: fewer bytes a step), and are
  expanded to the query heads only inside the block kernel; the first step sends the caller's
  k and v themselves, later steps alternate between one fixed pair of receive buffers
  (`_Ring2`: one buffer at P = 2, two at P >= 3, never one a step);
- the first partial output (and dQ, dK, dV) is adopted as the accumulator, not added to zeros;
- dK/dV partial sums are received into a fixed pair of buffers and the block's own share is added
  into the received buffer in place, which then travels on.
The exchange of step t is posted (isend/irecv) before step t's compute, so transfer and compute
overlap as before.

Padding: a sequence the layout cannot split evenly is padded by `shard_sequence`; `seq_len`
(the unpadded length) makes `plan` clip every piece to the real positions, so padded keys are never
attended and padded query rows get output 0 and contribute no gradient.

Numerics are the blockwise kernel's (`blockwise_ops`): scores in float32 (no float16 overflow),
partial outputs merged in the accumulator dtype, the output cast to the input dtype once.

Legend: *_bshd (batch, local_seq, heads, head_dim) at the API and in the travelling buffers;
*_bhsd views of them inside; lse_bhs in the accumulator dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from implementations.blockwise_ops import acc_dtype, block_bwd, block_fwd, merge_
from implementations.ring.ring_exchange import Ring
from implementations.ring.seq_layouts import LAYOUTS, padded_len, plan

_BHSD = (0, 2, 1, 3)  # bshd <-> bhsd, a view either way


def _world(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _bhsd(t: torch.Tensor) -> torch.Tensor:
    return t.permute(_BHSD)


class _Ring2:
    """A fixed pair of receive buffers for one travelling kind (K and V, or dK and dV).

    `receive_buffer()` hands out the two buffers in turn (each made on first use, shaped like
    `like`), so a buffer is received into again only two exchanges later: after the exchange
    that sent it on was waited for. One buffer is ever made when there is one exchange (P = 2).
    """

    def __init__(self, like: list[torch.Tensor], dtype: torch.dtype | None = None):
        self.like, self.dtype = like, dtype
        self.pair: list[list[torch.Tensor] | None] = [None, None]
        self.turn = 0

    def receive_buffer(self) -> list[torch.Tensor]:
        buf = self.pair[self.turn]
        if buf is None:
            buf = [torch.empty(t.shape, dtype=self.dtype or t.dtype, device=t.device)
                   for t in self.like]  # fmt: skip
            self.pair[self.turn] = buf
        self.turn ^= 1
        return buf


def _adopt_or_merge(acc: list[Any], rows: slice, full_rows: bool, o: torch.Tensor,
                    lse: torch.Tensor, acc_t: torch.dtype,
                    shape: tuple[int, ...]) -> None:  # fmt: skip
    """Merge (o, lse) of `rows` into acc = [out, lse]; the first piece over all rows is adopted."""
    if acc[0] is None:
        if full_rows:
            acc[0], acc[1] = o.to(acc_t), lse.to(acc_t)
            return
        acc[0] = torch.zeros(shape, dtype=acc_t, device=o.device)
        acc[1] = torch.full(shape[:-1], float("-inf"), dtype=acc_t, device=o.device)
    merge_(acc[0][..., rows, :], acc[1][..., rows], o, lse)


def _covers(piece_q: slice, n: int) -> bool:
    return piece_q.indices(n)[:2] == (0, n)


_MERGE_TILES = 4  # row tiles of a merged full piece: its partial output is 1/4 of the rows


def _row_tiles(piece: Any, n: int, *, adopting: bool) -> list[slice]:
    """The query rows of `piece` in one call, or in `_MERGE_TILES` tiles when its partial output
    is merged (a temporary as large as its rows): only full pieces, whose row tiles keep every
    key (a diagonal piece's row tile would not be square, which the fused kernels need)."""
    q0, q1, _ = piece.q.indices(n)
    if (adopting and (q0, q1) == (0, n)) or piece.mask != "full":
        return [slice(q0, q1)]
    step = -(-(q1 - q0) // _MERGE_TILES)
    return [slice(a, min(a + step, q1)) for a in range(q0, q1, step)]


def _adopt(parts: list[tuple[slice, torch.Tensor, torch.Tensor]], n: int,
           acc_t: torch.dtype) -> list[torch.Tensor] | None:  # fmt: skip
    """A lone piece's (dk, dv) as the block's sums, when they cover the n keys and are already
    contiguous bshd in the accumulator dtype (so they can be sent as they are); else None."""
    if len(parts) != 1 or not _covers(parts[0][0], n):
        return None
    grads = [_bhsd(g) for g in parts[0][1:]]
    if all(g.dtype == acc_t and g.is_contiguous() for g in grads):
        return grads
    return None


def ring_fwd(q_bshd, k_bshd, v_bshd, *, causal: bool, seq_layout: str, scale: float, group: Any,
             seq_len: int):  # fmt: skip
    """(out_bhsd in the input dtype, lse_bhs) of this rank's queries over the whole sequence."""
    rank, world = _world(group)
    n = q_bshd.shape[1]
    acc_t = acc_dtype(q_bshd.dtype)
    q = _bhsd(q_bshd)
    out_shape = (*q.shape[:-1], v_bshd.shape[-1])
    acc: list[Any] = [None, None]
    kv = [k_bshd.contiguous(), v_bshd.contiguous()]  # a no-op for contiguous inputs
    ring = Ring(group) if world > 1 else None
    buffers = _Ring2(kv) if ring is not None else None
    for step in range(world):
        pending, incoming = None, None
        if ring is not None and step < world - 1:
            incoming = buffers.receive_buffer()
            pending = ring.start(kv, incoming)
        source = (rank - step) % world
        k, v = _bhsd(kv[0]), _bhsd(kv[1])
        for piece in plan(seq_layout, rank=rank, source=source, world_size=world, local_len=n,
                          causal=causal, seq_len=seq_len):  # fmt: skip
            for rows in _row_tiles(piece, n, adopting=acc[0] is None):
                o, lse = block_fwd(q[..., rows, :], k[..., piece.kv, :], v[..., piece.kv, :],
                                   scale=scale, causal=piece.mask != "full")  # fmt: skip
                _adopt_or_merge(acc, rows, _covers(rows, n), o, lse, acc_t, out_shape)
                del o, lse
        del k, v
        if pending is not None:
            pending.wait()
            kv = incoming
        pending = incoming = None
    if acc[0] is None:  # no real query here (all padding)
        acc = [torch.zeros(out_shape, dtype=acc_t, device=q.device),
               torch.full(out_shape[:-1], float("-inf"), dtype=acc_t,
                          device=q.device)]  # fmt: skip
    return acc[0].to(q_bshd.dtype), acc[1]


def ring_bwd(dout_bhsd, q_bshd, k_bshd, v_bshd, out_bhsd, lse_bhs, *, causal: bool,
             seq_layout: str, scale: float, group: Any, seq_len: int):  # fmt: skip
    """(dq, dk, dv) of this rank's shard as bhsd views; dK/dV of every block summed over ranks."""
    rank, world = _world(group)
    n = q_bshd.shape[1]
    acc_t = acc_dtype(q_bshd.dtype)
    q = _bhsd(q_bshd)
    dq: torch.Tensor | None = None
    kv = [k_bshd.contiguous(), v_bshd.contiguous()]
    ring = Ring(group) if world > 1 else None
    kv_buffers = _Ring2(kv) if ring is not None else None
    dkv_buffers = _Ring2(kv, dtype=acc_t) if ring is not None else None
    dkv_prev: list[torch.Tensor] | None = None  # the finished sums of the previous step's block
    for step in range(world):
        sends, recvs = [], []
        incoming = dkv = None
        if ring is not None:
            if step < world - 1:
                incoming = kv_buffers.receive_buffer()
                sends += kv
                recvs += incoming
            if step > 0:  # this block's partial dK/dV from the ranks it has already visited
                dkv = dkv_buffers.receive_buffer()
                sends += dkv_prev
                recvs += dkv
        pending = ring.start(sends, recvs) if sends else None
        source = (rank - step) % world
        k, v = _bhsd(kv[0]), _bhsd(kv[1])
        parts = []  # this rank's share of the block's dK/dV, (kv slice, dk, dv)
        for piece in plan(seq_layout, rank=rank, source=source, world_size=world, local_len=n,
                          causal=causal, seq_len=seq_len):  # fmt: skip
            dq_p, dk_p, dv_p = block_bwd(
                dout_bhsd[..., piece.q, :], q[..., piece.q, :], k[..., piece.kv, :],
                v[..., piece.kv, :], out_bhsd[..., piece.q, :], lse_bhs[..., piece.q],
                scale=scale, causal=piece.mask != "full",
            )  # fmt: skip
            if dq is None and _covers(piece.q, n):
                dq = dq_p.to(acc_t)
            else:
                if dq is None:
                    dq = torch.zeros(q.shape, dtype=acc_t, device=q.device)
                dq[..., piece.q, :] += dq_p
            parts.append((piece.kv, dk_p, dv_p))
            del dq_p
        if pending is not None:
            pending.wait()
        del k, v, sends, recvs  # free what was sent as soon as it is no longer needed
        pending = None
        if step == world - 1:
            kv = None  # the last block: nothing forwards it
        if dkv is None:  # the block's first visit (or P = 1): start its sums
            dkv = _adopt(parts, n, acc_t)
            if dkv is not None:
                parts = []
            else:
                dkv = [torch.zeros(t.shape, dtype=acc_t, device=t.device) for t in (k_bshd, v_bshd)]
        for kv_slice, dk_p, dv_p in parts:  # add into the received sums in place
            _bhsd(dkv[0])[..., kv_slice, :] += dk_p
            _bhsd(dkv[1])[..., kv_slice, :] += dv_p
        del parts
        dkv_prev = dkv
        if incoming is not None:
            kv = incoming
    if ring is not None:  # the last block's sums belong to the next rank; ours come from the last
        own = dkv_buffers.receive_buffer()
        ring.start(dkv_prev, own).wait()
        dkv_prev = own
    if dq is None:
        dq = torch.zeros(q.shape, dtype=acc_t, device=q.device)
    dtype = q_bshd.dtype
    return dq.to(dtype), _bhsd(dkv_prev[0].to(dtype)), _bhsd(dkv_prev[1].to(dtype))


class RingAttention(torch.autograd.Function):
    """Takes and saves the local bshd q, k, v (no copies), out and lse; backward runs the ring
    again. Returns out as bhsd."""

    @staticmethod
    def forward(ctx, q_bshd, k_bshd, v_bshd, causal: bool, seq_layout: str, scale: float,
                group: Any, seq_len: int):  # fmt: skip
        settings = {"causal": causal, "seq_layout": seq_layout, "scale": scale, "group": group,
                    "seq_len": seq_len}  # fmt: skip
        out_bhsd, lse_bhs = ring_fwd(q_bshd, k_bshd, v_bshd, **settings)
        ctx.save_for_backward(q_bshd, k_bshd, v_bshd, out_bhsd, lse_bhs)
        ctx.settings = settings
        return out_bhsd

    @staticmethod
    def backward(ctx, dout_bhsd):
        dq, dk, dv = ring_bwd(dout_bhsd, *ctx.saved_tensors, **ctx.settings)
        # the inputs were bshd: hand back bshd views
        return (dq.permute(_BHSD), dk.permute(_BHSD), dv.permute(_BHSD), None, None, None, None,
                None)  # fmt: skip


def _shapes_everywhere(tensors: tuple[torch.Tensor, ...], group: Any,
                       world: int) -> list[list[tuple[int, ...]]]:  # fmt: skip
    """Every rank's (q, k, v) shapes, by one small all_gather (ranks that disagree must all
    raise before any ring step: a mismatched exchange aborts inside the backend)."""
    row = []
    for t in tensors:
        dims = list(t.shape)[:6]
        row += [t.dim(), *dims, *[-1] * (6 - len(dims))]
    device = tensors[0].device
    on = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    mine = torch.tensor(row, dtype=torch.int64, device=on)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    shapes = []
    for part in parts:
        values = part.tolist()
        per = []
        for i in range(len(tensors)):
            ndim, *dims = values[i * 7 : (i + 1) * 7]
            per.append(tuple(dims[:ndim]))
        shapes.append(per)
    return shapes


def _check_shapes(shapes: list[list[tuple[int, ...]]], seq_len: int | None, seq_layout: str,
                  causal: bool) -> int:  # fmt: skip
    """Validate every rank's shapes (the same verdict on every rank); the unpadded length."""
    world = len(shapes)
    listing = "; ".join(f"rank {r}: q {q}, k {k}, v {v}" for r, (q, k, v) in enumerate(shapes))
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"ring_attention needs the same local shapes on every rank (shard with "
                         f"shard_sequence, which pads any length); got {listing}")  # fmt: skip
    q, k, v = shapes[0]
    if len(q) != 4 or len(k) != 4 or len(v) != 4:
        raise ValueError(f"q, k, v must be 4-D (batch, local_seq, heads, head_dim); got {listing}")
    if 0 in (*q, *k, *v):  # the block kernels divide by these sizes
        raise ValueError(f"q, k, v need every dimension >= 1; got {listing}")
    if k[:3] != v[:3] or q[0] != k[0] or q[3] != k[3] or q[2] % k[2]:
        raise ValueError(
            f"shapes must be q (batch, local_seq, num_heads, head_dim), k (batch, local_seq, "
            f"num_kv_heads, head_dim), v (batch, local_seq, num_kv_heads, head_dim_v), "
            f"num_kv_heads dividing num_heads; got {listing}"
        )
    if q[1] != k[1]:
        raise ValueError(f"ring_attention needs seqlen_q == seqlen_k (each rank's queries and keys "
                         f"are the same positions); got {listing}")  # fmt: skip
    n = q[1]
    if seq_len is None:
        seq_len = n * world
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1 or (
            padded_len(seq_len, seq_layout, world) != n * world):  # fmt: skip
        raise ValueError(f"seq_len {seq_len!r} does not shard to local_seq {n} on {world} ranks "
                         f"with seq_layout {seq_layout!r} (shard_sequence pads seq_len up to a "
                         f"multiple of {padded_len(1, seq_layout, world)})")  # fmt: skip
    if causal and seq_layout == "zigzag" and world > 1 and n % 2:
        raise ValueError(f"zigzag needs an even local length (two chunks); got {n}")
    return seq_len


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   seq_layout: str = "zigzag", group: Any = None, seq_len: int | None = None,
                   softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    """Attention of this rank's shard over the whole ring; gradients flow through.

    q (batch, local_seq, num_heads, head_dim), k (batch, local_seq, num_kv_heads, head_dim),
    v (batch, local_seq, num_kv_heads, head_dim_v), num_kv_heads dividing num_heads (GQA/MQA: k
    and v travel with their own heads), each this rank's part laid out by
    `shard_sequence(x, seq_layout=seq_layout, rank=rank, world_size=world_size, dim=1)`; returns
    out (batch, local_seq, num_heads, head_dim_v), this rank's part of the full output in the same
    seq_layout. `seq_len`: the unpadded global length when `shard_sequence` padded it (None: no
    padding); padded query rows get output 0 and gradient 0. `softmax_scale` defaults to
    1/sqrt(head_dim). `causal` is the usual (square) causal mask over the global positions.
    Without an initialized process group (or with a group of one) it is plain blockwise attention.

    ValueError, raised on every rank alike before any exchange (the ranks compare shapes by one
    small all_gather), for: local shapes that differ between ranks (e.g. `torch.chunk` of an odd
    length), shapes that cannot go together, a seq_len that does not shard to local_seq, an unknown
    seq_layout, a non-positive softmax_scale.
    """
    if seq_layout not in LAYOUTS:
        raise ValueError(f"unknown seq_layout {seq_layout!r}; allowed: {', '.join(LAYOUTS)}")
    if softmax_scale is not None and not (0 < softmax_scale < float("inf")):
        raise ValueError(f"softmax_scale must be a positive finite number; got {softmax_scale!r}")
    _, world = _world(group)
    if world > 1:
        shapes = _shapes_everywhere((q, k, v), group, world)
    else:
        shapes = [[tuple(t.shape) for t in (q, k, v)]]
    seq_len = _check_shapes(shapes, seq_len, seq_layout, causal)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = RingAttention.apply(q, k, v, causal, seq_layout, scale, group, seq_len)
    return out.permute(_BHSD)
