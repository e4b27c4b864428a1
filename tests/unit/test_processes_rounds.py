"""timing.processes: each row timed in several fresh worker processes, rounds interleaved across
rows, samples pooled (harness/run/rounds.py); and the runner's pools starting side by side."""

from __future__ import annotations

import statistics

import pytest

from harness.case import Case
from harness.results import RunDir
from harness.run.rounds import merge_rounds, run_rounds
from harness.run.sweep import plan, run_tasks
from harness.run.task import Task
from harness.suite import parse_suite
from tests.conftest import tiny_suite

TIMING = {"warmup": 0, "repeats": 2, "min_repeats": 1, "max_time_s": 1.0}
ACCURACY = {"ref_max_rows": 1024, "ref_chunk_rows": 64, "grad_ref_max_seq": 2048}


def _task(seq_len: int, impl: str = "naive") -> Task:
    return Task(case=Case(seq_len=seq_len, num_heads=2, head_dim=16), impl=impl, phase="fwd",
                device="cpu", seed=0, timing=TIMING, accuracy=ACCURACY)  # fmt: skip


def _ok(samples: list[float]) -> dict:
    return {"status": "ok", "reason": "", "time_samples_ms": samples, "elapsed_s": 1.0,
            "peak_mem_bytes": 123}  # fmt: skip


def test_rounds_interleave_across_rows_and_write_each_row_once():
    todo = [_task(16), _task(32), _task(48)]
    order: list[tuple[int, int, str]] = []
    emitted: list[dict] = []

    def first(task: Task):
        order.append((0, task.case.seq_len, task.measure))
        if task.case.seq_len == 48:  # failed in round 0: written at once, never timed again
            return {"status": "error", "reason": "boom"}, 100
        return _ok([1.0, 1.2]), 100

    def fresh(r: int):
        def measure(task: Task):
            order.append((r, task.case.seq_len, task.measure))
            return _ok([2.0 * r, 2.0 * r + 0.2]), 100 + r

        return measure

    closed: list[bool] = []
    run_rounds(todo, 3, first=first, fresh_time_pass=fresh, close_round=closed.append,
               emit=emitted.append)  # fmt: skip
    # round r of every row before round r + 1; later rounds are time passes only
    assert order == [
        (0, 16, "all"), (0, 32, "all"), (0, 48, "all"),
        (1, 16, "time"), (1, 32, "time"), (2, 16, "time"), (2, 32, "time"),
    ]  # fmt: skip
    assert closed == [False, False]  # each round's worker ended after its round
    assert [r["status"] for r in emitted] == ["error", "ok", "ok"]
    pooled = emitted[1]
    assert pooled["worker_pids"] == [100, 101, 102] and pooled["processes"] == 3
    assert pooled["time_samples_ms"] == [1.0, 1.2, 2.0, 2.2, 4.0, 4.2]
    assert pooled["num_samples"] == 6
    assert pooled["time_ms_median_per_process"] == [1.1, 2.1, 4.1]
    assert pooled["time_ms_median"] == statistics.median(pooled["time_samples_ms"])
    assert pooled["peak_mem_bytes"] == 123  # round 0's memory pass stands


def test_a_failed_later_round_fails_the_row_and_says_which_process():
    row = merge_rounds(_task(16), [_ok([1.0]), {"status": "timeout", "reason": "no result"}],
                       [1, 2])  # fmt: skip
    assert row["status"] == "timeout"
    assert row["reason"] == "time pass in process 2 of 2: no result"


def test_processes_2_gives_two_worker_pids_per_row_and_pooled_samples(tmp_path):
    sweep = {"seq_len": [32, 48], "num_heads": [2], "head_dim": [16], "phase": ["fwd"]}
    timing = {"repeats": 3, "min_repeats": 3, "processes": 2}
    suite = parse_suite(tiny_suite(sweep=sweep, timing=timing))
    run = RunDir.create(tmp_path / "run", {"run_id": "t", "suite_name": suite.name}, {})
    rows = run_tasks(suite, plan(suite, "cpu"), run)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("reason") for r in rows]
    for row in rows:
        pids = row["worker_pids"]
        assert len(pids) == 2 and len(set(pids)) == 2 and None not in pids
        assert row["num_samples"] == 6 and len(row["time_ms_median_per_process"]) == 2
        assert row["timing_mode"] == "perf_counter"
        assert row["peak_mem_bytes"] > 0
    # one worker per round, shared by the round's rows
    assert rows[0]["worker_pids"] == rows[1]["worker_pids"]
    assert len(run.done_keys()) == 2  # written, so a resume measures nothing again


def test_a_row_is_contended_when_any_of_its_processes_was():
    quiet = _ok([1.0, 1.1]) | {"other_cpu_cores": 0.1, "steal_cpu_cores": 0.0}
    note = "other processes used 1.40 CPU cores"
    flags = {"contended": True, "noisy": True, "contention_note": note}
    shared = _ok([3.0, 3.1]) | {"other_cpu_cores": 1.4, "steal_cpu_cores": 0.0} | flags
    row = merge_rounds(_task(16), [quiet, shared], [1, 2])
    assert row["contended"] and row["noisy"] and row["other_cpu_cores"] == 1.4
    assert row["contention_note"] == "process 2: other processes used 1.40 CPU cores"
    assert row["contention_note"] in row["noise_note"]  # a noisy row always says why
    # with 3+ processes too, whose medians agree (the processes' rule alone: not noisy)
    three = merge_rounds(_task(16), [quiet, quiet, shared | {"time_samples_ms": [1.0, 1.1]}],
                         [1, 2, 3])  # fmt: skip
    assert three["noisy"] and "process 3: other processes used" in three["noise_note"]
    calm = merge_rounds(_task(16), [quiet, quiet], [1, 2])
    assert "contended" not in calm and calm["other_cpu_cores"] == 0.1


def test_with_three_or_more_processes_noise_is_the_processes_agreement():
    """The IQR of each process's few samples no longer decides (it flagged 83% of the nightly
    rows); the 95% interval of the geometric mean of the per-process medians does."""
    import math

    from scipy import stats

    from harness.measure.derived import PROCESS_CI_SHARE, process_noise_fields

    # each process's 4 samples spread 20% (noisy alone), the medians agree within ~3%
    levels = [10.0, 10.3, 9.8, 10.1, 9.9, 10.2]
    rounds = [_ok([lv * 0.9, lv, lv, lv * 1.1]) | {"noisy": True, "noise_note": "IQR"}
              for lv in levels]  # fmt: skip
    row = merge_rounds(_task(16), rounds, list(range(6)))
    assert row["noisy"] is False and "noise_note" not in row
    # one process 40% off the others: the interval widens past ±10%
    off = merge_rounds(_task(16), [*rounds[:5], _ok([14.0] * 4)], list(range(6)))
    assert off["noisy"] is True and "6 processes' medians disagree" in off["noise_note"]

    # the threshold is the textbook Student-t interval of the mean log median (3 processes:
    # t(0.975, 2) = 4.30, where a normal quantile, 1.96, would call both of these quiet)
    def spread(sd: float) -> list[float]:
        return [10 * math.exp(-sd), 10.0, 10 * math.exp(sd)]

    for sd in (0.03, 0.05):
        half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
        assert process_noise_fields(spread(sd))["noisy"] == (math.exp(half) - 1 > PROCESS_CI_SHARE)
    assert [process_noise_fields(spread(sd))["noisy"] for sd in (0.03, 0.05)] == [False, True]
    assert process_noise_fields([10.0, 10.0, 0.0])["noisy"] is True
    with pytest.raises(ValueError, match="3\\+ processes"):
        process_noise_fields([1.0, 2.0])
