"""The contract of an implementation that runs on P ranks of a process group the harness starts.

The harness owns the process group, the timing and the row; the implementation brings what only it
knows: how a full (batch, seq, ...) tensor is split over ranks and put back together, the extra
keyword arguments of its `forward`, how to watch its exchanges, how to replay them without compute,
and any row fields of its own (ring: load imbalance of its sequence layout). `harness/` reaches
these through `Impl.distributed` and never imports an implementation by name.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


class CommObserver(Protocol):
    """What an implementation tells the harness about each exchange of one observed call."""

    def started(self, nbytes: int) -> None:
        """An exchange that sends `nbytes` from this rank was started."""

    def wait(self, waits: Callable[[], None]) -> None:
        """Run `waits` (the blocking part of an exchange); the harness times it."""


def _no_extra(case: Any) -> dict[str, Any]:
    return {}


def _no_fields(case: Any, world_size: int) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class DistributedHooks:
    """Hooks of a distributed implementation (tensors are torch tensors; case is a `Case`).

    shard(x, case, rank, world_size) -> this rank's part of x (sequence on dim 1).
    gather(parts, case) -> the full tensor from every rank's part, in rank order (inverse of shard).
    forward_kwargs(case) -> extra keyword arguments for `Impl.forward` (e.g. the sequence layout).
    observe(observer) -> a context manager inside which every exchange is reported to `observer`.
    replay(sent, device) -> a callable that repeats exchanges of the given byte sizes without
        compute (the communication time if none of it were hidden).
    row_fields(case, world_size) -> extra row fields (must be JSON-serialisable).
    schedule(seq_layout, *, rank, source, world_size, local_len, causal) -> the pieces of work
        `rank` does on the block that `source` holds, each with `.pairs(local_len)` and `.mask`
        ("full" or a diagonal kind); the analytic model (harness/model/) reads it. Optional.
    """

    shard: Callable[[Any, Any, int, int], Any]
    gather: Callable[[list[Any], Any], Any]
    observe: Callable[[CommObserver], AbstractContextManager[Any]]
    replay: Callable[[list[int], str], Callable[[], None]]
    forward_kwargs: Callable[[Any], dict[str, Any]] = field(default=_no_extra)
    row_fields: Callable[[Any, int], dict[str, Any]] = field(default=_no_fields)
    schedule: Callable[..., list[Any]] | None = None
