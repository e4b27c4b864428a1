"""How the harness runs `ring` on P ranks: shard by the case's sequence layout, gather, observe the
ring exchanges, replay them without compute, and the layout's causal load imbalance as a row field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.hooks import CommObserver, DistributedHooks
from implementations.ring.ring_exchange import Ring, observe
from implementations.ring.seq_layouts import (
    gather_sequence,
    load_imbalance,
    padded_len,
    plan,
    shard_sequence,
)


def _shard(x: torch.Tensor, case: Any, rank: int, world_size: int) -> torch.Tensor:
    return shard_sequence(x, seq_layout=case.seq_layout, rank=rank, world_size=world_size, dim=1)


def _gather(parts: list[torch.Tensor], case: Any) -> torch.Tensor:
    # drop the padding `shard_sequence` added for a length the layout cannot split
    return gather_sequence(parts, seq_layout=case.seq_layout, dim=1, seq_len=case.sk)


def _observe(observer: CommObserver) -> Any:
    return observe(observer)


def _replay(sent: list[int], device: str) -> Callable[[], None]:
    """The recorded exchanges again (same sizes, same order), with nothing to compute."""
    ring = Ring()
    bufs = [(torch.empty(n, dtype=torch.uint8, device=device),
             torch.empty(n, dtype=torch.uint8, device=device)) for n in sent]  # fmt: skip

    def replay() -> None:
        for out, into in bufs:
            ring.start([out], [into]).wait()

    return replay


def _forward_kwargs(case: Any) -> dict[str, Any]:
    return {"seq_layout": case.seq_layout, "seq_len": case.sk}


def _row_fields(case: Any, world_size: int) -> dict[str, Any]:
    local_len = padded_len(case.sk, case.seq_layout, world_size) // world_size
    return {"load_imbalance": load_imbalance(case.seq_layout, world_size=world_size,
                                             local_len=local_len,
                                             causal=case.causal)}  # fmt: skip


RING_HOOKS = DistributedHooks(shard=_shard, gather=_gather, observe=_observe, replay=_replay,
                              forward_kwargs=_forward_kwargs, row_fields=_row_fields,
                              schedule=plan)  # fmt: skip
