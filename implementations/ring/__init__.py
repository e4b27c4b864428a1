"""Ring attention (arXiv 2310.01889): sequence layouts, ring exchange, and the attention itself.

Registers `ring`: it runs on the process group the harness starts for a case's `world_size` (one
rank, no communication, at world_size 1) and takes inputs already sharded by the case's seq_layout
(any length: `shard_sequence` pads, `seq_len` masks the padding). Declares GQA/MQA (k, v travel
with num_kv_heads heads), head_dim_v and softmax_scale; seqlen_q != seqlen_k is declared
unsupported (each rank's queries and keys are the same positions of one sequence).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.registry import Availability, Impl, register
from implementations.ring.hooks import RING_HOOKS
from implementations.ring.ring_attention import ring_attention
from implementations.ring.seq_layouts import gather_sequence, shard_sequence

__all__ = ["RING", "gather_sequence", "ring_attention", "shard_sequence"]


def _available(device: str) -> Availability:
    import torch.distributed as dist

    if not dist.is_available():
        return Availability.no("this torch build has no torch.distributed")
    return Availability.yes()


def _forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *, causal: bool,
             block_size: int | None = None, seq_layout: str = "contiguous", group: Any = None,
             seq_len: int | None = None,
             softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    """The registry's signature; each local block is one fused kernel call (block_size unused)."""
    return ring_attention(q_bshd, k_bshd, v_bshd, causal=causal, seq_layout=seq_layout,
                          group=group, seq_len=seq_len, softmax_scale=softmax_scale)  # fmt: skip


RING = register(Impl(name="ring", label="Ring attention", forward=_forward, layout="bshd",
                     needs_process_group=True, available=_available,
                     tags=("distributed",), memory_exponent=1,
                     features=frozenset({"gqa", "head_dim_v", "softmax_scale"}),
                     distributed=RING_HOOKS,
                     api={"ring_attention": ring_attention, "shard_sequence": shard_sequence,
                          "gather_sequence": gather_sequence}))  # fmt: skip
