"""Row fields derived from raw time samples: the summary, the noise flag, FLOPs, TFLOP/s,
tokens/s, bytes moved and the achieved bandwidth.

FLOP convention (harness/measure/flops.py): forward 4·B·H·Sq·Sk·D over the attended pairs
(2·B·H·pairs·(D + D_v) when head_dim_v differs), backward 2.5× forward, a training step (fwd_bwd)
3.5×. Bytes: the compulsory traffic of Q, K, V, O (and dO, dQ, dK, dV backward).

Noise (`noise_fields`): a row is `noisy` when its samples' spread makes its median a poor summary,
by either of two rules, each named in `noise_note`:
- spread: the interquartile range (p75 - p25, linear interpolation, as torch.utils.benchmark's
  Measurement computes it) is at least 10% of the median: the threshold at which
  `Measurement.has_warnings` warns (`_IQR_WARN_THRESHOLD`). It also catches samples split
  between two modes when the smaller mode holds more than a quarter of them.
- drift: with at least 6 samples, the medians of the first and the last n//2 samples (in the order
  taken) differ by more than 5% of the median and by more than either half's own IQR: the times
  moved during the row (a step, a trend) rather than scattered around one level.

A row timed in several processes (`timing.processes`, harness/run/rounds.py) is summarized by the
median of its pooled samples, whose trust depends on how far the processes agree, not on the few
samples of each: so with at least PROCESS_CI_MIN processes the row is `noisy` by one rule instead
(`process_noise_fields`): the two-sided 95% Student-t interval of the geometric mean of its
per-process medians is wider than ±10% (PROCESS_CI_SHARE). On the nightly CPU profile (6 processes
of 4 samples) the IQR rule flagged 83% of the rows (the processes differ by ~6% sd), while the
geometric mean is known to about ±6%; a process far off the others, or a bimodal row, widens the
interval past the threshold.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from harness.case import Case
from harness.measure.flops import case_bytes, case_flops
from harness.measure.timing import summarize_ms

IQR_WARN_SHARE = 0.10  # torch.utils.benchmark.utils.common._IQR_WARN_THRESHOLD
DRIFT_SHARE = 0.05
DRIFT_MIN_SAMPLES = 6
PROCESS_CI_MIN = 3  # processes; with 2, the pooled rules above (the drift rule sees them apart)
PROCESS_CI_SHARE = 0.10


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (torch.quantile's and numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _iqr(values: list[float]) -> float:
    return _quantile(values, 0.75) - _quantile(values, 0.25)


def noise_fields(samples_ms: list[float]) -> dict[str, Any]:
    """`noisy` (and, when it is, `noise_note`) by the module's two rules."""
    notes = []
    median = _quantile(samples_ms, 0.5) if samples_ms else 0.0
    if median > 0 and len(samples_ms) > 1:
        share = _iqr(samples_ms) / median
        if share >= IQR_WARN_SHARE:
            notes.append(f"IQR is {share:.0%} of the median (≥ {IQR_WARN_SHARE:.0%})")
        if len(samples_ms) >= DRIFT_MIN_SAMPLES:
            half = len(samples_ms) // 2
            first, last = samples_ms[:half], samples_ms[-half:]
            shift = _quantile(last, 0.5) - _quantile(first, 0.5)
            if abs(shift) > DRIFT_SHARE * median and abs(shift) > max(_iqr(first), _iqr(last)):
                way = "above" if shift > 0 else "below"
                notes.append(f"drift: second-half median {abs(shift) / median:.0%} {way} the "
                             f"first half's (> {DRIFT_SHARE:.0%} of the median, beyond either "
                             "half's IQR)")  # fmt: skip
    if not notes:
        return {"noisy": False}
    return {"noisy": True, "noise_note": "; ".join(notes)}


def process_noise_fields(medians_ms: list[float]) -> dict[str, Any]:
    """`noisy` (and `noise_note`) of a row timed in PROCESS_CI_MIN or more processes: the 95%
    Student-t interval of the geometric mean of its per-process medians (ms) wider than
    ±PROCESS_CI_SHARE. Non-positive or non-finite medians make the row noisy."""
    from scipy import stats

    n = len(medians_ms)
    if n < PROCESS_CI_MIN:
        raise ValueError(f"process_noise_fields needs {PROCESS_CI_MIN}+ processes; got {n}")
    if not all(math.isfinite(m) and m > 0 for m in medians_ms):
        return {"noisy": True, "noise_note": "a process's median is not a positive number"}
    sd = statistics.stdev(math.log(m) for m in medians_ms)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    share = math.expm1(min(half, 700.0))  # the wider side of the interval; no overflow
    if share <= PROCESS_CI_SHARE:
        return {"noisy": False}
    return {"noisy": True, "noise_note": (
        f"the {n} processes' medians disagree: the 95% interval of their geometric mean is "
        f"±{share:.1%} (> {PROCESS_CI_SHARE:.0%})")}  # fmt: skip


def time_fields(case: Case, phase: str, samples_ms: list[float]) -> dict[str, Any]:
    """The time, throughput and sample fields of a row, from its raw samples (ms)."""
    summary = summarize_ms(samples_ms)
    seconds = summary["time_ms_median"] * 1e-3
    flops = case_flops(case, phase)
    fields = {
        **summary,
        **noise_fields(samples_ms),
        "num_samples": len(samples_ms),
        "time_samples_ms": list(samples_ms),
        "flops": flops,
        "tflops": flops / seconds / 1e12,
        "tokens_per_s": case.batch * case.sq / seconds,  # decode: new tokens per second
    }
    moved = case_bytes(case, phase)
    if moved is not None:
        fields["bytes_moved"] = moved
        fields["gbytes_per_s"] = moved / seconds / 1e9
        fields["arith_intensity"] = flops / moved  # FLOP per byte: the roofline's x
    return fields
