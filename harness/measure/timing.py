"""Wall-clock samples of one callable: CUDA events on GPU, time.perf_counter on CPU.

The one sample loop of the harness, for one process and for P ranks alike: warm-up calls first;
then timed calls until `repeats` samples or the time budget is spent (but at least `min_repeats`).
Ranks pass two hooks: `before_sample` (a barrier, so every rank starts a sample together) and
`decide` (rank 0's stop decision, broadcast, so every rank takes the same number of samples).
Raw samples are returned; summaries are `summarize_ms`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def _no_op() -> None:
    return None


def _own_decision(more: bool) -> bool:
    return more


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


def time_samples_ms(
    fn: Callable[[], Any],
    *,
    device: str,
    warmup: int,
    repeats: int,
    min_repeats: int,
    max_time_s: float,
    before_sample: Callable[[], None] = _no_op,
    decide: Callable[[bool], bool] = _own_decision,
) -> list[float]:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
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
