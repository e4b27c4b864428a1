"""The one measurement path: a task's check against float64, peak memory and time samples → row.

It serves one process and P ranks alike. In one process `group` is None. On P ranks every rank
calls `measure(task, group)` with its `RankGroup` (harness/run/ranks.py): inputs are made in full
on every rank (seeded, identical) and split by the implementation's hooks (`Impl.distributed`), the
sample loop gets a barrier before each sample and rank 0's stop decision, the output and gradients
are gathered for the error on rank 0, and rank 0 builds the row from every rank's numbers: a
sample is the slowest rank's, peak memory is the largest rank's (each rank's is listed too).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from harness.measure.contention import CpuWindow, contention_fields, merge_noise
from harness.measure.derived import time_fields
from harness.measure.error import max_abs, rel_l2
from harness.measure.memory import live_bytes, measure_peak
from harness.measure.peaks import fractions
from harness.measure.phases import grad_bytes, make_phase, run_once_for_check
from harness.measure.timing import time_one_ms, time_samples_ms, timing_mode
from harness.registry import REGISTRY, Impl
from harness.run.inject import slowed
from harness.run.task import Task, Unsupported, classify
from harness.run.threads import usable_cpus
from harness.workloads import get_workload
from harness.workloads.base import Inputs, Reference


class Group(Protocol):
    """The rank group of a distributed task (see harness/run/ranks.py)."""

    rank: int
    world: int
    backend: str

    def barrier(self) -> None: ...

    def decide(self, more: bool) -> bool: ...

    def all_gather_tensor(self, t: torch.Tensor) -> list[torch.Tensor]: ...

    def all_gather_object(self, obj: Any) -> list[Any]: ...


@dataclass
class _CaseState:
    """Inputs and references of the case in hand, shared by every impl and phase of that case."""

    key: tuple[Any, ...] | None = None
    inputs: Inputs | None = None
    dout: torch.Tensor | None = None
    refs: dict[bool, Reference] = field(default_factory=dict)


_cache = _CaseState()


def _case_state(task: Task) -> _CaseState:
    """The seeded full-size inputs (and upstream gradient) of the task's case, made once."""
    key = (task.case, task.device, task.seed)
    if _cache.key != key:
        # free the previous case's tensors before making new ones; the key is set only once the
        # inputs exist, so a case whose inputs fail is tried afresh, not left half-cached
        _cache.key, _cache.refs, _cache.dout, _cache.inputs = None, {}, None, None
        _cache.inputs = get_workload(task.case.workload).make_inputs(task.case, task.device,
                                                                     task.seed)  # fmt: skip
        _cache.key = key
    if task.phase != "fwd" and _cache.dout is None:
        shape = get_workload(task.case.workload).output_shape(task.case)
        gen = torch.Generator().manual_seed(task.seed + 1)
        dtype = next(iter(_cache.inputs.tensors.values())).dtype
        _cache.dout = torch.randn(shape, generator=gen).to(dtype).to(task.device)
    return _cache


def _reference(task: Task, state: _CaseState, with_grads: bool) -> Reference:
    if with_grads not in state.refs:
        acc = task.accuracy
        state.refs[with_grads] = get_workload(task.case.workload).reference(
            task.case, state.inputs, state.dout if with_grads else None,
            max_rows=acc["ref_max_rows"], chunk_rows=acc["ref_chunk_rows"],
            grad_max_seq=acc["grad_ref_max_seq"],
        )  # fmt: skip
    return state.refs[with_grads]


def _errors(task: Task, state: _CaseState, out: torch.Tensor, grads) -> dict[str, Any]:
    """Error of the output (and gradients) against the float64 reference of the full case."""
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


class _CommRecorder:
    """Bytes each exchange of one observed call sends, and the time spent waiting for them."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.wait_s = 0.0

    def started(self, nbytes: int) -> None:
        self.sent.append(nbytes)

    def wait(self, waits) -> None:
        import time

        t0 = time.perf_counter()
        waits()
        self.wait_s += time.perf_counter() - t0


def _observe_comm(impl: Impl, fn, device: str, group: Group) -> dict[str, Any]:
    """One more call with the exchanges watched, then the same exchanges replayed alone."""
    hooks = impl.distributed
    recorder = _CommRecorder()
    group.barrier()
    with hooks.observe(recorder):
        time_one_ms(fn, device)
    comm_ms = 0.0
    if recorder.sent:
        replay = hooks.replay(recorder.sent, device)
        replay()  # warm the buffers and connections
        samples = []
        for _ in range(3):
            group.barrier()
            samples.append(time_one_ms(replay, device))
        comm_ms = min(samples)
    return {"sent": recorder.sent, "exposed_ms": recorder.wait_s * 1e3, "comm_ms": comm_ms}


def _comm_fields(everyone: list[dict[str, Any]]) -> dict[str, Any]:
    comm = max(r["comm_ms"] for r in everyone)
    exposed = max(r["exposed_ms"] for r in everyone)
    return {
        "bytes_sent_per_step_per_rank": [max(r["sent"], default=0) for r in everyone],
        "bytes_sent_per_rank": [sum(r["sent"]) for r in everyone],
        "num_exchanges": len(everyone[0]["sent"]),
        "comm_ms": comm,
        "exposed_comm_ms": exposed,
        "exposed_comm_ms_per_rank": [r["exposed_ms"] for r in everyone],
        "overlap_fraction": max(0.0, min(1.0, 1.0 - exposed / comm)) if comm > 0 else None,
    }


def _bind(task: Task, impl: Impl, state: _CaseState, group: Group | None):
    """The implementation bound to this process's inputs (a shard of them on P ranks)."""
    case, workload = task.case, get_workload(task.case.workload)
    inputs, dout = state.inputs, state.dout
    hooks = impl.distributed
    if group is not None:
        shard = lambda t: hooks.shard(t, case, group.rank, group.world)  # noqa: E731
        inputs = Inputs({n: shard(t) for n, t in inputs.tensors.items()})
        dout = None if dout is None else shard(dout)
    extra = hooks.forward_kwargs(case) if hooks is not None else {}
    bound = workload.bind(impl, case, inputs, requires_grad=task.phase != "fwd",
                          forward_kwargs=extra)  # fmt: skip
    return bound, inputs, dout


def _gather(impl: Impl, group: Group, t: torch.Tensor, case: Any) -> torch.Tensor:
    parts = group.all_gather_tensor(t.detach().contiguous())
    return impl.distributed.gather([p.cpu() for p in parts], case)


def measure(task: Task, group: Group | None = None) -> dict[str, Any]:
    """Measure a runnable task; the row fields beyond the case's (rank 0's row on P ranks).

    Raises for problems of the case itself (the caller classifies them into a status).
    """
    impl = REGISTRY.get(task.impl)
    case, device = task.case, task.device
    lead = group is None or group.rank == 0
    facts = {"label": impl.label, "memory_exponent": impl.memory_exponent,
             "uses_block_size": impl.uses_block_size}  # fmt: skip
    budget, budget_source = budget_for(task)
    # S×S would exist and only the default guard stands between it and the machine: refuse what
    # cannot fit before making a single input. A suite's own budget is held to the measured peak.
    if facts["memory_exponent"] == 2 and task.memory_budget_bytes is None:
        too_big = preflight_reason(task, budget, budget_source)
        # on P ranks rank 0's verdict holds everywhere (each rank reads its own free memory)
        if group is not None and group.decide(too_big is not None) and not lead:
            return {}
        if too_big is not None:
            return {"status": "oom", "reason": too_big, **facts, "mem_budget_bytes": budget}
    state = _case_state(task)
    bound, inputs, dout = _bind(task, impl, state, group)
    row: dict[str, Any] = {"status": "ok", "reason": "", "input_bytes": inputs.nbytes, **facts}
    if case.workload == "decode":
        row.update(_cache_fields(case, inputs))
    if task.phase != "fwd":
        row["grad_bytes"] = grad_bytes(bound)

    # One untimed call, checked against float64 unless this is the memory pass. The memory pass
    # makes it too: a process's first call with autograd allocates lazily initialised state
    # (tens of MiB on CPU) that would otherwise land in the `bwd` graph bytes measured below.
    out, grads = run_once_for_check(task.phase, bound, dout)
    if task.measure == "memory":
        del out, grads
    else:
        if group is not None:
            out = _gather(impl, group, out, case)
            grads = None if grads is None else {n: _gather(impl, group, g, case)
                                                for n, g in grads.items()}  # fmt: skip
        if lead:
            row.update(_errors(task, state, out, grads))
        del out, grads

    live_before_graph = live_bytes(device)
    phase = make_phase(task.phase, bound, dout)
    graph_bytes = max(0, live_bytes(device) - live_before_graph) if task.phase == "bwd" else 0
    t = task.timing
    for _ in range(t["warmup"] if task.measure != "memory" else 1):
        phase.fn()
    if group is not None:
        group.barrier()

    mine: dict[str, Any] = {}
    if task.measure != "time":
        mem = measure_peak(phase.fn, device, reset=phase.reset)
        above = mem.above_baseline_bytes
        mine["peak"] = None if above is None else above + graph_bytes
        mine["mem"] = mem
    if task.measure != "memory":
        hooks = {} if group is None else {"before_sample": group.barrier, "decide": group.decide}
        timed, injected = slowed(phase.fn, task.impl, device)  # tests/benchmarks only
        if injected:
            row["injected_slowdown"] = injected
        graph = bool(t.get("cuda_graph", False)) and device == "cuda"
        if graph and group is not None:  # NCCL exchanges and barriers cannot sit in a graph
            raise Unsupported(
                "timing.cuda_graph: not with world_size > 1 (collectives and "
                "per-sample barriers cannot be captured); set cuda_graph: false"
            )
        window = CpuWindow.start()  # what others took of the CPU while timing
        mine["samples"] = time_samples_ms(
            timed, device=device, warmup=0, repeats=t["repeats"],
            min_repeats=t["min_repeats"], max_time_s=t["max_time_s"],
            warmup_ms=t.get("warmup_ms", 0.0), l2_flush=t.get("l2_flush", True),
            cuda_graph=graph, **hooks,
        )  # fmt: skip
        mine["cpu"] = window.stop()
        row["timing_mode"] = timing_mode(device, l2_flush=t.get("l2_flush", True),
                                         cuda_graph=graph)  # fmt: skip
        if group is not None and impl.distributed is not None:
            mine["comm"] = _observe_comm(impl, phase.fn, device, group)
    if group is None:
        everyone = [mine]
    else:
        mem = mine.pop("mem", None)
        everyone = group.all_gather_object(mine)
        mine["mem"] = mem
    if not lead:
        return {}

    if task.measure != "time":
        peaks = [r["peak"] for r in everyone]
        peak = None if None in peaks else max(peaks)
        mem = mine["mem"]
        row.update({
            "peak_mem_above_inputs_bytes": peak,
            "peak_mem_bytes": None if peak is None else peak + inputs.nbytes,
            "mem_method": mem.method, "cuda_reserved_bytes": mem.cuda_reserved_bytes,
            "device_used_bytes": mem.device_used_bytes,
            "mem_budget_bytes": budget,
        })  # fmt: skip
        if group is not None:
            row["peak_mem_above_inputs_bytes_per_rank"] = peaks
        # The call allocates at least its gradients; a smaller reading means the resident-set
        # method could not see them (on CPU, blocks under the 64 KiB mmap threshold reuse freed
        # heap without raising VmHWM): say so rather than present it as exact.
        known = row.get("grad_bytes") or 0
        row["mem_below_resolution"] = peak is not None and peak < known
        if row["mem_below_resolution"]:
            row["mem_method"] = (f"{mem.method} (below its resolution: the call allocates at "
                                 f"least {known} bytes of gradients)")  # fmt: skip
        over = _over_budget(row, budget, budget_source)
        if over:
            row.update(status="oom", reason=over)
            return row
    if task.measure != "memory":
        worst = [max(r["samples"][i] for r in everyone) for i in range(len(mine["samples"]))]
        row.update(time_fields(case, task.phase, worst))
        merge_noise(row, contention_fields([r.get("cpu") for r in everyone], device,
                                           threads=torch.get_num_threads() * len(everyone),
                                           cpus=usable_cpus()))  # fmt: skip
        row["num_threads"] = torch.get_num_threads()  # the samples' intra-op threads (rank 0's)
        row.update(fractions(row, task.device_peaks))
        if group is not None:
            row["comm_backend"] = group.backend
            if impl.distributed is not None:
                row.update(_comm_fields([r["comm"] for r in everyone]))
                row.update(impl.distributed.row_fields(case, group.world))
    return row


def _cache_fields(case: Any, inputs: Inputs) -> dict[str, Any]:
    """The KV cache's allocation (its tensors' storage) beside the decoder-only notes' formula."""
    from harness.measure.flops import kv_cache_bytes

    storage = sum(inputs.tensors[n].untyped_storage().nbytes() for n in ("k", "v"))
    return {"cache_bytes": storage, "cache_bytes_formula": kv_cache_bytes(case)}


def _over_budget(row: dict[str, Any], budget: int | None, source: str) -> str | None:
    """The reason a measured peak breaks the memory budget, or None."""
    peak = row.get("peak_mem_bytes")
    if budget is None or peak is None or peak <= budget:
        return None
    return (f"peak memory {peak / 2**20:.1f} MiB (inputs included) is above the memory budget "
            f"{budget / 2**20:.1f} MiB ({source})")  # fmt: skip


# --- the memory guard -------------------------------------------------------------------------
# Without limits.memory_budget_gb a case that materialises S×S could take the machine down (naive
# at S = 16384, H = 8 grew past 8.7 GB before failing). So a default guard applies: this fraction
# of the memory free when the process starts (CPU: MemAvailable; CUDA: the device's free memory).
DEFAULT_GUARD_FRACTION = 0.8
SUITE_BUDGET = "limits.memory_budget_gb"
DEFAULT_GUARD = (f"default guard: {DEFAULT_GUARD_FRACTION} of the memory free at the worker's "
                 f"start; the suite sets no {SUITE_BUDGET}")  # fmt: skip


def _mem_available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo, or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _device_free_bytes() -> int | None:
    free, _total = torch.cuda.mem_get_info()
    return int(free)


@functools.cache
def default_guard_bytes(device: str) -> int | None:
    """The budget when a suite sets none, read once per process (so a worker's backstop, its
    rows and its pre-flight checks agree); None where free memory cannot be read."""
    free = _device_free_bytes() if device == "cuda" else _mem_available_bytes()
    return None if free is None else int(DEFAULT_GUARD_FRACTION * free)


def budget_for(task: Task) -> tuple[int | None, str]:
    """The task's memory budget in bytes and where it comes from (the suite or the guard)."""
    if task.memory_budget_bytes is not None:
        return task.memory_budget_bytes, task.memory_budget_source or SUITE_BUDGET
    return default_guard_bytes(task.device), DEFAULT_GUARD


def sxs_estimate_bytes(task: Task) -> int:
    """Bytes of the S×S scores a kernel that materialises them holds: batch·heads·Sq·Sk·element,
    once for a forward, ~3 times with a backward (scores, probabilities and their gradient)."""
    case = task.case
    element = torch.empty((), dtype=case.torch_dtype).element_size()
    copies = 1 if task.phase == "fwd" else 3
    return case.batch * case.num_heads * case.sq * case.sk * element * copies


def preflight_reason(task: Task, budget: int | None, source: str) -> str | None:
    """Why a task of an S×S implementation (`memory_exponent == 2`) is `oom` without running it:
    its S×S estimate alone is above the budget (`measure` asks under the default guard only).
    None when it may run."""
    estimate = sxs_estimate_bytes(task)
    if budget is None or estimate <= budget:
        return None
    case = task.case
    lengths = f"{case.sq}²" if case.sq == case.sk else f"{case.sq}·{case.sk}"
    return (f"pre-flight estimate: S×S scores {case.batch}·{case.num_heads}·{lengths}"
            f" {case.dtype} ({task.phase}) = {estimate / 2**20:.1f} MiB is above the memory "
            f"budget {budget / 2**20:.1f} MiB ({source}); not run")  # fmt: skip
