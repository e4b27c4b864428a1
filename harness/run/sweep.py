"""Runs a suite: expands it into tasks and feeds them to worker processes (run/pool.py), one at a
time, appending each row to the run directory as it comes. With timing.processes > 1 every row is
timed again in fresh workers, round after round (run/rounds.py).

On CPU each task runs in two workers: a timing worker with ordinary glibc malloc, and a memory
worker spawned with glibc settings that return freed blocks to the kernel at once, so its peak RSS
tracks live tensors. One process cannot do both: those settings make every large allocation a
fresh page-faulted mmap, which slows implementations that allocate per block by ~25% (measured on
bpt), and switching them at run time gave unstable peaks. The timing worker's malloc thresholds
are fixed too (TIMING_MALLOC_ENV): glibc's default dynamic threshold depends on the allocation
history, which made the same case's time differ by up to 1.9× between two runs. The two workers
start side by side (each imports torch for seconds) and are ready before a task's clock starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from harness.errors import SuiteError
from harness.results import RunDir
from harness.rows import MEMORY_FIELDS
from harness.run.interrupt import signals_held
from harness.run.pool import WorkerPool
from harness.run.task import Task
from harness.suite import Suite


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SuiteError("device: 'cuda' was asked for but torch sees no CUDA device; "
                         "allowed here: auto, cpu")  # fmt: skip
    return requested


def plan(suite: Suite, device: str, *, impls: Iterable[str] | None = None,
         case_filter: str | None = None) -> list[Task]:  # fmt: skip
    """Every (case, implementation, phase) task of the suite, in a deterministic order.

    An --impl outside the suite or given twice, or a --filter that matches no case, is a
    SuiteError (`Suite.select`): an empty or doubled plan is a mistake, not a run.
    """
    cases, chosen = suite.select(impls, case_filter)
    timing, accuracy = suite.timing.model_dump(), suite.accuracy.model_dump()
    budget = budget_bytes(suite)
    tasks = []
    for case in cases:
        for impl in chosen:
            limit = suite.limits.max_seq_len.get(impl)
            skip = (f"seq_len {case.seq_len} is above the suite's limit {limit} for {impl}"
                    if limit and case.seq_len > limit else None)  # fmt: skip
            for phase in suite.sweep.phase:
                tasks.append(Task(case=case, impl=impl, phase=phase, device=device,
                                  seed=suite.seed, timing=timing, accuracy=accuracy,
                                  skip_reason=skip, memory_budget_bytes=budget))  # fmt: skip
    return tasks


ProgressFn = Callable[[int, int, Task, dict[str, Any] | None], None]


def run_tasks(suite: Suite, tasks: list[Task], run: RunDir, *, progress: ProgressFn | None = None,
              make_pool: Callable[..., Any] = WorkerPool) -> list[dict[str, Any]]:  # fmt: skip
    """Run the tasks not yet in `run` (so the same call resumes a killed run).

    `make_pool` makes the two pools (WorkerPool's arguments); under torchrun it is the launched
    world's (run/launched.py), which runs each distributed task on the launched ranks.

    Anything raised through here (KeyboardInterrupt, the CLI's signal handling) kills both pools'
    workers and their rank processes at once rather than waiting for the task in flight.
    """
    run.repair()
    done = run.done_keys()
    todo = [t for t in tasks if t.key not in done]
    device = tasks[0].device if tasks else "cpu"
    settings = {"device": device, "threads": suite.threads,
                "memory_budget_bytes": budget_bytes(suite)}  # fmt: skip
    memory_pool = make_pool(**settings, tight_malloc=True)
    time_pool = make_pool(**settings, tight_malloc=False) if device == "cpu" else None
    run_id = run.meta().get("run_id")
    rows = []
    stopped = True
    timeout = suite.limits.case_timeout_s

    def measure_one(task: Task) -> dict[str, Any]:
        one_pass = time_pool is None or task.skip_reason
        for pool in (memory_pool,) if one_pass else (memory_pool, time_pool):
            if hasattr(pool, "wait_ready"):  # a fresh worker's start is not the case's time
                pool.wait_ready()
        started = time.perf_counter()
        # P ranks too: timed in the ordinary-malloc worker like P = 1, so scaling compares
        # like with like (ranks are forked from the worker and inherit its malloc settings).
        if one_pass:
            row = memory_pool.run(task, timeout)
        else:
            row = _two_passes(task, time_pool, memory_pool, timeout)
        row.setdefault("elapsed_s", time.perf_counter() - started)
        return row

    def emit(row: dict[str, Any]) -> None:
        row["run_id"] = run_id
        with signals_held():  # a row and its samples whole, even under a signal
            run.append(row)
        rows.append(row)

    try:
        for pool in (memory_pool, time_pool) if todo else ():
            # side by side: each imports torch for seconds; never while a task is timed (a fresh
            # round's or a crashed worker's replacement starts alone, before the clock)
            if hasattr(pool, "prestart"):
                pool.prestart()
        if suite.timing.processes > 1:  # each row in several fresh processes (run/rounds.py)
            from harness.run.rounds import round_pools, run_rounds

            timer = time_pool or memory_pool
            first = lambda task: (measure_one(task), getattr(timer, "pid", None))  # noqa: E731
            fresh, close_round = round_pools(make_pool, settings, timeout)
            run_rounds(todo, suite.timing.processes, first=first, fresh_time_pass=fresh,
                       close_round=close_round, emit=emit, progress=progress)  # fmt: skip
        for i, task in enumerate(todo if suite.timing.processes == 1 else ()):
            if progress:
                progress(i, len(todo), task, None)
            row = measure_one(task)
            emit(row)
            if progress:
                progress(i + 1, len(todo), task, row)
        stopped = False
    finally:
        memory_pool.close(now=stopped)
        if time_pool is not None:
            time_pool.close(now=stopped)
    return rows


def budget_bytes(suite: Suite) -> int | None:
    """The suite's memory budget in bytes (limits.memory_budget_gb, GiB), or None.

    None is not "unlimited": each worker then applies the default guard, a fraction of the memory
    free when it starts (`measure_task.default_guard_bytes`), to its rows, its pre-flight checks
    and its hard ceiling (`worker.apply_limits`). It is read in the worker, not here, so that the
    runner never touches a CUDA device and each row records the exact budget it was held to.
    """
    budget = suite.limits.memory_budget_gb
    return int(budget * (1 << 30)) if budget else None


def _pass_failed(row: dict[str, Any]) -> bool:
    """The pass itself failed (a timeout, a dead worker), not the implementation (which raises the
    same in either pass): then the reason should say which pass."""
    reason = str(row.get("reason") or "")
    return row.get("status") == "timeout" or reason.startswith("worker process died")


def _two_passes(task: Task, time_pool: WorkerPool, memory_pool: WorkerPool,
                timeout: float) -> dict[str, Any]:  # fmt: skip
    """Peak memory in the tight-malloc worker first, then time (and check) in the ordinary one.

    Memory first: a case whose measured peak breaks the budget is `oom` there and never timed.
    The two passes share the case timeout (the time pass gets what the memory pass left), and a
    failed pass says which it was; a failed time pass keeps the memory pass's numbers.
    """
    started = time.perf_counter()
    mem = memory_pool.run(replace(task, measure="memory"), timeout)
    spent = time.perf_counter() - started
    if mem.get("status") in ("oom", "skipped", "unsupported", "timeout", "error"):
        if _pass_failed(mem):
            mem["reason"] = f"memory pass: {mem.get('reason') or ''}".rstrip()
        mem["elapsed_s"] = spent
        return mem
    left = timeout - spent
    if left <= 0:
        row = {**mem, "status": "timeout",
               "reason": f"time pass: no time left of the case timeout {timeout}s after the "
                         f"memory pass ({spent:.1f}s)"}  # fmt: skip
        row["elapsed_s"] = spent
        return row
    row = time_pool.run(replace(task, measure="time"), left)
    if row.get("status") != "ok":
        if _pass_failed(row):
            row["reason"] = f"time pass: {row.get('reason') or ''}".rstrip()
        for key, value in mem.items():  # what the memory pass measured still stands
            row.setdefault(key, value)
        row.update({k: mem[k] for k in MEMORY_FIELDS if k in mem})
    elif mem.get("status") == "ok":
        row.update({k: mem[k] for k in MEMORY_FIELDS if k in mem})
    else:  # the time pass stands; say why memory is missing
        row["mem_method"] = f"memory pass {mem.get('status')}: {mem.get('reason')}"
    row["elapsed_s"] = time.perf_counter() - started
    return row


def default_run_dir(root: Path, suite_name: str) -> tuple[str, Path]:
    """A new, empty run directory `root/<UTC time>-<suite>[-N]`, made here: mkdir is the claim,
    so runs started together into one `--out` never pick the same folder (`RunDir.create` then
    fills it)."""
    from harness.errors import ResultsError

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_id = f"{stamp}-{suite_name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = root / (run_id if n == 1 else f"{run_id}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path.name, path
    except OSError as exc:
        raise ResultsError(f"--out: cannot make a run directory in {root}: {exc}") from None
    raise ResultsError(f"--out: {root} holds 9999 runs named {run_id}[-N]; choose another --out")
