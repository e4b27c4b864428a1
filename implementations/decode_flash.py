"""FlashAttention's KV-cache decode: `flash_attn_with_kvcache` of FA2 and FA3 (decode workload).

`decode_flash_attn2`: `flash_attn.flash_attn_with_kvcache` (flash_attn/flash_attn_interface.py,
kernel `mha_fwd_kvcache` in csrc/flash_attn/flash_api.cpp); `decode_flash_attn3`:
`flash_attn_interface.flash_attn_with_kvcache` of flash-attention's hopper/ build
(hopper/flash_attn_interface.py, kernel `mha_fwd` in hopper/flash_api.cpp). Both read the
harness's cache as it is, with the new tokens already in it (no `k=`/`v=` append):
    flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                            softmax_scale=..., block_table=|page_table=...)
q (B, Sq, H, D); k_cache (B, max_len, Hkv, D) contiguous, or the page pool (num_pages, page_size,
Hkv, D) with the table (B, pages_per_seq) int32 as `block_table=` (FA2) / `page_table=` (FA3);
cache_seqlens (B,) int32. `causal=True` is bottom-right aligned against each sequence's
cache_seqlens (query i sees keys j <= seqlens[b] - Sq + i): the harness's decode mask. GQA is
native (k_cache with fewer heads). Output (B, Sq, H, Dv).

Limits read in the sources:
- FA2: fp16/bf16; head_dim <= 256 (`mha_fwd_kvcache`); a paged cache needs page_size a multiple
  of 256 ("Paged KV cache block size must be divisible by 256"); v_cache has k_cache's head dim
  (the wrapper documents both as (..., headdim)), so head_dim_v != head_dim is a reason.
- FA3: fp16/bf16 (fp8 too, not a harness dtype); head_dim a multiple of 8 up to 256; any page
  size ("page_block_size can be arbitrary (e.g, 1, 2, 3, 64, etc.)"); head_dim_v != head_dim for
  (128, 192] x (96, 128] or head_dim <= 64 with head_dim_v <= 512 (`mha_fwd`'s check, shared with
  flash_attn3's attention entry); sm90 only, as `flash_attn3`.
Availability follows the attention adapters (implementations/flash_attn.py) plus the presence of
`flash_attn_with_kvcache` in the installed package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.case import Case
from harness.registry import Availability, Impl, register
from harness.workloads.kv_cache import KVCache
from implementations import flash_attn as fa
from implementations._optional import cuda_reason, low_precision_reasons

FA2_PAGE_MULTIPLE = 256  # csrc/flash_attn/flash_api.cpp, mha_fwd_kvcache


@dataclass(frozen=True)
class _Decode:
    """One decode entry over a FlashAttention flavour of implementations/flash_attn.py."""

    name: str
    label: str
    flavor: Any  # flash_attn._Flavor
    table_keyword: str  # how flash_attn_with_kvcache names the page table
    features: frozenset[str]


FA2_DECODE = _Decode("decode_flash_attn2", "FlashAttention-2 decode (kvcache)", fa.FA2,
                     "block_table", frozenset({"gqa", "softmax_scale", "paged_kv"}))  # fmt: skip
FA3_DECODE = _Decode("decode_flash_attn3", "FlashAttention-3 decode (kvcache)", fa.FA3,
                     "page_table",
                     frozenset({"gqa", "softmax_scale", "paged_kv", "head_dim_v"}))  # fmt: skip


def _package_reason(entry: _Decode) -> str:
    reason = fa._package_reason(entry.flavor)
    if reason:
        return reason
    module, _ = fa._import(entry.flavor)
    if not callable(getattr(module, "flash_attn_with_kvcache", None)):
        return (f"{module.__name__} has no flash_attn_with_kvcache; its version is not "
                "supported")  # fmt: skip
    return ""


def _available(entry: _Decode) -> Callable[[str], Availability]:
    flavor = entry.flavor

    def available(device: str) -> Availability:
        reason = _package_reason(entry) or cuda_reason(
            device, min_cc=flavor.min_cc, max_major=flavor.max_major,
            nvidia_only=flavor is not fa.FA2, what=entry.label,
        )  # fmt: skip
        return Availability.no(reason) if reason else Availability.yes()

    return available


def _limits(entry: _Decode) -> Callable[[Case, str], list[str]]:
    flavor = entry.flavor

    def unsupported(case: Case, device: str) -> list[str]:
        reasons = low_precision_reasons(case.dtype, case.head_dim,
                                        max_head_dim=flavor.max_head_dim,
                                        head_dim_multiple=flavor.head_dim_multiple,
                                        what=entry.label)  # fmt: skip
        if flavor is fa.FA2:
            if case.dim_v != case.head_dim:
                reasons.append(f"{entry.label} needs head_dim_v == head_dim (v_cache shares "
                               f"k_cache's head dim); got {case.head_dim} and "
                               f"{case.dim_v}")  # fmt: skip
            if case.page_size is not None and case.page_size % FA2_PAGE_MULTIPLE:
                reasons.append(f"{entry.label} needs a paged cache's page_size to be a multiple "
                               f"of {FA2_PAGE_MULTIPLE}; got {case.page_size}")  # fmt: skip
        else:
            reasons += fa._head_dim_v_reasons(flavor, case, device)
        return reasons

    return unsupported


@functools.cache
def _kernel(entry: _Decode) -> Callable[..., Any]:
    module, reason = fa._import(entry.flavor)
    if module is None:
        raise ImportError(reason)
    return module.flash_attn_with_kvcache


def _forward(entry: _Decode) -> Callable[..., torch.Tensor]:
    def forward(q_bshd: torch.Tensor, cache: KVCache, *,
                softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
        kwargs: dict[str, Any] = {"cache_seqlens": cache.seqlens, "softmax_scale": softmax_scale,
                                  "causal": True}  # fmt: skip
        if cache.block_table is not None:
            kwargs[entry.table_keyword] = cache.block_table
        q = q_bshd if q_bshd.stride(-1) == 1 else q_bshd.contiguous()
        out = _kernel(entry)(q, cache.k, cache.v, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    return forward


def _register(entry: _Decode) -> Impl:
    return register(Impl(name=entry.name, label=entry.label, forward=_forward(entry),
                         layout="bshd", workload="decode", supports_backward=False,
                         memory_exponent=1, available=_available(entry),
                         unsupported=_limits(entry), features=entry.features,
                         tags=("third-party", "cuda", "decode")))  # fmt: skip


DECODE_FLASH_ATTN2 = _register(FA2_DECODE)
DECODE_FLASH_ATTN3 = _register(FA3_DECODE)
