"""An implementation judged on all of its rows at once: a change to one kernel moves all of them.

A row alone has few degrees of freedom: on the nightly CPU profile its per-process medians differ
by ~6% (sd) from process to process, so the per-row test (processes.py) needs a change well
beyond time_tol before its Benjamini-Hochberg-adjusted p clears alpha, and a 10% slowdown of one
kernel was flagged in 1 of 5 same-commit pairs (benchmarks/false_alarms.py). But most of that
process noise is the row's own: removing a shift shared by all rows of one process leaves 80-93%
of its variance (the same data), so the rows of one implementation are close to independent
witnesses of a change to it.

Per implementation and direction, Stouffer's method combines the rows' one-sided Welch p-values
(the per-process test of each row, after compare's common shift) into one: z_r = Φ⁻¹(1 - p_r),
Z = Σ z_r / √n (Stouffer et al., "The American Soldier", 1949; Whitlock, J. Evol. Biol. 18, 2005).
The implementation's p is two-sided, 2·min(Φ(-Z_slower), Φ(-Z_faster)), and the
Benjamini-Hochberg step runs across implementations. Its effect is the median over rows of the
per-process ratio, which must lie beyond `impl_tol`: an implementation-wide move is measured far
more precisely than one row (its ratio within ~2% on a quiet machine, against ~6% for a row), so
impl_tol sits below time_tol (6.5% against 10%: midway between a 3% change, which a nightly should
let pass, and a 10% one, which it must catch).

Only rows timed in at least MIN_PROCESSES processes on both sides take part (the per-process test
needs them); an implementation with fewer than MIN_ROWS such rows is not judged here. A row whose
processes agree exactly on both sides counts as z = 0 (no variance to weigh it by); its ratio
still counts.

Stouffer's Z assumes the rows independent. A shift shared by all rows of one process is what
compare's common_shift removes, and compare judges implementations only with it on; what remains
is a shift shared by one implementation's rows in one run, which makes Z overconfident (simulated
at 1-3% a night, its sd rises to ~1.7). On the measured nightly pairs Z is calibrated (sd 1.01 over
240 same-code implementation verdicts), and impl_tol, not the p-value, is what keeps such a shift
from being called a regression.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from harness.regress.processes import ProcessStats

MIN_ROWS = 3  # fewer rows: the row verdicts say all there is
_P_CLIP = 1e-15  # a p of exactly 0 or 1 would give an infinite z

ImplVerdict = Literal["regression", "improvement", "unchanged"]


@dataclass(frozen=True)
class ImplResult:
    """One implementation's combined time verdict over `num_rows` rows.

    `ratio`: median over rows of the per-process ratio (candidate / baseline geometric mean);
    `z_slower`: Stouffer's Z for "slower" (Z for "faster" is its negative); `p_value`: two-sided;
    `p_adjusted`: after Benjamini-Hochberg across implementations.
    """

    impl: str
    verdict: ImplVerdict
    num_rows: int
    ratio: float
    z_slower: float
    p_value: float
    p_adjusted: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stouffer_z(pvalues: Iterable[float]) -> float:
    """Σ Φ⁻¹(1 - p) / √n over one-sided p-values, each clipped into [1e-15, 1 - 1e-15] (|z| ≤ 7.9)
    so that no p gives an infinite z (`scipy.stats.combine_pvalues(method="stouffer")`)."""
    from scipy.stats import combine_pvalues

    ps = [min(max(float(p), _P_CLIP), 1 - _P_CLIP) for p in pvalues]
    if not ps:
        raise ValueError("stouffer_z needs at least one p-value")
    return float(combine_pvalues(ps, method="stouffer").statistic)


def judge_implementations(
    rows: Iterable[tuple[str, ProcessStats]], *, impl_tol: float, alpha: float,
    bh: Callable[[list[float]], list[float]],
) -> list[ImplResult]:  # fmt: skip
    """The verdict of every implementation with at least MIN_ROWS rows in `rows` ((impl, the
    row's per-process test) pairs), worst first; `bh` adjusts p-values across them."""
    from scipy.stats import norm

    by_impl: dict[str, list[ProcessStats]] = {}
    for impl, proc in rows:
        by_impl.setdefault(impl, []).append(proc)
    judged = {i: procs for i, procs in by_impl.items() if len(procs) >= MIN_ROWS}
    raw = []
    for procs in judged.values():
        # a row whose processes agree exactly on both sides has a point interval and a p of 0 or
        # 1 (or 1 both ways when unchanged): no variance to weigh it by, so it counts as no
        # evidence either way (p 0.5, z 0)
        z = stouffer_z(p.p_slower if p.ci_high > p.ci_low else 0.5 for p in procs)
        raw.append((z, min(1.0, 2 * float(norm.sf(abs(z))))))
    adjusted = bh([p for _, p in raw])
    out = []
    for (impl, procs), (z, p), p_adj in zip(judged.items(), raw, adjusted, strict=True):
        ratio = statistics.median(p.ratio for p in procs)
        slower = z > 0
        beyond = ratio > 1 + impl_tol if slower else ratio < 1 - impl_tol
        what = (f"{len(procs)} rows: median per-process ratio {ratio:.3g}, Stouffer Z={z:+.2f}, "
                f"BH-adjusted p={p_adj:.3g}")  # fmt: skip
        if p_adj < alpha and beyond:
            verdict: ImplVerdict = "regression" if slower else "improvement"
        else:
            verdict = "unchanged"
            if p_adj < alpha:
                what += f"; within impl_tol {impl_tol:g}"
            elif beyond:
                what += f"; beyond impl_tol {impl_tol:g} but not significant"
        out.append(ImplResult(impl, verdict, len(procs), ratio, z, p, p_adj, what))
    order = {"regression": 0, "improvement": 1, "unchanged": 2}
    return sorted(out, key=lambda r: (order[r.verdict], r.p_adjusted, r.impl))
