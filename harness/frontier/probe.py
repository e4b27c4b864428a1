"""One frontier probe: a single length of one (workload, implementation, phase), run as an
ordinary runner task in an isolated worker process, so an OOM, a crash or a hang is a data point.

No second measurement path: a probe is a `Task` with `measure="memory"` handed to the runner's
`WorkerPool` (harness/run/pool.py), measured by `run/measure_task.measure` like any suite row.

How the memory budget is enforced (the frontier's "fits"):
- Every probe's peak is measured (CPU: the worker's resident high-water mark VmHWM above the
  baseline, in a worker whose glibc returns freed blocks at once, plus the inputs; CUDA:
  `max_memory_allocated`), and a peak above the budget makes the row `oom` (`_over_budget`).
  The budget is therefore a bound on resident memory, not on address space: torch and glibc
  reserve virtual memory (thread stacks, arenas) that is never touched, and would fail an
  address-space limit of the budget itself at a fraction of it.
- A backstop stops a runaway probe before it hurts the machine: CPU, RLIMIT_AS of the worker
  capped at its address space at start + the budget + 1 GiB (an allocation beyond it raises,
  `oom`); CUDA, `torch.cuda.set_per_process_memory_fraction` of (budget + 1 GiB) / device
  memory (`run/worker.apply_limits`).
Without a budget the runner's default guard applies (0.8 × the memory free when the worker
starts: CPU MemAvailable, CUDA free device memory); each probe records the budget it was held to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.case import Case
from harness.frontier.search import Probe
from harness.run.pool import WorkerPool
from harness.run.task import Task

# The search axis per workload: decode grows the KV cache (seqlen_k), the others the sequence.
AXIS = {"attention": "seq_len", "layer": "seq_len", "decode": "cache_len"}
# Timing settings a memory-only task never uses, but a Task carries.
_TIMING = {"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0}
_ACCURACY = {"ref_max_rows": 1024, "ref_chunk_rows": 256, "grad_ref_max_seq": 2048}


@dataclass(frozen=True)
class Shape:
    """Everything of a case but its length (`seq_len`, or `cache_len` for decode)."""

    batch: int = 1
    num_heads: int = 8
    head_dim: int = 64
    hidden: int | None = None  # layer workload: head_dim is hidden // num_heads
    dtype: str = "float32"
    causal: bool = False
    block_size: int | None = None

    def case(self, workload: str, length: int) -> Case:
        """The case at `length` tokens (decode: a cache of `length` tokens, one new token)."""
        head_dim = self.hidden // self.num_heads if workload == "layer" and self.hidden else \
            self.head_dim  # fmt: skip
        return Case(workload=workload, batch=self.batch, seq_len=length,  # type: ignore[arg-type]
                    num_heads=self.num_heads, head_dim=head_dim,
                    hidden=self.hidden if workload == "layer" else None, dtype=self.dtype,  # type: ignore[arg-type]
                    causal=self.causal, block_size=self.block_size,
                    seqlen_k=length if workload == "decode" else None)  # fmt: skip


class Prober:
    """Runs probes of one device and budget in a worker pool (one live worker, replaced after a
    crash or a timeout); `close` (or `with`) ends it."""

    def __init__(self, device: str, budget_bytes: int | None, *, threads: int | None = None,
                 timeout_s: float = 600.0, seed: int = 0) -> None:  # fmt: skip
        self.device, self.budget_bytes, self.timeout_s, self.seed = (device, budget_bytes,
                                                                      timeout_s, seed)  # fmt: skip
        # tight malloc: the memory worker of the runner, whose RSS tracks live tensors
        self._pool = WorkerPool(device, budget_bytes, threads, tight_malloc=True)
        self.rows: list[dict[str, Any]] = []  # every probe's full row, for whoever wants them

    def task(self, workload: str, impl: str, phase: str, shape: Shape, length: int,
             budget_bytes: int | None = None) -> Task:  # fmt: skip
        budget = self.budget_bytes if budget_bytes is None else budget_bytes
        return Task(case=shape.case(workload, length), impl=impl, phase=phase,
                    device=self.device, seed=self.seed, timing=dict(_TIMING),
                    accuracy=dict(_ACCURACY), measure="memory",
                    memory_budget_bytes=budget,
                    memory_budget_source="harness frontier --memory-budget")  # fmt: skip

    def probe(self, workload: str, impl: str, phase: str, shape: Shape, length: int, *,
              budget_bytes: int | None = None) -> Probe:  # fmt: skip
        """One length in the worker. `budget_bytes`: this probe's budget, checked against its
        measured peak (default: the prober's; the worker's hard backstop stays the prober's)."""
        task = self.task(workload, impl, phase, shape, length, budget_bytes)
        row = self._pool.run(task, self.timeout_s)
        self.rows.append(row)
        return probe_of(length, row)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.close(now=exc[0] is not None)


def probe_of(length: int, row: dict[str, Any]) -> Probe:
    """A row of the memory pass as a probe: it passes when its status is `ok` (the phase ran and
    its measured peak is within the budget)."""
    status = str(row.get("status") or "error")
    peak = row.get("peak_mem_bytes")
    return Probe(length=length, ok=status == "ok", status=status,
                 reason=str(row.get("reason") or ""),
                 peak_mem_bytes=int(peak) if isinstance(peak, int | float) else None,
                 elapsed_s=row.get("elapsed_s"))  # fmt: skip


def budget_of(rows: list[dict[str, Any]]) -> int | None:
    """The budget the probes were held to (the suite's, or the worker's default guard)."""
    return next((int(r["mem_budget_bytes"]) for r in rows if r.get("mem_budget_bytes")), None)


__all__ = ["AXIS", "Prober", "Shape", "budget_of", "probe_of"]
