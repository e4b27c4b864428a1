"""The process as the unit of replication: a time change judged on per-process medians.

Samples taken in one process share that process's state (allocator history, page placement and
cache alignment of its buffers, thread placement), so they are not independent draws of "the
kernel's time": on the nightly CPU profile the per-process medians of one row differ by 4-8% (sd,
1 thread) while a process's own samples agree far more closely (benchmarks/false_alarms.py data,
docs/nightly.md). A rank test over pooled samples then reads one odd process as strong evidence.
Measurement bias from memory layout is documented by Mytkowicz et al., "Producing wrong data
without doing anything obviously wrong!" (ASPLOS 2009) and Curtsinger & Berger, "STABILIZER"
(ASPLOS 2013); asv measures each benchmark in several processes for this reason.

So when both sides of a comparison were timed in at least `MIN_PROCESSES` processes
(`timing.processes`), the change is tested on the per-process medians: Welch's t-test on their
logarithms (`scipy.stats.ttest_ind(equal_var=False)`), one-sided, and its confidence interval of
the ratio of geometric means. With two processes on a side the test has too few degrees of freedom
to mean much; then every candidate process must lie beyond every baseline process instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PER_PROCESS = "time_ms_median_per_process"  # rows timed in several processes (timing.processes)
MIN_PROCESSES = 3  # per side, for the t-test on per-process medians


@dataclass(frozen=True)
class ProcessStats:
    """Welch's t-test on log per-process medians (ms): candidate over baseline.

    `ratio` is the ratio of geometric means, `ci_low`/`ci_high` its (1 - alpha) two-sided
    Welch interval, `p_slower`/`p_faster` the one-sided p-values; `num_base`/`num_cand` count
    processes.
    """

    ratio: float
    ci_low: float
    ci_high: float
    p_slower: float
    p_faster: float
    num_base: int
    num_cand: int

    def describe(self, slower: bool) -> str:
        p = self.p_slower if slower else self.p_faster
        return (f"per-process medians {self.num_base} vs {self.num_cand} processes: ratio "
                f"{self.ratio:.3g}, Welch p={p:.3g}, CI [{self.ci_low:.3g}, "
                f"{self.ci_high:.3g}]")  # fmt: skip


def _positive_finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)  # fmt: skip


def per_process(row: dict[str, Any]) -> list[float] | None:
    """The row's positive, finite per-process medians; None when it has none."""
    values = row.get(PER_PROCESS)
    if not isinstance(values, list | tuple):
        return None
    return [float(v) for v in values if _positive_finite(v)] or None


def process_stats(base: Sequence[float], cand: Sequence[float], *, alpha: float
                  ) -> ProcessStats | None:  # fmt: skip
    """Welch's t-test of log(cand) against log(base) per-process medians; None with fewer than
    MIN_PROCESSES positive values on a side. Two sides whose processes agree exactly on each side
    (zero variance) are told apart by their means alone: p 0 or 1, a point interval."""
    import warnings

    from scipy import stats

    def logs(values: Sequence[float]) -> np.ndarray:
        kept = [float(x) for x in values if _positive_finite(x)]
        return np.log(np.asarray(kept, dtype=float))

    lb, lc = logs(base), logs(cand)
    if min(len(lb), len(lc)) < MIN_PROCESSES:
        return None
    diff = float(lc.mean() - lb.mean())
    if np.ptp(lb) == 0 and np.ptp(lc) == 0:  # the t statistic is undefined; the means decide
        p_slower = 0.0 if diff > 0 else 1.0
        p_faster = 0.0 if diff < 0 else 1.0
        lo = hi = diff
    else:
        with warnings.catch_warnings():  # one constant side: scipy warns of lost precision
            warnings.simplefilter("ignore")
            slower = stats.ttest_ind(lc, lb, equal_var=False, alternative="greater")
            faster = stats.ttest_ind(lc, lb, equal_var=False, alternative="less")
            ci = stats.ttest_ind(lc, lb, equal_var=False).confidence_interval(1 - alpha)
        p_slower, p_faster = float(slower.pvalue), float(faster.pvalue)
        lo, hi = float(ci.low), float(ci.high)
        if not all(map(math.isfinite, (p_slower, p_faster, lo, hi))):
            return None  # no usable evidence: judged on the pooled samples alone
    return ProcessStats(math.exp(diff), math.exp(lo), math.exp(hi), p_slower, p_faster,
                        len(lb), len(lc))  # fmt: skip


def processes_overlap(b: dict[str, Any], c: dict[str, Any], slower: bool) -> str | None:
    """With two processes on a side (too few for the t-test): why the change is not beyond
    between-process variation (some candidate process not beyond every baseline process), or
    None when it is, or when a side has fewer than two processes."""
    pb, pc = per_process(b), per_process(c)
    if not (pb and pc and len(pb) > 1 and len(pc) > 1):
        return None
    apart = min(pc) > max(pb) if slower else max(pc) < min(pb)
    if apart:
        return None
    return (
        f"per-process medians overlap (baseline {_ms_list(pb)}, candidate {_ms_list(pc)} "
        "ms): within between-process variation"
    )


def _ms_list(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"
