"""Naive attention: materializes the full S×S score matrix, everything in the input dtype.

The baseline every paper compares against, and the "same low precision" yardstick of the tolerance
rule. Layout: q_bhsd (B, Hq, Sq, D), k_bhsd (B, Hkv, Sk, D), v_bhsd (B, Hkv, Sk, Dv) ->
out_bhsd (B, Hq, Sq, Dv); any strides (plain matmuls).

Supports every mask kind of `harness.masks` (the (Sq, Sk) boolean mask of `MaskSpec.dense`,
Sq·Sk bytes, built once per mask and shape and kept for the next call; `causal=True` is the
bottom-right aligned causal mask), GQA/MQA (query head h uses kv head h // (Hq // Hkv): q is viewed
as (B, Hkv, G·Sq, D) so each kv head meets its G query heads in one matmul, and k/v are never
repeated), Sq != Sk, Dv != D and `softmax_scale` (None: 1/sqrt(D)). A query row with no allowed key
gives output 0 and zero gradients (its scores are left unmasked so the softmax stays finite, and
its output row is zeroed).

Deliberately *not* upcast: the S×S scores stay in the input dtype, as in the textbook kernel whose
memory and error this row measures (float32 scores would double its S×S memory). So in float16
it overflows once |q·k| passes 65504 (scores inf, softmax NaN): its row's error is then inf, the
yardstick is gone, and the tolerance falls back to the unit-roundoff rule of
`harness.measure.tolerance`. bfloat16 has float32's range and never overflows here.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from harness.masks import MASK_KINDS, MaskSpec
from harness.registry import Impl, register


def _spec(causal: bool, mask: MaskSpec | None) -> MaskSpec:
    """The one mask in force: `mask`, or the bottom-right causal mask when `causal`."""
    return (mask or MaskSpec()).with_causal(causal)


@lru_cache(maxsize=1)
def _masking(
    spec: MaskSpec, sq: int, sk: int, device: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where the (Sq, Sk) scores become -inf, and the (Sq, 1) rows without any key (None when
    every row has one). Built once per mask and shape, like an input of the kernel, not on every
    timed call. An empty row's scores are set to 0 (a finite softmax even where its raw float16
    scores overflowed, so no NaN reaches dk, dv through it) and its output is zeroed."""
    allowed = spec.dense(sq, sk, device)
    empty = ~allowed.any(-1, keepdim=True)
    return ~allowed, (empty if bool(empty.any()) else None)


def naive_attention(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                    causal: bool, block_size: int | None = None, mask: MaskSpec | None = None,
                    softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    b, hq, sq, d = q_bhsd.shape
    hkv, sk = k_bhsd.shape[1], k_bhsd.shape[2]
    group = hq // hkv
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    q_grouped = q_bhsd.reshape(b, hkv, group * sq, d)  # a view when q is contiguous
    scores = (q_grouped @ k_bhsd.transpose(-1, -2)) * scale  # (B, Hkv, G·Sq, Sk)
    spec = _spec(causal, mask)
    empty = None
    if spec.kind != "none":
        fill, empty = _masking(spec, sq, sk, str(q_bhsd.device))
        scores = scores.view(b, hkv, group, sq, sk).masked_fill(fill, float("-inf"))
        if empty is not None:
            scores = scores.masked_fill(empty, 0.0)
        scores = scores.view(b, hkv, group * sq, sk)
    out = (torch.softmax(scores, dim=-1) @ v_bhsd).view(b, hq, sq, v_bhsd.shape[-1])
    return out if empty is None else out.masked_fill(empty, 0.0)


NAIVE = register(Impl(name="naive", label="Naive (S×S)", forward=naive_attention, layout="bhsd",
                      memory_exponent=2,
                      features=frozenset({"gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale"}),
                      mask_kinds=MASK_KINDS))  # fmt: skip
