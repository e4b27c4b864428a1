"""Wall-clock samples of one callable: CUDA events on GPU, time.perf_counter on CPU.

Warm-up calls first; then timed calls until `repeats` samples or the time budget is spent (but at
least `min_repeats`). Raw samples are returned; summaries are the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def time_samples_ms(
    fn: Callable[[], Any],
    *,
    device: str,
    warmup: int,
    repeats: int,
    min_repeats: int,
    max_time_s: float,
) -> list[float]:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= min_repeats and time.perf_counter() - started > max_time_s:
            break
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
