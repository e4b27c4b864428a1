"""FlexAttention on a KV cache (`torch.nn.attention.flex_attention`), compiled with torch.compile.

The cache's mask is a flex mask_mod over a block mask, so the fused kernel skips the key blocks a
sequence does not see (compiled flex: Triton on CUDA, C++ templates on CPU; see implementations/
flex.py for what compiled flex supports):
    contiguous  k (B, Hkv, L, D), a view of the (B, L, Hkv, D) cache; key j of sequence b is
                allowed iff j < seqlens[b] and j <= seqlens[b] - Sq + i (bottom-right causal
                among the new tokens).
    paged       the pool (P, T, Hkv, D) viewed as one sequence of P·T keys, (1, Hkv, P·T, D)
                (flex broadcasts kv batch 1 over the queries' batch; no copy), and physical key x
                is allowed for sequence b iff its page x // T belongs to b (a page → sequence
                table made from the block table), and its logical position, the page's index in
                b's block table × T + x % T, passes the contiguous rule. The block mask keeps
                only the key blocks holding b's pages, so a sequence reads its own pages (a page
                shared by two sequences, as in prefix sharing, cannot be expressed by one owner:
                ValueError). This is what torch's experimental PagedAttention
                (torch.nn.attention.experimental._paged_attention) does with its
                physical_to_logical table; it is not used because it owns the page allocation
                (reserve/assign) and would need the pool rewritten into its own layout.
The block mask (one (B, Sq, keys) evaluation of the mask_mod) and the compiled kernel are built on
the first call of a cache (shapes, strides, dtype, scale, and the lengths and block table by value)
and kept, so neither is timed (the harness's untimed check call pays); dynamo is reset when the
case changes, as in implementations/flex.py. GQA is flex's `enable_gqa=True`, `softmax_scale` its
`scale=`, head_dim_v != head_dim native. A query row with no key gives 0.
Layout: q_bshd (B, Sq, H, D) -> out_bshd (B, Sq, H, Dv); flex's own is *_bhsd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.registry import Impl, register
from harness.workloads.kv_cache import KVCache
from implementations.flex import _available, _limits

_state: dict[str, Any] = {"key": None, "lens": None, "table": None, "fn": None, "mask": None}


def _contiguous_mod(lens: torch.Tensor, sq: int) -> Callable[..., Any]:
    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001 - flex's mask_mod signature
        return (kv_idx < lens[b]) & (kv_idx <= lens[b] - sq + q_idx)

    return mask_mod


def _paged_mod(cache: KVCache, lens: torch.Tensor, sq: int) -> Callable[..., Any]:
    page = int(cache.page_size or cache.k.shape[1])
    pool = int(cache.k.shape[0])
    counts = (lens + page - 1) // page
    table = cache.block_table.long()
    j = torch.arange(table.shape[1], device=table.device)
    live = j[None, :] < counts[:, None]
    used = table[live]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= pool):
        cache.check()  # raises the ValueError naming the bad entry
    if int(used.unique().numel()) != int(used.numel()):
        raise ValueError("decode_flex: a page is shared by two sequences (or listed twice); the "
                         "paged mask_mod needs one owner per page")  # fmt: skip
    owner = torch.full((pool,), -1, dtype=torch.long, device=table.device)
    logical = torch.zeros(pool, dtype=torch.long, device=table.device)
    owner[used] = torch.arange(table.shape[0], device=table.device)[:, None].expand_as(table)[live]
    logical[used] = j[None, :].expand_as(table)[live]

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001 - flex's mask_mod signature
        p = kv_idx // page
        pos = logical[p] * page + kv_idx % page
        return (owner[p] == b) & (pos < lens[b]) & (pos <= lens[b] - sq + q_idx)

    return mask_mod


def _kv_bhsd(cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
    if not cache.paged:
        return cache.k.transpose(1, 2), cache.v.transpose(1, 2)
    return tuple(t.flatten(0, 1).transpose(0, 1)[None] for t in (cache.k, cache.v))  # type: ignore[return-value]


def _same(stored: torch.Tensor | None, now: torch.Tensor | None) -> bool:
    if stored is None or now is None:
        return stored is now
    return stored.shape == now.shape and bool(torch.equal(stored, now))


def decode_flex(q_bshd: torch.Tensor, cache: KVCache, *,
                softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    from torch.nn.attention import flex_attention as flex

    cache.check_query(q_bshd)
    batch, sq = q_bshd.shape[:2]
    q_bhsd = q_bshd.transpose(1, 2)
    k_bhsd, v_bhsd = _kv_bhsd(cache)
    key = (tuple(q_bhsd.shape), tuple(k_bhsd.shape), tuple(v_bhsd.shape),
           tuple(t.stride() for t in (q_bhsd, k_bhsd, v_bhsd)), q_bhsd.dtype, q_bhsd.device,
           softmax_scale, cache.page_size)  # fmt: skip
    lens = cache.seqlens.to(device=q_bshd.device, dtype=torch.long)
    table = cache.block_table
    fresh = _state["key"] == key and _same(_state["lens"], lens) and _same(_state["table"], table)
    if not fresh:
        validate = getattr(flex, "_validate_device", None)
        if validate is not None:
            validate(q_bhsd, k_bhsd, v_bhsd)
        torch.compiler.reset()
        mask_mod = _paged_mod(cache, lens, sq) if cache.paged else _contiguous_mod(lens, sq)
        make = flex.create_block_mask
        make = torch.compile(make) if q_bshd.device.type == "cuda" else make
        mask = make(mask_mod, batch, None, sq, k_bhsd.shape[-2], device=q_bshd.device)
        fn = torch.compile(flex.flex_attention, dynamic=False, fullgraph=True)
        _state.update(key=key, lens=lens.clone(), fn=fn, mask=mask,
                      table=None if table is None else table.clone())  # fmt: skip
    gqa = k_bhsd.shape[1] != q_bhsd.shape[1]
    out = _state["fn"](q_bhsd, k_bhsd, v_bhsd, block_mask=_state["mask"], scale=softmax_scale,
                       enable_gqa=gqa)  # fmt: skip
    return out.transpose(1, 2)


DECODE_FLEX = register(Impl(name="decode_flex", label="Decode FlexAttention (compiled)",
                            forward=decode_flex, layout="bshd", workload="decode",
                            supports_backward=False, memory_exponent=1, available=_available,
                            unsupported=_limits, tags=("torch", "compiled"),
                            features=frozenset({"gqa", "head_dim_v", "softmax_scale",
                                                "paged_kv"})))  # fmt: skip
