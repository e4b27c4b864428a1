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


def test_any_length_is_accepted_and_bad_arguments_are_named():
    from harness.case import Case
    from harness.registry import REGISTRY, declared_reasons

    ring = REGISTRY.get("ring")
    for case in (Case(seq_len=97, world_size=2, seq_layout="zigzag"),
                 Case(seq_len=97, world_size=3, seq_layout="striped", num_kv_heads=2),
                 Case(seq_len=97, world_size=4, head_dim_v=32, softmax_scale=0.5)):  # fmt: skip
        assert ring.unsupported(case, "cpu") == [] and declared_reasons(ring, case) == []
    unequal = Case(seq_len=96, seqlen_q=32, world_size=2)
    assert declared_reasons(ring, unequal) == ["no support for seqlen_q 32 != seqlen_k 96"]
    with pytest.raises(ValueError, match="allowed: contiguous, striped, zigzag"):
        ring_attention(*(torch.zeros(1, 4, 1, 2),) * 3, seq_layout="ring")
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="seqlen_q == seqlen_k"):
        ring_attention(x, x[:, :2], x[:, :2])
    with pytest.raises(ValueError, match=r"dividing num_heads; got rank 0: q \(1, 4, 2"):
        ring_attention(x, torch.zeros(1, 4, 3, 2), torch.zeros(1, 4, 3, 2))
    with pytest.raises(ValueError, match="seq_len 5 does not shard to local_seq 4 on 1 ranks"):
        ring_attention(x, x, x, seq_len=5)
    with pytest.raises(ValueError, match="softmax_scale must be a positive finite number; got 0"):
        ring_attention(x, x, x, softmax_scale=0)


def test_world_size_one_runs_without_a_process_group():
    assert SHAPE[1] == 48
    (q, k, v, _), ref_out, _ = reference(causal=True)
    out = ring_attention(q, k, v, causal=True, seq_layout="zigzag")
    assert (out.double() - ref_out).norm() / ref_out.norm() < 1e-6


def _run(body: str, world: int, tmp_path) -> list:
    from tests.distributed.ring_ranks import run_named

    out_path = tmp_path / f"{body}.json"
    mp.start_processes(run_named, args=(world, _free_port(), str(out_path), body), nprocs=world,
                       start_method="fork")  # fmt: skip
    return json.loads(out_path.read_text())


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3, 4])
def test_any_length_is_padded_and_masked_on_every_layout(world, tmp_path):
    """Lengths no layout splits (15, 17, 1), causal and not, MHA/GQA/MQA (head_dim_v and
    softmax_scale on one of them): forward and gradients
    within 1e-5 of float64 unpadded attention, exact zeros on padded rows even with a non-zero
    upstream gradient there, and K/V bytes a step proportional to num_kv_heads."""
    from tests.distributed.ring_ranks import PADDED_CASES

    everyone = _run("padded_errors_on_rank", world, tmp_path)
    errors = everyone[0]
    assert len(errors) == len(PADDED_CASES) * 2 * len(LAYOUTS) * 6
    for key, err in errors.items():
        if key.endswith("-padmax"):
            assert all(rank[key] == 0.0 for rank in everyone), key
        elif not key.endswith("-bytes_per_step"):
            assert err < 1e-5, (key, err)
    # fp32 k and v of one padded block, n·kv_heads·(8 + head_dim_v)·4 bytes, travel with their
    # own heads; a backward step at P > 2 also carries the block's dK/dV sums (as many again)
    for seq_layout in LAYOUTS:
        for seq_len, kv_heads, head_dim_v, _ in PADDED_CASES:
            n = shard_sequence(torch.zeros(1, seq_len), seq_layout=seq_layout, rank=0,
                               world_size=world).shape[1]  # fmt: skip
            key = f"S{seq_len}-kv{kv_heads}-{seq_layout}-full-bytes_per_step"
            expected = min(2, world - 1) * n * kv_heads * (8 + head_dim_v) * 4
            assert errors[key] == expected, (key, errors[key], n)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_unequal_shards_raise_one_clear_error_on_every_rank(world, tmp_path):
    everyone = _run("unequal_errors_on_rank", world, tmp_path)
    n = 4 * world - 1
    sizes = [len(c) for c in torch.chunk(torch.zeros(n), world)]
    for seq_layout in LAYOUTS:
        messages = {rank[seq_layout] for rank in everyone}
        assert len(messages) == 1, messages  # the same error on every rank
        message = messages.pop()
        assert "same local shapes on every rank" in message and "shard_sequence" in message
        for r, size in enumerate(sizes):
            assert f"rank {r}: q (1, {size}, 2, 8)" in message, message
    assert all(rank["after"] == str((1, 4, 2, 8)) for rank in everyone)


@pytest.mark.parametrize("seq_layout", LAYOUTS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("seq_len", [1, 7, 15, 17])
def test_padded_shards_round_trip(seq_layout, world, seq_len):
    from implementations.ring.seq_layouts import padded_len, valid_len

    x = torch.randn(2, seq_len, 3)
    shards = [shard_sequence(x, seq_layout=seq_layout, rank=r, world_size=world)
              for r in range(world)]  # fmt: skip
    padded = padded_len(seq_len, seq_layout, world)
    assert padded % world == 0 and padded - seq_len < 2 * world
    for r, s in enumerate(shards):
        assert s.shape[1] == padded // world
        real = valid_len(seq_len, seq_layout=seq_layout, rank=r, world_size=world)
        assert torch.equal(s[:, real:], torch.zeros_like(s[:, real:]))  # padding is a suffix
    assert sum(valid_len(seq_len, seq_layout=seq_layout, rank=r, world_size=world)
               for r in range(world)) == seq_len  # fmt: skip
    assert torch.equal(gather_sequence(shards, seq_layout=seq_layout, seq_len=seq_len), x)
    with pytest.raises(ValueError, match="are not seq_len"):
        gather_sequence(shards, seq_layout=seq_layout, seq_len=padded + 2 * world)


@pytest.mark.parametrize("seq_layout", LAYOUTS)
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("seq_len", [5, 13])
def test_clipped_plan_covers_exactly_the_real_causal_pattern(seq_layout, world, seq_len):
    """With padding, the clipped pieces tile the causal mask of the real positions only."""
    from implementations.ring.seq_layouts import padded_len

    padded = padded_len(seq_len, seq_layout, world)
    n = padded // world
    hits = torch.zeros(padded, padded, dtype=torch.int64)
    for rank in range(world):
        rows = positions(padded, seq_layout=seq_layout, rank=rank, world_size=world)
        for source in range(world):
            cols = positions(padded, seq_layout=seq_layout, rank=source, world_size=world)
            for p in plan(seq_layout, rank=rank, source=source, world_size=world, local_len=n,
                          causal=True, seq_len=seq_len):  # fmt: skip
                r, c = rows[p.q], cols[p.kv]
                block = torch.ones(len(r), len(c), dtype=torch.int64)
                if p.mask != "full":
                    block = block.tril()
                hits[r[:, None], c[None, :]] += block
    expected = torch.zeros(padded, padded, dtype=torch.int64)
    expected[:seq_len, :seq_len] = torch.ones(seq_len, seq_len, dtype=torch.int64).tril()
    assert torch.equal(hits, expected)


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_head_dim_v_and_scale_on_one_device(causal):
    """GQA/MQA, head_dim_v != head_dim and softmax_scale without a process group, float64
    reference; the gradients of k and v keep num_kv_heads heads."""
    from tests.distributed.ring_ranks import reference_gqa

    for kv_heads, head_dim_v, scale in ((2, 8, 0.2), (1, 4, None)):
        (q, k, v, dout), ref_out, ref_grads = reference_gqa(24, kv_heads, causal,
                                                            head_dim_v=head_dim_v,
                                                            softmax_scale=scale)  # fmt: skip
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = ring_attention(*leaves, causal=causal, softmax_scale=scale)
        out.backward(dout)
        assert (out.double() - ref_out).norm() / ref_out.norm() < 1e-5
        for leaf, ref in zip(leaves, ref_grads, strict=True):
            assert leaf.grad.shape == leaf.shape
            assert (leaf.grad.double() - ref).norm() / ref.norm() < 1e-5
