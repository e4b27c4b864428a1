"""Micro-benchmarks (pytest-benchmark, marker `benchmark`, not in the default run): bpt beside
torch's fused CPU flash kernel at the issue's shape, and the fp32 matmul peak they are judged by.

    python -m pytest -m benchmark tests/benchmarks/test_bpt_bench.py

Numbers, not asserts: the harness suites (suites/bpt*.yaml) are the record.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from implementations.bpt import bpt_attention

pytestmark = pytest.mark.benchmark
SEQ, HEADS, DIM = 8192, 8, 64


def _sdpa_flash(q, k, v, *, causal: bool, block_size: int | None = None):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


@pytest.mark.parametrize("phase", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", ["bpt", "sdpa_flash"])
def test_attention_s8192(benchmark, impl: str, causal: bool, phase: str) -> None:
    fn = bpt_attention if impl == "bpt" else _sdpa_flash
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, HEADS, SEQ, DIM, generator=gen) for _ in range(4))
    leaves = [t.requires_grad_(phase == "fwd_bwd") for t in (q, k, v)]

    def step() -> None:
        if phase == "fwd":
            with torch.no_grad():
                fn(*leaves, causal=causal)
        else:
            fn(*leaves, causal=causal).backward(dout)

    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    pairs = SEQ * (SEQ + 1) // 2 if causal else SEQ * SEQ
    flops = 4.0 * HEADS * pairs * DIM * (3.5 if phase == "fwd_bwd" else 1.0)
    benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats["median"] / 1e9


def test_fp32_matmul_peak(benchmark) -> None:
    """The machine's practical fp32 peak: a 4096³ matmul (2·n³ FLOPs)."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    benchmark.pedantic(lambda: a @ b, rounds=5, warmup_rounds=1)
    benchmark.extra_info["gflops_per_s"] = 2 * 4096**3 / benchmark.stats["median"] / 1e9
