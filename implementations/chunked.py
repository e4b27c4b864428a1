"""Memory-efficient attention of Rabe & Staats (arXiv 2112.05682), in plain torch.

Queries in chunks of `block_size` (default 1024), keys in chunks of 4 × that (default 4096, the
paper's choice). Each key chunk yields (exp-weighted values, exp sum, max); the chunks of one query
chunk are combined once with a shared max. Both loops are checkpointed, so backward recomputes a
query chunk at a time and its memory stays O(S·d + q_chunk·k_chunk) instead of O(S²).
All arithmetic is in float32 (float64 for float64 inputs) and only the output is cast back:
the blocks are upcast *before* q·kᵀ, since a float16 product overflows at 65504 (NaN out of the
softmax) before it could be upcast; the values product p·v is upcast too, which on CPU costs no
time (torch's CPU matmuls are no faster in float16/bfloat16 here) and saves p's low-precision
copy. Inputs of any strides (plain torch ops). Layout: bhsd: q (B, Hq, Sq, D), k (B, Hkv, Sk, D),
v (B, Hkv, Sk, Dv) -> out (B, Hq, Sq, Dv).

Masks: every kind of `harness.masks` (`causal=True` is bottom-right aligned causal); the (query
chunk, key chunk) pairs are classified once and cached (`blockwise_ops.tile_plan`), key chunks the
mask empties are skipped, and a partial chunk's mask comes from `MaskSpec.tile` (recomputed in
backward inside the checkpoint, or the plan's cached tile). Rows with no key give 0 (no NaN) and
zero gradients. GQA/MQA by broadcasting: each group's queries are folded into one sequence,
(B, Hq, s, D) -> (B, Hkv, G·s, D), so k and v are never copied (query head h uses kv head
h // G). Any softmax_scale (default 1/sqrt(head_dim)) and head_dim_v.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from harness.masks import MASK_KINDS, MaskSpec
from harness.registry import Impl, register
from implementations.blockwise_ops import TilePlan, kv_groups, resolve_mask, tile_plan

DEFAULT_QUERY_CHUNK = 1024
KEY_CHUNK_FACTOR = 4


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _summarize_key_chunk(q_f, k_c, v_c, plan: TilePlan, i: int, j: int, scale: float):
    """exp-weighted values, exp sums and row max (-inf where the chunk masks the whole row) of
    one (query chunk, key chunk) pair; q_f: the chunk's queries folded per kv head, (B, Hkv,
    G·s, D)."""
    acc = _acc_dtype(q_f.dtype)
    s = (q_f.to(acc) * scale) @ k_c.to(acc).transpose(-1, -2)
    allowed = plan.tile(i, plan.pairs[i][j])
    if allowed is not None:
        rows = allowed.shape[0]
        s.unflatten(2, (s.shape[2] // rows, rows)).masked_fill_(~allowed, float("-inf"))
    m = s.detach().amax(dim=-1, keepdim=True)  # the result does not depend on m: no gradient
    p = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    values = p @ v_c.to(acc)
    return values, p.sum(dim=-1, keepdim=True), m


def _query_chunk(q_c, k, v, plan: TilePlan, i: int, scale: float) -> torch.Tensor:
    grad = torch.is_grad_enabled()
    groups = kv_groups(q_c, k)
    q_f = q_c.unflatten(1, (k.shape[1], groups)).flatten(2, 3)  # (B, Hkv, G·s, D)
    parts = []
    for j, pair in enumerate(plan.pairs[i]):
        args = (q_f, k[..., pair.cols, :], v[..., pair.cols, :], plan, i, j, scale)
        parts.append(checkpoint(_summarize_key_chunk, *args, use_reentrant=False) if grad
                     else _summarize_key_chunk(*args))  # fmt: skip
    values = torch.stack([p[0] for p in parts])
    sums = torch.stack([p[1] for p in parts])
    maxes = torch.stack([p[2] for p in parts])
    global_max = maxes.amax(dim=0, keepdim=True)
    global_max = torch.where(torch.isfinite(global_max), global_max, torch.zeros_like(global_max))
    weights = torch.exp(maxes - global_max)  # 0 for chunks that mask the row entirely
    denom = (sums * weights).sum(0)
    out = (values * weights).sum(0) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out.unflatten(2, (groups, q_c.shape[-2])).flatten(1, 2).to(q_c.dtype)


def chunked_attention(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                      causal: bool, block_size: int | None = None, mask: MaskSpec | None = None,
                      softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    """`causal` is bottom-right aligned; `mask` (any kind, causal added when `causal`) gives the
    attended pairs exactly."""
    query_chunk = DEFAULT_QUERY_CHUNK if block_size is None else block_size
    if query_chunk < 1:
        raise ValueError(f"block_size must be positive; got {block_size}")
    key_chunk = query_chunk * KEY_CHUNK_FACTOR
    kv_groups(q_bhsd, k_bhsd)
    scale = 1.0 / math.sqrt(q_bhsd.shape[-1]) if softmax_scale is None else softmax_scale
    plan = tile_plan(resolve_mask(causal, mask), q_bhsd.shape[-2], k_bhsd.shape[-2], query_chunk,
                     key_chunk, device=q_bhsd.device)  # fmt: skip
    grad = torch.is_grad_enabled()
    outs = []
    for i, rows in enumerate(plan.rows):
        q_c = q_bhsd[..., rows, :]
        if not plan.pairs[i]:  # no key for any row of the chunk: 0, and no gradient
            shape = (*q_c.shape[:-1], v_bhsd.shape[-1])
            outs.append(torch.zeros(shape, dtype=q_bhsd.dtype, device=q_bhsd.device))
            continue
        args = (q_c, k_bhsd, v_bhsd, plan, i, scale)
        outs.append(checkpoint(_query_chunk, *args, use_reentrant=False) if grad
                    else _query_chunk(*args))  # fmt: skip
    return torch.cat(outs, dim=-2)


CHUNKED = register(Impl(name="chunked", label="Chunked (Rabe & Staats)",
                        forward=chunked_attention, layout="bhsd", memory_exponent=1,
                        uses_block_size=True,
                        features=frozenset({"gqa", "seqlen_q_ne_k", "head_dim_v",
                                            "softmax_scale"}),
                        mask_kinds=MASK_KINDS))  # fmt: skip
