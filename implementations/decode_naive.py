"""Naive decode attention over a KV cache: the textbook path, everything in the input dtype.

What a user writes first: the cache as one (batch, max(seqlens), ...) tensor (`KVCache.contiguous`,
a gather copy when the cache is paged: that copy is part of what this path costs), the scores in
the input dtype, the cache's key mask (`KVCache.key_mask`: key j < seqlens[b] and j <= seqlens[b]
- seqlen_q + i, bottom-right causal among the new tokens), softmax, @ v. GQA/MQA by viewing the
queries of each kv head as one sequence of rows, q (B, Hkv, G·Sq, D) against k, v (B, Hkv, L, D):
k and v are never repeated (with Hkv > 1 and batch > 1 the matmul copies the transposed bshd
cache once, as the textbook line does). A query row with no key (seqlen_q > seqlens[b]) gives 0.

Layout (the decode contract, harness/workloads/kv_cache.py): q_bshd (B, Sq, H, D), cache k
(B, L, Hkv, D) or a paged pool, out_bshd (B, Sq, H, Dv); query head h reads kv head h // G, G =
H // Hkv. Legend: *_bhsd (batch, heads, seq, dim); L = max(seqlens).
"""

from __future__ import annotations

import torch

from harness.registry import Impl, register
from harness.workloads.kv_cache import KVCache


def decode_naive(q_bshd: torch.Tensor, cache: KVCache, *,
                 softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    cache.check_query(q_bshd)
    batch, sq, heads, dim = q_bshd.shape
    hkv = cache.num_kv_heads
    group = heads // hkv
    scale = softmax_scale if softmax_scale is not None else dim**-0.5
    k_bshd, v_bshd = cache.contiguous()
    k_bhsd, v_bhsd = k_bshd.transpose(1, 2), v_bshd.transpose(1, 2)  # (B, Hkv, L, D): views
    # (B, Sq, Hkv, G, D) -> (B, Hkv, G·Sq, D): a kv head's queries as one sequence of rows, so
    # the matmul meets each kv head once (broadcasting k over a G dim would copy it G times)
    q_grouped = q_bshd.view(batch, sq, hkv, group, dim).permute(0, 2, 3, 1, 4)
    q_grouped = q_grouped.reshape(batch, hkv, group * sq, dim)
    scores = (q_grouped @ k_bhsd.transpose(-1, -2)) * scale  # (B, Hkv, G·Sq, L)
    longest = scores.shape[-1]
    allowed = cache.key_mask(sq)[:, None, None]  # (B, 1, 1, Sq, L)
    empty = ~allowed.any(-1, keepdim=True)
    # an empty row is left unmasked (a finite softmax) and its output zeroed
    scores = scores.view(batch, hkv, group, sq, longest).masked_fill(~(allowed | empty), -torch.inf)
    probs = torch.softmax(scores, dim=-1).view(batch, hkv, group * sq, longest)
    out = (probs @ v_bhsd).view(batch, hkv, group, sq, -1).masked_fill(empty, 0.0)
    return out.permute(0, 3, 1, 2, 4).reshape(batch, sq, heads, v_bshd.shape[-1])


DECODE_NAIVE = register(Impl(name="decode_naive", label="Decode naive", forward=decode_naive,
                             layout="bshd", workload="decode", supports_backward=False,
                             memory_exponent=1,
                             features=frozenset({"gqa", "head_dim_v", "softmax_scale",
                                                 "paged_kv"})))  # fmt: skip
