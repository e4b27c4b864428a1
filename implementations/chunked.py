"""Memory-efficient attention of Rabe & Staats (arXiv 2112.05682), in plain torch.

Queries in chunks of `block_size` (default 1024), keys in chunks of 4 × that (default 4096, the
paper's choice). Each key chunk yields (exp-weighted values, exp sum, max); the chunks of one query
chunk are combined once with a shared max. Both loops are checkpointed, so backward recomputes a
query chunk at a time and its memory stays O(S·d + q_chunk·k_chunk) instead of O(S²).
All arithmetic is in float32 (float64 for float64 inputs) and only the output is cast back:
the blocks are upcast *before* q·kᵀ, since a float16 product overflows at 65504 (NaN out of the
softmax) before it could be upcast; the values product p·v is upcast too, which on CPU costs no
time (torch's CPU matmuls are no faster in float16/bfloat16 here) and saves p's low-precision
copy. Inputs of any strides (plain torch ops). Layout: bhsd.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from harness.registry import Impl, register

DEFAULT_QUERY_CHUNK = 1024
KEY_CHUNK_FACTOR = 4


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _summarize_key_chunk(q_c, k_c, v_c, q_start: torch.Tensor, k_start: torch.Tensor, causal: bool):
    """exp-weighted values, exp sums and row max of one (query chunk, key chunk) pair."""
    acc = _acc_dtype(q_c.dtype)
    s = (q_c.to(acc) * (1.0 / math.sqrt(q_c.shape[-1]))) @ k_c.to(acc).transpose(-1, -2)
    if causal:
        q_pos = q_start + torch.arange(q_c.shape[-2], device=q_c.device)
        k_pos = k_start + torch.arange(k_c.shape[-2], device=q_c.device)
        s = s.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows fully masked in this chunk
    p = torch.exp(s - m)
    values = p @ v_c.to(acc)
    return values, p.sum(dim=-1, keepdim=True), m


def _query_chunk(q_c, k, v, q_start: int, key_chunk: int, causal: bool) -> torch.Tensor:
    grad = torch.is_grad_enabled()
    q_end = q_start + q_c.shape[-2]
    parts = []
    for k_start in range(0, k.shape[-2], key_chunk):
        if causal and k_start >= q_end:
            break  # every key of this chunk is in the future of every query
        keys = slice(k_start, k_start + key_chunk)
        args = (q_c, k[..., keys, :], v[..., keys, :], torch.tensor(q_start),
                torch.tensor(k_start), causal)  # fmt: skip
        parts.append(checkpoint(_summarize_key_chunk, *args, use_reentrant=False) if grad
                     else _summarize_key_chunk(*args))  # fmt: skip
    values = torch.stack([p[0] for p in parts])
    sums = torch.stack([p[1] for p in parts])
    maxes = torch.stack([p[2] for p in parts])
    global_max = maxes.amax(dim=0, keepdim=True)
    weights = torch.exp(maxes - global_max)
    out = (values * weights).sum(0) / (sums * weights).sum(0)
    return out.to(q_c.dtype)


def chunked_attention(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                      causal: bool, block_size: int | None = None) -> torch.Tensor:  # fmt: skip
    query_chunk = block_size or DEFAULT_QUERY_CHUNK
    key_chunk = query_chunk * KEY_CHUNK_FACTOR
    grad = torch.is_grad_enabled()
    outs = []
    for q_start in range(0, q_bhsd.shape[-2], query_chunk):
        q_c = q_bhsd[..., q_start : q_start + query_chunk, :]
        args = (q_c, k_bhsd, v_bhsd, q_start, key_chunk, causal)
        outs.append(checkpoint(_query_chunk, *args, use_reentrant=False) if grad
                    else _query_chunk(*args))  # fmt: skip
    return torch.cat(outs, dim=-2)


CHUNKED = register(Impl(name="chunked", label="Chunked (Rabe & Staats)",
                        forward=chunked_attention, layout="bhsd", memory_exponent=1,
                        uses_block_size=True))  # fmt: skip
