"""Split-KV decode ("flash-decoding"): each sequence's cache is cut into splits that are computed
in parallel, each giving a partial (out, lse), merged by log-sum-exp.

Follows Tri Dao, Daniel Haziza, Francisco Massa, Grigory Sizov, "Flash-Decoding for long-context
inference" (2023): at decode time a (batch × heads) grid has too few work items to occupy a device
(batch 1, one kv head under MQA: one item), so the keys are split as well and the partials are
combined with FlashAttention-2's log-sum-exp rescaling (arXiv 2307.08691; `blockwise_ops.merge`).

How the cache becomes splits (no copy of K or V but for small or shared pages):
    paged       every page of the pool is a split, computed in place: the pool (P, T, Hkv, D)
                viewed as (Hkv, P, T, D) is one batched op over pages, each page meeting the
                queries of the sequence that owns it (q gathered per page: P·G·Sq·D elements,
                G·Sq / (T·Hkv) of the keys' bytes). Pages a sequence does not use are computed
                and never merged (a pool that is mostly idle wastes reads). A page shared by two
                sequences (prefix sharing) cannot meet both sequences' queries in place.
    paged, gathered  pages smaller than IN_PLACE_MIN_PAGE (32), or a page listed by two
                sequences: splits are runs of a sequence's pages gathered (copied) a group of
                splits at a time, at most GATHER_BYTES per group. Measured (2-core CPU, batch 8,
                cache 8k, GQA 8:1, float32): page 16 in place 177 ms vs gathered 100 ms (the
                per-page q copy is half the keys' bytes there, and tiny kernel items cost),
                page 32 about equal, pages 64-256 in place 1.6-2x faster.
    contiguous  a chunk of T tokens that divides max_len, so (B, max_len, Hkv, D) is a pool of
                B · max_len / T pages in order, viewed as above (a view, no copy). Splits past
                max(seqlens) are not computed; when ragged lengths leave over a quarter of the
                splits dead, each sequence's live splits are one op of their own instead.
Chunk rule (contiguous; a paged cache's split is its page): enough splits for
ITEMS_PER_WORKER work items per worker (CPU threads, CUDA SMs) over batch × kv heads × splits, a
chunk kept within [MIN_CHUNK, MAX_CHUNK] tokens (shorter splits cost more in partials and merging
than they gain in parallelism; longer ones idle workers), then the divisor of max_len nearest to
it (log scale); `num_splits=` overrides the target. A max_len with no divisor near the target
(a prime) gets a chunk far from it: correct, just less parallel.
Per split: the cache's mask (key position < seqlens[b], and <= seqlens[b] - Sq + i, bottom-right
causal among the new tokens), needed only for seqlen_q > 1 or a length that ends inside a split;
a fully masked row has out 0 and lse -inf and merges to nothing.
Kernels: on CPU (float32, float16, bfloat16, head_dim_v == head_dim) torch's fused flash kernel,
which returns the lse (the split dim is its head dim, kv heads its batch dim, a float mask
broadcast over kv heads); elsewhere (CUDA, float64, head_dim_v != head_dim) torch matmuls with
float32 scores (float64 for float64), the inputs upcast per group of pages. Partials and the merge
are in float32 (float64); the output is cast once to the input dtype.
GQA/MQA: the G = H / Hkv query heads of a kv head are one sequence of G·Sq rows (k, v never
repeated).
Layout: q_bshd (B, Sq, H, D), out_bshd (B, Sq, H, Dv). Legend inside: *_hpmd (kv heads, pages or
splits, rows G·Sq ordered (g, i), dim), *_hbjm (kv heads, batch, a sequence's j-th split, rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from harness.registry import Impl, register
from harness.workloads.kv_cache import KVCache
from implementations.blockwise_ops import acc_dtype, merge

ITEMS_PER_WORKER = 4
MIN_CHUNK = 512
MAX_CHUNK = 4096
DEAD_FRACTION = 0.25  # contiguous: above it, each sequence's live splits are computed on their own
IN_PLACE_MIN_PAGE = 32  # paged: smaller pages are gathered into splits (measured, module doc)
GATHER_BYTES = 64 << 20  # paged, gathered: K and V bytes copied at once
TORCH_GROUP_TOKENS = 1 << 16  # tokens per matmul on the torch path (bounds its upcast copies)
_FUSED_CPU = (torch.float32, torch.float16, torch.bfloat16)
_aten = torch.ops.aten


@lru_cache(maxsize=64)
def _nearest_divisor(n: int, target: int) -> int:
    best = n
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for c in (d, n // d):
                if abs(math.log(c / target)) < abs(math.log(best / target)):
                    best = c
    return best


def _workers(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return torch.get_num_threads()


def _target_tokens(max_len: int, batch: int, kv_heads: int, workers: int,
                   num_splits: int | None) -> int:  # fmt: skip
    if num_splits is not None:
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1; got {num_splits}")
        return max(1, math.ceil(max_len / num_splits))
    wanted = math.ceil(ITEMS_PER_WORKER * workers / (batch * kv_heads))
    return min(max(math.ceil(max_len / wanted), MIN_CHUNK), MAX_CHUNK)


def split_tokens(max_len: int, batch: int, kv_heads: int, workers: int,
                 num_splits: int | None = None) -> int:  # fmt: skip
    """The chunk (tokens per split) of a contiguous cache of `max_len` rows (module docstring)."""
    return _nearest_divisor(max_len, _target_tokens(max_len, batch, kv_heads, workers, num_splits))


@dataclass
class _Pages:
    """The cache as a pool of splits: k (P, T, Hkv, D); split j of sequence b is page
    table[b, j] where live[b, j]; owner/logical: each page's sequence (-1 none) and index."""

    k: torch.Tensor
    v: torch.Tensor
    owner: torch.Tensor
    logical: torch.Tensor
    table: torch.Tensor
    live: torch.Tensor
    ranges: list[tuple[int, int]]  # the page ranges to compute


def _table(pages_bj: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    j = torch.arange(pages_bj.shape[1], device=pages_bj.device)
    live = j[None, :] < torch.tensor(counts, device=pages_bj.device)[:, None]
    return pages_bj.masked_fill(~live, 0), live


def _contiguous_pages(cache: KVCache, lens: list[int], chunk: int) -> _Pages:
    batch, max_len = cache.k.shape[:2]
    per_seq = max_len // chunk
    k = cache.k.reshape(batch * per_seq, chunk, *cache.k.shape[2:])  # a view when contiguous
    v = cache.v.reshape(batch * per_seq, chunk, *cache.v.shape[2:])
    counts = [math.ceil(n / chunk) for n in lens]
    j = torch.arange(max(counts), device=k.device)
    table, live = _table(torch.arange(batch, device=k.device)[:, None] * per_seq + j, counts)
    pages = torch.arange(batch * per_seq, device=k.device)
    if sum(counts) >= (1 - DEAD_FRACTION) * batch * per_seq:
        ranges = [(0, (batch - 1) * per_seq + counts[-1])]
    else:
        ranges = [(b * per_seq, b * per_seq + n) for b, n in enumerate(counts)]
    return _Pages(k, v, pages // per_seq, pages % per_seq, table, live, ranges)


def _check_table(cache: KVCache, used: torch.Tensor) -> None:
    """The ValueError of `KVCache.check` when a used block-table entry is outside the pool."""
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= int(cache.k.shape[0])):
        cache.check()


def _paged_pages(cache: KVCache, lens: list[int]) -> _Pages | None:
    """The pool as it is; None when a page is shared by two sequences."""
    page = int(cache.page_size or cache.k.shape[1])
    pool = int(cache.k.shape[0])
    counts = [math.ceil(n / page) for n in lens]
    used_bj = cache.block_table[:, : max(counts)].long()
    table, live = _table(used_bj, counts)
    used = used_bj[live]
    _check_table(cache, used)
    if int(used.unique().numel()) != int(used.numel()):
        return None
    b_idx = torch.arange(len(lens), device=used.device)[:, None].expand_as(table)
    j_idx = torch.arange(table.shape[1], device=used.device)[None, :].expand_as(table)
    owner = torch.full((pool,), -1, dtype=torch.long, device=used.device)
    logical = torch.zeros(pool, dtype=torch.long, device=used.device)
    owner[used] = b_idx[live]
    logical[used] = j_idx[live]
    return _Pages(cache.k, cache.v, owner, logical, table, live, [(0, pool)])


def _allowed(pages: _Pages, a: int, e: int, lens_dev: torch.Tensor, sq: int,
             rows: int) -> torch.Tensor:  # fmt: skip
    """(pages, 1 or rows, T) bool, True = attend, for pages a .. e - 1."""
    t = pages.k.shape[1]
    owner = pages.owner[a:e].clamp(min=0)
    pos = pages.logical[a:e, None, None] * t + torch.arange(t, device=owner.device)
    n = lens_dev[owner][:, None, None]
    i = torch.arange(rows, device=owner.device)[None, :, None] % sq if sq > 1 else 0
    return (pos < n) & (pos <= n - sq + i)


def _fused_partials(q_hpmd, k_hpmd, v_hpmd, allowed, scale: float):
    mask = None
    if allowed is not None:
        mask = torch.zeros(allowed.shape, dtype=q_hpmd.dtype, device=q_hpmd.device)
        mask = mask.masked_fill_(~allowed, float("-inf"))[None]  # broadcast over kv heads
    out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(
        q_hpmd, k_hpmd, v_hpmd, 0.0, False, attn_mask=mask, scale=scale
    )[:2]
    if allowed is not None:  # the kernel gives a fully masked row lse 0: make it -inf
        lse = lse.masked_fill(~allowed.any(-1)[None], float("-inf"))
    return out, lse


def _torch_partials(q_hpmd, k_hpmd, v_hpmd, allowed, scale: float):
    acc = acc_dtype(q_hpmd.dtype)
    hkv, num, rows = q_hpmd.shape[:3]
    out = torch.empty(hkv, num, rows, v_hpmd.shape[-1], dtype=acc, device=q_hpmd.device)
    lse = torch.empty(hkv, num, rows, dtype=acc, device=q_hpmd.device)
    group = max(1, TORCH_GROUP_TOKENS // k_hpmd.shape[2])
    for h in range(hkv):  # 3-D operands: bmm reads the strided pool views without a copy
        for a in range(0, num, group):
            e = min(a + group, num)
            s = (q_hpmd[h, a:e].to(acc) @ k_hpmd[h, a:e].to(acc).transpose(-1, -2)) * scale
            if allowed is not None:
                s.masked_fill_(~allowed[a:e], float("-inf"))
            lse_g = torch.logsumexp(s, dim=-1)
            safe = torch.where(torch.isfinite(lse_g), lse_g, torch.zeros_like(lse_g))
            out[h, a:e] = torch.exp(s - safe[..., None]) @ v_hpmd[h, a:e].to(acc)
            lse[h, a:e] = lse_g
    return out, lse


def _merge_splits(out_hbjmd: torch.Tensor, lse_hbjm: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp merge over the split dim (2), as a tree of pairwise `merge`s."""
    while out_hbjmd.shape[2] > 1:
        half = out_hbjmd.shape[2] // 2
        out, lse = merge(
            out_hbjmd[:, :, :half],
            lse_hbjm[:, :, :half],
            out_hbjmd[:, :, half : 2 * half],
            lse_hbjm[:, :, half : 2 * half],
        )
        if out_hbjmd.shape[2] % 2:
            out = torch.cat([out, out_hbjmd[:, :, -1:]], 2)
            lse = torch.cat([lse, lse_hbjm[:, :, -1:]], 2)
        out_hbjmd, lse_hbjm = out, lse
    return out_hbjmd[:, :, 0]


def _in_place(q_bmd: torch.Tensor, pages: _Pages, lens: list[int], lens_dev: torch.Tensor,
              sq: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Partials of every live split, (Hkv, B, J, rows, Dv) and (Hkv, B, J, rows) in the
    accumulator dtype; dead splits have out 0 and lse -inf."""
    hkv, rows, dim_v = q_bmd.shape[1], q_bmd.shape[2], pages.v.shape[-1]
    tokens = pages.k.shape[1]
    need_mask = sq > 1 or any(n % tokens for n in lens)
    fused = q_bmd.device.type == "cpu" and q_bmd.dtype in _FUSED_CPU and dim_v == q_bmd.shape[-1]
    partials = _fused_partials if fused else _torch_partials
    results = []
    for a, e in pages.ranges:
        q_hpmd = q_bmd[pages.owner[a:e].clamp(min=0)].transpose(0, 1)
        k_hpmd, v_hpmd = (t[a:e].permute(2, 0, 1, 3) for t in (pages.k, pages.v))
        allowed = _allowed(pages, a, e, lens_dev, sq, rows if sq > 1 else 1) if need_mask else None
        results.append(partials(q_hpmd, k_hpmd, v_hpmd, allowed, scale))
    acc = acc_dtype(q_bmd.dtype)
    if len(results) == 1:
        out_hpmd, lse_hpm = results[0]
    else:
        num = pages.ranges[-1][1]
        out_hpmd = q_bmd.new_zeros(hkv, num, rows, dim_v, dtype=acc)
        lse_hpm = q_bmd.new_full((hkv, num, rows), float("-inf"), dtype=acc)
        for (a, e), (out, lse) in zip(pages.ranges, results, strict=True):
            out_hpmd[:, a:e], lse_hpm[:, a:e] = out, lse
    dead = ~pages.live[None, :, :, None]
    lse_hbjm = lse_hpm.to(acc)[:, pages.table].masked_fill(dead, float("-inf"))
    out_hbjmd = out_hpmd.to(acc)[:, pages.table].masked_fill(dead[..., None], 0.0)
    return out_hbjmd, lse_hbjm


def _gathered(
    q_bmd: torch.Tensor,
    cache: KVCache,
    lens: list[int],
    lens_dev: torch.Tensor,
    sq: int,
    scale: float,
    num_splits: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partials of a paged cache whose splits are runs of pages gathered (copied) a group of
    splits at a time, at most GATHER_BYTES per group; shapes as `_in_place`'s."""
    batch, hkv = q_bmd.shape[:2]
    page = int(cache.page_size or cache.k.shape[1])
    longest = max(lens)
    per_split = max(1, round(_target_tokens(longest, batch, hkv, _workers(q_bmd.device),
                                            num_splits) / page))  # fmt: skip
    tokens = per_split * page
    num = math.ceil(longest / tokens)
    counts = [math.ceil(n / page) for n in lens]
    table = cache.block_table[:, : max(counts)].long()
    table, live = _table(table, counts)
    _check_table(cache, table[live])
    table = torch.nn.functional.pad(table, (0, num * per_split - table.shape[1]))
    row_bytes = tokens * hkv * (cache.head_dim + cache.head_dim_v) * cache.k.element_size()
    step = max(1, GATHER_BYTES // (batch * row_bytes))
    outs, lses = [], []
    for s0 in range(0, num, step):
        s1 = min(s0 + step, num)
        idx = table[:, s0 * per_split : s1 * per_split]  # (B, splits · pages per split)
        k, v = (t[idx].reshape(batch * (s1 - s0), tokens, hkv, -1) for t in (cache.k, cache.v))
        splits = torch.arange(s0, s1, device=k.device)
        owner = torch.arange(batch, device=k.device).repeat_interleave(s1 - s0)
        group_live = splits[None, :] * tokens < lens_dev[:, None]
        pages = _Pages(k, v, owner, splits.repeat(batch), torch.arange(
            batch * (s1 - s0), device=k.device).view(batch, -1), group_live,
            [(0, batch * (s1 - s0))])  # fmt: skip
        out, lse = _in_place(q_bmd, pages, lens, lens_dev, sq, scale)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def decode_split_kv(q_bshd: torch.Tensor, cache: KVCache, *, softmax_scale: float | None = None,
                    num_splits: int | None = None) -> torch.Tensor:  # fmt: skip
    cache.check_query(q_bshd)
    batch, sq, heads, dim = q_bshd.shape
    hkv, dim_v = cache.num_kv_heads, cache.head_dim_v
    group, rows = heads // hkv, heads // hkv * sq
    scale = softmax_scale if softmax_scale is not None else dim**-0.5
    if num_splits is not None and num_splits < 1:  # every path, not only the one that splits
        raise ValueError(f"num_splits must be >= 1; got {num_splits}")
    lens = [int(n) for n in cache.seqlens.tolist()]  # host lengths: one sync on CUDA
    if min(lens) < 1 or max(lens) > cache.capacity:
        cache.check()  # raises the ValueError naming the bad length
    lens_dev = cache.seqlens.to(device=q_bshd.device, dtype=torch.long)
    # (B, Sq, Hkv, G, D) -> (B, Hkv, G·Sq, D): a kv head's query rows ordered (g, i)
    q_bmd = q_bshd.view(batch, sq, hkv, group, dim).permute(0, 2, 3, 1, 4).reshape(
        batch, hkv, rows, dim)  # fmt: skip
    if not cache.paged:
        max_len = int(cache.k.shape[1])
        chunk = split_tokens(max_len, batch, hkv, _workers(q_bshd.device), num_splits)
        pages = _contiguous_pages(cache, lens, chunk)
        out_hbjmd, lse_hbjm = _in_place(q_bmd, pages, lens, lens_dev, sq, scale)
    else:
        in_place = int(cache.page_size or cache.k.shape[1]) >= IN_PLACE_MIN_PAGE
        pages = _paged_pages(cache, lens) if in_place else None
        if pages is not None:
            out_hbjmd, lse_hbjm = _in_place(q_bmd, pages, lens, lens_dev, sq, scale)
        else:
            out_hbjmd, lse_hbjm = _gathered(q_bmd, cache, lens, lens_dev, sq, scale, num_splits)
    out_hbmd = _merge_splits(out_hbjmd, lse_hbjm)
    out = out_hbmd.view(hkv, batch, group, sq, dim_v).permute(1, 3, 0, 2, 4)
    return out.reshape(batch, sq, heads, dim_v).to(q_bshd.dtype)


DECODE_SPLIT_KV = register(Impl(name="decode_split_kv", label="Decode split-KV (ours)",
                                forward=decode_split_kv, layout="bshd", workload="decode",
                                supports_backward=False, memory_exponent=1,
                                features=frozenset({"gqa", "head_dim_v", "softmax_scale",
                                                    "paged_kv"})))  # fmt: skip
