"""Micro-benchmarks of our kernels' hot paths (pytest-benchmark; `make bench`, never gated).

Small CPU sizes so they finish in seconds; compare runs with
`pytest -m benchmark tests/benchmarks --benchmark-autosave` then `pytest-benchmark compare`.
TODO(lead): add the BPT kernel's forward and fwd+bwd once implementations/bpt.py lands.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from implementations.chunked import chunked_attention

pytestmark = pytest.mark.benchmark

SHAPE_BHSD = (1, 4, 512, 64)
BLOCK = 128


def _qkv(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(SHAPE_BHSD, generator=gen).requires_grad_(requires_grad)
                 for _ in range(3))  # fmt: skip


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_chunked_forward(benchmark, causal):
    q, k, v = _qkv()
    with torch.no_grad():
        out = benchmark(chunked_attention, q, k, v, causal=causal, block_size=BLOCK)
    assert out.shape == SHAPE_BHSD


def test_chunked_forward_backward(benchmark):
    q, k, v = _qkv(requires_grad=True)

    def step() -> None:
        chunked_attention(q, k, v, causal=True, block_size=BLOCK).sum().backward()

    benchmark(step)
    assert q.grad is not None


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sdpa_flash_cpu_forward(benchmark, causal):
    q, k, v = _qkv()

    def step() -> torch.Tensor:
        with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    assert benchmark(step).shape == SHAPE_BHSD
