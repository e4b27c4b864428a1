"""FlashInfer's paged-KV wrappers on the decode workload (flashinfer-python, arXiv 2501.01005).

`decode_flashinfer`: `flashinfer.BatchDecodeWithPagedKVCacheWrapper` (flashinfer/decode.py), one
new token per sequence (seqlen_q 1; any other is a reason). `decode_flashinfer_prefill`:
`flashinfer.BatchPrefillWithPagedKVCacheWrapper` (flashinfer/prefill.py) with `causal=True`, any
seqlen_q; FlashInfer aligns its causal mask bottom-right (keys j <= i + kv_len - qo_len,
include/flashinfer/attention/prefill.cuh), the harness's decode mask.

FlashInfer's page table is CSR: `indptr` (B + 1,) int32 offsets into `indices` (the pool pages of
every sequence in order) and `last_page_len` (B,) int32 (1 .. page_size tokens in a sequence's
last page). The harness's cache becomes that table as it is:
- paged: the pool (num_pages, page_size, Hkv, D) is kv_layout "NHD"; sequence b's pages are
  block_table[b, :ceil(seqlens[b] / page_size)];
- contiguous: k (B, max_len, Hkv, D) is a pool of B pages of page_size = max_len, page b for
  sequence b, last_page_len = seqlens.
Calls (keywords as in flashinfer-python 0.7.2.post1's signatures):
    wrapper = BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    wrapper.plan(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                 page_size, q_data_type=, kv_data_type=, sm_scale=)
    out = wrapper.run(q (B, H, D), (k_pool, v_pool))                       # (B, H, D)
    wrapper = BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
    wrapper.plan(qo_indptr, indptr, indices, last_page_len, num_qo_heads, num_kv_heads,
                 head_dim_qk, page_size, causal=True, sm_scale=, q_data_type=, kv_data_type=)
    out = wrapper.run(q (B * Sq, H, D), (k_pool, v_pool))                  # (B * Sq, H, D)
`plan` copies the table to the host and schedules the work, so it runs once per case: the wrapper,
its table and its 128 MiB float workspace (zeroed, as the constructor asks for its first use) are
kept beside the case's key (the harness's untimed check call pays for planning and any JIT
compile), like flex keeps its compiled graph; the timed call is `run` alone.

Limits: fp16/bf16 (the harness's other dtypes have no kernel); head_dim 64, 128 or 256 (the sizes
of FlashInfer's DISPATCH_HEAD_DIM that both wrappers build); head_dim_v == head_dim (the decode
plan takes one head_dim, its CUDA-core kernel checks head_dim_qk == head_dim_vo); the decode
wrapper's GQA group size num_heads / num_kv_heads in {1, 2, 3, 4, 6, 8, 16}
(DISPATCH_GQA_GROUP_SIZE, csrc/batch_decode.cu); sm75+ (bfloat16 sm80+).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.case import Case
from harness.registry import Availability, Impl, register
from harness.workloads.kv_cache import KVCache
from implementations._optional import cuda_reason, import_optional

MISSING = "flashinfer is not installed: pip install '.[flashinfer]'"
HEAD_DIMS = (64, 128, 256)
DECODE_GROUP_SIZES = (1, 2, 3, 4, 6, 8, 16)
WORKSPACE_BYTES = 128 * 1024 * 1024  # the size FlashInfer's docs recommend
FEATURES = frozenset({"gqa", "softmax_scale", "paged_kv"})

_state: dict[str, Any] = {"key": None, "refs": None, "wrapper": None, "workspace": None}


@dataclass(frozen=True)
class _Entry:
    name: str
    label: str
    wrapper: str  # the flashinfer class
    prefill: bool  # BatchPrefill (qo_indptr, causal) instead of BatchDecode


DECODE = _Entry("decode_flashinfer", "FlashInfer BatchDecode (paged)",
                "BatchDecodeWithPagedKVCacheWrapper", prefill=False)  # fmt: skip
PREFILL = _Entry("decode_flashinfer_prefill", "FlashInfer BatchPrefill (paged, causal)",
                 "BatchPrefillWithPagedKVCacheWrapper", prefill=True)  # fmt: skip


def _available(entry: _Entry) -> Callable[[str], Availability]:
    def available(device: str) -> Availability:
        module, reason = import_optional("flashinfer", MISSING)
        if module is None:
            return Availability.no(reason)
        cls = getattr(module, entry.wrapper, None)
        if cls is None or not callable(getattr(cls, "plan", None)):
            version = getattr(module, "__version__", "?")
            return Availability.no(f"flashinfer {version} has no {entry.wrapper}.plan; "
                                   "flashinfer-python >= 0.2 is needed")  # fmt: skip
        reason = cuda_reason(device, min_cc=(7, 5), nvidia_only=True, what=entry.label)
        return Availability.no(reason) if reason else Availability.yes()

    return available


def _limits(entry: _Entry) -> Callable[[Case, str], list[str]]:
    def unsupported(case: Case, device: str) -> list[str]:
        reasons = []
        if case.dtype not in ("float16", "bfloat16"):
            reasons.append(f"{entry.label} supports float16 and bfloat16; got {case.dtype}")
        elif case.dtype == "bfloat16" and device == "cuda" and torch.cuda.is_available() \
                and tuple(torch.cuda.get_device_capability()) < (8, 0):  # fmt: skip
            reasons.append(f"{entry.label} needs compute capability 8.0+ for bfloat16")
        if case.head_dim not in HEAD_DIMS:
            reasons.append(f"{entry.label} needs head_dim in {{64, 128, 256}}; got "
                           f"{case.head_dim}")  # fmt: skip
        if case.dim_v != case.head_dim:
            reasons.append(f"{entry.label} needs head_dim_v == head_dim; got {case.head_dim} "
                           f"and {case.dim_v}")  # fmt: skip
        if not entry.prefill:
            if case.sq != 1:
                reasons.append(f"{entry.label} runs one new token per sequence (seqlen_q 1); "
                               f"got seqlen_q {case.sq} (decode_flashinfer_prefill runs "
                               "it)")  # fmt: skip
            group = case.num_heads // case.kv_heads
            if group not in DECODE_GROUP_SIZES:
                reasons.append(f"{entry.label} supports GQA group sizes "
                               f"{', '.join(map(str, DECODE_GROUP_SIZES))}; got num_heads "
                               f"{case.num_heads} / num_kv_heads {case.kv_heads} = "
                               f"{group}")  # fmt: skip
        return reasons

    return unsupported


def page_table(cache: KVCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """FlashInfer's (indptr, indices, last_page_len, page_size) for the harness's cache (CPU,
    int32): a paged cache's own pages, or one page of max_len tokens per contiguous sequence."""
    seqlens = cache.seqlens.detach().cpu().long()
    batch = int(seqlens.shape[0])
    if cache.block_table is None:
        page = int(cache.k.shape[1])
        indices = torch.arange(batch)
        counts = torch.ones(batch, dtype=torch.long)
    else:
        page = int(cache.page_size or cache.k.shape[1])
        counts = (seqlens + page - 1) // page
        table = cache.block_table.detach().cpu().long()
        indices = torch.cat([table[b, : int(counts[b])] for b in range(batch)])
    indptr = torch.zeros(batch + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(counts, 0)
    last = seqlens - (counts - 1) * page
    as_int = (t.to(torch.int32) for t in (indptr, indices, last))
    return (*as_int, page)  # type: ignore[return-value]


def _workspace(device: torch.device) -> torch.Tensor:
    ws = _state["workspace"]
    if ws is None or ws.device != device:
        ws = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        _state["workspace"] = ws
    return ws


def _planned(entry: _Entry, q_bshd: torch.Tensor, cache: KVCache,
             softmax_scale: float | None) -> Any:  # fmt: skip
    """The case's planned wrapper: planned once, reused while the case's cache is the same."""
    table = cache.block_table
    key = (entry.name, tuple(q_bshd.shape), q_bshd.dtype, str(q_bshd.device),
           tuple(cache.k.shape), tuple(cache.v.shape), cache.k.dtype, cache.page_size,
           softmax_scale, cache.seqlens._version,
           None if table is None else table._version)  # fmt: skip
    refs = _state["refs"]
    if _state["key"] == key and refs[0] is cache.seqlens and refs[1] is table:
        return _state["wrapper"]
    flashinfer = importlib.import_module("flashinfer")
    device = q_bshd.device
    batch, seqlen_q, heads, dim = q_bshd.shape
    indptr, indices, last, page = (t.to(device) if isinstance(t, torch.Tensor) else t
                                   for t in page_table(cache))  # fmt: skip
    wrapper = getattr(flashinfer, entry.wrapper)(_workspace(device), "NHD")
    types = {"q_data_type": q_bshd.dtype, "kv_data_type": cache.k.dtype}
    if entry.prefill:
        qo_indptr = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, dtype=torch.int32,
                                 device=device)  # fmt: skip
        wrapper.plan(qo_indptr, indptr, indices, last, heads, cache.num_kv_heads, dim, page,
                     causal=True, sm_scale=softmax_scale, **types)  # fmt: skip
    else:
        wrapper.plan(indptr, indices, last, heads, cache.num_kv_heads, dim, page,
                     sm_scale=softmax_scale, **types)  # fmt: skip
    _state.update(key=key, refs=(cache.seqlens, table), wrapper=wrapper)
    return wrapper


def _forward(entry: _Entry) -> Callable[..., torch.Tensor]:
    def forward(q_bshd: torch.Tensor, cache: KVCache, *,
                softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
        batch, seqlen_q, heads, dim = q_bshd.shape
        if not entry.prefill and seqlen_q != 1:
            raise NotImplementedError(f"{entry.label} takes seqlen_q 1; got {seqlen_q}")
        wrapper = _planned(entry, q_bshd, cache, softmax_scale)
        q = q_bshd.contiguous().reshape(batch * seqlen_q, heads, dim)
        out = wrapper.run(q, (cache.k, cache.v))
        return out.reshape(batch, seqlen_q, heads, out.shape[-1])

    return forward


def _register(entry: _Entry) -> Impl:
    return register(Impl(name=entry.name, label=entry.label, forward=_forward(entry),
                         layout="bshd", workload="decode", supports_backward=False,
                         memory_exponent=1, available=_available(entry),
                         unsupported=_limits(entry), features=FEATURES,
                         tags=("third-party", "cuda", "decode")))  # fmt: skip


DECODE_FLASHINFER = _register(DECODE)
DECODE_FLASHINFER_PREFILL = _register(PREFILL)
