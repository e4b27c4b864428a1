"""CPU timing discipline: a deliberate thread count recorded in each row, and a noise flag.

The noise rule is torch.utils.benchmark's (a Measurement warns when the IQR is at least 10% of the
median) plus a drift rule (the two halves' medians apart); see harness/measure/derived.py. The
thread count is the suite's `threads`, else the physical cores the process may use
(harness/run/threads.py), and every timed row says which (`num_threads`).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.benchmark.utils.common import _IQR_WARN_THRESHOLD, Measurement, TaskSpec

from harness.case import Case
from harness.cli.show_table import render
from harness.measure.derived import IQR_WARN_SHARE, noise_fields, time_fields
from harness.results import RunDir
from harness.run import threads
from harness.run.pool import WorkerPool
from harness.run.sweep import plan, run_tasks
from harness.run.task import Task
from harness.run.worker import execute
from harness.suite import parse_suite
from tests.conftest import tiny_suite

TIMING = {"warmup": 0, "repeats": 3, "min_repeats": 3, "max_time_s": 1.0}
ACCURACY = {"ref_max_rows": 1024, "ref_chunk_rows": 64, "grad_ref_max_seq": 2048}
ISSUE_SAMPLES = [877.0, 735.0, 217.0, 133.0, 137.0]  # bpt causal S=2048 fwd_bwd, issue 14


# --- the noise flag ------------------------------------------------------------------------


def test_a_tight_spread_is_not_noisy():
    samples = [10.0, 10.1, 9.9, 10.05, 9.95, 10.02, 9.98, 10.01]
    assert noise_fields(samples) == {"noisy": False}
    assert noise_fields([4.2]) == {"noisy": False}  # one sample: no spread to judge


def test_the_issues_samples_are_noisy_with_a_note():
    fields = noise_fields(ISSUE_SAMPLES)
    # sorted 133 137 217 735 877: p25 137, median 217, p75 735 -> IQR 598 = 276% of 217
    assert fields == {"noisy": True, "noise_note": "IQR is 276% of the median (≥ 10%)"}


@pytest.mark.parametrize("samples", [
    ISSUE_SAMPLES, [1.0, 1.05, 1.11, 1.2], [1.0, 1.02, 1.04, 1.06, 1.5], [3.0, 3.0, 3.3, 3.31],
    [5.0, 5.1, 5.2, 5.3, 5.4, 5.5, 5.6, 5.7],
])  # fmt: skip
def test_the_spread_rule_is_torch_benchmarks(samples):
    assert IQR_WARN_SHARE == _IQR_WARN_THRESHOLD
    measurement = Measurement(1, samples, TaskSpec("f()", "pass"))
    fields = noise_fields(samples)
    spread = "IQR is" in fields.get("noise_note", "")
    assert spread == measurement.has_warnings, (samples, measurement.iqr / measurement.median)


def test_a_step_or_a_trend_within_a_row_is_drift():
    step = [10.0, 10.1, 10.0, 10.1, 10.0, 11.0, 11.1, 11.0, 11.1, 11.0]
    trend = [10.0 + 0.1 * i for i in range(20)]
    for samples in (step, trend):
        fields = noise_fields(samples)
        assert fields["noisy"] and fields["noise_note"].startswith("drift:"), fields
        assert "IQR is" not in fields["noise_note"]  # the spread rule alone would pass them
    assert "below the first half's" in noise_fields(step[::-1])["noise_note"]
    # a single slow first call is not drift: both halves' medians agree
    assert noise_fields([50.0, 10.0, 10.0, 10.0, 10.0, 10.0]) == {"noisy": False}


def test_time_fields_carry_the_flag():
    case = Case(seq_len=64, num_heads=2, head_dim=16)
    assert time_fields(case, "fwd", ISSUE_SAMPLES)["noisy"] is True
    assert time_fields(case, "fwd", [1.0, 1.01, 0.99])["noisy"] is False


def test_show_marks_noisy_rows():
    base = {"case": "c", "phase": "fwd", "status": "ok"}
    rows = [{**base, "impl": "a", "time_ms_median": 217.0, "noisy": True, "noise_note": "x"},
            {**base, "impl": "b", "time_ms_median": 12.5, "noisy": False}]  # fmt: skip
    lines = [t.plain for t in render(rows, title="run", width=100)]
    a, b = (next(line for line in lines if line.strip().startswith(i)) for i in "ab")
    assert a.endswith("217~") and b.endswith("12.5")
    assert len(a) - 1 == len(b)  # the last digits stay aligned (b's trailing space is stripped)
    assert any(line.strip().startswith("~ noisy") for line in lines)
    quiet = [t.plain for t in render(rows[1:], title="run", width=100)]
    assert not any("~" in line for line in quiet)


# --- the thread count ----------------------------------------------------------------------


def _task(impl: str = "naive") -> Task:
    return Task(case=Case(seq_len=64, num_heads=2, head_dim=16), impl=impl, phase="fwd",
                device="cpu", seed=0, timing=TIMING, accuracy=ACCURACY)  # fmt: skip


def test_a_row_records_the_threads_it_ran_on():
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            row = execute(_task())
            assert row["status"] == "ok", row.get("reason")
            assert row["num_threads"] == n
            assert isinstance(row["noisy"], bool)
    finally:
        torch.set_num_threads(before)


def test_a_suites_threads_reach_the_rows(tmp_path):
    suite = parse_suite(tiny_suite(threads=1))
    run = RunDir.create(tmp_path / "run", {"run_id": "t", "suite_name": suite.name}, {})
    run_tasks(suite, plan(suite, "cpu"), run)
    rows = run.rows()
    assert rows and all(r["status"] == "ok" and r["num_threads"] == 1 for r in rows), rows


def test_without_threads_the_pool_uses_the_physical_cores():
    assert WorkerPool("cpu", None, None).threads == threads.default_threads() >= 1
    assert WorkerPool("cpu", None, 3).threads == 3


def test_physical_cores_count_hyperthread_siblings_once(tmp_path):
    # cpus 0,1 are one core's two hyperthreads, 2 another core, 3 another package's core 0
    for cpu, (package, core) in enumerate([(0, 0), (0, 0), (0, 1), (1, 0)]):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert threads._physical_cores({0, 1, 2, 3}, tmp_path) == 3
    assert threads._physical_cores({0, 1}, tmp_path) == 1
    assert threads._physical_cores({0, 1, 7}, tmp_path) == 2  # no topology: a core of its own


def test_a_cgroup_quota_caps_the_default(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert threads._quota_cpus(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert threads._quota_cpus(cpu_max) is None
    assert threads._quota_cpus(tmp_path / "missing") is None
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: set(range(64)))
    monkeypatch.setattr(threads, "_physical_cores", lambda cpus: len(cpus) // 2)
    monkeypatch.setattr(threads, "_quota_cpus", lambda: 2)
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "_quota_cpus", lambda: None)
    assert threads.default_threads() == 32
    assert threads.resolve_threads(5) == 5
