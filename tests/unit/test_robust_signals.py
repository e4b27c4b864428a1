"""Signals to `harness run`: SIGTERM, SIGHUP and Ctrl-C (twice, a second apart) end every worker
and rank process at once, exit 128 + the signal, print no traceback and leave a run that `--resume`
finishes; a runner killed with SIGKILL takes its workers and their ranks along (run/lifeline.py).

Real processes: `harness run` in its own session (as a shell's job), a case that would run for
ten minutes (plugin_sleepy with a long sleep, or a ring rank that hangs), one signal, then
/proc to check that nothing of the worker's process group is left.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from harness.results import RunDir
from harness.run.interrupt import STOP_SIGNALS, Interrupted, signals_held, stop_on_signals
from harness.run.ranks import FAULT_ENV
from tests.conftest import tiny_suite

REPO = Path(__file__).parents[2]
NOISE = ("Traceback", "Exception ignored", "resource_tracker", "leaked", "Error")


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), fields[0]


def _processes() -> dict[int, tuple[int, int, str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = stat
    return found


def _live_in_groups(pgids: set[int]) -> list[int]:
    """These processes and those of their process groups that still run (a zombie has ended)."""
    return [pid for pid, (_, pgid, state) in _processes().items()
            if (pgid in pgids or pid in pgids) and state != "Z"]  # fmt: skip


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class _Run:
    """`harness run` as a background job: its own session, stderr into a file."""

    def __init__(self, tmp_path: Path, data: dict, env: dict[str, str]):
        import yaml

        self.suite = tmp_path / "suite.yaml"
        self.suite.write_text(yaml.safe_dump(data))
        self.out, self.env = tmp_path / "results", env
        self.stderr = tmp_path / "stderr.txt"
        cmd = [sys.executable, "-m", "harness", "run", str(self.suite), "--out", str(self.out),
               "--no-report"]  # fmt: skip
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip

    def run_dir(self) -> Path:
        return next(self.out.glob("*/run.json")).parent

    def wait_busy(self, rows: int, workers: int, *, ranks: int = 0) -> set[int]:
        """Wait until `rows` rows are written and the next task runs; the workers' pgids."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr.read_text()[-3000:]
            written = list(self.out.glob("*/rows.jsonl"))
            done = len(written[0].read_text().splitlines()) if written else 0
            table = _processes()
            # a worker is the runner's child that leads its own process group (os.setsid)
            groups = {pid for pid, (ppid, pgid, _) in table.items()
                      if ppid == self.proc.pid and pgid == pid}  # fmt: skip
            members = [pid for pid, (_, pgid, _) in table.items() if pgid in groups]
            if done >= rows and len(groups) >= workers and len(members) - len(groups) >= ranks:
                time.sleep(0.5)  # into the task's call
                return groups
            time.sleep(0.1)
        raise AssertionError(f"no busy worker in time: {self.stderr.read_text()[-3000:]}")

    def ended(self, groups: set[int]) -> tuple[int, float]:
        """The exit code and how long the runner took; asserts that the worker groups are gone
        within 2 s and that nothing writes to the run's stderr once it has exited."""
        started = time.monotonic()
        code = self.proc.wait(timeout=60)
        took = time.monotonic() - started
        deadline = time.monotonic() + 2.0
        while _live_in_groups(groups) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _live_in_groups(groups), f"survivors of {groups}: {_live_in_groups(groups)}"
        size = self.stderr.stat().st_size
        time.sleep(1.0)  # an orphan's traceback, a resource tracker's warning would come now
        text = self.stderr.read_text()
        assert len(text.encode()) == size, f"written after exit: {text[size:]!r}"
        assert not [word for word in NOISE if word in text], text[-3000:]
        return code, took

    def resume(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "harness", "run", str(self.suite), "--resume",
               str(self.run_dir()), "--no-report", *args]  # fmt: skip
        done = subprocess.run(cmd, cwd=REPO, env=env or self.env, capture_output=True, text=True,
                              timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]


def _sleepy_suite() -> dict:
    # a row written at once (naive is above its length limit: skipped, no worker needed), then a
    # case that sleeps (ten minutes while stopped, no time when resumed), then chunked
    return tiny_suite(implementations=["naive", "plugin_sleepy", "chunked"],
                      limits={"case_timeout_s": 900, "max_seq_len": {"naive": 32}})  # fmt: skip


def _env(plugin_site: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(plugin_site), **extra}


def _assert_complete(run: _Run, kept: list[dict]) -> None:
    rows = RunDir.open(run.run_dir()).rows()
    keys = [(r["case"], r["impl"], r["phase"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3, keys
    assert [r["status"] for r in rows] == ["skipped", "ok", "ok"], rows
    assert rows[0] == kept[0] and len(kept) == 1  # the row written before the signal stays


# each starts a run and a resume: ~14 s on an idle 2-core machine; Ctrl-C has its own test below
# SIGTERM and SIGHUP take SIGINT's path (one handler, interrupt.py): they run with -m slow; by
# default test_ctrl_c_twice_stops_at_once_says_how_to_resume_and_that_finishes covers that path
# (workers gone, 128 + N, the "stopped by" line, the resume) and
# test_ring_ranks_die_with_their_worker[SIGTERM-143] SIGTERM to the runner alone
@pytest.mark.parametrize("how,code", [pytest.param("SIGTERM", 143, marks=pytest.mark.slow),
                                      pytest.param("SIGHUP", 129, marks=pytest.mark.slow),
                                      ("SIGKILL", -9)])  # fmt: skip
def test_a_signal_ends_every_worker_at_once_and_the_run_resumes(how, code, plugin_site, tmp_path):
    run = _Run(tmp_path, _sleepy_suite(), _env(plugin_site, HARNESS_TEST_SLEEP_S="600"))
    groups = run.wait_busy(rows=1, workers=1)  # the memory pass of plugin_sleepy
    kept = RunDir.open(run.run_dir()).rows()
    os.kill(run.proc.pid, signal.Signals[how])
    exit_code, took = run.ended(groups)
    assert (exit_code, took < 10) == (code, True), took
    if how != "SIGKILL":
        stopped = run.stderr.read_text().splitlines()[-1]
        assert stopped.startswith(f"stopped by {how}: 1 of 3 rows written"), stopped
    run.resume(env=_env(plugin_site, HARNESS_TEST_SLEEP_S="0"))
    _assert_complete(run, kept)


def test_ctrl_c_twice_stops_at_once_says_how_to_resume_and_that_finishes(plugin_site, tmp_path):
    run = _Run(tmp_path, _sleepy_suite(), _env(plugin_site, HARNESS_TEST_SLEEP_S="600"))
    groups = run.wait_busy(rows=1, workers=1)
    kept = RunDir.open(run.run_dir()).rows()
    os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C: to the terminal's foreground process group
    time.sleep(1.0)
    with suppress(ProcessLookupError):  # the second one, a second later; the first ended it
        os.killpg(run.proc.pid, signal.SIGINT)
    exit_code, took = run.ended(groups)
    assert (exit_code, took < 10) == (130, True), took
    line = run.stderr.read_text().splitlines()[-1]
    assert line.startswith("stopped by SIGINT: 1 of 3 rows written; to finish the run: "), line
    again = shlex.split(line.split("to finish the run: ", 1)[1])
    assert again[:3] == ["harness", "run", str(run.suite)] and "--resume" in again, line
    done = subprocess.run([sys.executable, "-m", *again], cwd=REPO, capture_output=True,
                          env=_env(plugin_site, HARNESS_TEST_SLEEP_S="0"), text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_complete(run, kept)


@pytest.mark.slow
def test_ctrl_c_while_a_worker_starts_prints_no_traceback(plugin_site, tmp_path):
    # until its setsid the new worker is in the terminal's process group, importing torch
    run = _Run(tmp_path, _sleepy_suite(), _env(plugin_site, HARNESS_TEST_SLEEP_S="600"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        children = [pid for pid, (ppid, _, _) in _processes().items() if ppid == run.proc.pid]
        if any(b"spawn_main" in _cmdline(pid) for pid in children):
            break
        time.sleep(0.02)
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.ended(set(children))[0] == 130


@pytest.mark.distributed
@pytest.mark.parametrize(
    "how,code", [("SIGTERM", 143), pytest.param("SIGKILL", -9, marks=pytest.mark.slow)]
)
def test_ring_ranks_die_with_their_worker(how, code, plugin_site, tmp_path):
    data = tiny_suite(implementations=["ring"], sweep={"world_size": [1, 2]},
                      limits={"case_timeout_s": 900})  # fmt: skip
    run = _Run(tmp_path, data, _env(plugin_site, **{FAULT_ENV: "hang:1"}))
    groups = run.wait_busy(rows=1, workers=1, ranks=2)  # the world_size 1 row, then two ranks
    os.kill(run.proc.pid, signal.Signals[how])
    assert run.ended(groups)[0] == code
    run.resume(env=_env(plugin_site))
    rows = RunDir.open(run.run_dir()).rows()
    assert sorted(r["world_size"] for r in rows) == [1, 2], rows
    assert {r["status"] for r in rows} == {"ok"}, rows


def test_a_repeated_signal_while_stopping_raises_nothing():
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        with pytest.raises(Interrupted) as stopped, stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the handler raises first
        assert (stopped.value.name, stopped.value.exit_code) == ("SIGINT", 130)
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the run cleans up
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_a_stop_signal_waits_for_the_row_being_written():
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    written = []
    try:
        with pytest.raises(Interrupted) as stopped, stop_on_signals():
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
                written.append("row")
            written.append("the next row")
        assert written == ["row"] and stopped.value.exit_code == 143
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


_ORPHAN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "from harness.run.lifeline import die_with_parent;"
                          "print(die_with_parent(), flush=True); import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_process_tied_to_its_parent_dies_with_it():
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], cwd=REPO, text=True,
                              stdout=subprocess.PIPE)  # fmt: skip
    child = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == ("prctl" if sys.platform == "linux" else "watchdog")
    parent.kill()  # SIGKILL: it cannot pass anything on
    parent.wait()
    deadline = time.monotonic() + 2.0
    while _live_in_groups({child}) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _live_in_groups({child})
