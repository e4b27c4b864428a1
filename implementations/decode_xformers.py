"""xformers' split-K decoder (`xformers.ops.fmha.triton_splitk.FwOp`) on the decode workload.

xformers 0.0.35 has no separate `decoder` op any more (its fmha/ has `triton_splitk` and the ROCm
`ck_splitk`); `triton_splitk.FwOp` is the Triton Flash-Decoding kernel, forced here with
`memory_efficient_attention_forward(q, k, v, attn_bias, scale=..., op=triton_splitk.FwOp)`.

Per-sequence cache lengths are a bias of xformers.ops.fmha.attn_bias, with the batch folded into
one row (block-diagonal biases need B = 1) and query i of sequence b at key position
seqlens[b] - Sq + i ("nearer to the final key than Q is to the final query" is masked):
- contiguous cache: `BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(q_seqlen=[Sq] * B,
  kv_padding=max_len, kv_seqlen=seqlens)`, k (B, max_len, Hkv, D) viewed as (1, B * max_len, ...);
- paged cache: `PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(q_seqlen,
  kv_seqlen, block_tables, page_size)`, the pool (num_pages, page_size, Hkv, D) viewed as
  (1, num_pages * page_size, ...) ("K/V have shape [1, max_num_pages * page_size, num_groups,
  num_heads, head_dim]").
- GQA/MQA: the 5-D [B, M, G, H, K] layout, G = num_kv_heads groups of H = num_heads /
  num_kv_heads query heads, k, v `expand`ed along H (stride 0: the op then folds the group's
  heads into the query length, its "head-swapping trick").
The bias needs the lengths on the host, so it is built once per case and kept beside the case's
key (the harness's untimed check call pays for it), like flex keeps its compiled graph.

Limits, from triton_splitk.FwOp (0.0.35) and fmha/common.py: CUDA sm80+, fp16/bf16, head_dim in
{16, 32, 64, 128, 256, 512}, head_dim_v == head_dim (no SUPPORTS_DIFFERENT_VALUE_EMBED; the
kernel writes an output of q's head dim), seqlen_q <= 16 with a causal bias ("Query length should
not be larger than 16 for causal or local attention biases"), a paged cache's page_size a
multiple of FwOp.BLOCK_N = 64. Availability is the xformers adapter's (C++ library, CUDA build).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from harness.case import Case
from harness.registry import Availability, Impl, register
from harness.workloads.kv_cache import KVCache
from implementations import xformers as xf
from implementations._optional import cuda_reason

NAME, LABEL = "decode_xformers", "xformers split-K decoder (triton_splitk)"
FEATURES = frozenset({"gqa", "softmax_scale", "paged_kv"})
HEAD_DIMS = (16, 32, 64, 128, 256, 512)  # triton_splitk.FwOp.shape_not_supported_reasons
MAX_SEQLEN_Q = 16  # causal biases: triton_splitk.FwOp.not_supported_reasons
BLOCK_N = 64  # triton_splitk.FwOp.BLOCK_N: a page must hold whole key blocks

_state: dict[str, Any] = {"key": None, "refs": None, "bias": None}


def available(device: str) -> Availability:
    av = xf._available("triton_splitk")(device)
    if not av.ok:
        return av
    reason = cuda_reason(device, min_cc=(8, 0), nvidia_only=True, what=LABEL)
    return Availability.no(reason) if reason else Availability.yes()


def unsupported(case: Case, device: str) -> list[str]:
    reasons = []
    if case.dtype not in ("float16", "bfloat16"):
        reasons.append(f"{LABEL} supports float16 and bfloat16; got {case.dtype}")
    if case.head_dim not in HEAD_DIMS:
        reasons.append(f"{LABEL} needs head_dim in {{{', '.join(map(str, HEAD_DIMS))}}}; got "
                       f"{case.head_dim}")  # fmt: skip
    if case.dim_v != case.head_dim:
        reasons.append(f"{LABEL} needs head_dim_v == head_dim; got {case.head_dim} and "
                       f"{case.dim_v}")  # fmt: skip
    if case.sq > MAX_SEQLEN_Q:
        reasons.append(f"{LABEL} takes at most {MAX_SEQLEN_Q} new tokens per sequence with a "
                       f"causal bias; got seqlen_q {case.sq}")  # fmt: skip
    if case.page_size is not None and case.page_size % BLOCK_N:
        reasons.append(f"{LABEL} needs a paged cache's page_size to be a multiple of {BLOCK_N} "
                       f"(its key block); got {case.page_size}")  # fmt: skip
    return reasons


def _bias(q_bshd: torch.Tensor, cache: KVCache) -> Any:
    """The case's attn_bias, built once per case (host lengths) and then reused."""
    table = cache.block_table
    key = (tuple(q_bshd.shape), str(q_bshd.device), tuple(cache.k.shape), cache.page_size,
           cache.seqlens._version, None if table is None else table._version)  # fmt: skip
    refs = _state["refs"]
    if _state["key"] == key and refs[0] is cache.seqlens and refs[1] is table:
        return _state["bias"]
    attn_bias = importlib.import_module("xformers.ops.fmha.attn_bias")
    batch, seqlen_q = q_bshd.shape[:2]
    q_seqlen, kv_seqlen = [seqlen_q] * batch, [int(n) for n in cache.seqlens.tolist()]
    if table is None:
        bias = attn_bias.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
            q_seqlen=q_seqlen, kv_padding=int(cache.k.shape[1]), kv_seqlen=kv_seqlen,
            device=q_bshd.device,
        )  # fmt: skip
    else:
        bias = attn_bias.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
            q_seqlen=q_seqlen, kv_seqlen=kv_seqlen, block_tables=table,
            page_size=int(cache.page_size or cache.k.shape[1]), device=q_bshd.device,
        )  # fmt: skip
    _state.update(key=key, refs=(cache.seqlens, table), bias=bias)
    return bias


def _grouped(t: torch.Tensor, group: int) -> torch.Tensor:
    """(N, S, Hkv, D) cache rows as xformers' 5-D (1, N * S, Hkv, group, D), expanded (no copy)."""
    rows = t.reshape(1, -1, t.shape[2], 1, t.shape[3])
    return rows.expand(-1, -1, -1, group, -1)


def forward(q_bshd: torch.Tensor, cache: KVCache, *,
            softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    fmha = importlib.import_module("xformers.ops.fmha")
    splitk = importlib.import_module("xformers.ops.fmha.triton_splitk")
    batch, seqlen_q, heads, dim = q_bshd.shape
    kv_heads = cache.num_kv_heads
    group = heads // kv_heads
    bias = _bias(q_bshd, cache)
    q = q_bshd.contiguous().reshape(1, batch * seqlen_q, kv_heads, group, dim)
    out = fmha.memory_efficient_attention_forward(
        q, _grouped(cache.k, group), _grouped(cache.v, group), attn_bias=bias,
        scale=softmax_scale, op=splitk.FwOp,
    )  # fmt: skip
    return out.reshape(batch, seqlen_q, heads, out.shape[-1])


DECODE_XFORMERS = register(Impl(name=NAME, label=LABEL, forward=forward, layout="bshd",
                                workload="decode", supports_backward=False, memory_exponent=1,
                                available=available, unsupported=unsupported, features=FEATURES,
                                tags=("third-party", "cuda", "decode")))  # fmt: skip
