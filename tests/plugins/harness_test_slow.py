"""A test-only plugin: torch's math SDPA that can be slowed on purpose to prove `compare` works.

Registered through the `harness.implementations` entry-point group by the dist-info folder beside
it (put tests/plugins on PYTHONPATH). `HARNESS_TEST_SLOWDOWN_MS` adds that many milliseconds of
sleep per call. Layout: bhsd.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.registry import Impl

SLOWDOWN_ENV = "HARNESS_TEST_SLOWDOWN_MS"


def slowed_sdpa(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                causal: bool, block_size: int | None = None) -> torch.Tensor:  # fmt: skip
    delay_ms = float(os.environ.get(SLOWDOWN_ENV) or 0)
    if delay_ms > 0:
        time.sleep(delay_ms / 1e3)  # the deliberate regression
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q_bhsd, k_bhsd, v_bhsd, is_causal=causal)


SLOWED = Impl(name="slowed_sdpa", label="math SDPA, slowed by $HARNESS_TEST_SLOWDOWN_MS",
              forward=slowed_sdpa, layout="bhsd", tags=("test",))  # fmt: skip
