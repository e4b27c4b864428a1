"""torch SDPA on a KV cache: decode_sdpa_math (the composite reference) and decode_sdpa_flash
(torch's fused flash kernel: FlashAttention-2 on CUDA, its own CPU kernel on CPU).

What a user of torch does: the cache as one (batch, max(seqlens), ...) tensor (`KVCache.contiguous`,
a gather copy when paged), transposed to SDPA's (B, Hkv, L, D) as a view, `enable_gqa=True` (query
head h reads kv head h // (H // Hkv); k and v are not repeated by the flash kernel), `scale=`, and
a boolean attn_mask (B, 1, Sq, L) from `KVCache.key_mask` (key j < seqlens[b] and j <= seqlens[b]
- seqlen_q + i). When every sequence holds max(seqlens) tokens and seqlen_q == 1 every key is
visible and no mask is passed. A query row with no key (seqlen_q > seqlens[b]) gives 0 (math and
CPU flash give 0 for a fully masked row, tests/unit/test_dense_masks.py).

Support: math everything. flash on CPU: float32/float16/bfloat16, the (B, 1, Sq, L) mask (checked
in tests/unit/test_decode.py), not head_dim_v != head_dim (torch: "Flash attention requires q,k,v
to have the same last dimension"). flash on CUDA: float16/bfloat16, head_dim a multiple of 8 up to
256, no attn_mask (torch's check_for_attn_mask): fixed lengths and seqlen_q == 1 only.
Layout: q_bshd (B, Sq, H, D) -> out_bshd (B, Sq, H, Dv); SDPA's own is *_bhsd.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.case import Case
from harness.registry import Impl, register
from harness.workloads.kv_cache import KVCache


def _needs_mask(cache: KVCache, sq: int) -> bool:
    if sq > 1:
        return True
    lens = cache.seqlens
    return bool((lens != lens.max()).any())


def _decode_sdpa(backend: SDPBackend, q_bshd: torch.Tensor, cache: KVCache, *,
                 softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    cache.check_query(q_bshd)
    sq = q_bshd.shape[1]
    k_bshd, v_bshd = cache.contiguous()
    q_bhsd, k_bhsd, v_bhsd = (t.transpose(1, 2) for t in (q_bshd, k_bshd, v_bshd))
    kwargs = {}
    if _needs_mask(cache, sq):
        kwargs["attn_mask"] = cache.key_mask(sq)[:, None]  # (B, 1, Sq, L)
    if softmax_scale is not None:
        kwargs["scale"] = softmax_scale
    if cache.num_kv_heads != q_bshd.shape[2]:
        kwargs["enable_gqa"] = True
    with sdpa_kernel(backend):
        out_bhsd = F.scaled_dot_product_attention(q_bhsd, k_bhsd, v_bhsd, **kwargs)
    return out_bhsd.transpose(1, 2)


def _flash_limits(case: Case, device: str) -> list[str]:
    reasons = []  # head_dim_v != head_dim: not in its features (declared_reasons says so)
    if device == "cuda":
        if case.dtype not in ("float16", "bfloat16"):
            reasons.append(f"flash SDPA on CUDA needs float16 or bfloat16; got {case.dtype}")
        if case.head_dim > 256 or case.head_dim % 8:
            reasons.append(f"head_dim must be a multiple of 8 up to 256; got {case.head_dim}")
        if case.sq > 1 or case.cache_dist != "fixed":
            reasons.append("flash SDPA on CUDA takes no attn_mask (torch's check_for_attn_mask); "
                           "seqlen_q > 1 or ragged cache lengths need one")  # fmt: skip
    elif case.dtype == "float64":
        reasons.append("flash SDPA on CPU supports float32, float16, bfloat16; got float64")
    return reasons


_ALL = frozenset({"gqa", "head_dim_v", "softmax_scale", "paged_kv"})
DECODE_SDPA_MATH = register(Impl(name="decode_sdpa_math", label="Decode SDPA math",
                                 forward=partial(_decode_sdpa, SDPBackend.MATH), layout="bshd",
                                 workload="decode", supports_backward=False, memory_exponent=1,
                                 features=_ALL))  # fmt: skip
DECODE_SDPA_FLASH = register(Impl(name="decode_sdpa_flash", label="Decode SDPA flash",
                                  forward=partial(_decode_sdpa, SDPBackend.FLASH_ATTENTION),
                                  layout="bshd", workload="decode", supports_backward=False,
                                  memory_exponent=1, unsupported=_flash_limits,
                                  features=_ALL - {"head_dim_v"}))  # fmt: skip
