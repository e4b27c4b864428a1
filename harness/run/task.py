"""A task: one (case, implementation, phase) to measure; whether it can run; how failures map to a
row's status. Plain data and rules, shared by the worker, the rank processes and the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from harness.case import Case
from harness.errors import Unavailable
from harness.rows import Status


@dataclass(frozen=True)
class Slot:
    """One rank of a distributed case under a launcher: its rank in the case (its global rank)
    and the c10d TCPStore (host, port, key prefix) where the case's ranks meet."""

    rank: int
    host: str
    port: int
    prefix: str


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
    # "all" in one process; on CPU the runner splits a task into a "memory" pass (a worker whose
    # malloc returns memory at once) and a "time" pass (ordinary malloc), see run/sweep.py.
    measure: Literal["all", "time", "memory"] = "all"
    # Peak memory the case may use (inputs included), bytes; above it the row is `oom`.
    memory_budget_bytes: int | None = None
    # Where that budget was set, as reasons name it (None: the suite's limits.memory_budget_gb).
    memory_budget_source: str | None = None
    # The device's roofline ceilings (harness/measure/peaks.py), from the run's provenance.
    device_peaks: dict[str, Any] | None = None
    # Under torchrun: this process's one rank of a distributed case and where its ranks meet
    # (harness/run/launched.py); None when the worker starts all the case's ranks itself.
    launch: Slot | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.case.name, self.impl, self.phase)


def classify(exc: BaseException) -> tuple[Status, str]:
    """Map an exception to (status, one-line reason)."""
    import torch

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


def check_runnable(task: Task) -> None:
    """Raise `Unavailable` / `Unsupported` with the reasons when the task cannot run here."""
    from harness.registry import REGISTRY, declared_reasons

    impl = REGISTRY.get(task.impl)
    availability = impl.available(task.device)
    if not availability.ok:
        raise Unavailable(task.impl, availability.reason)
    # What the case needs beyond the implementation's declared features comes first: its own
    # `unsupported` may assume the classic shapes.
    reasons = declared_reasons(impl, task.case) or list(impl.unsupported(task.case, task.device))
    if task.case.workload == "attention":
        from harness.workloads.attention import layout_reasons

        reasons += layout_reasons(task.case)
    if task.phase != "fwd" and not impl.supports_backward:
        reasons.append("no backward pass")
    if task.case.world_size > 1 and impl.distributed is None:
        reasons.append(f"single-device implementation; world_size {task.case.world_size} needs "
                       "a distributed one")  # fmt: skip
    if reasons:
        raise Unsupported("; ".join(reasons))
