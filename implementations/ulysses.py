"""DeepSpeed-Ulysses sequence parallelism (Jacobs et al., arXiv 2309.14509) over torch.distributed.

Each of P ranks holds a shard of the sequence for every head (the same shards as ring attention,
`ring.seq_layouts`). One all-to-all per tensor turns that into the *whole* sequence for H/P of the
heads; each rank runs ordinary single-device attention on its heads (our blockwise kernel,
`bpt.bpt_attention`, so any mask of `harness.masks`, GQA, head_dim_v and softmax_scale come for
free); a last all-to-all turns the output back into sequence shards. Backward is autograd's: the
gradient of an all-to-all is the all-to-all back, so it costs the same four exchanges in reverse.

Communication per rank per call: 4 all-to-alls of (P-1)/P of a local (b, S/P, h, d) tensor each
(q, k, v in, out back) — it shrinks with P, where the ring sends its whole K/V block P-1 times.
Limits (Ulysses' own, arXiv 2309.14509 §3): num_heads and num_kv_heads must both divide by P
(GQA/MQA with fewer kv heads than ranks does not split); the causal work is balanced by
construction (every rank sees the full causal pattern of its heads), whatever the seq_layout.

Layout: q (batch, S/P, num_heads, head_dim), k (batch, S/P, num_kv_heads, head_dim), v (batch,
S/P, num_kv_heads, head_dim_v), this rank's part in `seq_layout`; out (batch, S/P, num_heads,
head_dim_v) in the same layout. The heads of rank r after the exchange are [r·H/P, (r+1)·H/P).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from harness.hooks import CommObserver, DistributedHooks
from harness.masks import MASK_KINDS, MaskSpec
from harness.registry import Availability, Impl, register
from implementations.bpt import bpt_attention
from implementations.ring.seq_layouts import (
    LAYOUTS,
    gather_sequence,
    positions,
    shard_sequence,
    unsupported_reason,
)

_observer: CommObserver | None = None


@contextmanager
def observe(observer: CommObserver) -> Iterator[CommObserver]:
    """Report every all-to-all started inside the block to `observer` (bytes that leave the rank,
    and the blocking wait), as `ring.ring_exchange.observe` does for the ring."""
    global _observer
    saved, _observer = _observer, observer
    try:
        yield observer
    finally:
        _observer = saved


def _world(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_to_all(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """`dist.all_to_all_single` of dim-0 chunks (equal splits), observed; no autograd."""
    x = x.contiguous()
    out = torch.empty_like(x)
    work = dist.all_to_all_single(out, x, group=group, async_op=True)
    if _observer is None:
        work.wait()
        return out
    world = dist.get_world_size(group)
    _observer.started(x.numel() * x.element_size() * (world - 1) // world)  # own chunk stays
    _observer.wait(work.wait)
    return out


class _AllToAll(torch.autograd.Function):
    """All-to-all whose gradient is the same all-to-all of the gradient (equal splits)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return all_to_all(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return all_to_all(grad, ctx.group), None


def _concat_order(seq_len: int, seq_layout: str, world: int) -> torch.Tensor:
    """Global position of each row of the rank-ordered concatenation of all shards."""
    return torch.cat([positions(seq_len, seq_layout=seq_layout, rank=r, world_size=world)
                      for r in range(world)])  # fmt: skip


def seq_to_heads(x_bshd: torch.Tensor, *, seq_layout: str, group: Any = None) -> torch.Tensor:
    """(b, S/P, h, d) sequence shard → (b, S, h/P, d): the whole sequence, in global order, for
    this rank's h/P heads. Differentiable."""
    _, world = _world(group)
    b, n, h, d = x_bshd.shape
    send = x_bshd.reshape(b, n, world, h // world, d).permute(2, 0, 1, 3, 4)  # chunk j → rank j
    recv = _AllToAll.apply(send, group)  # chunk j: rank j's sequence shard of our heads
    full = recv.permute(1, 0, 2, 3, 4).reshape(b, world * n, h // world, d)
    if seq_layout == "contiguous":
        return full
    order = _concat_order(world * n, seq_layout, world)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return full.index_select(1, inverse.to(full.device))


def heads_to_seq(x_bshd: torch.Tensor, *, seq_layout: str, group: Any = None) -> torch.Tensor:
    """The inverse of `seq_to_heads`: (b, S, h/P, d) → (b, S/P, h, d) this rank's shard."""
    _, world = _world(group)
    b, s, hp, d = x_bshd.shape
    if seq_layout != "contiguous":
        x_bshd = x_bshd.index_select(1, _concat_order(s, seq_layout, world).to(x_bshd.device))
    send = x_bshd.reshape(b, world, s // world, hp, d).permute(1, 0, 2, 3, 4)
    recv = _AllToAll.apply(send, group)  # chunk j: heads of rank j for our sequence shard
    return recv.permute(1, 2, 0, 3, 4).reshape(b, s // world, world * hp, d)


def split_reason(num_heads: int, num_kv_heads: int, world_size: int) -> str | None:
    """Why heads cannot be split over `world_size` ranks (Ulysses' constraint), or None."""
    if num_heads % world_size:
        return (f"num_heads {num_heads} is not a multiple of world_size {world_size} (Ulysses "
                "splits heads over ranks)")  # fmt: skip
    if num_kv_heads % world_size:
        return (f"num_kv_heads {num_kv_heads} is not a multiple of world_size {world_size} "
                "(Ulysses splits kv heads too; GQA/MQA with fewer kv heads than ranks would need "
                "them replicated, which is not implemented)")  # fmt: skip
    return None


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                      seq_layout: str = "contiguous", mask: MaskSpec | None = None,
                      softmax_scale: float | None = None, block_size: int | None = None,
                      group: Any = None, seq_len: int | None = None) -> torch.Tensor:  # fmt: skip
    """Attention of this rank's sequence shard over the whole sequence, by head all-to-all.

    q: (batch, S/P, num_heads, head_dim); k: (batch, S/P, num_kv_heads, head_dim); v: (batch, S/P,
    num_kv_heads, head_dim_v), each this rank's part laid out by `shard_sequence(x,
    seq_layout=seq_layout, rank=rank, world_size=P, dim=1)`. Returns (batch, S/P, num_heads,
    head_dim_v) in the same layout. `causal` is bottom-right aligned (the same as top-left here:
    seqlen_q = seqlen_k); `mask` any `harness.masks.MaskSpec` over the global positions;
    `block_size` is the local blockwise kernel's. Without a process group (or a group of one) it is
    the blockwise kernel on one device. `seq_len`: the true global length S when `shard_sequence`
    padded the sequence (S not a multiple of what the layout splits): the padding is dropped before
    attention, so it is never attended, and padded rows come back as zeros (as `ring_attention`
    does); without it every position is real. ValueError: unknown seq_layout, bad shapes, heads that
    do not divide by P (`split_reason`), or a seq_len outside 1..padded length.
    """
    if seq_layout not in LAYOUTS:
        raise ValueError(f"unknown seq_layout {seq_layout!r}; allowed: {', '.join(LAYOUTS)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
        shapes = f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        raise ValueError(f"q, k, v must be (batch, local_seq, heads, head_dim) with k and v "
                         f"alike; got {shapes}")  # fmt: skip
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q and k must share (batch, local_seq); got {tuple(q.shape[:2])} and "
                         f"{tuple(k.shape[:2])}")  # fmt: skip
    _, world = _world(group)
    reason = split_reason(q.shape[2], k.shape[2], world)
    if reason:
        raise ValueError(reason)
    padded = q.shape[1] * world
    if seq_len is not None and not 1 <= seq_len <= padded:
        raise ValueError(f"seq_len {seq_len} is outside 1..{padded} (the shards' total length)")
    if world > 1:
        q, k, v = (seq_to_heads(t, seq_layout=seq_layout, group=group) for t in (q, k, v))
    real = padded if seq_len is None else seq_len  # global order now: the padding is the tail
    q, k, v = (t[:, :real] for t in (q, k, v))
    out_bhsd = bpt_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             causal=causal, block_size=block_size, mask=mask,
                             softmax_scale=softmax_scale)  # fmt: skip
    out = out_bhsd.transpose(1, 2)
    if real < padded:  # padded rows: zeros, as ring_attention gives them
        out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, padded - real))
    if world > 1:
        out = heads_to_seq(out, seq_layout=seq_layout, group=group)
    return out


# --- the harness's hooks (the same sharding as the ring, so both run on the same cases) ---


def _shard(x: torch.Tensor, case: Any, rank: int, world_size: int) -> torch.Tensor:
    return shard_sequence(x, seq_layout=case.seq_layout, rank=rank, world_size=world_size, dim=1)


def _gather(parts: list[torch.Tensor], case: Any) -> torch.Tensor:
    return gather_sequence(parts, seq_layout=case.seq_layout, dim=1)


def _replay(sent: list[int], device: str) -> Callable[[], None]:
    """The recorded all-to-alls again (same sizes, same order), with nothing to compute."""
    world = dist.get_world_size()
    sizes = [n * world // (world - 1) for n in sent]  # `sent` counts what leaves the rank
    bufs = [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes]

    def replay() -> None:
        for buf in bufs:
            all_to_all(buf)

    return replay


def _forward_kwargs(case: Any) -> dict[str, Any]:
    return {"seq_layout": case.seq_layout}


def _row_fields(case: Any, world_size: int) -> dict[str, Any]:
    # every rank computes the whole (masked) pattern of H/P heads: balanced by construction
    return {"load_imbalance": 1.0}


ULYSSES_HOOKS = DistributedHooks(shard=_shard, gather=_gather, observe=observe, replay=_replay,
                                 forward_kwargs=_forward_kwargs,
                                 row_fields=_row_fields)  # fmt: skip


def _available(device: str) -> Availability:
    if not dist.is_available():
        return Availability.no("this torch build has no torch.distributed")
    return Availability.yes()


def _unsupported(case: Any, device: str) -> list[str]:
    reasons = [unsupported_reason(case.seq_len, case.seq_layout, case.world_size),
               split_reason(case.num_heads, case.kv_heads, case.world_size)]  # fmt: skip
    return [r for r in reasons if r]


def _forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *, causal: bool,
             block_size: int | None = None, seq_layout: str = "contiguous",
             mask: MaskSpec | None = None, softmax_scale: float | None = None,
             group: Any = None) -> torch.Tensor:  # fmt: skip
    """The registry's signature (see `ulysses_attention`)."""
    return ulysses_attention(q_bshd, k_bshd, v_bshd, causal=causal, seq_layout=seq_layout,
                             mask=mask, softmax_scale=softmax_scale, block_size=block_size,
                             group=group)  # fmt: skip


ULYSSES = register(Impl(name="ulysses", label="Ulysses (all-to-all)", forward=_forward,
                        layout="bshd", needs_process_group=True, available=_available,
                        unsupported=_unsupported, tags=("distributed",), memory_exponent=1,
                        uses_block_size=True, distributed=ULYSSES_HOOKS,
                        features=frozenset({"gqa", "head_dim_v", "softmax_scale"}),
                        mask_kinds=MASK_KINDS,
                        api={"ulysses_attention": ulysses_attention}))  # fmt: skip
