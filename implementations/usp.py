"""Unified sequence parallelism, USP (Fang & Zhao, arXiv 2405.07719): our Ulysses × our ring.

The P ranks form a ulysses_degree × ring_degree grid. Ulysses groups are runs of consecutive
ranks [i·u, (i+1)·u); ring groups take one rank of each, {j, j+u, j+2u, ...}. With contiguous
shards, an all-to-all inside Ulysses group i gives each of its ranks the contiguous chunk i
(length S/ring_degree) of H/u heads, exactly what ring attention over the ring group (where that
rank has group rank i) expects; a last all-to-all returns the output to sequence shards.
Why: Ulysses alone needs num_heads % P == 0 and its all-to-all spans all P ranks; the ring alone
moves all of K/V P-1 times. USP takes as much Ulysses as the heads allow (here: the largest divisor
u of P dividing num_heads and num_kv_heads) and rings the rest (`usp_degrees`, row fields).

Layouts: contiguous; striped and zigzag only without the causal mask (the order of keys then does
not matter). Masks: none and causal, as the ring. Layout of q, k, v, out as `ulysses_attention`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.distributed as dist

from harness.hooks import DistributedHooks
from harness.registry import Availability, Impl, register
from implementations.ring import ring_exchange
from implementations.ring.ring_attention import ring_attention
from implementations.ring.seq_layouts import unsupported_reason
from implementations.ulysses import ULYSSES_HOOKS, all_to_all, heads_to_seq, seq_to_heads
from implementations.ulysses import observe as observe_all_to_all


def usp_degrees(world_size: int, num_heads: int, num_kv_heads: int) -> tuple[int, int]:
    """(ulysses_degree, ring_degree): the most Ulysses the heads allow, the rest ring."""
    u = max(d for d in range(1, world_size + 1)
            if world_size % d == 0 and num_heads % d == 0 and num_kv_heads % d == 0)  # fmt: skip
    return u, world_size // u


_groups: dict[tuple[int, int], tuple[Any, Any]] = {}


def usp_groups(ulysses_degree: int) -> tuple[Any, Any]:
    """(this rank's Ulysses group, its ring group) of the default group, made once per process.

    `dist.new_group` is collective: every rank creates every group, in the same order."""
    world, rank = dist.get_world_size(), dist.get_rank()
    key = (world, ulysses_degree)
    if key not in _groups:
        mine: list[Any] = [None, None]
        for i in range(world // ulysses_degree):
            ranks = list(range(i * ulysses_degree, (i + 1) * ulysses_degree))
            group = dist.new_group(ranks)
            mine[0] = group if rank in ranks else mine[0]
        for j in range(ulysses_degree):
            ranks = list(range(j, world, ulysses_degree))
            group = dist.new_group(ranks)
            mine[1] = group if rank in ranks else mine[1]
        _groups[key] = (mine[0], mine[1])
    return _groups[key]


def usp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  seq_layout: str = "contiguous", softmax_scale: float | None = None,
                  ulysses_degree: int | None = None, seq_len: int | None = None,
                  ) -> torch.Tensor:  # fmt: skip
    """Attention of this rank's shard by Ulysses inside groups of `ulysses_degree` ranks and the
    ring across them (default degree: `usp_degrees`). Shapes as `ulysses_attention`; the default
    process group (none: one device). The shards must not be padded: pass `seq_len` (the global
    length) and a length that `shard_sequence` had to pad is refused. ValueError for a padded
    length, a causal striped/zigzag layout or a degree that does not divide P and the heads."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if seq_len is not None and seq_len != q.shape[1] * world:
        raise ValueError(
            f"usp_attention takes unpadded shards: seq_len {seq_len} != {world} "
            f"ranks × {q.shape[1]} local positions; use ring_attention or "
            "ulysses_attention with seq_len for lengths that need padding"
        )
    if causal and seq_layout != "contiguous":
        raise ValueError(f"usp takes seq_layout 'contiguous' for causal attention; got "
                         f"{seq_layout!r}")  # fmt: skip
    u = usp_degrees(world, q.shape[2], k.shape[2])[0] if ulysses_degree is None else ulysses_degree
    if world % u or q.shape[2] % u or k.shape[2] % u:
        raise ValueError(f"ulysses_degree {u} must divide world_size {world}, num_heads "
                         f"{q.shape[2]} and num_kv_heads {k.shape[2]}")  # fmt: skip
    if world == 1:
        return ring_attention(q, k, v, causal=causal, seq_layout="contiguous",
                              softmax_scale=softmax_scale)  # fmt: skip
    ulysses_group, ring_group = usp_groups(u)
    _last_degree[0] = u
    if u > 1:
        q, k, v = (seq_to_heads(t, seq_layout="contiguous", group=ulysses_group)
                   for t in (q, k, v))  # fmt: skip
    out = ring_attention(q, k, v, causal=causal, seq_layout="contiguous", group=ring_group,
                         softmax_scale=softmax_scale)  # fmt: skip
    if u > 1:
        out = heads_to_seq(out, seq_layout="contiguous", group=ulysses_group)
    return out


# --- hooks: the same shards as ring and ulysses; both kinds of exchange observed and replayed ---

_kinds: list[str] = []  # the kind of each exchange of the last observed call, in order
_last_degree = [1]  # the ulysses_degree of the last call on this rank (what replay repeats)


class _Tagged:
    def __init__(self, observer: Any, kind: str):
        self.observer, self.kind = observer, kind

    def started(self, nbytes: int) -> None:
        _kinds.append(self.kind)
        self.observer.started(nbytes)

    def wait(self, waits: Callable[[], None]) -> None:
        self.observer.wait(waits)


@contextmanager
def _observe(observer: Any) -> Iterator[Any]:
    _kinds.clear()
    with ExitStack() as stack:
        stack.enter_context(ring_exchange.observe(_Tagged(observer, "ring")))
        stack.enter_context(observe_all_to_all(_Tagged(observer, "all_to_all")))
        yield observer


def _unsupported(case: Any, device: str) -> list[str]:
    reasons = []
    if case.causal and case.world_size > 1 and case.seq_layout != "contiguous":
        reasons.append(f"usp takes seq_layout 'contiguous' for causal attention; got "
                       f"{case.seq_layout!r}")  # fmt: skip
    reason = unsupported_reason(case.seq_len, case.seq_layout, case.world_size)
    return reasons + ([reason] if reason else [])


def _row_fields(case: Any, world_size: int) -> dict[str, Any]:
    u, r = usp_degrees(world_size, case.num_heads, case.kv_heads)
    return {"ulysses_degree": u, "ring_degree": r}


def _forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *, causal: bool,
             block_size: int | None = None, seq_layout: str = "contiguous",
             softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    """The registry's signature (see `usp_attention`); block_size unused, as the ring's."""
    return usp_attention(q_bshd, k_bshd, v_bshd, causal=causal, seq_layout=seq_layout,
                         softmax_scale=softmax_scale)  # fmt: skip


def _replay(sent: list[int], device: str) -> Callable[[], None]:
    """The exchanges of the call just observed on this rank, by kind, with nothing to compute."""
    ulysses_group, ring_group = usp_groups(_last_degree[0])
    ring = ring_exchange.Ring(ring_group)
    u = _last_degree[0]
    steps: list[Callable[[], None]] = []
    for kind, n in zip(_kinds, sent, strict=True):
        if kind == "ring":
            out, into = (torch.empty(n, dtype=torch.uint8, device=device) for _ in range(2))
            steps.append(lambda o=out, i=into: ring.start([o], [i]).wait())
        else:  # `sent` counts what leaves the rank: (u-1)/u of the buffer
            buf = torch.empty(n * u // (u - 1), dtype=torch.uint8, device=device)
            steps.append(lambda b=buf: all_to_all(b, ulysses_group))

    def replay() -> None:
        for step in steps:
            step()

    return replay


USP_HOOKS = DistributedHooks(shard=ULYSSES_HOOKS.shard, gather=ULYSSES_HOOKS.gather,
                             observe=_observe, replay=_replay,
                             forward_kwargs=ULYSSES_HOOKS.forward_kwargs,
                             row_fields=_row_fields)  # fmt: skip


def _available(device: str) -> Availability:
    if not dist.is_available():
        return Availability.no("this torch build has no torch.distributed")
    return Availability.yes()


USP = register(Impl(name="usp", label="USP (Ulysses × ring)", forward=_forward, layout="bshd",
                    needs_process_group=True, available=_available, unsupported=_unsupported,
                    tags=("distributed",), memory_exponent=1, distributed=USP_HOOKS,
                    features=frozenset({"gqa", "softmax_scale"}),
                    api={"usp_attention": usp_attention}))  # fmt: skip
