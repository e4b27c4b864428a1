"""Implementations declare their facts (`Impl.memory_exponent`, `Impl.uses_block_size`) and the
declarations are true: a kernel that says it ignores `block_size` gives bitwise the same output at
any block size, one that uses it does not."""

from __future__ import annotations

import pytest
import torch

import harness
from harness.case import Case
from harness.registry import REGISTRY, Impl
from tests.helpers.synthetic_runs import IMPL_FACTS

QUADRATIC = {"naive", "sdpa_math", "vanilla_layer"}  # the S×S scores exist
# ulysses: its local blockwise kernel; ring_attention_pytorch: its bucket_size
USES_BLOCK_SIZE = {"chunked", "bpt", "bpt_layer", "ulysses", "ring_attention_pytorch"}


def _builtin(impl: Impl) -> bool:
    """Registered by `implementations/` (not by a test plugin some other test put on sys.path)."""
    forward = getattr(impl.forward, "func", impl.forward)  # functools.partial
    return forward.__module__.split(".")[0] == "implementations"


BUILTINS = [i for i in REGISTRY.all() if _builtin(i)]


def test_the_builtins_are_found():
    names = {i.name for i in BUILTINS}
    assert names >= {"naive", "chunked", "sdpa_math", "sdpa_flash", "bpt", "ring", "flex"}
    assert names >= {"vanilla_layer", "memeff_layer", "bpt_layer", "flash_attn2", "xformers"}


@pytest.mark.parametrize("impl", BUILTINS, ids=lambda i: i.name)
def test_every_registered_implementation_declares_its_memory_exponent(impl):
    assert impl.memory_exponent == (2 if impl.name in QUADRATIC else 1)


@pytest.mark.parametrize("impl", BUILTINS, ids=lambda i: i.name)
def test_uses_block_size_is_declared(impl):
    assert impl.uses_block_size is (impl.name in USES_BLOCK_SIZE)


def test_undeclared_facts_default_to_unknown():
    impl = Impl(name="x", label="x", forward=lambda *a, **k: None)
    assert impl.memory_exponent is None and impl.uses_block_size is False


def test_synthetic_rows_carry_the_registrys_facts():
    for name, facts in IMPL_FACTS.items():
        if name in REGISTRY.names():
            impl = REGISTRY.get(name)
            assert facts == {"memory_exponent": impl.memory_exponent,
                             "uses_block_size": impl.uses_block_size}, name  # fmt: skip


# Compiled flex pays seconds of compilation per shape; ring needs a process group.
RUNNABLE = [i.name for i in BUILTINS if i.workload == "attention" and not i.needs_process_group
            and "compiled" not in i.tags]  # fmt: skip


@pytest.mark.parametrize("name", RUNNABLE)
def test_block_size_changes_the_output_exactly_when_declared(name):
    impl = REGISTRY.get(name)
    case = Case(seq_len=256, num_heads=2, head_dim=32)
    if not (av := impl.available("cpu")).ok:
        pytest.skip(av.reason)
    if reasons := impl.unsupported(case, "cpu"):
        pytest.skip("; ".join(reasons))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 256, 2, 32, generator=gen) for _ in range(3))
    small, large = (harness.attention(name, q, k, v, causal=False, block_size=b) for b in (16, 256))
    torch.testing.assert_close(small, large)
    assert torch.equal(small, large) is not impl.uses_block_size
