"""The worker pool: one live worker process at a time, replaced after a crash or a timeout.

The worker lives across tasks (importing torch costs seconds) and is replaced whenever a task
kills it (segfault, abort) or outlives the case timeout, so the sweep always goes on. The worker
calls setsid, so killing its process group also ends any rank processes it started.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError
from harness.measure.memory import MALLOC_ENV, TIMING_MALLOC_ENV
from harness.run.task import Task
from harness.run.worker import base_row, worker_main

_START_TIMEOUT_S = 180.0


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


class WorkerPool:
    """One live worker at a time, restarted after a crash or a timeout."""

    def __init__(self, device: str, memory_budget_bytes: int | None, threads: int | None,
                 *, tight_malloc: bool = True):  # fmt: skip
        self.tight_malloc = tight_malloc
        self.device = device
        self.memory_budget_bytes = memory_budget_bytes
        self.threads = threads
        self._ctx = mp.get_context("spawn")
        self._worker: _Worker | None = None

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        with _worker_env(MALLOC_ENV if self.tight_malloc else TIMING_MALLOC_ENV):
            proc = self._ctx.Process(
                target=worker_main, args=(child, self.device, self.memory_budget_bytes,
                                          self.threads), daemon=False,  # ranks are children
            )  # fmt: skip
            proc.start()
        child.close()
        try:
            if not parent.poll(_START_TIMEOUT_S):
                raise EOFError
            parent.recv()
        except (EOFError, OSError):
            proc.kill()
            proc.join(timeout=5)
            raise HarnessError(
                f"the worker process failed to start (exit code {proc.exitcode}); "
                "run a task in the foreground to see why"
            ) from None
        return _Worker(proc, parent)

    def run(self, task: Task, timeout_s: float) -> dict[str, Any]:
        if self._worker is None or not self._worker.process.is_alive():
            self._worker = self._start()
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
            _kill_group(worker.process.pid)  # rank processes it may have left behind
            self._worker = None
        return row

    def _kill(self) -> None:
        if self._worker is not None:
            _kill_group(self._worker.process.pid)
            self._worker.process.kill()
            self._worker.process.join(timeout=5)
            self._worker.conn.close()
            self._worker = None

    def close(self) -> None:
        if self._worker is not None and self._worker.process.is_alive():
            try:
                self._worker.conn.send(None)
                self._worker.process.join(timeout=5)
            except (BrokenPipeError, OSError):
                pass
        self._kill()


def _kill_group(pid: int | None) -> None:
    """Kill the worker's process group (the worker calls setsid, so its pgid is its pid)."""
    if pid is None:
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
