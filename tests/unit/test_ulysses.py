"""Ulysses (arXiv 2309.14509) on gloo ranks: output and gradients against float64 attention for
every sequence layout, causal or not, GQA and a mask; harness rows with the all-to-all volume the
method predicts; heads that do not divide by P refused with the reason."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.masks import MaskSpec
from implementations.ring.seq_layouts import LAYOUTS, gather_sequence, shard_sequence
from implementations.ulysses import split_reason, ulysses_attention

SEQ, HEAD_DIM = 48, 16  # 48 divides by 2P for P = 2, 3, 4
TOL = 1e-5  # max abs error vs float64 of fp32 inputs ~1e-6 here (unit-variance inputs)


def reference(q, k, v, dout, causal: bool, mask: MaskSpec | None = None):
    """float64 out and grads of naive attention on the whole sequence (kv head = h // G)."""
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    groups = q.shape[2] // k.shape[2]
    q64, k64, v64 = (t.transpose(1, 2) for t in leaves)
    k64, v64 = (t.repeat_interleave(groups, dim=1) for t in (k64, v64))
    s = q64 @ k64.transpose(-1, -2) / q.shape[-1] ** 0.5
    keep = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool)
    if mask is not None:
        keep = mask.dense(q.shape[1], q.shape[1])
    if causal:
        keep &= torch.ones_like(keep).tril()
    s = s.masked_fill(~keep, float("-inf"))
    out = (torch.softmax(s, -1) @ v64).transpose(1, 2)
    return out.detach(), torch.autograd.grad(out, leaves, dout.double())


def _inputs(heads: int, kv_heads: int, batch: int = 2):
    gen = torch.Generator().manual_seed(0)
    q, dout = (torch.randn(batch, SEQ, heads, HEAD_DIM, generator=gen) for _ in range(2))
    k, v = (torch.randn(batch, SEQ, kv_heads, HEAD_DIM, generator=gen) for _ in range(2))
    return q, k, v, dout


def _cases(world: int):
    window = MaskSpec.from_dict({"kind": "sliding_window", "window": [5, 0]})
    for causal in (False, True):
        for seq_layout in LAYOUTS:
            yield f"{seq_layout}-{'causal' if causal else 'full'}", causal, seq_layout, None
    yield "zigzag-window", False, "zigzag", window


def _errors_on_rank(rank: int, world: int) -> dict[str, float]:
    """Max abs errors (out, dq, dk, dv) of the gathered results, per case."""
    q, k, v, dout = _inputs(heads=2 * world, kv_heads=world)  # GQA 2:1, kv heads split too
    result = {}
    for key, causal, seq_layout, mask in _cases(world):
        ref_out, ref_grads = reference(q, k, v, dout, causal, mask)
        local = [shard_sequence(t, seq_layout=seq_layout, rank=rank, world_size=world)
                 for t in (q, k, v, dout)]  # fmt: skip
        leaves = [t.clone().requires_grad_(True) for t in local[:3]]
        out = ulysses_attention(*leaves, causal=causal, seq_layout=seq_layout, mask=mask,
                                block_size=16)  # fmt: skip
        out.backward(local[3])

        def gathered(t: torch.Tensor, seq_layout: str = seq_layout) -> torch.Tensor:
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous())
            return gather_sequence(parts, seq_layout=seq_layout, dim=1).double()

        result[f"{key}-out"] = (gathered(out.detach()) - ref_out).abs().max().item()
        for name, leaf, ref in zip("qkv", leaves, ref_grads, strict=True):
            result[f"{key}-d{name}"] = (gathered(leaf.grad) - ref).abs().max().item()
    result.update(_padded_errors(rank, world, q, k, v, dout))
    return result


def _padded_errors(rank: int, world: int, q, k, v, dout) -> dict[str, float]:
    """A length the layouts cannot split: `shard_sequence` pads, `seq_len` drops the padding."""
    n = SEQ - 3
    q, k, v, dout = (t[:, :n] for t in (q, k, v, dout))
    result = {}
    for causal in (False, True):
        for seq_layout in LAYOUTS:
            ref_out, ref_grads = reference(q, k, v, dout, causal)
            local = [shard_sequence(t, seq_layout=seq_layout, rank=rank, world_size=world)
                     for t in (q, k, v, dout)]  # fmt: skip
            leaves = [t.clone().requires_grad_(True) for t in local[:3]]
            out = ulysses_attention(*leaves, causal=causal, seq_layout=seq_layout, block_size=16,
                                    seq_len=n)  # fmt: skip
            out.backward(local[3])

            def gathered(t: torch.Tensor, seq_layout: str = seq_layout) -> torch.Tensor:
                parts = [torch.empty_like(t) for _ in range(world)]
                dist.all_gather(parts, t.contiguous())
                return gather_sequence(parts, seq_layout=seq_layout, dim=1, seq_len=n).double()

            key = f"pad{n}-{seq_layout}-{'causal' if causal else 'full'}"
            result[f"{key}-out"] = (gathered(out.detach()) - ref_out).abs().max().item()
            for name, leaf, ref in zip("qkv", leaves, ref_grads, strict=True):
                result[f"{key}-d{name}"] = (gathered(leaf.grad) - ref).abs().max().item()
    return result


def _run_rank(rank: int, world: int, port: int, out_path: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        result = _errors_on_rank(rank, world)
        if rank == 0:
            Path(out_path).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3, 4])  # ~1 s each on a quiet 2-core machine
def test_ulysses_matches_float64_on_gloo(world, tmp_path):
    out_path = tmp_path / "errors.json"
    mp.start_processes(_run_rank, args=(world, _free_port(), str(out_path)), nprocs=world,
                       start_method="fork")  # fmt: skip
    errors = json.loads(out_path.read_text())
    assert len(errors) == (2 * len(LAYOUTS) + 1) * 4 + 2 * len(LAYOUTS) * 4  # + padded lengths
    for key, err in errors.items():
        assert err < TOL, (world, key, err)


def test_one_device_is_the_blockwise_kernel():
    q, k, v, dout = _inputs(heads=4, kv_heads=2)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = ulysses_attention(*leaves, causal=True, block_size=16)
    out.backward(dout)
    ref_out, ref_grads = reference(q, k, v, dout, causal=True)
    assert (out.double() - ref_out).abs().max() < TOL
    for leaf, ref in zip(leaves, ref_grads, strict=True):
        assert (leaf.grad.double() - ref).abs().max() < TOL


def test_heads_that_do_not_split_are_named():
    assert split_reason(8, 8, 2) is None and split_reason(8, 4, 4) is None
    assert split_reason(6, 6, 4) == ("num_heads 6 is not a multiple of world_size 4 (Ulysses "
                                     "splits heads over ranks)")  # fmt: skip
    assert "num_kv_heads 2 is not a multiple of world_size 4" in split_reason(8, 2, 4)
    with pytest.raises(ValueError, match="unknown seq_layout 'spiral'; allowed: contiguous"):
        ulysses_attention(*_inputs(2, 2)[:3], seq_layout="spiral")


def _rows(data: dict, tmp_path) -> list[dict]:
    from harness.results import RunDir
    from harness.run.sweep import plan, run_tasks
    from harness.suite import parse_suite

    suite = parse_suite(data)
    run = RunDir.create(tmp_path / "run", {"run_id": "t", "suite_name": suite.name}, {})
    run_tasks(suite, plan(suite, "cpu"), run)
    return run.rows()


def test_registry_refuses_heads_that_do_not_divide():
    from harness.case import Case
    from harness.registry import REGISTRY, declared_reasons

    ulysses = REGISTRY.get("ulysses")
    assert ulysses.unsupported(Case(seq_len=64, num_heads=3, world_size=2), "cpu") == [
        "num_heads 3 is not a multiple of world_size 2 (Ulysses splits heads over ranks)"
    ]
    gqa = Case(seq_len=64, num_heads=8, num_kv_heads=2, world_size=4, seq_layout="zigzag")
    assert declared_reasons(ulysses, gqa) == []
    assert ulysses.unsupported(gqa, "cpu")[0].startswith("num_kv_heads 2 is not a multiple of")
    assert ulysses.unsupported(Case(seq_len=64, num_heads=8, world_size=4), "cpu") == []


@pytest.mark.slow  # ~4 s quiet (a worker, then rank processes); ring and ulysses on one case
@pytest.mark.distributed
def test_harness_rows_match_reference_and_the_all_to_all_volume(tmp_path):
    from tests.conftest import tiny_suite

    data = tiny_suite(implementations=["ulysses", "ring"],
                      sweep={"seq_len": [64], "num_heads": [2], "head_dim": [16],
                             "world_size": [2], "causal": [True], "seq_layout": ["zigzag"],
                             "phase": ["fwd_bwd"]})  # fmt: skip
    rows = {r["impl"]: r for r in _rows(data, tmp_path)}
    for impl, row in rows.items():
        assert row["status"] == "ok", row
        for key in ("err_rel_l2", "err_dq_rel_l2", "err_dk_rel_l2", "err_dv_rel_l2"):
            assert row[key] < 1e-5, (impl, key, row[key])
    # forward: q, k, v in and out back; backward: the same four in reverse. Each all-to-all
    # sends (P-1)/P of a local (1, 32, 2, 16) fp32 tensor (4096 bytes): 2048 bytes, 8 times
    row = rows["ulysses"]
    assert row["bytes_sent_per_rank"] == [8 * 2048] * 2
    assert row["num_exchanges"] == 8 and row["load_imbalance"] == 1.0


# --- USP (arXiv 2405.07719): our Ulysses inside groups of u ranks × our ring across them ---


def _usp_errors_on_rank(rank: int, world: int) -> dict[str, float]:
    from implementations.usp import usp_attention

    q, k, v, dout = _inputs(heads=6, kv_heads=2)  # P = 4: heads allow u = 2, so 2 × 2
    result = {}
    for causal in (False, True):
        ref_out, ref_grads = reference(q, k, v, dout, causal)
        local = [shard_sequence(t, seq_layout="contiguous", rank=rank, world_size=world)
                 for t in (q, k, v, dout)]  # fmt: skip
        leaves = [t.clone().requires_grad_(True) for t in local[:3]]
        out = usp_attention(*leaves, causal=causal)
        out.backward(local[3])
        for name, got, ref in zip(("out", "dq", "dk", "dv"),
                                  (out.detach(), *(leaf.grad for leaf in leaves)),
                                  (ref_out, *ref_grads), strict=True):  # fmt: skip
            parts = [torch.empty_like(got) for _ in range(world)]
            dist.all_gather(parts, got.contiguous())
            full = gather_sequence(parts, seq_layout="contiguous", dim=1).double()
            result[f"{'causal' if causal else 'full'}-{name}"] = (full - ref).abs().max().item()
    return result


def _usp_rank(rank: int, world: int, port: int, out_path: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        result = _usp_errors_on_rank(rank, world)
        if rank == 0:
            Path(out_path).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_usp_two_by_two_matches_float64_where_ulysses_cannot_split(tmp_path):
    from implementations.usp import usp_degrees

    assert usp_degrees(4, 6, 2) == (2, 2) and split_reason(6, 2, 4) is not None
    out_path = tmp_path / "errors.json"
    mp.start_processes(_usp_rank, args=(4, _free_port(), str(out_path)), nprocs=4,
                       start_method="fork")  # fmt: skip
    errors = json.loads(out_path.read_text())
    assert len(errors) == 8
    for key, err in errors.items():
        assert err < TOL, (key, err)


def test_usp_degrees_and_reasons():
    from harness.case import Case
    from harness.registry import REGISTRY
    from implementations.usp import usp_degrees

    assert [usp_degrees(*a) for a in ((4, 8, 8), (4, 6, 6), (4, 8, 2), (3, 4, 4), (1, 3, 3))] == [
        (4, 1), (2, 2), (2, 2), (1, 3), (1, 1)]  # fmt: skip
    usp = REGISTRY.get("usp")
    striped = Case(seq_len=64, world_size=2, seq_layout="striped", causal=True)
    assert usp.unsupported(striped, "cpu") == [
        "usp takes seq_layout 'contiguous' for causal attention; got 'striped'"
    ]
    assert usp.unsupported(Case(seq_len=64, world_size=2, seq_layout="striped"), "cpu") == []


@pytest.mark.slow  # ~4 s quiet: a worker, then 4 rank processes
@pytest.mark.distributed
def test_usp_rows_and_their_exchanges(tmp_path):
    from tests.conftest import tiny_suite

    data = tiny_suite(implementations=["usp", "ulysses"],
                      sweep={"seq_len": [64], "num_heads": [6], "num_kv_heads": [2],
                             "head_dim": [16], "world_size": [4], "causal": [True],
                             "phase": ["fwd_bwd"]})  # fmt: skip
    rows = {r["impl"]: r for r in _rows(data, tmp_path)}
    assert rows["ulysses"]["status"] == "unsupported"
    row = rows["usp"]
    assert row["status"] == "ok" and row["err_dk_rel_l2"] < 1e-5, row
    assert (row["ulysses_degree"], row["ring_degree"]) == (2, 2)
    # all-to-alls (half of each local tensor leaves): q 3072 + k 1024 + v 1024 + out 3072 bytes,
    # twice (fwd, bwd); ring over 2 ranks of 32-token chunks, 1 kv head: K/V 4096 bytes once in
    # forward, in backward K/V, then dK/dV, then dK/dV home: 4 × 4096
    assert row["bytes_sent_per_rank"] == [2 * 8192 + 4 * 4096] * 4
    assert row["num_exchanges"] == 12 and row["comm_ms"] > 0
