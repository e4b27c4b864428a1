"""Executes one task in a worker process and returns its result row.

Runs inside a worker process (see run/pool.py) so that a segfault, a hang or an OOM in one task is
recorded and the sweep goes on. Implementations never catch: every exception is classified here.
A distributed task (world_size > 1) starts its rank processes from here (run/ranks.py); every
task, on one process or P ranks, is measured by the same code (run/measure_task.py).
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any

import torch

from harness.registry import REGISTRY
from harness.rows import new_row
from harness.run.lifeline import die_with_parent
from harness.run.task import Task, check_runnable, classify


def base_row(task: Task) -> dict[str, Any]:
    row = dict(new_row(task.case.to_dict(), case_name=task.case.name, impl=task.impl,
                       phase=task.phase, device=task.device))  # fmt: skip
    if task.case.workload in ("attention", "decode"):
        from harness.measure.flops import mask_density

        row["mask_density"] = mask_density(task.case)
    return row


def _measure(task: Task) -> dict[str, Any]:
    check_runnable(task)
    if task.case.world_size > 1:
        from harness.run.ranks import run_ranks

        return run_ranks(task)
    from harness.run.measure_task import measure

    return measure(task)


def execute(task: Task) -> dict[str, Any]:
    """Run one task and return its row; never raises for problems of the case itself."""
    row = base_row(task)
    started = time.perf_counter()
    if task.skip_reason:
        row.update(status="skipped", reason=task.skip_reason)
        return row
    try:
        row.update(_measure(task))
    except Exception as exc:
        status, reason = classify(exc)
        row.update(status=status, reason=reason)
        if status == "error":
            row["traceback"] = traceback.format_exc(limit=8)
    finally:
        if task.device == "cuda":
            torch.cuda.empty_cache()
    row["elapsed_s"] = time.perf_counter() - started
    return row


def apply_limits(device: str, memory_budget_bytes: int | None, threads: int | None) -> None:
    """Per-process settings: the thread count, and a hard memory ceiling as a backstop.

    The pool passes a deliberate thread count (the suite's, else the physical cores:
    run/threads.py); None leaves torch's as it is. Each row records its count (`num_threads`).

    The budget itself is checked against each task's measured peak (run/measure_task.py), which
    is exact. The ceiling here only keeps a runaway case from taking the machine down: on CUDA the
    caching allocator refuses allocations past the budget's share of the device; on CPU the address
    space is capped at what is mapped now + the budget + 1 GiB of slack (thread stacks and malloc
    arenas are reserved virtual memory, so the cap cannot be tighter without false OOMs).
    Without a suite budget the ceiling is the default guard's (run/measure_task.py), read here
    once for the process, so the backstop and the rows' budget are the same number.
    """
    if threads:
        torch.set_num_threads(threads)
    if not memory_budget_bytes:
        from harness.run.measure_task import default_guard_bytes

        memory_budget_bytes = default_guard_bytes(device)
    if not memory_budget_bytes:
        return
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        # the same 1 GiB of slack as on CPU: the cached dout and the allocator's rounding sit
        # outside the measured peak, which is what the budget is checked against
        slack = 1 << 30
        torch.cuda.set_per_process_memory_fraction(min(1.0, (memory_budget_bytes + slack) / total))
        return
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm_size + memory_budget_bytes + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker_main(conn: Any, device: str, memory_budget_bytes: int | None,
                threads: int | None) -> None:  # fmt: skip
    """Process entry point: receive tasks, send rows, until told to stop (None) or orphaned."""
    die_with_parent()  # a runner killed by SIGKILL takes its worker along (run/lifeline.py)
    os.setsid()  # its own process group: the runner can kill it with any rank processes it starts
    # Out of the terminal's process group now: the SIGINT the pool blocked for the start is for
    # the runner, which kills this group; ignoring it discards one that came during the start.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    apply_limits(device, memory_budget_bytes, threads)
    REGISTRY.all()  # load plugins once, before the first timed task
    _freeze_modules()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the runner is gone
            break
        if task is None:
            break
        modules = len(sys.modules)
        conn.send(("row", execute(task)))
        if len(sys.modules) > modules:  # a task's lazy import (dynamo, a backend) stays too
            _freeze_modules()


def _freeze_modules() -> None:
    """Move what the process has imported out of the collector's sight (gc.freeze): modules live
    as long as the process, and a full gc.collect, which every peak-memory reading starts with
    (measure/memory.py), scanned their ~170k objects (~290k once dynamo is imported) in 0.1-0.2 s
    of CPU a row; frozen, it scans what the tasks make. Only after imports: whatever is frozen is
    never collected as a cycle, so a task's own objects are left to the collector."""
    gc.collect()
    gc.freeze()
