"""Compare two runs of one suite: join rows by case × implementation × phase and judge each.

Time is noisy, so a time regression needs both an effect and evidence: the median ratio above
1 + time_tol *and* a one-sided Mann-Whitney U test on the raw samples below alpha, with at least
min_samples on each side (the approach of asv's `compare` and of pytorch's operator benchmarks:
effect size plus a rank test, not means), *and* a (1 - alpha) percentile-bootstrap confidence
interval of median(candidate) / median(baseline) that excludes 1.0 (a row whose interval contains
1.0 is neither a regression nor an improvement). An improvement is the mirror image. Each row's
p-value is the one-sided test in the direction of its median ratio; `compare` tests every row of
two runs at once, so it decides those p-values after the Benjamini-Hochberg step
(`scipy.stats.false_discovery_control`) across all rows that reached one: the false discovery rate,
not each row's error, is held at alpha. A row with fewer than min_samples samples on a side cannot
be time-gated and its verdict says so (`ungated`), never `unchanged`. Memory and error are
near-deterministic and gate on tolerances alone. Status changes away from `ok` are always
regressions.

A NaN or an infinity is never compared like a number (every comparison with NaN is False, so it
would pass silently). Per gated metric (time and its samples, throughput, peak memory, every error):
finite in the baseline (or absent) and not finite in the candidate is a regression; not finite in
the baseline means the metric cannot be gated, and the row's verdict says so (`ungated`), visibly.

Optionally, times are normalized to a reference implementation measured in the same run
(candidate_time / candidate_ref_time over baseline_time / baseline_ref_time), which cancels most of
the difference between two noisy or heterogeneous CI machines; or (`common_shift`) the candidate's
samples are divided by the run-wide shift, the median over rows of the two runs' time ratio, so
what moved every row alike (a shared VM's speed from night to night) cancels and a row that moved
on its own stands out; the shift is reported, and flagged when beyond time_tol.

Rows timed in several processes are also judged per implementation when common_shift is on
(harness/regress/implementations.py): a kernel that got slower moves all of its rows, and their
per-process tests combined (Stouffer, Benjamini-Hochberg across implementations, effect beyond
impl_tol) find a change that no single row shows with confidence. An implementation
`regression` fails the comparison like a row's.

This is the project's one regression rule. `judge` gives the verdict on one row (a baseline row and
its samples against a candidate row and its samples); `compare` applies it to every row of two runs,
`harness report --baseline` draws compare's verdicts and `harness history` judges each night with
`judge` against the pooled samples of the nights before it.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.errors import HarnessError, ResultsError
from harness.measure.tolerance import FLOOR, Limit, naive_limit
from harness.regress.baseline import describe, expected_keys
from harness.regress.implementations import MIN_ROWS, ImplResult, judge_implementations
from harness.regress.processes import (
    PER_PROCESS,
    ProcessStats,
    per_process,
    process_stats,
    processes_overlap,
)
from harness.results import RunDir
from harness.rows import Key, is_finite_number
from harness.suite import CompareSettings

Verdict = Literal["regression", "missing", "changed", "ungated", "new", "vanished", "improvement",
                  "unchanged"]  # fmt: skip
# Worst first in every listing.
VERDICT_ORDER: tuple[str, ...] = (
    "regression", "missing", "changed", "ungated", "vanished", "new", "improvement", "unchanged",
)  # fmt: skip
# The metrics gated on a row ok on both sides (error metrics are every `err_*_rel_l2`, see
# `_error_metrics`); each must be finite on both sides to be compared at all.
TIME, THROUGHPUT, MEMORY = "time_ms_median", ("tflops", "tokens_per_s"), "peak_mem_bytes"
# The tolerance rule lives in harness/measure/tolerance.py (2x / 3x naive-same-precision, and
# the unit-roundoff fallback when naive itself overflows); its floor is the one used here.
ERR_FLOOR = FLOOR
BOOTSTRAP_RESAMPLES = 2000


class CompareError(HarnessError, ValueError):
    """The two runs cannot be compared (different suites, an empty run)."""


@dataclass(frozen=True)
class Run:
    """One run directory, read once: provenance, expanded suite, rows and raw samples by key."""

    path: Path
    meta: dict[str, Any]
    suite: dict[str, Any]
    rows: dict[Key, dict[str, Any]]
    samples: dict[Key, list[float]]

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)

    @property
    def suite_name(self) -> str | None:
        return self.meta.get("suite_name")

    @property
    def device_name(self) -> str | None:
        return (self.meta.get("provenance") or {}).get("device_name")

    @cached_property
    def expected(self) -> frozenset[Key]:
        """Every row this run's suite asks for."""
        return frozenset(expected_keys(self.suite))

    def expects(self, key: Key) -> bool:
        """Whether this run's suite asks for `key` (so a missing row means an unfinished run)."""
        return key in self.expected

    def side(self, key: Key, ref: str | None = None) -> Side | None:
        """The row `key` with its samples (and, given `ref`, that implementation's row and samples
        in the same case and phase), as `judge` takes it; None when the run has no such row."""
        row = self.rows.get(key)
        if row is None:
            return None
        ref_key = (key[0], ref, key[2]) if ref is not None else None
        return Side(row, self.samples.get(key),
                    self.rows.get(ref_key) if ref_key else None,
                    self.samples.get(ref_key) if ref_key else None)  # fmt: skip


@dataclass(frozen=True)
class Side:
    """One side of a judgement: a result row, its raw time samples (ms) and, for `normalize_to`,
    the reference implementation's row and samples from the same run, case and phase.

    A side need not come from one run: `harness history` passes a window of nights as one side
    (median row values, pooled samples).
    """

    row: dict[str, Any]
    samples: Sequence[float] | None = None
    ref_row: dict[str, Any] | None = None
    ref_samples: Sequence[float] | None = None

    def normalized(self) -> list[float] | None:
        """Samples over the reference's median time (unitless); None without an ok reference."""
        ref = self.ref_row
        if not (self.samples and ref and self.ref_samples and ref.get("status") == "ok"):
            return None
        scale = float(np.median(self.ref_samples))
        return [s / scale for s in self.samples] if finite(scale) and scale > 0 else None


finite = is_finite_number  # a real number, neither NaN nor infinite (the row schema's predicate)


def not_finite(value: Any) -> bool:
    """NaN or +-inf: a number that cannot be compared (None, absent, is not this)."""
    return isinstance(value, float) and not math.isfinite(value)


def _shown(value: Any) -> str:
    """A metric value in a reason: 3 significant digits, and `nan` / `inf` as such."""
    return f"{value:.3g}" if isinstance(value, int | float) else "none"


def jsonable(value: Any) -> Any:
    """`value` with every NaN / infinity as the string "nan" / "inf" / "-inf" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"run directory not found: {path}")
    run_dir = RunDir.open(path)
    rows = {(r["case"], r["impl"], r["phase"]): r for r in run_dir.rows()}
    samples = {(s["case"], s["impl"], s["phase"]): list(s["time_ms"]) for s in run_dir.samples()}
    return Run(path, run_dir.meta(), run_dir.suite(), rows, samples)


@dataclass(frozen=True)
class TimeStats:
    """Median ratio candidate / baseline, its bootstrap CI and one-sided rank-test p-values."""

    ratio: float
    ci_low: float | None
    ci_high: float | None
    p_slower: float | None
    p_faster: float | None
    num_base: int
    num_cand: int


def time_stats(
    base: Sequence[float],
    cand: Sequence[float],
    *,
    confidence: float,
    seed: int = 0,
    ci: bool = True,
) -> TimeStats:
    """Ratio, rank tests and (unless `ci` is False: the verdict never reads it) bootstrap CI."""
    from scipy import stats

    b, c = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    ratio = float(np.median(c) / np.median(b))
    ci_low = ci_high = p_slower = p_faster = None
    if len(b) >= 2 and len(c) >= 2:
        p_slower = float(stats.mannwhitneyu(c, b, alternative="greater").pvalue)
        p_faster = float(stats.mannwhitneyu(c, b, alternative="less").pvalue)
    if ci and len(b) >= 2 and len(c) >= 2:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # degenerate resamples (identical samples) warn

            def median_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
                return np.median(x, axis=axis) / np.median(y, axis=axis)

            res = stats.bootstrap((c, b), median_ratio, vectorized=True, paired=False,
                                  n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                                  method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        ci_low, ci_high = (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (ratio, ratio)
    return TimeStats(ratio, ci_low, ci_high, p_slower, p_faster, len(b), len(c))


@dataclass
class RowResult:
    case: str
    impl: str
    phase: str
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    base_status: str | None = None
    cand_status: str | None = None
    base_time_ms: float | None = None
    cand_time_ms: float | None = None
    time: TimeStats | None = None
    norm_time: TimeStats | None = None
    mem_ratio: float | None = None
    err_ratio: float | None = None
    # metrics that could not be gated: not finite in the baseline, or time with too few samples
    ungated: list[str] = field(default_factory=list)
    p_value: float | None = None  # the gated time test's one-sided p, in the ratio's direction
    p_adjusted: float | None = None  # that p after Benjamini-Hochberg across compare's rows
    process: ProcessStats | None = None  # the per-process test, when both sides had one

    @property
    def severity(self) -> float:
        """Larger is worse; orders rows inside one verdict."""
        ratios = [self.mem_ratio, self.err_ratio]
        ratios += [t.ratio for t in (self.time, self.norm_time) if t is not None]
        return max((r for r in ratios if r is not None and math.isfinite(r)), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON data: a NaN or infinite ratio or time is the string "nan" / "inf"."""
        return jsonable(asdict(self))


# Provenance fields that differ on every run and so are never listed: when it started.
PROVENANCE_IGNORED = frozenset({"utc_time"})
# Fields expected to differ between nights (a new commit): listed last, as news to no one.
PROVENANCE_EXPECTED = ("git_commit", "git_dirty")
_ABSENT: Any = object()  # a field one run did not record


@dataclass(frozen=True)
class ProvenanceChange:
    """One provenance field (`device_peaks.mem_gbytes_per_s` for a nested one) that differs."""

    field: str
    baseline: Any
    candidate: Any

    def __str__(self) -> str:
        return f"{self.field} {_prov_shown(self.baseline)} → {_prov_shown(self.candidate)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON data; a field one run did not record is null there (`text` says which)."""
        b, c = (None if v is _ABSENT else v for v in (self.baseline, self.candidate))
        return jsonable({"field": self.field, "baseline": b, "candidate": c, "text": str(self),
                         "expected": self.field in PROVENANCE_EXPECTED})  # fmt: skip


def _prov_shown(value: Any) -> str:
    """A provenance value in the listing: numbers to 4 significant digits (a measured peak's
    last digits are noise), None as `none`, a field a run did not record as `(not recorded)`."""
    if value is _ABSENT:
        return "(not recorded)"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flatten(prov: Any, prefix: str = "") -> dict[str, Any]:
    """Nested provenance (device_peaks) as dotted leaf fields."""
    if not isinstance(prov, dict):
        return {prefix: prov} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in prov.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def provenance_diff(baseline: dict[str, Any] | None,
                    candidate: dict[str, Any] | None) -> list[ProvenanceChange]:  # fmt: skip
    """Every provenance field whose shown value differs between the two runs, in the candidate's
    order, then fields only the baseline has, then the commit fields (expected to differ).

    Not listed: `utc_time` (always differs) and a field absent on one side and None on the
    other (neither run knows it: e.g. a package version recorded only since a later harness).
    Numbers are compared as shown (4 significant digits).
    """
    b, c = _flatten(baseline or {}), _flatten(candidate or {})
    names = [*c, *(k for k in b if k not in c)]
    names = [n for n in names if n not in PROVENANCE_EXPECTED and n not in PROVENANCE_IGNORED]
    names += [n for n in PROVENANCE_EXPECTED if n in b or n in c]
    out = []
    for name in names:
        vb, vc = b.get(name, _ABSENT), c.get(name, _ABSENT)
        if vb in (None, _ABSENT) and vc in (None, _ABSENT):
            continue
        if _prov_shown(vb) != _prov_shown(vc):
            out.append(ProvenanceChange(name, vb, vc))
    return out


def provenance_line(changes: Sequence[ProvenanceChange]) -> str | None:
    """`provenance differs: torch_version 2.12.0 → 2.13.0; ...`; None when nothing differs."""
    return "provenance differs: " + "; ".join(map(str, changes)) if changes else None


@dataclass
class Comparison:
    baseline: Run
    candidate: Run
    settings: CompareSettings
    rows: list[RowResult]
    warnings: list[str]  # the first is the provenance line when provenance differs
    provenance: list[ProvenanceChange] = field(default_factory=list)
    common_shift: float | None = None  # the run-wide time shift removed (compare.common_shift)
    # each implementation's rows judged together (empty without per-process medians)
    implementations: list[ImplResult] = field(default_factory=list)

    def by_verdict(self, verdict: str) -> list[RowResult]:
        return [r for r in self.rows if r.verdict == verdict]

    def impls_by_verdict(self, verdict: str) -> list[ImplResult]:
        return [r for r in self.implementations if r.verdict == verdict]

    @property
    def failed(self) -> bool:
        return (any(r.verdict in ("regression", "missing") for r in self.rows)
                or bool(self.impls_by_verdict("regression")))  # fmt: skip

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        return {v: n for v in VERDICT_ORDER if (n := len(self.by_verdict(v)))}

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": {"path": str(self.baseline.path), "run_id": self.baseline.run_id,
                         "device_name": self.baseline.device_name},
            "candidate": {"path": str(self.candidate.path), "run_id": self.candidate.run_id,
                          "device_name": self.candidate.device_name},
            "settings": self.settings.model_dump(),
            "regression": self.failed,
            "ungated": len(self.by_verdict("ungated")),
            "counts": self.counts(),
            "provenance_diff": [c.to_dict() for c in self.provenance],
            "common_shift": self.common_shift,
            "implementations": [r.to_dict() for r in self.implementations],
            "warnings": self.warnings,
            "rows": [r.to_dict() for r in self.rows],
        }  # fmt: skip


def settings_for(candidate: Run, overrides: dict[str, Any]) -> CompareSettings:
    """Thresholds: flags given on the command line, else the candidate suite's `compare:`."""
    base = (candidate.suite.get("suite") or {}).get("compare") or {}
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return CompareSettings.model_validate(merged)
    except ValueError as exc:  # pydantic's ValidationError: one line per error, not its dump
        errors = getattr(exc, "errors", lambda: [])()
        text = "; ".join(f"{'.'.join(map(str, e.get('loc', ()))) or 'compare'}: "
                         f"{str(e.get('msg', '')).removeprefix('Value error, ')}"
                         for e in errors) or str(exc)  # fmt: skip
        raise CompareError(f"invalid compare settings: {text}") from None


def _check_comparable(base: Run, cand: Run) -> list[str]:
    if base.suite_name != cand.suite_name:
        raise CompareError(
            f"different suites: baseline {base.path} is a run of {base.suite_name!r}, candidate "
            f"{cand.path} of {cand.suite_name!r}; compare runs of one suite"
        )
    if base.meta.get("profile") != cand.meta.get("profile"):
        raise CompareError(
            f"different profiles of suite {cand.suite_name!r}: baseline "
            f"{base.meta.get('profile')!r}, candidate {cand.meta.get('profile')!r}"
        )
    for run, role in ((base, "baseline"), (cand, "candidate")):
        if not run.rows:
            raise CompareError(f"{role} {run.path} has no rows (did the run start?)")
    notes = []
    if base.device_name != cand.device_name:
        notes.append(
            f"raw times compared across different devices: {base.device_name!r} (baseline) vs "
            f"{cand.device_name!r} (candidate); prefer --normalize-to IMPL"
        )
    forced = describe(base.path)
    if forced.get("forced") and (forced.get("num_missing_rows") or forced.get("failed_rows")):
        notes.append(f"the baseline was promoted with --force: {forced.get('num_missing_rows', 0)} "
                     f"rows missing, {len(forced.get('failed_rows') or [])} failed; rows it lacks "
                     f"are `new`, not judged")  # fmt: skip
    return notes


def _judge_time(res: RowResult, stats_: TimeStats, s: CompareSettings, what: str,
                p_adjusted: float | None, rows: tuple[dict[str, Any], dict[str, Any]] | None = None,
                ) -> None:  # fmt: skip
    """Time verdict: effect beyond time_tol, p (BH-adjusted when given) below alpha, a CI (when
    computed) that excludes 1.0; too few samples make the row `ungated`.

    For rows timed in several processes on both sides (`rows`: baseline and candidate row), the
    process is the unit of replication (harness/regress/processes.py): with at least
    MIN_PROCESSES a side, the row's p is the larger of the pooled-sample rank test's and the
    Welch t-test's on per-process medians (both must hold: an intersection-union test), and the
    effect and the CI must hold for the per-process ratio too; with two, every candidate process
    must lie beyond every baseline process.
    """
    if min(stats_.num_base, stats_.num_cand) < s.min_samples:
        res.ungated.append(what)
        res.notes.append(f"{what}: {stats_.num_base}/{stats_.num_cand} samples, fewer than "
                         f"min_samples {s.min_samples}; not gated (too few samples)")  # fmt: skip
        return
    slower = stats_.ratio >= 1
    p_raw = stats_.p_slower if slower else stats_.p_faster
    proc = _process_stats(res, rows, s, what)
    if proc is not None:
        res.process = proc
        p_proc = proc.p_slower if slower else proc.p_faster
        p_raw = p_proc if p_raw is None else max(p_raw, p_proc)
    res.p_value = p_raw
    res.p_adjusted = p_adjusted
    p = p_adjusted if p_adjusted is not None else p_raw
    if p is None:  # unreachable with min_samples >= 2; never gate without evidence
        p = 1.0
    p_txt = f"BH-adjusted p={p:.3g}" if p_adjusted is not None else f"p={p:.3g}"
    has_ci = stats_.ci_low is not None and stats_.ci_high is not None
    ci_has_one = has_ci and stats_.ci_low <= 1.0 <= stats_.ci_high  # type: ignore[operator]
    ci_txt = f", CI [{stats_.ci_low:.3g}, {stats_.ci_high:.3g}]" if has_ci else ""
    if proc is not None:
        ci_txt += f"; {proc.describe(slower)}"
    pct = (stats_.ratio - 1) * 100

    def beyond_tol(ratio: float) -> bool:
        return ratio > 1 + s.time_tol if slower else ratio < 1 - s.time_tol

    if not beyond_tol(stats_.ratio):
        return
    kind = "regression" if slower else "change"
    if p >= s.alpha:
        if slower:
            res.notes.append(f"{what} {pct:+.1f}% but not significant ({p_txt}{ci_txt})")
    elif ci_has_one:
        res.notes.append(f"{what} {pct:+.1f}% ({p_txt}) but its CI [{stats_.ci_low:.3g}, "
                         f"{stats_.ci_high:.3g}] contains 1.0; not a {kind}")  # fmt: skip
    elif proc is not None and not beyond_tol(proc.ratio):
        res.notes.append(f"{what} {pct:+.1f}% ({p_txt}{ci_txt}) but the per-process ratio is "
                         f"within time_tol {s.time_tol:g}; not a {kind}")  # fmt: skip
    elif proc is not None and proc.ci_low <= 1.0 <= proc.ci_high:
        res.notes.append(f"{what} {pct:+.1f}% ({p_txt}{ci_txt}) but the per-process CI contains "
                         f"1.0; not a {kind}")  # fmt: skip
    elif proc is None and rows is not None and (overlap := processes_overlap(*rows, slower)):
        res.notes.append(f"{what} {pct:+.1f}% ({p_txt}{ci_txt}) but its {overlap}; not a "
                         f"{kind}")  # fmt: skip
    elif slower:
        res.reasons.append(f"{what} {pct:+.1f}% ({p_txt}{ci_txt})")
    else:
        res.notes.append(f"improved: {what} {pct:+.1f}% ({p_txt}{ci_txt})")


def _process_stats(res: RowResult, rows: tuple[dict[str, Any], dict[str, Any]] | None,
                   s: CompareSettings, what: str) -> ProcessStats | None:  # fmt: skip
    """The per-process test when both rows hold enough per-process medians, else None; when only
    one side has several processes, a note on `res` says the test was unavailable."""
    if rows is None:
        return None
    pb, pc = per_process(rows[0]) or [], per_process(rows[1]) or []
    if min(len(pb), len(pc)) > 1:
        return process_stats(pb, pc, alpha=s.alpha)
    nb, nc = len(pb), len(pc)
    if max(nb, nc) > 1:  # one side's processes cannot be compared with the other's
        res.notes.append(f"{what}: per-process test unavailable (baseline {nb}, candidate {nc} "
                         "processes): judged on pooled samples alone; re-promote the baseline "
                         "at the suite's processes")  # fmt: skip
    return None


def _judge_memory(res: RowResult, b: dict[str, Any], c: dict[str, Any], s: CompareSettings) -> None:
    mb, mc = b.get(MEMORY), c.get(MEMORY)
    if not (finite(mb) and finite(mc)):  # absent, or judged by `_judge_finite`
        return
    res.mem_ratio = mc / mb if mb > 0 else (1.0 if mc == 0 else math.inf)
    slack = max(s.mem_tol * mb, s.mem_floor_bytes)
    if mc - mb > slack:
        res.reasons.append(f"peak memory {mb / 2**20:.2f} -> {mc / 2**20:.2f} MiB "
                           f"({(res.mem_ratio - 1) * 100:+.1f}%)")  # fmt: skip
    elif mb - mc > slack:
        res.notes.append(f"improved: peak memory {(res.mem_ratio - 1) * 100:+.1f}%")


def _error_metrics(row: dict[str, Any]) -> dict[str, float]:
    """Every gated error metric the row has, finite or not (`_judge_finite` sorts those out)."""
    return {k: float(v) for k, v in row.items()
            if k.startswith("err_") and k.endswith("_rel_l2") and "naive" not in k
            and isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


def _naive_key(metric: str) -> str:
    """The row field holding the naive-same-precision error that `metric` is held against."""
    if metric == "err_rel_l2":
        return "err_naive_same_dtype_rel_l2"
    return "err_naive_same_dtype_grad_rel_l2"


def _naive_limit(row: dict[str, Any], metric: str) -> float | None:
    return _tolerance(row, metric).limit


def _tolerance(row: dict[str, Any], metric: str) -> Limit:
    """Tolerance of `metric` in `row`: the naive rule, or its fallback when naive overflowed."""
    return naive_limit(metric, row.get(_naive_key(metric)), row.get("dtype"),
                       row.get("workload") or "attention")  # fmt: skip


def _judge_error(res: RowResult, b: dict[str, Any], c: dict[str, Any], s: CompareSettings) -> None:
    eb, ec = _error_metrics(b), _error_metrics(c)
    ratios = []
    for metric in sorted(eb.keys() & ec.keys()):
        if not (finite(eb[metric]) and finite(ec[metric])):
            continue  # judged by `_judge_finite`
        vb, vc = eb[metric], ec[metric]
        ratios.append(vc / vb if vb > 0 else (1.0 if vc == 0 else math.inf))
        if vc > s.err_factor * vb + ERR_FLOOR:
            res.reasons.append(f"{metric} {vb:.3g} -> {vc:.3g} (> {s.err_factor:g}x baseline)")
            continue
        lim_b, lim_c = _naive_limit(b, metric), _naive_limit(c, metric)
        naive = _naive_key(metric)
        for row, side in ((b, "baseline"), (c, "candidate")):
            if not_finite(row.get(naive)):
                res.notes.append(f"{metric}: {naive} is {row[naive]} in the {side}; "
                                 f"{_tolerance(row, metric).describe()}")  # fmt: skip
        if lim_c is not None and vc > lim_c and not (lim_b is not None and vb > lim_b):
            res.reasons.append(f"{metric} {vc:.3g} is now above the naive-low-precision rule "
                               f"({lim_c:.3g})")  # fmt: skip
    res.err_ratio = max(ratios) if ratios else None


def _time_value(side: Side) -> float | None:
    """The side's time for the finiteness check: its median, or NaN / inf if any sample is."""
    t = side.row.get(TIME)
    if not_finite(t):
        return t
    return next((x for x in side.samples or () if not_finite(x)), t)


def _judge_finite(res: RowResult, b: Side, c: Side, s: CompareSettings) -> set[str]:
    """Judge every gated metric that is not finite on one side; return the metrics to skip.

    Candidate not finite where the baseline is finite or absent: a regression (a kernel that
    starts returning NaN). Baseline not finite: the metric cannot be gated, said in `ungated`.
    """
    values = [(TIME, _time_value(b), _time_value(c))]
    values += [(m, b.row.get(m), c.row.get(m)) for m in (*THROUGHPUT, MEMORY)]
    eb, ec = _error_metrics(b.row), _error_metrics(c.row)
    values += [(m, eb.get(m), ec.get(m)) for m in sorted(eb.keys() | ec.keys())]
    ref = s.normalize_to
    if ref is not None and res.impl != ref:  # the reference's time scales this row's
        for side, name in ((b, "baseline"), (c, "candidate")):
            t = _time_value(Side(side.ref_row, side.ref_samples)) if side.ref_row else None
            if not_finite(t):
                res.ungated += [] if f"time vs {ref}" in res.ungated else [f"time vs {ref}"]
                res.notes.append(f"time vs {ref}: {ref}'s time is {t} in the {name}; not gated")
    skip = set()
    for metric, vb, vc in values:
        if not_finite(vb):
            skip.add(metric)
            res.ungated.append(metric)
            res.notes.append(f"{metric}: the baseline's value is {vb} (not finite); not gated")
        elif not_finite(vc):
            skip.add(metric)
            res.reasons.append(f"{metric} {_shown(vb)} -> {vc} (not finite)")
    return skip


def _compare_ok(res: RowResult, b: Side, c: Side, s: CompareSettings, same_device: bool,
                ci: bool, p_adjusted: float | None) -> None:  # fmt: skip
    res.base_time_ms, res.cand_time_ms = b.row.get(TIME), c.row.get(TIME)
    skip = _judge_finite(res, b, c, s)
    if TIME not in skip and _contended(res, b, c):
        skip.add(TIME)
    if TIME not in skip and f"time vs {s.normalize_to}" not in res.ungated:
        _compare_time(res, b, c, s, same_device, ci, p_adjusted)
    _judge_memory(res, b.row, c.row, s)
    _judge_error(res, b.row, c.row, s)


def _contended(res: RowResult, b: Side, c: Side) -> bool:
    """A side timed while other processes shared its CPU cores (`contended`,
    harness/measure/contention.py) measured the machine, not the kernel: its time is not gated,
    and the row says so (`ungated`) rather than calling a change either way."""
    shared = [(name, side.row) for name, side in (("baseline", b), ("candidate", c))
              if side.row.get("contended")]  # fmt: skip
    if not shared:
        return False
    res.ungated.append(TIME)
    for name, row in shared:
        res.notes.append(
            f"time: the {name} was timed on shared CPU cores "
            f"({row.get('contention_note') or 'contended'}); not gated (contended)"
        )
    return True


def _compare_time(res: RowResult, b: Side, c: Side, s: CompareSettings, same_device: bool,
                  ci: bool, p_adjusted: float | None) -> None:  # fmt: skip
    confidence = 1 - s.alpha
    if b.samples and c.samples:
        res.time = time_stats(b.samples, c.samples, confidence=confidence, ci=ci)
    elif res.base_time_ms and res.cand_time_ms:
        res.time = TimeStats(res.cand_time_ms / res.base_time_ms, None, None, None, None, 0, 0)
    ref = s.normalize_to
    if ref is not None and res.impl != ref:
        nb, nc = b.normalized(), c.normalized()
        if nb and nc:
            res.norm_time = time_stats(nb, nc, confidence=confidence, ci=ci)
            _judge_time(res, res.norm_time, s, f"time vs {ref}", p_adjusted)
        else:
            res.notes.append(f"no ok {ref} row with samples in this case; time not gated")
    elif res.time is not None:
        if ref is None or same_device:
            _judge_time(res, res.time, s, "time", p_adjusted, rows=(b.row, c.row))
        else:
            res.notes.append("reference implementation across devices: raw time not gated")


def judge(
    base: Side | None, cand: Side | None, settings: CompareSettings, *, expected: bool = True,
    same_device: bool = True, ci: bool = True, p_adjusted: float | None = None,
) -> RowResult:  # fmt: skip
    """The verdict on one row: `base` (baseline row + samples) against `cand` (candidate's).

    Verdicts: `new` (no baseline row), `missing` (no candidate row although `expected`, i.e. the
    candidate's suite asks for it: an unfinished run) or `vanished` (not expected), a status
    change (ok -> failed or skipped: `regression`; failed -> ok: `improvement`; otherwise
    `changed`), and for rows ok on both sides `regression` when time (effect, Mann-Whitney
    evidence and a CI excluding 1.0), memory or error says so or one of them stopped being finite,
    `ungated` when a metric is not finite in the baseline or time has fewer than min_samples
    samples on a side (so it could not be judged), `improvement` when something improved, else
    `unchanged`.
    `reasons` say why a row regressed, `notes` everything else. `same_device` False stops raw
    times from gating when normalizing; `ci` False skips the bootstrap interval (then the verdict
    rests on effect and p alone), which callers judging thousands of rows can afford to drop.
    `p_adjusted`, when given, replaces the row's time p-value in the decision (`compare` passes the
    Benjamini-Hochberg-adjusted one); alone, one pair is judged on its raw p-value.
    """
    some = base or cand
    assert some is not None, "judge needs at least one side"
    key = (some.row["case"], some.row["impl"], some.row["phase"])
    res = RowResult(*key, verdict="unchanged")
    if base is None:
        res.verdict, res.cand_status = "new", cand.row["status"]  # type: ignore[union-attr]
        return res
    b = base.row
    res.base_status = b["status"]
    if cand is None:
        if expected:
            res.verdict = "missing"
            res.reasons.append("the candidate's suite asks for this row but the run has none "
                               "(unfinished run?)")  # fmt: skip
        else:
            res.verdict = "vanished"
            res.notes.append("no longer in the candidate's suite")
        return res
    c = cand.row
    res.cand_status = c["status"]
    if b["status"] == "ok" and c["status"] == "ok":
        _compare_ok(res, base, cand, settings, same_device, ci, p_adjusted)
        improved = any(n.startswith("improved") for n in res.notes)
        res.verdict = ("regression" if res.reasons else "ungated" if res.ungated
                       else "improvement" if improved else "unchanged")  # fmt: skip
    elif b["status"] == "ok":
        res.verdict = "regression"
        res.reasons.append(f"status ok -> {c['status']}: {c.get('reason') or ''}".rstrip(": "))
    elif c["status"] == "ok":
        res.verdict = "improvement"
        res.notes.append(f"status {b['status']} -> ok")
    elif b["status"] != c["status"]:
        res.verdict = "changed"
        res.notes.append(f"status {b['status']} -> {c['status']}: {c.get('reason') or ''}")
    return res


def _compare_key(
    base: Run, cand: Run, key: Key, s: CompareSettings, same_device: bool, *, ci: bool = True,
    p_adjusted: float | None = None, shift: float | None = None,
) -> RowResult:  # fmt: skip
    ref = s.normalize_to
    cand_side = cand.side(key, ref)
    if shift is not None and cand_side is not None and cand_side.samples:
        row = dict(cand_side.row)
        if processes := per_process(row):  # only numbers: a hand-edited row may hold others
            row[PER_PROCESS] = [x / shift for x in processes]
        cand_side = replace(cand_side, row=row, samples=[x / shift for x in cand_side.samples])
    return judge(base.side(key, ref), cand_side, s, same_device=same_device,
                 expected=key in cand.rows or cand.expects(key), ci=ci,
                 p_adjusted=p_adjusted)  # fmt: skip


MIN_SHIFT_ROWS = 8  # fewer rows ok on both sides give no trustworthy common shift


def common_shift(base: Run, cand: Run) -> tuple[float, int] | None:
    """The run-wide shift of time: the median over rows of median(candidate samples) /
    median(baseline samples), over rows ok and uncontended on both sides; and how many rows.

    None under MIN_SHIFT_ROWS rows. The median ignores the few rows a change really moved, so
    dividing the candidate's samples by it leaves those rows standing out and cancels what moved
    every row alike: on a shared CPU VM, the machine's speed from one night to the next (the
    same-commit pairs of benchmarks/false_alarms.py moved by up to ~6% together).
    """
    ratios = []
    for key, b in base.rows.items():
        c, bs, cs = cand.rows.get(key), base.samples.get(key), cand.samples.get(key)
        if not (c and bs and cs) or not b.get("status") == c.get("status") == "ok":
            continue
        if b.get("contended") or c.get("contended"):
            continue
        mb, mc = float(np.median(bs)), float(np.median(cs))
        if finite(mb) and finite(mc) and mb > 0 and mc > 0:
            ratios.append(mc / mb)
    if len(ratios) < MIN_SHIFT_ROWS:
        return None
    return float(np.median(ratios)), len(ratios)


def _shift_note(found: tuple[float, int] | None, s: CompareSettings) -> str:
    if found is None:
        return (f"common_shift: fewer than {MIN_SHIFT_ROWS} rows ok on both sides; time judged "
                "without removing a run-wide shift")  # fmt: skip
    shift, n = found
    note = (f"common_shift: the candidate's times are {shift:.3f}× the baseline's (median over "
            f"{n} rows); each row's time is judged relative to that")  # fmt: skip
    if abs(shift - 1) > s.time_tol:
        note += (
            f"; the shift itself is beyond time_tol {s.time_tol:g}: the machine, or a change "
            "to every implementation (`harness history` shows whether it persists)"
        )
    return note


def bh_adjust(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (scipy's `false_discovery_control`, method 'bh')."""
    if not pvalues:
        return []
    from scipy.stats import false_discovery_control

    return [float(p) for p in false_discovery_control(np.asarray(pvalues, float), method="bh")]


def _sort_key(r: RowResult) -> tuple[int, float, str, str, str]:
    status_first = 0 if any(x.startswith("status") for x in r.reasons) else 1
    return (VERDICT_ORDER.index(r.verdict), status_first, -r.severity, r.case, r.impl + r.phase)


def _unjudged_impls(tested: list[tuple[str, ProcessStats]], judged: list[ImplResult]) -> str:
    counts = Counter(impl for impl, _ in tested)
    done = {r.impl for r in judged}
    return ", ".join(f"{i} ({n} rows)" for i, n in sorted(counts.items()) if i not in done)


def compare(baseline: Run, candidate: Run, settings: CompareSettings) -> Comparison:
    """Judge every row of the two runs; the result lists rows worst first."""
    notes = _check_comparable(baseline, candidate)
    changes = provenance_diff(baseline.meta.get("provenance"), candidate.meta.get("provenance"))
    line = provenance_line(changes)
    notes = [line, *notes] if line else notes
    ref = settings.normalize_to
    impls = sorted({k[1] for k in baseline.rows} | {k[1] for k in candidate.rows})
    if ref is not None and ref not in impls:
        raise CompareError(f"--normalize-to: {ref!r} has no rows in these runs; "
                           f"allowed: {', '.join(impls)}")  # fmt: skip
    same_device = baseline.device_name == candidate.device_name
    shift = None
    if settings.common_shift:
        found = common_shift(baseline, candidate)
        shift = None if found is None else found[0]
        notes.append(_shift_note(found, settings))
    keys = sorted(baseline.rows.keys() | candidate.rows.keys())
    # first the p-values alone (no bootstrap), then every row judged on its BH-adjusted p
    raw = [_compare_key(baseline, candidate, k, settings, same_device, ci=False,
                        shift=shift).p_value for k in keys]  # fmt: skip
    tested = [(i, p) for i, p in enumerate(raw) if p is not None]
    adjusted = dict(zip([i for i, _ in tested], bh_adjust([p for _, p in tested]), strict=True))
    rows = [_compare_key(baseline, candidate, k, settings, same_device, shift=shift,
                         p_adjusted=adjusted.get(i)) for i, k in enumerate(keys)]  # fmt: skip
    rows.sort(key=_sort_key)
    impls: list[ImplResult] = []
    tested = [(r.impl, r.process) for r in rows if r.process is not None]
    if tested and ref is None and not settings.common_shift:
        notes.append("implementations not judged together: that needs common_shift (without it a "
                     "machine-wide shift moves every implementation's rows alike)")  # fmt: skip
    if ref is None and settings.common_shift:  # normalize_to: per-process medians not rescaled
        impls = judge_implementations(tested, impl_tol=settings.impl_tol, alpha=settings.alpha,
                                      bh=bh_adjust)  # fmt: skip
        if tested and (short := _unjudged_impls(tested, impls)):
            notes.append(
                f"implementations not judged together (fewer than {MIN_ROWS} rows with a "
                f"per-process test: ungated, contended or too few processes): {short}"
            )
    return Comparison(baseline, candidate, settings, rows, notes, changes, shift, impls)


def compare_paths(baseline: str | Path, candidate: str | Path, **overrides: Any) -> Comparison:
    base, cand = load_run(baseline), load_run(candidate)
    return compare(base, cand, settings_for(cand, overrides))
