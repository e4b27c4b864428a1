"""Sequence layouts of ring attention: which global positions each rank holds, and what it computes.

contiguous: rank r holds positions [r·n, (r+1)·n) (n = S/P); causal work is load-imbalanced.
striped (Brandon et al., arXiv 2311.09431): rank r holds positions r, r+P, r+2P, ...
zigzag (as in zhuzilin/ring-flash-attention): the sequence is cut into 2P chunks and rank r holds
chunks r and 2P-1-r, so every rank gets one early and one late chunk.

`plan(...)` says, for the rank's queries and the K/V block that came from a source rank, which
(query slice, key slice, mask) pieces to compute: `full`, `causal` (top-left, key j <= query i) or
`strict` (key j < query i, given as the causal mask on already shifted slices q[1:], k[:-1]).
Pieces never overlap, and their union is exactly the causal pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LAYOUTS = ("contiguous", "striped", "zigzag")
Mask = Literal["full", "causal", "strict"]


@dataclass(frozen=True)
class Piece:
    q: slice
    kv: slice
    mask: Mask

    def pairs(self, local_len: int) -> int:
        """Attended (query, key) pairs; causal and strict pieces are square and causal-masked."""
        nq = len(range(*self.q.indices(local_len)))
        nk = len(range(*self.kv.indices(local_len)))
        return nq * nk if self.mask == "full" else nq * (nq + 1) // 2


def _check_layout(seq_layout: str) -> None:
    if seq_layout not in LAYOUTS:
        raise ValueError(f"unknown seq_layout {seq_layout!r}; allowed: {', '.join(LAYOUTS)}")


def divisor(seq_layout: str, world_size: int) -> int:
    """The sequence length must be a multiple of this for `seq_layout` on `world_size` ranks."""
    _check_layout(seq_layout)
    return 2 * world_size if seq_layout == "zigzag" and world_size > 1 else world_size


def unsupported_reason(seq_len: int, seq_layout: str, world_size: int) -> str | None:
    d = divisor(seq_layout, world_size)
    if seq_len % d:
        return (f"seq_len {seq_len} is not a multiple of {d} (seq_layout {seq_layout!r} on "
                f"{world_size} ranks); padding is not implemented")  # fmt: skip
    return None


def positions(seq_len: int, *, seq_layout: str, rank: int, world_size: int) -> torch.Tensor:
    """Global sequence positions held by `rank`, in local order."""
    reason = unsupported_reason(seq_len, seq_layout, world_size)
    if reason:
        raise ValueError(reason)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    n = seq_len // world_size
    if seq_layout == "contiguous" or world_size == 1:
        return torch.arange(rank * n, (rank + 1) * n)
    if seq_layout == "striped":
        return torch.arange(rank, seq_len, world_size)
    c = n // 2
    first = torch.arange(rank * c, (rank + 1) * c)
    last = (2 * world_size - 1 - rank) * c
    return torch.cat([first, torch.arange(last, last + c)])


def shard_sequence(x: torch.Tensor, *, seq_layout: str, rank: int, world_size: int,
                   dim: int = 1) -> torch.Tensor:  # fmt: skip
    """This rank's part of `x` along `dim` (a contiguous copy)."""
    idx = positions(x.shape[dim], seq_layout=seq_layout, rank=rank, world_size=world_size)
    return x.index_select(dim, idx.to(x.device)).contiguous()


def gather_sequence(shards: list[torch.Tensor], *, seq_layout: str, dim: int = 1) -> torch.Tensor:
    """The inverse of `shard_sequence`: the full tensor from every rank's shard, in rank order."""
    world_size = len(shards)
    seq_len = sum(s.shape[dim] for s in shards)
    stacked = torch.cat(shards, dim=dim)
    order = torch.cat([positions(seq_len, seq_layout=seq_layout, rank=r, world_size=world_size)
                       for r in range(world_size)])  # fmt: skip
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(seq_len)
    return stacked.index_select(dim, inverse.to(stacked.device))


_ALL = slice(None)


def plan(seq_layout: str, *, rank: int, source: int, world_size: int, local_len: int,
         causal: bool) -> list[Piece]:  # fmt: skip
    """Pieces of work for this rank's queries against the K/V block held by rank `source`."""
    _check_layout(seq_layout)
    if not causal:
        return [Piece(_ALL, _ALL, "full")]
    if source == rank:
        return [Piece(_ALL, _ALL, "causal")]
    if world_size == 1 or seq_layout == "contiguous":
        return [Piece(_ALL, _ALL, "full")] if source < rank else []
    if seq_layout == "striped":
        if source < rank:
            return [Piece(_ALL, _ALL, "causal")]
        # key j of a later rank sits after query j: strictly earlier keys only (row 0 sees none)
        return [Piece(slice(1, None), slice(0, local_len - 1), "strict")] if local_len > 1 else []
    half = local_len // 2
    if source < rank:
        return [Piece(_ALL, slice(0, half), "full")]
    return [Piece(slice(half, None), _ALL, "full")]


def attended_pairs(seq_layout: str, *, rank: int, world_size: int, local_len: int,
                   causal: bool) -> int:  # fmt: skip
    """Every (query, key) pair `rank` computes over the whole ring."""
    return sum(p.pairs(local_len) for s in range(world_size)
               for p in plan(seq_layout, rank=rank, source=s, world_size=world_size,
                             local_len=local_len, causal=causal))  # fmt: skip


def load_imbalance(seq_layout: str, *, world_size: int, local_len: int, causal: bool) -> float:
    """Max over ranks of attended pairs ÷ the mean (1.0 is perfectly balanced)."""
    pairs = [attended_pairs(seq_layout, rank=r, world_size=world_size, local_len=local_len,
                            causal=causal) for r in range(world_size)]  # fmt: skip
    mean = sum(pairs) / len(pairs)
    return max(pairs) / mean if mean else 1.0
