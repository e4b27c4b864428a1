"""The worker pool: one live worker process at a time, replaced after a crash or a timeout.

The worker lives across tasks (importing torch costs seconds) and is replaced whenever a task
kills it (segfault, abort) or outlives the case timeout, so the sweep always goes on. The worker
calls setsid, so killing its process group also ends any rank processes it started.

Every live worker of every pool is known here, so a signal handler can end them all at once
(`kill_all_workers`); a worker also dies by itself when the runner does (run/lifeline.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any

from harness.errors import HarnessError
from harness.measure.memory import MALLOC_ENV, TIMING_MALLOC_ENV
from harness.run.task import Task
from harness.run.threads import resolve_threads
from harness.run.worker import base_row, worker_main

_START_TIMEOUT_S = 180.0
# A terminal's Ctrl-C goes to the runner's process group, which a new worker is in until its
# worker_main calls setsid; blocked from before the fork, it cannot raise KeyboardInterrupt (and
# print a traceback) in the worker while it imports torch. CPython starts its resource tracker
# the same way (bpo-33613).
_STARTUP_BLOCKED = {signal.SIGINT}
_LIVE: set[int] = set()  # pids of the workers started and not yet reaped, of every pool


def kill_all_workers() -> None:
    """SIGKILL every live worker with its process group (its rank processes); reaps nothing, so
    it is safe in a signal handler (the pools reap in `close`)."""
    for pid in list(_LIVE):
        _kill_group(pid)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # before its setsid, the worker leads no group yet


@contextmanager
def _worker_env(env: dict[str, str]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class _Worker:
    process: Any
    conn: Any
    ready: bool = False


class WorkerPool:
    """One live worker at a time, restarted after a crash or a timeout."""

    def __init__(self, device: str, memory_budget_bytes: int | None, threads: int | None,
                 *, tight_malloc: bool = True):  # fmt: skip
        self.tight_malloc = tight_malloc
        self.device = device
        self.memory_budget_bytes = memory_budget_bytes
        # a deliberate count, never torch's implicit one: the suite's, else the physical cores
        self.threads = resolve_threads(threads)  # (run/threads.py); rows record it
        self._ctx = mp.get_context("spawn")
        self._worker: _Worker | None = None

    def prestart(self) -> None:
        """Start the worker now without waiting for it to be ready (it imports torch for seconds),
        so that the runner's two pools start their workers side by side; `run` waits."""
        if self._worker is None:
            self._worker = self._spawn()

    def wait_ready(self) -> None:
        """Start the worker if none is live and wait until it is ready: the runner calls this
        before a task's clock starts, so a row's elapsed_s and its shared case timeout do not
        include the seconds a fresh worker spends importing torch."""
        if self._worker is not None and not self._worker.process.is_alive():
            self._kill()  # died between tasks: reaped, and forgotten by kill_all_workers
        if self._worker is None:
            self._worker = self._spawn()
        try:
            self._await_ready(self._worker)
        except BaseException:
            self._worker = None  # ended by _await_ready
            raise

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        resource_tracker.ensure_running()  # started now, it cannot unblock the mask below
        with _worker_env(MALLOC_ENV if self.tight_malloc else TIMING_MALLOC_ENV):
            proc = self._ctx.Process(
                target=worker_main, args=(child, self.device, self.memory_budget_bytes,
                                          self.threads), daemon=False,  # ranks are children
            )  # fmt: skip
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STARTUP_BLOCKED)
            try:
                proc.start()
                _LIVE.add(proc.pid)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        child.close()
        return _Worker(proc, parent)

    def _await_ready(self, worker: _Worker) -> _Worker:
        if worker.ready:
            return worker
        proc, parent = worker.process, worker.conn
        try:
            if not parent.poll(_START_TIMEOUT_S):
                raise EOFError
            parent.recv()
        except BaseException as exc:  # it failed, or a stop signal came while it started
            _end(worker)
            if not isinstance(exc, (EOFError, OSError)):
                raise
            raise HarnessError(
                f"the worker process failed to start (exit code {proc.exitcode}); "
                "run a task in the foreground to see why"
            ) from None
        worker.ready = True
        return worker

    @property
    def pid(self) -> int | None:
        """The live worker's pid (None between a crash and the next task)."""
        return None if self._worker is None else self._worker.process.pid

    def run(self, task: Task, timeout_s: float) -> dict[str, Any]:
        self.wait_ready()  # a worker that died between tasks is reaped and replaced there
        worker = self._worker
        worker.conn.send(task)
        try:
            ready = worker.conn.poll(timeout_s)
            if ready:
                kind, row = worker.conn.recv()
                return row
        except (EOFError, ConnectionError, OSError):
            pass
        row = base_row(task)
        worker.process.join(timeout=1.0)
        if worker.process.is_alive():
            self._kill()
            row.update(status="timeout", reason=f"no result within the case timeout {timeout_s}s;"
                                                " worker killed")  # fmt: skip
        else:
            code = worker.process.exitcode
            how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit code {code}")  # fmt: skip
            row.update(status="error", reason=f"worker process died ({how})")
            self._kill()  # and the rank processes it may have left behind
        return row

    def _kill(self) -> None:
        if self._worker is not None:
            _end(self._worker)
            self._worker = None

    def close(self, *, now: bool = False) -> None:
        """Stop the worker: asked to exit between tasks, or (`now`, or busy) killed at once."""
        if not now and self._worker is not None and self._worker.process.is_alive():
            try:
                self._worker.conn.send(None)
                self._worker.process.join(timeout=5)
            except (BrokenPipeError, OSError):
                pass
        self._kill()


def _end(worker: _Worker) -> None:
    """Kill a worker with its process group, reap it, and forget it."""
    _kill_group(worker.process.pid)
    worker.process.kill()
    worker.process.join(timeout=5)
    worker.conn.close()
    _LIVE.discard(worker.process.pid)


def _kill_group(pid: int | None) -> None:
    """Kill the worker's process group (the worker calls setsid, so its pgid is its pid)."""
    if pid is None:
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
