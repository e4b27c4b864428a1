"""Wall-clock samples of one callable: CUDA events on GPU, time.perf_counter on CPU.

The one sample loop of the harness, for one process and for P ranks alike: warm-up calls first (by
count, `warmup`, then by time, `warmup_ms`); then timed calls until `repeats` samples or the time
budget is spent (but at least `min_repeats`). Ranks pass two hooks: `before_sample` (a barrier, so
every rank starts a sample together) and `decide` (rank 0's stop decision, broadcast, so every rank
takes the same number of samples). Raw samples are returned; summaries are `summarize_ms`.

CUDA follows triton's `do_bench` (triton.testing): samples are taken in batches; each sample is an
optional L2 flush (zeroing a buffer larger than L2, outside the events), a start event, the call and
an end event, recorded back to back with one synchronisation per batch, so no host round trip sits
between two samples. `cuda_graph` follows `do_bench_cudagraph`: the calls are captured once in a
CUDA graph and each sample is one replay (launch overhead excluded), divided by the calls it holds.
The event and synchronise functions are injectable (`EventApi`), so the batching is tested on CPU.
CPU keeps one monotonic-clock reading per sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

# triton's do_bench zeroes 256 MB between samples; a larger L2 gets twice its size.
L2_FLUSH_MIN_BYTES = 256 << 20
# Batches grow 1, 2, 4, ... up to this many samples: the stop decision (time budget, rank 0's
# broadcast) comes between batches, so a batch may overrun the budget by at most what was already
# spent, and the sizes depend only on the batch index, so every rank takes the same batches.
MAX_BATCH = 32
# A CUDA graph holds enough calls to last about this long (do_bench_cudagraph amortises the replay
# launch the same way), at most MAX_GRAPH_CALLS.
GRAPH_TARGET_MS = 1.0
MAX_GRAPH_CALLS = 100


def _no_op() -> None:
    return None


def _own_decision(more: bool) -> bool:
    return more


class Event(Protocol):
    def record(self) -> None: ...

    def elapsed_time(self, end: Any) -> float: ...


@dataclass(frozen=True)
class EventApi:
    """What the event path needs from a device: a timing event, a device-wide synchronise and the
    L2 flush (None: no flush). `for_cuda` gives torch's; tests inject fakes."""

    event: Callable[[], Event]
    synchronize: Callable[[], None]
    flush: Callable[[], None] | None = None

    @staticmethod
    def for_cuda(l2_flush: bool = True) -> EventApi:
        return EventApi(event=lambda: torch.cuda.Event(enable_timing=True),
                        synchronize=torch.cuda.synchronize,
                        flush=_cuda_l2_flush() if l2_flush else None)  # fmt: skip


_FLUSH_BUFFER: dict[int, torch.Tensor] = {}


def _cuda_l2_flush() -> Callable[[], None]:
    """Zeroing a buffer of max(256 MiB, 2 × L2) int8 evicts the previous sample's data from L2;
    the buffer is made once per device and process."""
    index = torch.cuda.current_device()
    if index not in _FLUSH_BUFFER:
        l2 = int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0) or 0)
        size = max(L2_FLUSH_MIN_BYTES, 2 * l2)
        _FLUSH_BUFFER[index] = torch.empty(size, dtype=torch.int8, device=f"cuda:{index}")
    buf = _FLUSH_BUFFER[index]
    return lambda: buf.zero_()


def timing_mode(device: str, *, l2_flush: bool = True, cuda_graph: bool = False) -> str:
    """How samples are taken, as rows record it (`timing_mode`)."""
    if device != "cuda":
        return "perf_counter"
    mode = "cuda_graph" if cuda_graph else "cuda_events"
    return f"{mode}+l2_flush" if l2_flush else mode


def time_one_ms(fn: Callable[[], Any], device: str) -> float:
    """One timed call: CUDA events around it on GPU, a monotonic clock on CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def warm_up(fn: Callable[[], Any], *, warmup: int, warmup_ms: float,
            synchronize: Callable[[], None] = _no_op,
            decide: Callable[[bool], bool] = _own_decision) -> int:  # fmt: skip
    """`warmup` calls, then more until `warmup_ms` of wall time has passed; the number of calls.

    By time, calls come in rounds of 1, 2, 4, ... with one synchronise per round (the first rounds
    estimate one call's time, as do_bench does before it sizes its warm-up), until the budget is
    spent; the sizes depend on the round only, and rank 0 decides, so ranks make the same calls.
    """
    for _ in range(warmup):
        fn()
    calls = warmup
    if warmup_ms <= 0:
        return calls
    synchronize()
    started = time.perf_counter()
    size = 1
    while decide((time.perf_counter() - started) * 1e3 < warmup_ms):
        for _ in range(size):
            fn()
        synchronize()
        calls += size
        size = min(2 * size, MAX_BATCH)
    return calls


def batch_size(index: int, done: int, repeats: int, min_repeats: int) -> int:
    """Samples in batch `index` (0-based) when `done` are taken: 2**index up to MAX_BATCH, at least
    what `min_repeats` still needs, never past `repeats`."""
    grow = min(2**index, MAX_BATCH)
    return max(1, min(repeats - done, max(grow, min_repeats - done)))


def event_samples_ms(fn: Callable[[], Any], api: EventApi, *, repeats: int, min_repeats: int,
                     max_time_s: float, before_sample: Callable[[], None] = _no_op,
                     decide: Callable[[bool], bool] = _own_decision,
                     calls_per_sample: int = 1) -> list[float]:  # fmt: skip
    """Samples (ms per call) from events recorded back to back, one synchronise per batch.

    Each sample: `before_sample`, the L2 flush (outside the events), start event, `fn`, end event.
    `calls_per_sample` divides each sample (a CUDA graph replay holding that many calls).
    """
    samples: list[float] = []
    started = time.perf_counter()
    index = 0
    more = True
    while more:
        pairs = []
        for _ in range(batch_size(index, len(samples), repeats, min_repeats)):
            before_sample()
            if api.flush is not None:
                api.flush()
            start, end = api.event(), api.event()
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        api.synchronize()
        samples += [float(s.elapsed_time(e)) / calls_per_sample for s, e in pairs]
        index += 1
        budget_spent = time.perf_counter() - started > max_time_s
        more = decide(len(samples) < repeats and not (len(samples) >= min_repeats and budget_spent))
    return samples


class GraphCaptureError(RuntimeError):
    """`fn` could not be captured in a CUDA graph (it syncs, allocates outside the pool, ...)."""


def cuda_graph_of(fn: Callable[[], Any], *, per_call_ms: float) -> tuple[Callable[[], None], int]:
    """A replay of `fn` captured n times in one CUDA graph (as triton's do_bench_cudagraph), and n.

    n makes a replay last about GRAPH_TARGET_MS (1 .. MAX_GRAPH_CALLS). The call is run once on a
    side stream first (capture needs warmed-up, stream-ordered work). Raises GraphCaptureError.
    """
    calls = max(1, min(MAX_GRAPH_CALLS, math.ceil(GRAPH_TARGET_MS / max(per_call_ms, 1e-6))))
    graph = torch.cuda.CUDAGraph()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        torch.cuda.synchronize()
    except Exception as exc:  # torch raises RuntimeError and friends from inside the capture
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphCaptureError(f"timing.cuda_graph: capturing the call in a CUDA graph failed "
                                f"({type(exc).__name__}: {text}); time it with cuda_graph: false"
                                ) from None  # fmt: skip
    return graph.replay, calls


def time_samples_ms(
    fn: Callable[[], Any],
    *,
    device: str,
    warmup: int,
    repeats: int,
    min_repeats: int,
    max_time_s: float,
    warmup_ms: float = 0.0,
    l2_flush: bool = True,
    cuda_graph: bool = False,
    before_sample: Callable[[], None] = _no_op,
    decide: Callable[[bool], bool] = _own_decision,
    events: EventApi | None = None,
) -> list[float]:
    """Raw samples of `fn` in ms per call.

    CPU: one perf_counter reading around each call. CUDA (or `events` given, as tests do): the
    batched event path; `l2_flush` and `cuda_graph` apply there only. Raises GraphCaptureError when
    `cuda_graph` is asked for and the capture fails.
    """
    use_events = events is not None or device == "cuda"
    if use_events and events is None:
        events = EventApi.for_cuda(l2_flush)
    sync = events.synchronize if use_events else _no_op
    warm_up(fn, warmup=warmup, warmup_ms=warmup_ms, synchronize=sync, decide=decide)
    sync()
    if use_events:
        calls = 1
        if cuda_graph and device == "cuda":
            fn, calls = cuda_graph_of(fn, per_call_ms=time_one_ms(fn, device))
        return event_samples_ms(fn, events, repeats=repeats, min_repeats=min_repeats,
                                max_time_s=max_time_s, before_sample=before_sample,
                                decide=decide, calls_per_sample=calls)  # fmt: skip
    samples: list[float] = []
    started = time.perf_counter()
    more = True
    while more:
        before_sample()
        samples.append(time_one_ms(fn, device))
        budget_spent = time.perf_counter() - started > max_time_s
        more = decide(len(samples) < repeats and not (len(samples) >= min_repeats and budget_spent))
    return samples


def summarize_ms(samples: list[float]) -> dict[str, float]:
    """Median and the 20th / 80th percentiles (linear interpolation)."""
    t = torch.tensor(samples, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64))
    return {
        "time_ms_p20": float(q[0]),
        "time_ms_median": float(q[1]),
        "time_ms_p80": float(q[2]),
    }
