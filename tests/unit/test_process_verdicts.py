"""The process as the unit of replication (harness/regress/processes.py): with several processes a
side, compare tests per-process medians (Welch's t on their logs), so a night whose processes
landed differently is not read as a regression, and a real slowdown still is."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.regress.compare import compare_paths
from harness.regress.history import window_side
from harness.regress.processes import PER_PROCESS, process_stats
from harness.suite import Suite
from tests.helpers.synthetic_runs import CASE, make_run, ok_row

ROWS, PROCESSES, REPEATS = 56, 6, 4  # the nightly CPU profile's shape


def _welch_by_hand(b: np.ndarray, c: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """One-sided p (slower) and the two-sided CI of the log difference, from the textbook
    formulas (Welch 1947; Satterthwaite degrees of freedom)."""
    vb, vc = b.var(ddof=1) / len(b), c.var(ddof=1) / len(c)
    se = math.sqrt(vb + vc)
    df = (vb + vc) ** 2 / (vb**2 / (len(b) - 1) + vc**2 / (len(c) - 1))
    diff = c.mean() - b.mean()
    q = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.t.sf(diff / se, df)), diff - q * se, diff + q * se


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_process_stats_is_welch_on_log_medians(seed):
    rng = np.random.default_rng(seed)
    base = list(10 * np.exp(rng.normal(0, 0.05, 6)))
    cand = list(11 * np.exp(rng.normal(0, 0.08, 5)))
    got = process_stats(base, cand, alpha=0.05)
    p, lo, hi = _welch_by_hand(np.log(base), np.log(cand), 0.05)
    assert got.p_slower == pytest.approx(p, rel=1e-9)
    assert got.p_faster == pytest.approx(1 - p, rel=1e-9)
    assert (got.ci_low, got.ci_high) == pytest.approx((math.exp(lo), math.exp(hi)), rel=1e-9)
    assert got.ratio == pytest.approx(math.exp(np.log(cand).mean() - np.log(base).mean()))
    assert (got.num_base, got.num_cand) == (6, 5)


def test_process_stats_needs_three_processes_a_side_and_handles_identical_ones():
    assert process_stats([10.0, 10.1], [11.0, 11.2, 11.1], alpha=0.05) is None
    same = process_stats([10.0] * 3, [12.0] * 3, alpha=0.05)
    assert same.p_slower == 0.0 and same.p_faster == 1.0 and same.ratio == pytest.approx(1.2)


def _side_rows(rng: np.random.Generator, sd_process: float, slow: dict[int, float],
               *, keep_processes: bool = True) -> list[dict]:  # fmt: skip
    """ROWS rows, each timed in PROCESSES processes of REPEATS samples: a process's level is
    lognormal with `sd_process`, its samples within 1% of it (the field data's shape)."""
    rows = []
    for i in range(ROWS):
        levels = 10.0 * (1 + slow.get(i, 0.0)) * np.exp(rng.normal(0, sd_process, PROCESSES))
        parts = [list(lv * (1 + 0.01 * rng.uniform(-1, 1, REPEATS))) for lv in levels]
        row = ok_row(case=f"{CASE}-{i:02d}", time_ms=[x for p in parts for x in p])
        if keep_processes:
            row[PER_PROCESS] = [float(np.median(p)) for p in parts]
        rows.append(row)
    return rows


def _flagged(tmp_path: Path, seed: int, sd: float, slow: dict[int, float], keep: bool,
             tol: float) -> list:  # fmt: skip
    rng = np.random.default_rng(seed)
    base = make_run(tmp_path / f"b{seed}{keep}", _side_rows(rng, sd, {}, keep_processes=keep))
    cand = make_run(tmp_path / f"c{seed}{keep}", _side_rows(rng, sd, slow, keep_processes=keep))
    res = compare_paths(base, cand, time_tol=tol)
    return [r for r in res.rows if r.verdict in ("regression", "improvement")]


def test_null_nights_with_between_process_variance_stay_within_the_false_discovery_rate(tmp_path):
    """56 rows whose processes differ by 6% (sd) and agree within each, 5 same-code pairs: judged
    per process, BH at alpha 0.05 lets through about alpha false rows per all-null pair (at most 2
    of 280 here); the pooled samples alone call dozens of rows changed."""
    pairs = range(5)
    with_processes = sum(len(_flagged(tmp_path, s, 0.06, {}, True, 0.05)) for s in pairs)
    pooled_only = sum(len(_flagged(tmp_path, s, 0.06, {}, False, 0.05)) for s in pairs)
    assert with_processes <= 2
    assert pooled_only >= 15


def test_a_real_slowdown_is_still_flagged_per_process(tmp_path):
    slowed = dict.fromkeys(range(8), 0.20)  # one implementation's 8 rows, 20% slower
    flagged = _flagged(tmp_path, 11, 0.04, slowed, True, 0.10)
    hit = {int(r.case.rsplit("-", 1)[1]) for r in flagged if r.verdict == "regression"}
    assert len(hit & set(slowed)) >= 6 and not hit - set(slowed)


def test_history_window_pools_every_nights_process_medians():
    nights = [{"case": CASE, "impl": "bpt", "phase": "fwd", "status": "ok",
               "time_ms_median": 10.0 + k, PER_PROCESS: [10.0 + k, 10.5 + k, 9.5 + k]}
              for k in range(3)]  # fmt: skip
    side = window_side(nights)
    assert sorted(side.row[PER_PROCESS]) == sorted(x for n in nights for x in n[PER_PROCESS])


@pytest.mark.parametrize(
    ("min_repeats", "processes", "warned"),
    [(3, 2, False), (2, 2, True), (5, 1, False), (4, 1, True)],
)
def test_suite_warning_counts_samples_of_every_process(min_repeats, processes, warned):
    suite = Suite.model_validate({
        "name": "s", "implementations": ["naive"],
        "timing": {"repeats": 5, "min_repeats": min_repeats, "processes": processes},
    })  # fmt: skip
    lines = suite.warnings()
    assert bool(lines) == warned
    if warned and processes > 1:
        assert "timing.processes (2)" in lines[0] and "to 3" in lines[0]


def test_constant_or_non_finite_processes_give_no_bogus_evidence():
    """Review findings: identical processes on both sides whose logs do not average to exactly
    the same float, a side with inf, and a non-number in a hand-edited row."""
    same = process_stats([10.0] * 6, [10.0] * 6, alpha=0.05)
    assert same.p_slower == same.p_faster == 1.0 and same.ratio == 1.0
    kept = process_stats([10.0, 10.1, 9.9], [10.0, 11.0, 12.0, float("inf")], alpha=0.05)
    assert kept.num_cand == 3 and math.isfinite(kept.p_slower)


def test_common_shift_with_a_non_number_in_the_per_process_list(tmp_path):
    rows_b = [ok_row(case=f"{CASE}-{i:02d}") | {PER_PROCESS: [10.0, 10.1, 9.9]} for i in range(9)]
    rows_c = [ok_row(case=f"{CASE}-{i:02d}") | {PER_PROCESS: [10.0, None, 9.9, 10.2]}
              for i in range(9)]  # fmt: skip
    res = compare_paths(make_run(tmp_path / "b", rows_b), make_run(tmp_path / "c", rows_c),
                        common_shift=True)  # fmt: skip
    assert {r.verdict for r in res.rows} == {"unchanged"}


def test_one_side_without_processes_says_the_test_was_unavailable():
    from harness.regress.compare import Side, judge
    from harness.suite import CompareSettings

    base = ok_row(time_ms=[10.0 + 0.01 * i for i in range(24)])
    cand = ok_row(time_ms=[12.0 + 0.01 * i for i in range(24)]) | {
        PER_PROCESS: [11.0, 12.0, 13.0, 12.5, 11.5, 12.2]}  # fmt: skip
    res = judge(Side(base, base["time_samples_ms"]), Side(cand, cand["time_samples_ms"]),
                CompareSettings())  # fmt: skip
    assert res.process is None
    assert any("per-process test unavailable (baseline 0, candidate 6" in n for n in res.notes)
