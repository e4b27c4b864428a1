"""Executes one (case, implementation, phase) task and returns its result row.

Runs inside a worker process (see runner.py) so that a segfault, a hang or an OOM in one task is
recorded and the sweep goes on. Implementations never catch: every exception is classified here.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.case import Case
from harness.errors import Unavailable
from harness.measure.error import max_abs, rel_l2
from harness.measure.flops import case_flops
from harness.measure.memory import live_bytes, measure_peak
from harness.measure.phases import make_phase, run_once_for_check
from harness.measure.timing import summarize_ms, time_samples_ms
from harness.registry import REGISTRY
from harness.rows import new_row
from harness.workloads import get_workload
from harness.workloads.base import Inputs, Reference


class Unsupported(Exception):
    """This case cannot run on this implementation (dtype, head_dim, divisibility, ...)."""


@dataclass(frozen=True)
class Task:
    case: Case
    impl: str
    phase: str
    device: str
    seed: int
    timing: dict[str, Any]
    accuracy: dict[str, Any]
    skip_reason: str | None = None
    # "all" in one process; on CPU the runner splits a task into a "time" pass (ordinary malloc)
    # and a "memory" pass (a worker whose malloc returns memory at once), see runner.py.
    measure: Literal["all", "time", "memory"] = "all"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.case.name, self.impl, self.phase)


@dataclass
class _CaseCache:
    """Inputs and references of the case in hand, shared by every impl and phase of that case."""

    key: tuple[Any, ...] | None = None
    inputs: Inputs | None = None
    dout: torch.Tensor | None = None
    refs: dict[bool, Reference] = field(default_factory=dict)


_cache = _CaseCache()


def base_row(task: Task) -> dict[str, Any]:
    return dict(new_row(task.case.to_dict(), case_name=task.case.name, impl=task.impl,
                        phase=task.phase, device=task.device))  # fmt: skip


def classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception to (status, one-line reason)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, Unavailable):
        return "skipped", exc.reason
    if isinstance(exc, Unsupported):
        return "unsupported", text
    oom_words = ("out of memory", "can't allocate memory", "cannot allocate memory")
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or any(
        w in text.lower() for w in oom_words
    ):
        return "oom", f"{type(exc).__name__}: {text}"[:500]
    if isinstance(exc, RuntimeError) and ("No available kernel" in text or "No viable backend"
                                          in text):  # fmt: skip
        return "unsupported", f"torch has no kernel for this case: {text}"[:500]
    if isinstance(exc, NotImplementedError):  # a backend declining a case (e.g. flex bwd on CPU)
        return "unsupported", f"not implemented by the backend: {text}"[:500]
    return "error", f"{type(exc).__name__}: {text}"[:500]


def _check_runnable(task: Task) -> None:
    impl = REGISTRY.get(task.impl)
    availability = impl.available(task.device)
    if not availability.ok:
        raise Unavailable(task.impl, availability.reason)
    reasons = list(impl.unsupported(task.case, task.device))
    if task.phase != "fwd" and not impl.supports_backward:
        reasons.append("no backward pass")
    if task.case.world_size > 1 and not impl.needs_process_group:
        reasons.append(f"single-device implementation; world_size {task.case.world_size} needs "
                       "a distributed one")  # fmt: skip
    if reasons:
        raise Unsupported("; ".join(reasons))


def _case_state(task: Task) -> _CaseCache:
    key = (task.case, task.device, task.seed)
    if _cache.key != key:
        _cache.key, _cache.refs, _cache.inputs, _cache.dout = key, {}, None, None
        workload = get_workload(task.case.workload)
        _cache.inputs = workload.make_inputs(task.case, task.device, task.seed)
    return _cache


def _reference(task: Task, state: _CaseCache, with_grads: bool) -> Reference:
    if with_grads not in state.refs:
        acc = task.accuracy
        state.refs[with_grads] = get_workload(task.case.workload).reference(
            task.case, state.inputs, state.dout if with_grads else None,
            max_rows=acc["ref_max_rows"], chunk_rows=acc["ref_chunk_rows"],
            grad_max_seq=acc["grad_ref_max_seq"],
        )  # fmt: skip
    return state.refs[with_grads]


def _errors(task: Task, state: _CaseCache, out: torch.Tensor, grads) -> dict[str, Any]:
    workload = get_workload(task.case.workload)
    try:
        ref = _reference(task, state, with_grads=grads is not None)
    except Exception as exc:  # the impl's row stands even if the reference cannot be computed
        status, reason = classify(exc)
        return {"ref_note": f"reference failed ({status}): {reason}"}
    picked = workload.select_rows(out, ref.rows)
    errs: dict[str, Any] = {
        "err_rel_l2": rel_l2(picked, ref.out),
        "err_max_abs": max_abs(picked, ref.out),
        "err_naive_same_dtype_rel_l2": ref.naive_out_rel_l2,
        "ref_rows_sampled": None if ref.rows is None else int(ref.rows.numel()),
        "ref_note": ref.note,
    }
    if grads is not None and ref.grads is not None:
        for name, g in grads.items():
            errs[f"err_d{name}_rel_l2"] = rel_l2(g, ref.grads[name])
            errs[f"err_d{name}_max_abs"] = max_abs(g, ref.grads[name])
        errs["err_naive_same_dtype_grad_rel_l2"] = max((ref.naive_grad_rel_l2 or {}).values(),
                                                       default=None)  # fmt: skip
    return errs


def _measure(task: Task) -> dict[str, Any]:
    _check_runnable(task)
    if task.case.world_size > 1:
        from harness.run.ranks import run_ranks

        return run_ranks(task)
    impl = REGISTRY.get(task.impl)
    workload = get_workload(task.case.workload)
    state = _case_state(task)
    needs_grad = task.phase != "fwd"
    if needs_grad and state.dout is None:
        gen = torch.Generator().manual_seed(task.seed + 1)
        probe = workload.bind(impl, task.case, state.inputs, requires_grad=False)
        with torch.no_grad():
            shape = probe.forward().shape
        state.dout = torch.randn(shape, generator=gen).to(state.inputs.tensors[
            next(iter(state.inputs.tensors))].dtype).to(task.device)  # fmt: skip
    bound = workload.bind(impl, task.case, state.inputs, requires_grad=needs_grad)
    row: dict[str, Any] = {"status": "ok", "reason": "", "label": impl.label,
                           "input_bytes": state.inputs.nbytes}  # fmt: skip
    if task.measure != "memory":
        out, grads = run_once_for_check(task.phase, bound, state.dout)
        row.update(_errors(task, state, out, grads))
        del out, grads

    live_before_graph = live_bytes(task.device)
    fn = make_phase(task.phase, bound, state.dout)
    graph_bytes = max(0, live_bytes(task.device) - live_before_graph) if task.phase == "bwd" else 0
    t = task.timing
    for _ in range(t["warmup"] if task.measure != "memory" else 1):
        fn()
    if task.measure != "time":
        mem = measure_peak(fn, task.device)
        above = None if mem.above_baseline_bytes is None else mem.above_baseline_bytes + graph_bytes
        row.update({
            "peak_mem_above_inputs_bytes": above,
            "peak_mem_bytes": None if above is None else above + state.inputs.nbytes,
            "mem_method": mem.method, "cuda_reserved_bytes": mem.cuda_reserved_bytes,
            "device_used_bytes": mem.device_used_bytes,
        })  # fmt: skip
    if task.measure != "memory":
        samples = time_samples_ms(
            fn, device=task.device, warmup=0, repeats=t["repeats"],
            min_repeats=t["min_repeats"], max_time_s=t["max_time_s"],
        )  # fmt: skip
        summary = summarize_ms(samples)
        flops = case_flops(task.case, task.phase)
        tokens = task.case.batch * task.case.seq_len
        row.update(summary)
        row.update({
            "num_samples": len(samples), "time_samples_ms": samples, "flops": flops,
            "tflops": flops / (summary["time_ms_median"] * 1e-3) / 1e12,
            "tokens_per_s": tokens / (summary["time_ms_median"] * 1e-3),
        })  # fmt: skip
    return row


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
    """Per-process settings: thread count and a memory ceiling so OOM is an exception here."""
    if threads:
        torch.set_num_threads(threads)
    if not memory_budget_bytes:
        return
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_budget_bytes / total))
        return
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm_size + memory_budget_bytes + (1 << 30)  # thread stacks and arenas are virtual
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker_main(conn: Any, device: str, memory_budget_bytes: int | None,
                threads: int | None) -> None:  # fmt: skip
    """Process entry point: receive tasks, send rows, until told to stop (None)."""
    os.setsid()  # its own process group: the runner can kill it with any rank processes it starts
    apply_limits(device, memory_budget_bytes, threads)
    REGISTRY.all()  # load plugins once, before the first timed task
    conn.send(("ready", os.getpid()))
    while True:
        task = conn.recv()
        if task is None:
            break
        conn.send(("row", execute(task)))
