"""Ring cases through the harness: world_size rows with per-rank numbers, errors against the full
float64 reference, and a rank that dies or hangs ending its case while the sweep goes on."""

from __future__ import annotations

import time

import pytest

from harness.results import RunDir
from harness.run.ranks import FAULT_ENV
from harness.run.sweep import plan, run_tasks
from harness.suite import parse_suite
from tests.conftest import tiny_suite


def _rows(data: dict, tmp_path) -> list[dict]:
    suite = parse_suite(data)
    run = RunDir.create(tmp_path / "run", {"run_id": "t", "suite_name": suite.name}, {})
    run_tasks(suite, plan(suite, "cpu"), run)
    return run.rows()


@pytest.mark.distributed
def test_world_size_rows_have_per_rank_numbers_and_match_reference(tmp_path):
    data = tiny_suite(implementations=["ring"],
                      sweep={"seq_len": [96], "world_size": [1, 2, 3], "causal": [True],
                             "seq_layout": ["zigzag", "striped"],
                             "phase": ["fwd_bwd"]})  # fmt: skip
    rows = {(r["world_size"], r["seq_layout"]): r for r in _rows(data, tmp_path)}
    assert set(rows) == {(1, "contiguous"), (2, "zigzag"), (2, "striped"), (3, "zigzag"),
                         (3, "striped")}  # fmt: skip
    for (world, layout), row in rows.items():
        assert row["status"] == "ok", row
        for key in ("err_rel_l2", "err_dq_rel_l2", "err_dk_rel_l2", "err_dv_rel_l2"):
            assert row[key] < 1e-5, (world, layout, key, row[key])
        if world == 1:
            continue
        assert len(row["peak_mem_above_inputs_bytes_per_rank"]) == world
        # one K/V block is 2·b·(S/P)·h·d fp32 values; forward passes it P-1 times, backward P-1
        # times more, and the dK/dV sums (same size) travel P-1 hops plus the final one home
        kv_bytes = 2 * (96 // world) * 2 * 16 * 4
        assert row["bytes_sent_per_rank"] == [(3 * world - 2) * kv_bytes] * world
        assert row["bytes_sent_per_step_per_rank"] == [min(2, world - 1) * kv_bytes] * world
        assert row["load_imbalance"] == pytest.approx(1.0, abs=0.05)
        assert 0.0 <= row["overlap_fraction"] <= 1.0 and row["comm_ms"] > 0


# hang:1 (~12 s, it waits out the case timeout) runs with -m slow; by default the case timeout
# ending a hung case is test_runner_isolation's test_raise_abort_hang_are_recorded_and_sweep_goes_on
# and a hung rank ended with its worker's group test_robust_signals'
# test_ring_ranks_die_with_their_worker[SIGTERM-143]
@pytest.mark.distributed
@pytest.mark.parametrize("fault,status", [("die:1", "error"),
                                          pytest.param("hang:1", "timeout",
                                                       marks=pytest.mark.slow)])  # fmt: skip
def test_a_failing_rank_ends_its_case_and_the_sweep_goes_on(fault, status, tmp_path,
                                                            monkeypatch):  # fmt: skip
    monkeypatch.setenv(FAULT_ENV, fault)
    data = tiny_suite(implementations=["ring"],
                      sweep={"seq_len": [64], "world_size": [2, 1]},
                      limits={"case_timeout_s": 10})  # fmt: skip
    started = time.monotonic()
    rows = {r["world_size"]: r for r in _rows(data, tmp_path)}
    assert rows[2]["status"] == status, rows[2]
    if status == "error":
        assert "rank 1 of 2 died (exit code 3)" in rows[2]["reason"]
    assert rows[1]["status"] == "ok" and rows[1]["err_rel_l2"] < 1e-5
    assert time.monotonic() - started < 50


@pytest.mark.slow  # ~25 s: two harness cases with worker and rank processes
@pytest.mark.distributed
def test_lengths_no_layout_splits_and_gqa_run_through_the_harness(tmp_path):
    """The registry path pads and masks too (seq_len 15 on 2 ranks), with GQA k/v travelling
    with their own heads: half the heads, half the bytes of the MHA row."""
    data = tiny_suite(implementations=["ring"],
                      sweep={"seq_len": [15], "world_size": [2], "causal": [True],
                             "seq_layout": ["zigzag"], "num_kv_heads": [None, 1],
                             "phase": ["fwd_bwd"]})  # fmt: skip
    rows = {r["num_kv_heads"]: r for r in _rows(data, tmp_path)}
    assert set(rows) == {2, 1}, rows
    for row in rows.values():
        assert row["status"] == "ok", row
        for key in ("err_rel_l2", "err_dq_rel_l2", "err_dk_rel_l2", "err_dv_rel_l2"):
            assert row[key] < 1e-5, (row["num_kv_heads"], key, row[key])
    # 15 pads to 16 (zigzag on 2 ranks: 2P = 4 chunks): 8 local positions, fp32, head_dim 16
    for kv_heads, row in rows.items():
        assert row["bytes_sent_per_step_per_rank"] == [2 * 8 * kv_heads * 16 * 4] * 2
