"""Rows timed while other processes used the CPU are flagged noisy (measure/contention.py)."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.measure.contention import (
    OTHER_CORES_FLAG,
    CpuWindow,
    contention_fields,
    merge_noise,
)
from harness.results import RunDir
from harness.run.threads import usable_cpus
from tests.conftest import tiny_suite


def _window(wall: float, own: float, busy: float, steal: float = 0.0) -> dict[str, float]:
    return {"wall_s": wall, "own_cpu_s": own, "machine_busy_s": busy, "steal_s": steal}


def test_other_cores_are_machine_busy_minus_every_ranks_own_time_per_wall_second():
    quiet = contention_fields([_window(2.0, 1.9, 2.1)], "cpu", threads=1, cpus=1)
    assert quiet["other_cpu_cores"] == pytest.approx(0.1)
    assert "contended" not in quiet
    # two ranks, each busy 1.9 s of 2 s; the machine was busy 5.8 s: others took 1.0 core
    windows = [_window(2.0, 1.9, 5.8), _window(2.0, 1.9, 5.8)]
    busy = contention_fields(windows, "cpu", threads=2, cpus=2)
    assert busy["other_cpu_cores"] == pytest.approx(1.0)
    assert busy["contended"] and "1.00 CPU cores" in busy["contention_note"]
    stolen = contention_fields([_window(1.0, 1.0, 1.0, steal=0.5)], "cpu", threads=1, cpus=2)
    assert stolen["contended"] and "steal" in stolen["contention_note"]


def test_only_others_beyond_the_cpus_its_threads_left_free_flag_a_row():
    one_core_busy = [_window(1.0, 1.0, 2.0)]  # others used 1.0 core
    # one thread on 2 CPUs left one free: the other process ran there, not on ours
    assert "contended" not in contention_fields(one_core_busy, "cpu", threads=1, cpus=2)
    # two threads on 2 CPUs: the other process took time from one of them
    assert contention_fields(one_core_busy, "cpu", threads=2, cpus=2)["contended"]
    # one thread on 2 CPUs, others using 1.3 cores: some of it was ours
    assert contention_fields([_window(1.0, 0.7, 2.0)], "cpu", threads=1, cpus=2)["contended"]


def test_no_figure_without_proc_stat_or_for_a_blink_and_no_flag_on_cuda():
    assert contention_fields([None], "cpu", threads=1, cpus=2) == {}
    assert contention_fields([_window(0.01, 0.0, 1.0)], "cpu", threads=1, cpus=2) == {}
    cuda = contention_fields([_window(1.0, 0.0, 2.0)], "cuda", threads=1, cpus=1)
    assert "contended" not in cuda


def test_merge_marks_the_row_noisy_and_keeps_an_earlier_note():
    row = {"noisy": True, "noise_note": "IQR is 12% of the median (≥ 10%)"}
    merge_noise(row, contention_fields([_window(1.0, 1.0, 2.0)], "cpu", threads=2, cpus=2))
    assert row["noisy"] and row["noise_note"].startswith("IQR is 12%")
    assert "other processes used 1.00 CPU cores" in row["noise_note"]
    clean = {"noisy": False}
    merge_noise(clean, contention_fields([_window(1.0, 1.0, 1.0)], "cpu", threads=2, cpus=2))
    assert clean["noisy"] is False and "noise_note" not in clean


def test_the_window_sees_another_process_spin():
    start = CpuWindow.start()
    if start.machine is None:
        pytest.skip("no /proc/stat here")
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,))
    spinner.start()
    time.sleep(1.0)
    stop.set()
    spinner.join()
    fields = contention_fields([start.stop()], "cpu", threads=1, cpus=1)
    assert fields["other_cpu_cores"] >= OTHER_CORES_FLAG and fields["contended"]


def _spin(stop) -> None:
    while not stop.is_set():
        pass


@pytest.mark.slow  # a whole run (two workers) beside a spinning process
def test_a_row_timed_beside_a_spinning_process_is_flagged(write_suite, tmp_path):
    if CpuWindow.start().machine is None:
        pytest.skip("no /proc/stat here")
    sweep = {"seq_len": [512], "num_heads": [4], "head_dim": [64], "phase": ["fwd"]}
    timing = {"repeats": 40, "min_repeats": 40, "max_time_s": 10.0}  # well over 50 ms in all
    # as many threads as usable CPUs, so the spinning process takes CPU time from the row's
    suite = write_suite(tiny_suite(threads=usable_cpus(), sweep=sweep, timing=timing))
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        res = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path), "--no-report"])
    finally:
        stop.set()
        spinner.join()
    assert res.exit_code == 0, res.output
    (run,) = [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    (row,) = RunDir(run).rows()
    assert row["contended"] and row["noisy"], row
    assert "other processes used" in row["noise_note"]
