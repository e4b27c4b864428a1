"""Ring attention (arXiv 2310.01889): sequence layouts, ring exchange, and the attention itself.

Registers `ring`: it runs on the process group the harness starts for a case's `world_size` (one
rank, no communication, at world_size 1) and takes inputs already sharded by the case's seq_layout.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.registry import Availability, Impl, register
from implementations.ring.hooks import RING_HOOKS
from implementations.ring.ring_attention import ring_attention
from implementations.ring.seq_layouts import gather_sequence, shard_sequence, unsupported_reason

__all__ = ["RING", "gather_sequence", "ring_attention", "shard_sequence"]


def _available(device: str) -> Availability:
    import torch.distributed as dist

    if not dist.is_available():
        return Availability.no("this torch build has no torch.distributed")
    return Availability.yes()


def _unsupported(case: Any, device: str) -> list[str]:
    reason = unsupported_reason(case.seq_len, case.seq_layout, case.world_size)
    return [reason] if reason else []


def _forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *, causal: bool,
             block_size: int | None = None, seq_layout: str = "contiguous",
             group: Any = None) -> torch.Tensor:  # fmt: skip
    """The registry's signature; each local block is one fused kernel call (block_size unused)."""
    return ring_attention(q_bshd, k_bshd, v_bshd, causal=causal, seq_layout=seq_layout, group=group)


RING = register(Impl(name="ring", label="Ring attention", forward=_forward, layout="bshd",
                     needs_process_group=True, available=_available,
                     unsupported=_unsupported, tags=("distributed",), memory_exponent=1,
                     distributed=RING_HOOKS,
                     api={"ring_attention": ring_attention, "shard_sequence": shard_sequence,
                          "gather_sequence": gather_sequence}))  # fmt: skip
