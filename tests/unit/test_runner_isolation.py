"""A case that raises, aborts the process or hangs is recorded, and the sweep goes on; a killed
run resumes with only its missing rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.results import RunDir, load_rows
from harness.run.sweep import plan, run_tasks
from harness.suite import parse_suite
from tests.conftest import tiny_suite

REPO = Path(__file__).parents[2]


def _run(suite_data: dict, tmp_path: Path) -> dict[str, dict]:
    suite = parse_suite(suite_data)
    run = RunDir.create(tmp_path / "run", {"run_id": "t", "suite_name": suite.name}, {})
    run_tasks(suite, plan(suite, "cpu"), run)
    return {r["impl"]: r for r in run.rows()}


def test_raise_abort_hang_are_recorded_and_sweep_goes_on(plugin_site, tmp_path):
    # the hang costs the whole case timeout; naive and chunked at S=64 need a fraction of it
    data = tiny_suite(implementations=["plugin_raises", "plugin_aborts", "naive", "plugin_hangs",
                                       "chunked"],
                      limits={"case_timeout_s": 6})  # fmt: skip
    started = time.monotonic()
    rows = _run(data, tmp_path)
    assert rows["plugin_raises"]["status"] == "error"
    assert "RuntimeError: boom from a test plugin" in rows["plugin_raises"]["reason"]
    assert rows["plugin_aborts"]["status"] == "error"
    assert "SIGABRT" in rows["plugin_aborts"]["reason"]
    hang = rows["plugin_hangs"]
    assert hang["status"] == "timeout", hang
    # the two CPU passes share one case timeout (as test_the_two_cpu_passes_share_one_case_timeout)
    assert hang["reason"].startswith("memory pass: no result within the case timeout 6"), hang
    assert hang["elapsed_s"] < 11, hang  # one timeout (+ the kill), never 2 × 6 s
    assert rows["naive"]["status"] == "ok" and rows["chunked"]["status"] == "ok"
    assert rows["chunked"]["err_rel_l2"] < 1e-5
    assert time.monotonic() - started < 60


def test_memory_budget_turns_allocation_failure_into_oom(tmp_path):
    # naive at S=8192 with 8 heads needs 2 GiB for the scores alone; the budget is 0.5 GiB.
    # The sweep goes on to a linear-memory kernel that fits: torch's flash SDPA, a tenth of
    # chunked's CPU time at this length (chunked's linear memory: test_memory_growth.py).
    data = tiny_suite(implementations=["naive", "sdpa_flash"],
                      sweep={"seq_len": [8192], "num_heads": [8], "head_dim": [16]},
                      limits={"memory_budget_gb": 0.5, "case_timeout_s": 120},
                      accuracy={"ref_max_rows": 64})  # fmt: skip
    rows = _run(data, tmp_path)
    assert rows["naive"]["status"] == "oom", rows["naive"]
    assert rows["sdpa_flash"]["status"] == "ok", rows["sdpa_flash"]


def test_killed_run_resumes_missing_rows_only(plugin_site, write_suite, tmp_path):
    data = tiny_suite(implementations=["plugin_sleepy", "naive"],
                      sweep={"seq_len": [32, 48, 64, 80]},
                      timing={"warmup": 0, "repeats": 4, "min_repeats": 4})  # fmt: skip
    path = write_suite(data)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(plugin_site), "HARNESS_TEST_SLEEP_S": "0.1"}
    cmd = [sys.executable, "-m", "harness", "run", str(path), "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 90
    rows_file = None
    while time.monotonic() < deadline:
        found = list(out.glob("*/rows.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            rows_file = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert rows_file is not None, proc.stderr.read().decode()[-2000:]
    with open(rows_file, "a") as f:
        f.write('{"schema_version": 1, "case": "torn')  # a write cut off mid-line
    before = {(r["case"], r["impl"]) for r in RunDir.open(rows_file.parent).rows()}
    assert 3 <= len(before) < 8

    resumed = subprocess.run([*cmd[:-3], "--resume", str(rows_file.parent), "--no-report"],
                             cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    frame = load_rows(rows_file.parent)
    keys = list(zip(frame["case"], frame["impl"], frame["phase"], strict=True))
    assert len(keys) == len(set(keys)) == 8
    assert set(frame["status"]) == {"ok"}
    json.loads((rows_file.parent / "run.json").read_text())  # still intact


# its assertions run by default in test_raise_abort_hang_are_recorded_and_sweep_goes_on
@pytest.mark.slow
def test_the_two_cpu_passes_share_one_case_timeout(plugin_site, tmp_path):
    """On CPU a task runs a memory pass then a time pass; a hang must cost one case timeout, not
    two, and the reason must say which pass it was."""
    data = tiny_suite(implementations=["plugin_hangs"], limits={"case_timeout_s": 6})
    started = time.monotonic()
    rows = _run(data, tmp_path)
    took = time.monotonic() - started
    row = rows["plugin_hangs"]
    assert row["status"] == "timeout", row
    assert row["reason"].startswith("memory pass: no result within the case timeout 6"), row
    assert row["elapsed_s"] < 11, row  # one timeout (+ the kill), never 2 × 6 s
    assert took < 60, took
