"""Sequence layouts of ring attention: which global positions each rank holds, and what it computes.

contiguous: rank r holds positions [r·n, (r+1)·n) (n = S/P); causal work is load-imbalanced.
striped (Brandon et al., arXiv 2311.09431): rank r holds positions r, r+P, r+2P, ...
zigzag (as in zhuzilin/ring-flash-attention): the sequence is cut into 2P chunks and rank r holds
chunks r and 2P-1-r, so every rank gets one early and one late chunk.

`plan(...)` says, for the rank's queries and the K/V block that came from a source rank, which
(query slice, key slice, mask) pieces to compute: `full`, `causal` (top-left, key j <= query i) or
`strict` (key j < query i, given as the causal mask on already shifted slices q[1:], k[:-1]).
Pieces never overlap, and their union is exactly the causal pattern.

Any length runs: a sequence the layout cannot split evenly (S not a multiple of `divisor`) is
padded at its end up to `padded_len` (zeros), so every rank holds the same number of positions.
Each layout keeps a rank's positions in increasing order, so the real (unpadded) ones are a prefix
of its local block (`valid_len`); `plan(..., seq_len=S)` clips every piece to those prefixes, so
padded keys are never attended and padded query rows are never computed (output and gradients 0
there), and `gather_sequence(..., seq_len=S)` drops them again.
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


def padded_len(seq_len: int, seq_layout: str, world_size: int) -> int:
    """`seq_len` rounded up to a multiple of `divisor(seq_layout, world_size)`."""
    d = divisor(seq_layout, world_size)
    return -(-seq_len // d) * d


def valid_len(seq_len: int, *, seq_layout: str, rank: int, world_size: int) -> int:
    """How many of `rank`'s local positions are real (< seq_len): a prefix of its block."""
    held = positions(padded_len(seq_len, seq_layout, world_size), seq_layout=seq_layout,
                     rank=rank, world_size=world_size)  # fmt: skip
    return int((held < seq_len).sum())


def unsupported_reason(seq_len: int, seq_layout: str, world_size: int) -> str | None:
    """Why `seq_len` cannot be split without padding (None if it can), for callers that do
    not pad (ring itself pads, see `shard_sequence`)."""
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
    """This rank's part of `x` along `dim` (a contiguous copy), x.shape[dim] = S any length >= 1.

    Every rank's part has `padded_len(S, seq_layout, world_size) // world_size` positions: when S
    does not split evenly the sequence is padded at its end with zeros first (pass
    `seq_len=S` to `ring_attention` and `gather_sequence` so they mask and drop the padding).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    seq_len = x.shape[dim]
    if seq_len < 1:
        raise ValueError(f"shard_sequence needs a sequence of length >= 1 along dim {dim}")
    padded = padded_len(seq_len, seq_layout, world_size)
    idx = positions(padded, seq_layout=seq_layout, rank=rank, world_size=world_size)
    real = idx[idx < seq_len].to(x.device)
    part = x.index_select(dim, real).contiguous()
    if len(real) == len(idx):
        return part
    shape = list(part.shape)
    shape[dim] = len(idx) - len(real)  # the padding is a suffix of every rank's block
    return torch.cat([part, part.new_zeros(shape)], dim=dim)


def gather_sequence(shards: list[torch.Tensor], *, seq_layout: str, dim: int = 1,
                    seq_len: int | None = None) -> torch.Tensor:  # fmt: skip
    """The inverse of `shard_sequence`: the full tensor from every rank's shard, in rank order.

    seq_len: the unpadded length S (None: no padding, S = the shards' total length); ValueError
    if the shards' lengths differ or are not what S pads to.
    """
    world_size = len(shards)
    lengths = [s.shape[dim] for s in shards]
    padded = sum(lengths)
    seq_len = padded if seq_len is None else seq_len
    if len(set(lengths)) > 1 or padded_len(seq_len, seq_layout, world_size) != padded:
        raise ValueError(f"shards of lengths {lengths} are not seq_len {seq_len} split by "
                         f"seq_layout {seq_layout!r} over {world_size} ranks")  # fmt: skip
    stacked = torch.cat(shards, dim=dim)
    order = torch.cat([positions(padded, seq_layout=seq_layout, rank=r, world_size=world_size)
                       for r in range(world_size)])  # fmt: skip
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(padded)
    return stacked.index_select(dim, inverse[:seq_len].to(stacked.device))


_ALL = slice(None)


def plan(seq_layout: str, *, rank: int, source: int, world_size: int, local_len: int,
         causal: bool, seq_len: int | None = None) -> list[Piece]:  # fmt: skip
    """Pieces of work for this rank's queries against the K/V block held by rank `source`.

    seq_len: the unpadded global length when the blocks carry padding (see `shard_sequence`):
    every piece is then clipped to the real queries of `rank` and the real keys of `source`.
    """
    pieces = _plan(seq_layout, rank=rank, source=source, world_size=world_size,
                   local_len=local_len, causal=causal)  # fmt: skip
    if seq_len is None or seq_len == local_len * world_size:
        return pieces
    nq = valid_len(seq_len, seq_layout=seq_layout, rank=rank, world_size=world_size)
    nk = valid_len(seq_len, seq_layout=seq_layout, rank=source, world_size=world_size)
    clipped = (_clip(p, local_len, nq, nk) for p in pieces)
    return [p for p in clipped if p is not None]


def _clip(piece: Piece, local_len: int, nq: int, nk: int) -> Piece | None:
    """`piece` on the first nq queries and nk keys; None if nothing is left."""
    q0, q1, _ = piece.q.indices(local_len)
    k0, k1, _ = piece.kv.indices(local_len)
    q1 = min(q1, nq)
    # a diagonal piece pairs query q0 + i with key k0 + i: keep it square on the real queries
    # (the keys they see are real: padding sits after every real position)
    k1 = min(k1, nk) if piece.mask == "full" else k0 + max(0, q1 - q0)
    if q1 <= q0 or k1 <= k0:
        return None
    return Piece(slice(q0, q1), slice(k0, k1), piece.mask)


def _plan(seq_layout: str, *, rank: int, source: int, world_size: int, local_len: int,
          causal: bool) -> list[Piece]:  # fmt: skip
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
