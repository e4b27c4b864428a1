"""The KV cache a decode step reads: contiguous or paged, with per-sequence lengths.

The decode workload's implementations take `forward(q_bshd, cache: KVCache, *, softmax_scale=None)
-> out_bshd`: q (batch, seqlen_q, num_heads, head_dim) are the newest seqlen_q tokens of each
sequence, already written into the cache; sequence b's cache holds `seqlens[b]` tokens at key
positions 0 .. seqlens[b] - 1, and its query i sits at position seqlens[b] - seqlen_q + i
(bottom-right causal among the new tokens, as flash-attn's `flash_attn_with_kvcache`). The output
is (batch, seqlen_q, num_heads, head_dim_v); query head h reads kv head h // (num_heads //
num_kv_heads).

Layouts (the field's conventions: vLLM's paged attention, arXiv 2309.06180; flash-attn's
`block_table`; FlashInfer's page table):
    contiguous  k (batch, max_len, num_kv_heads, head_dim), v (..., head_dim_v); rows past a
                sequence's length are not part of it.
    paged       k (num_pages, page_size, num_kv_heads, head_dim), v likewise: a pool of pages;
                `block_table` (batch, pages_per_seq) int32 names the pages of each sequence in
                order; entries past a sequence's last page are ignored (-1, or anything).
Slots outside every sequence (rows past a length, unused pages, the tail of a last page) must
hold finite values, as a zero-initialised or previously used cache does: the kernels that skip
them (flash-attn, FlashInfer) would not mind NaN there, but every torch path here multiplies
them by a zero probability, and 0 · NaN is NaN. The harness's caches (`make_cache`) are finite
everywhere.
`check()` raises ValueError for a block table that points outside the pool or lengths beyond a
sequence's capacity, naming the first bad entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Legend: *_bshd (batch, seq, heads, head_dim); pool_pphd (num_pages, page_size, heads, head_dim).


@dataclass
class KVCache:
    k: torch.Tensor
    v: torch.Tensor
    seqlens: torch.Tensor  # (batch,) int32: tokens in each sequence's cache, new ones included
    block_table: torch.Tensor | None = None  # (batch, pages_per_seq) int32; None: contiguous
    page_size: int | None = None

    @property
    def paged(self) -> bool:
        return self.block_table is not None

    @property
    def batch(self) -> int:
        return int(self.seqlens.shape[0])

    @property
    def num_kv_heads(self) -> int:
        return int(self.k.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.k.shape[3])

    @property
    def head_dim_v(self) -> int:
        return int(self.v.shape[3])

    @property
    def capacity(self) -> int:
        """Tokens one sequence can hold: max_len, or pages_per_seq × page_size."""
        if self.block_table is None:
            return int(self.k.shape[1])
        return int(self.block_table.shape[1]) * int(self.page_size or self.k.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the cache tensors as allocated (a paged pool includes unused page slack)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def check(self) -> None:
        """ValueError naming the first bad entry: lengths beyond capacity, pages out of the pool."""
        lens = self.seqlens.tolist()
        for b, n in enumerate(lens):
            if not 0 < n <= self.capacity:
                raise ValueError(f"cache seqlens[{b}] = {n}; allowed: 1 .. {self.capacity} "
                                 "(the sequence's capacity)")  # fmt: skip
        if self.block_table is None:
            return
        pool = int(self.k.shape[0])
        page = int(self.page_size or self.k.shape[1])
        for b, n in enumerate(lens):
            used = self.block_table[b, : math.ceil(n / page)].tolist()
            for j, p in enumerate(used):
                if not 0 <= p < pool:
                    raise ValueError(f"block_table[{b}][{j}] = {p} points outside the page pool "
                                     f"of {pool} pages; allowed: 0 .. {pool - 1}")  # fmt: skip

    def check_query(self, q_bshd: torch.Tensor) -> None:
        """ValueError unless q (batch, seqlen_q, num_heads, head_dim) goes with this cache:
        the same batch and head_dim, num_heads a multiple of num_kv_heads."""
        shape = tuple(q_bshd.shape)
        if len(shape) != 4 or shape[0] != self.batch or shape[3] != self.head_dim \
                or shape[2] % self.num_kv_heads:  # fmt: skip
            raise ValueError(f"q {tuple(q_bshd.shape)} does not go with a cache of batch "
                             f"{self.batch}, {self.num_kv_heads} kv heads, head_dim "
                             f"{self.head_dim}; q must be (batch, seqlen_q, num_heads, head_dim) "
                             "with num_heads a multiple of num_kv_heads")  # fmt: skip

    def gather(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence b's keys and values, (seqlens[b], num_kv_heads, head_dim[_v]) (a copy when
        paged)."""
        n = int(self.seqlens[b])
        if self.block_table is None:
            return self.k[b, :n], self.v[b, :n]
        page = int(self.page_size or self.k.shape[1])
        pages = self.block_table[b, : math.ceil(n / page)].long()
        k = self.k.index_select(0, pages).flatten(0, 1)[:n]
        v = self.v.index_select(0, pages).flatten(0, 1)[:n]
        return k, v

    def contiguous(self) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v as (batch, max(seqlens), num_kv_heads, head_dim[_v]); rows past a sequence's
        length hold whatever the cache holds there (finite, by the contract above), masked by
        every kernel. A copy when paged."""
        if self.block_table is None:
            longest = int(self.seqlens.max())
            return self.k[:, :longest], self.v[:, :longest]
        longest = int(self.seqlens.max())
        page = int(self.page_size or self.k.shape[1])
        width = math.ceil(longest / page)
        pages = self.block_table[:, :width].long()
        # entries past each sequence's last page are ignored: read page 0 there (masked anyway)
        used = torch.arange(width, device=pages.device)[None, :] < (
            (self.seqlens.to(pages.device).long()[:, None] + page - 1) // page
        )  # fmt: skip
        # this runs inside timed calls: one vectorised test, the per-entry message only on failure
        if bool((used & ((pages < 0) | (pages >= self.k.shape[0]))).any()):
            self.check()  # raises, naming the first used entry outside the pool
        pages = torch.where(used, pages, torch.zeros_like(pages))
        k = self.k[pages].flatten(1, 2)[:, :longest]
        v = self.v[pages].flatten(1, 2)[:, :longest]
        return k, v

    def key_mask(self, seqlen_q: int) -> torch.Tensor:
        """(batch, seqlen_q, max(seqlens)) bool, True = attend: key j < seqlens[b] and
        j <= seqlens[b] - seqlen_q + i (bottom-right causal among the new tokens)."""
        longest = int(self.seqlens.max())
        lens = self.seqlens.to(self.k.device).long()[:, None, None]
        j = torch.arange(longest, device=self.k.device)[None, None, :]
        i = torch.arange(seqlen_q, device=self.k.device)[None, :, None]
        return (j < lens) & (j <= lens - seqlen_q + i)


def make_cache(k_bshd: torch.Tensor, v_bshd: torch.Tensor, seqlens: torch.Tensor, *,
               page_size: int | None, seed: int) -> KVCache:  # fmt: skip
    """A cache holding k, v (batch, max_len, kv_heads, dim) with `seqlens` valid tokens each:
    as they are (contiguous), or scattered over a pool of pages in a seeded shuffled order (so
    no kernel can rely on a sequence's pages being adjacent)."""
    seqlens = seqlens.to(device=k_bshd.device, dtype=torch.int32)
    if page_size is None:
        return KVCache(k=k_bshd, v=v_bshd, seqlens=seqlens)
    batch, max_len = k_bshd.shape[:2]
    per_seq = math.ceil(max_len / page_size)
    pad = per_seq * page_size - max_len
    if pad:
        k_bshd = torch.cat([k_bshd, k_bshd.new_zeros(batch, pad, *k_bshd.shape[2:])], 1)
        v_bshd = torch.cat([v_bshd, v_bshd.new_zeros(batch, pad, *v_bshd.shape[2:])], 1)
    pages_k = k_bshd.reshape(batch * per_seq, page_size, *k_bshd.shape[2:])
    pages_v = v_bshd.reshape(batch * per_seq, page_size, *v_bshd.shape[2:])
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(batch * per_seq, generator=gen)  # pool slot of logical page i
    pool_k = torch.empty_like(pages_k)
    pool_v = torch.empty_like(pages_v)
    pool_k[order.to(pool_k.device)] = pages_k
    pool_v[order.to(pool_v.device)] = pages_v
    table = order.view(batch, per_seq).to(torch.int32).to(k_bshd.device)
    return KVCache(k=pool_k, v=pool_v, seqlens=seqlens, block_table=table, page_size=page_size)
