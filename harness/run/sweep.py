"""Runs a suite: expands it into tasks and feeds them to a worker process, one at a time.

The worker lives across tasks (importing torch costs seconds) and is replaced whenever a task
kills it (segfault, abort) or outlives the case timeout, so the sweep always goes on.

On CPU each task runs in two workers: a timing worker with ordinary glibc malloc, and a memory
worker spawned with glibc settings that return freed blocks to the kernel at once, so its peak RSS
tracks live tensors. One process cannot do both: those settings make every large allocation a
fresh page-faulted mmap, which slows implementations that allocate per block by ~25% (measured on
bpt), and switching them at run time gave unstable peaks. The timing worker's malloc thresholds
are fixed too (TIMING_MALLOC_ENV): glibc's default dynamic threshold depends on the allocation
history, which made the same case's time differ by up to 1.9× between two runs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError, SuiteError
from harness.measure.memory import MALLOC_ENV, TIMING_MALLOC_ENV
from harness.results import RunDir
from harness.run.worker import Task, base_row, worker_main
from harness.suite import Suite

_START_TIMEOUT_S = 180.0


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SuiteError("device: 'cuda' was asked for but torch sees no CUDA device; "
                         "allowed here: auto, cpu")  # fmt: skip
    return requested


def plan(suite: Suite, device: str, *, impls: Iterable[str] | None = None,
         case_filter: str | None = None) -> list[Task]:  # fmt: skip
    """Every (case, implementation, phase) task of the suite, in a deterministic order."""
    chosen = list(impls) if impls else list(suite.implementations)
    for name in chosen:
        if name not in suite.implementations:
            raise SuiteError(f"--impl: {name!r} is not in the suite; allowed: "
                             f"{', '.join(suite.implementations)}")  # fmt: skip
    timing, accuracy = suite.timing.model_dump(), suite.accuracy.model_dump()
    tasks = []
    for case in suite.cases():
        if case_filter and case_filter not in case.name:
            continue
        for impl in chosen:
            limit = suite.limits.max_seq_len.get(impl)
            skip = (f"seq_len {case.seq_len} is above the suite's limit {limit} for {impl}"
                    if limit and case.seq_len > limit else None)  # fmt: skip
            for phase in suite.sweep.phase:
                tasks.append(Task(case=case, impl=impl, phase=phase, device=device,
                                  seed=suite.seed, timing=timing, accuracy=accuracy,
                                  skip_reason=skip))  # fmt: skip
    return tasks


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


ProgressFn = Callable[[int, int, Task, dict[str, Any] | None], None]


def run_tasks(suite: Suite, tasks: list[Task], run: RunDir, *,
              progress: ProgressFn | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run the tasks not yet in `run` (so the same call resumes a killed run)."""
    run.repair()
    done = run.done_keys()
    todo = [t for t in tasks if t.key not in done]
    budget = suite.limits.memory_budget_gb
    device = tasks[0].device if tasks else "cpu"
    settings = {"device": device, "threads": suite.threads,
                "memory_budget_bytes": int(budget * (1 << 30)) if budget else None}  # fmt: skip
    memory_pool = WorkerPool(**settings, tight_malloc=True)
    time_pool = WorkerPool(**settings, tight_malloc=False) if device == "cpu" else None
    run_id = run.meta().get("run_id")
    rows = []
    try:
        for i, task in enumerate(todo):
            if progress:
                progress(i, len(todo), task, None)
            started = time.perf_counter()
            timeout = suite.limits.case_timeout_s
            if time_pool is None or task.case.world_size > 1 or task.skip_reason:
                row = memory_pool.run(task, timeout)
            else:
                row = _two_passes(task, time_pool, memory_pool, timeout)
            row.setdefault("elapsed_s", time.perf_counter() - started)
            row["run_id"] = run_id
            run.append(row)
            rows.append(row)
            if progress:
                progress(i + 1, len(todo), task, row)
    finally:
        memory_pool.close()
        if time_pool is not None:
            time_pool.close()
    return rows


_MEMORY_FIELDS = ("peak_mem_above_inputs_bytes", "peak_mem_bytes", "mem_method",
                  "cuda_reserved_bytes", "device_used_bytes")  # fmt: skip


def _two_passes(task: Task, time_pool: WorkerPool, memory_pool: WorkerPool,
                timeout: float) -> dict[str, Any]:  # fmt: skip
    """Time (and check) in the ordinary worker, then measure peak memory in the tight one."""
    row = time_pool.run(replace(task, measure="time"), timeout)
    if row.get("status") != "ok":
        return row
    mem = memory_pool.run(replace(task, measure="memory"), timeout)
    if mem.get("status") == "ok":
        row.update({k: mem.get(k) for k in _MEMORY_FIELDS})
    else:  # the time pass stands; say why memory is missing (an OOM under the budget, say)
        row["mem_method"] = f"memory pass {mem.get('status')}: {mem.get('reason')}"
    return row


def default_run_dir(root: Path, suite_name: str) -> tuple[str, Path]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_id = f"{stamp}-{suite_name}"
    path = root / run_id
    n = 1
    while path.exists():
        n += 1
        path = root / f"{run_id}-{n}"
    return path.name, path
