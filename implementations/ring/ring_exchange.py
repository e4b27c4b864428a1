"""Ring exchange over a torch.distributed group: send to the next rank, receive from the previous.

Every exchange is one `batch_isend_irecv` of point-to-point ops (coalesced on NCCL), started before
the caller computes on the block in hand and waited on afterwards, so the transfer overlaps compute.
Sends and receives are listed in the same order on every rank, so peers match them pairwise.

An optional observer (set by the harness with `observe`) is told the bytes each exchange sends and
runs the waits, so the harness can time exposed communication; this module never times anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.distributed as dist


class Observer(Protocol):
    def started(self, nbytes: int) -> None: ...

    def wait(self, waits: Callable[[], None]) -> None: ...


_observer: Observer | None = None


@contextmanager
def observe(observer: Observer) -> Iterator[Observer]:
    """Report every exchange started inside the block to `observer`."""
    global _observer
    saved, _observer = _observer, observer
    try:
        yield observer
    finally:
        _observer = saved


class Pending:
    """Requests of one started exchange."""

    def __init__(self, requests: list[Any]):
        self._requests = requests

    def wait(self) -> None:
        def waits() -> None:
            for request in self._requests:
                request.wait()

        if _observer is None:
            waits()
        else:
            _observer.wait(waits)


class Ring:
    """This rank's neighbours in `group` (None: the default group)."""

    def __init__(self, group: Any = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        to_global = (lambda r: r) if group is None else (
            lambda r: dist.get_global_rank(group, r))  # fmt: skip
        self.next_rank = to_global((self.rank + 1) % self.world_size)
        self.prev_rank = to_global((self.rank - 1) % self.world_size)

    def start(self, sends: list[torch.Tensor], recvs: list[torch.Tensor]) -> Pending:
        """Send `sends` to the next rank and receive `recvs` (filled in place) from the previous."""
        ops = [dist.P2POp(dist.isend, t, self.next_rank, self.group) for t in sends]
        ops += [dist.P2POp(dist.irecv, t, self.prev_rank, self.group) for t in recvs]
        if _observer is not None:
            _observer.started(sum(t.numel() * t.element_size() for t in sends))
        return Pending(dist.batch_isend_irecv(ops) if ops else [])
