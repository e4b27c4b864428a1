"""The Python API refuses what no kernel can take, with one clear error, on every implementation.

Empty sequences used to kill the interpreter (SIGFPE in bpt and ring), and `block_size=0` was
silently read as "the default" by some implementations and refused by others.
"""

from __future__ import annotations

import pytest
import torch

import harness
from harness.registry import REGISTRY

ATTENTION = [i.name for i in REGISTRY.all() if i.workload == "attention"
             and not i.needs_process_group]  # fmt: skip


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("shape", [(1, 0, 2, 16), (0, 8, 2, 16), (1, 8, 0, 16)])
def test_empty_inputs_are_a_value_error(name, shape):
    q = torch.randn(shape)
    with pytest.raises(ValueError, match="every dimension >= 1"):
        harness.attention(name, q, q, q, causal=True)


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("block_size", [0, -4, True])
def test_a_block_size_below_one_is_a_value_error(name, block_size):
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        harness.attention(name, q, q, q, block_size=block_size)


def test_ring_attention_refuses_empty_inputs():
    q = torch.randn(1, 0, 2, 16)
    with pytest.raises(ValueError, match="every dimension >= 1"):
        harness.ring_attention(q, q, q, causal=True)
