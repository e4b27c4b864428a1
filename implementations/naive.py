"""Naive attention: materializes the full S×S score matrix, everything in the input dtype.

The baseline every paper compares against, and the "same low precision" yardstick of the tolerance
rule. Layout: q_bhsd, k_bhsd, v_bhsd -> out_bhsd; any strides (plain matmuls).

Deliberately *not* upcast: the S×S scores stay in the input dtype, as in the textbook kernel whose
memory and error this row measures (float32 scores would double its S×S memory). So in float16
it overflows once |q·k| passes 65504 (scores inf, softmax NaN): its row's error is then inf, the
yardstick is gone, and the tolerance falls back to the unit-roundoff rule of
`harness.measure.tolerance`. bfloat16 has float32's range and never overflows here.
"""

from __future__ import annotations

import math

import torch

from harness.registry import Impl, register


def naive_attention(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                    causal: bool, block_size: int | None = None) -> torch.Tensor:  # fmt: skip
    scores_bhss = (q_bhsd @ k_bhsd.transpose(-1, -2)) * (1.0 / math.sqrt(q_bhsd.shape[-1]))
    if causal:
        sq, sk = scores_bhss.shape[-2:]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q_bhsd.device).triu(sk - sq + 1)
        scores_bhss = scores_bhss.masked_fill(mask, float("-inf"))
    return torch.softmax(scores_bhss, dim=-1) @ v_bhsd


NAIVE = register(Impl(name="naive", label="Naive (S×S)", forward=naive_attention, layout="bhsd",
                      memory_exponent=2))  # fmt: skip
