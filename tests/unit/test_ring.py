"""Ring attention on gloo (CPU) for P = 2, 3, 4: every layout, causal and not, fp32 forward and
gradients within 1e-5 of the float64 reference, and no error growth with P; layouts round-trip."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from implementations.ring import gather_sequence, ring_attention, shard_sequence
from implementations.ring.seq_layouts import LAYOUTS, load_imbalance, plan, positions
from tests.distributed.ring_ranks import SHAPE, reference, run_rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single_device_errors() -> dict[str, float]:
    """The same errors at P = 1 (no process group): the baseline that must not grow with P."""
    from harness.measure.error import rel_l2

    result = {}
    for causal in (False, True):
        (q, k, v, dout), ref_out, ref_grads = reference(causal)
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = ring_attention(*leaves, causal=causal, seq_layout="contiguous")
        out.backward(dout)
        for seq_layout in LAYOUTS:
            key = f"{seq_layout}-{'causal' if causal else 'full'}"
            result[f"{key}-out"] = rel_l2(out.detach(), ref_out)
            for name, leaf, ref in zip("qkv", leaves, ref_grads, strict=True):
                result[f"{key}-d{name}"] = rel_l2(leaf.grad, ref)
    return result


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_matches_float64_on_gloo(world, tmp_path, single_device_errors):
    out_path = tmp_path / "errors.json"
    # fork: the ranks start in milliseconds instead of importing torch again (they use 1 thread)
    mp.start_processes(
        run_rank, args=(world, _free_port(), str(out_path)), nprocs=world, start_method="fork"
    )
    errors = json.loads(out_path.read_text())
    assert len(errors) == 2 * len(LAYOUTS) * 4
    for key, err in errors.items():
        assert err < 1e-5, (key, err)
        # the ring adds P merges of fp32 partials: allow a few ulps, not growth with P
        assert err <= 4 * single_device_errors[key] + 1e-7, (key, err, single_device_errors[key])


@pytest.mark.parametrize("seq_layout", LAYOUTS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_gather_round_trip(seq_layout, world):
    x = torch.randn(2, 48, 3, 4)
    shards = [
        shard_sequence(x, seq_layout=seq_layout, rank=r, world_size=world) for r in range(world)
    ]
    assert all(s.shape[1] == 48 // world for s in shards)
    assert torch.equal(gather_sequence(shards, seq_layout=seq_layout), x)
    covered = torch.cat([positions(48, seq_layout=seq_layout, rank=r, world_size=world)
                         for r in range(world)])  # fmt: skip
    assert torch.equal(covered.sort().values, torch.arange(48))


@pytest.mark.parametrize("seq_layout", LAYOUTS)
@pytest.mark.parametrize("world", [2, 3, 4])
def test_plan_covers_exactly_the_causal_pattern(seq_layout, world):
    """The pieces of every (rank, source) pair tile the global causal mask, without overlap."""
    seq = 24
    n = seq // world
    hits = torch.zeros(seq, seq, dtype=torch.int64)
    for rank in range(world):
        rows = positions(seq, seq_layout=seq_layout, rank=rank, world_size=world)
        for source in range(world):
            cols = positions(seq, seq_layout=seq_layout, rank=source, world_size=world)
            for p in plan(seq_layout, rank=rank, source=source, world_size=world, local_len=n,
                          causal=True):  # fmt: skip
                r, c = rows[p.q], cols[p.kv]
                block = torch.ones(len(r), len(c), dtype=torch.int64)
                if p.mask != "full":
                    block = block.tril()
                hits[r[:, None], c[None, :]] += block
    assert torch.equal(hits, torch.ones(seq, seq, dtype=torch.int64).tril())


def test_load_imbalance_contiguous_vs_balanced_layouts():
    assert load_imbalance("contiguous", world_size=4, local_len=64, causal=True) > 1.5
    assert load_imbalance("zigzag", world_size=4, local_len=64, causal=True) == pytest.approx(1.0)
    assert load_imbalance("striped", world_size=4, local_len=64, causal=True) < 1.02
    assert load_imbalance("contiguous", world_size=4, local_len=64, causal=False) == 1.0


def test_non_divisible_lengths_are_refused_with_a_reason():
    from harness.case import Case
    from harness.registry import REGISTRY

    ring = REGISTRY.get("ring")
    reasons = ring.unsupported(Case(seq_len=97, world_size=2, seq_layout="zigzag"), "cpu")
    assert reasons and "not a multiple of 4" in reasons[0]
    assert ring.unsupported(Case(seq_len=96, world_size=3, seq_layout="striped"), "cpu") == []
    with pytest.raises(ValueError, match="not a multiple of 3"):
        shard_sequence(torch.zeros(1, 10, 1, 1), seq_layout="striped", rank=0, world_size=3)
    with pytest.raises(ValueError, match="allowed: contiguous, striped, zigzag"):
        ring_attention(*(torch.zeros(1, 4, 1, 2),) * 3, seq_layout="ring")


def test_world_size_one_runs_without_a_process_group():
    assert SHAPE[1] == 48
    (q, k, v, _), ref_out, _ = reference(causal=True)
    out = ring_attention(q, k, v, causal=True, seq_layout="zigzag")
    assert (out.double() - ref_out).norm() / ref_out.norm() < 1e-6
