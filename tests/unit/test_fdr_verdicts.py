"""Verdicts a nightly job can trust (issue 14): `compare` holds the false discovery rate across the
rows of one comparison (Benjamini-Hochberg), a row whose ratio CI contains 1.0 is never a
regression, and a row with too few samples is the visible verdict `ungated`, never `unchanged`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.regress.compare import Side, bh_adjust, compare_paths, judge
from harness.suite import CompareSettings
from tests.helpers.synthetic_runs import CASE, make_run, ok_row, samples

ROOT = Path(__file__).resolve().parents[2]
SLOW = f"{CASE}-slow"


def _null_rows(n_rows: int = 50, n: int = 10, sd: float = 0.2, seed: int = 7):
    """Baseline and candidate rows drawn from one distribution: their p-values are uniform."""
    rng = np.random.default_rng(seed)
    base, cand = [], []
    for i in range(n_rows):
        b, c = (list(10.0 * np.exp(rng.normal(0, sd, n))) for _ in range(2))
        base.append(ok_row(case=f"{CASE}-{i:02d}", time_ms=b))
        cand.append(ok_row(case=f"{CASE}-{i:02d}", time_ms=c))
    return base, cand


def _compare(tmp_path: Path, base: list, cand: list, **kw):
    return compare_paths(make_run(tmp_path / "b", base), make_run(tmp_path / "c", cand), **kw)


def test_bh_adjust_is_benjamini_hochberg():
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 -> x4/1, x4/2, x4/3, x4/4, then running minimum from the top
    assert bh_adjust(p) == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert bh_adjust([]) == []


def test_50_null_rows_flag_nothing_after_bh(tmp_path):
    base, cand = _null_rows()
    s = CompareSettings()
    alone = [judge(Side(b, b["time_samples_ms"]), Side(c, c["time_samples_ms"]), s, ci=False)
             for b, c in zip(base, cand, strict=True)]  # fmt: skip
    pvals = [r.p_value for r in alone]
    assert all(p is not None for p in pvals) and np.median(pvals) > 0.2  # uniform-ish
    # judged one at a time (raw p), 50 tests at 5% cry wolf: the family needs correcting
    assert sum(r.verdict == "regression" for r in alone) >= 1
    result = _compare(tmp_path, base, cand)
    assert result.by_verdict("regression") == [] and result.exit_code == 0
    assert all(r.p_adjusted is not None and r.p_adjusted >= r.p_value for r in result.rows)
    assert any("BH-adjusted p=" in n for r in result.rows for n in r.notes)


def test_one_true_20pct_slowdown_among_50_null_rows_is_flagged(tmp_path):
    base, cand = _null_rows()
    t = samples(10.0, 0.02, n=30, seed=1)
    base.append(ok_row(case=SLOW, time_ms=t))
    cand.append(ok_row(case=SLOW, time_ms=[x * 1.2 for x in samples(10.0, 0.02, n=30, seed=2)]))
    result = _compare(tmp_path, base, cand)
    (reg,) = result.by_verdict("regression")
    assert reg.case == SLOW and result.exit_code == 1
    assert reg.reasons[0].startswith("time +") and "BH-adjusted p=" in reg.reasons[0]
    assert reg.p_adjusted < 0.05 and reg.time.ci_low > 1.0


def test_a_row_whose_ratio_ci_contains_1_is_not_a_regression():
    noisy = samples(10.0, 0.3, n=40, seed=3)
    slower = [x * 1.15 for x in noisy[::-1]]
    res = judge(Side(ok_row(time_ms=noisy), noisy), Side(ok_row(time_ms=slower), slower),
                CompareSettings())  # fmt: skip
    # effect (+15%) and a significant rank test, but the CI of the ratio reaches below 1.0
    assert res.time.ratio > 1.1 and res.p_value < 0.05
    assert res.time.ci_low <= 1.0 <= res.time.ci_high
    assert res.verdict == "unchanged" and not res.reasons
    assert any("contains 1.0; not a regression" in n for n in res.notes)
    faster = [x / 1.15 for x in noisy[::-1]]
    res = judge(Side(ok_row(time_ms=noisy), noisy), Side(ok_row(time_ms=faster), faster),
                CompareSettings())  # fmt: skip
    # the mirror image here has a CI that excludes 1.0: an improvement, as the rule says
    assert res.time.ci_high < 1.0 and res.verdict == "improvement"


def test_rows_with_too_few_samples_are_ungated_never_unchanged(tmp_path):
    few = samples(10.0, 0.01, n=3)
    base = [ok_row(time_ms=few), ok_row(case=SLOW, time_ms=samples(10.0, 0.01))]
    cand = [ok_row(time_ms=[x * 7 for x in few]), ok_row(case=SLOW, time_ms=samples(10.0, 0.01))]
    result = _compare(tmp_path, base, cand)
    (row,) = result.by_verdict("ungated")
    assert row.case == CASE and row.ungated == ["time"] and row.p_value is None
    assert any("3/3 samples, fewer than min_samples 5" in n for n in row.notes)
    assert "too few samples" in " ".join(row.notes)
    assert [r.case for r in result.by_verdict("unchanged")] == [SLOW]


# --- a suite whose repeats cannot reach compare's minimum is warned about ----------------------


def _suite(timing: dict, compare: dict | None = None):
    from harness.suite import parse_suite

    data = {"name": "t", "implementations": ["naive"], "sweep": {"seq_len": [64]},
            "timing": timing} | ({"compare": compare} if compare else {})  # fmt: skip
    return parse_suite(data)


def test_suite_warns_when_its_repeats_cannot_reach_min_samples():
    (line,) = _suite({"repeats": 3, "min_repeats": 3}).warnings()
    assert "timing.min_repeats (3) is below compare.min_samples (5)" in line
    assert "none of its rows" in line and "ungated" in line
    (line,) = _suite({"repeats": 10, "min_repeats": 3, "max_time_s": 2.0}).warnings()
    assert "max_time_s (2 s) stops early" in line
    assert _suite({"repeats": 10, "min_repeats": 5}).warnings() == []
    assert _suite({"repeats": 3, "min_repeats": 3}, {"min_samples": 3}).warnings() == []


def test_harness_run_prints_the_suite_warnings_first():
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["run", str(ROOT / "suites/smoke.yaml"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "warning: timing.min_repeats (1) is below compare.min_samples (5)" in res.stderr
    res = CliRunner().invoke(app, ["run", str(ROOT / "suites/nightly.yaml"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.stderr


def test_a_row_timed_on_shared_cores_is_ungated_with_the_reason():
    base = samples(10.0, 0.01)
    slower = [x * 3 for x in base]  # 3× slower: a regression if the kernel were to blame
    note = "other processes used 1.00 CPU cores while it was timed"
    shared = ok_row(time_ms=slower) | {"contended": True, "contention_note": note}
    res = judge(Side(ok_row(time_ms=base), base), Side(shared, slower), CompareSettings())
    assert res.verdict == "ungated" and res.ungated == ["time_ms_median"] and not res.reasons
    assert any("candidate was timed on shared CPU cores" in n and note in n for n in res.notes)
    # memory is still judged: contention says nothing about it
    bigger = shared | {"peak_mem_bytes": 10 * ok_row()["peak_mem_bytes"]}
    res = judge(Side(ok_row(time_ms=base), base), Side(bigger, slower), CompareSettings())
    assert res.verdict == "regression" and any("mem" in r for r in res.reasons)


def _machine_drift_runs(drift: float, slowed: float = 1.0, n_rows: int = 30, seed: int = 11):
    """Candidate rows = baseline rows × drift (the whole machine) × per-row noise; row 0 also
    × `slowed` (one implementation's real change)."""
    rng = np.random.default_rng(seed)
    base, cand = [], []
    for i in range(n_rows):
        b = list(10.0 * np.exp(rng.normal(0, 0.02, 20)))
        c = list(10.0 * drift * (slowed if i == 0 else 1.0) * np.exp(rng.normal(0, 0.02, 20)))
        base.append(ok_row(case=f"{CASE}-{i:02d}", time_ms=b))
        cand.append(ok_row(case=f"{CASE}-{i:02d}", time_ms=c))
    return base, cand


def test_common_shift_cancels_a_machine_wide_drift_and_keeps_one_rows_change(tmp_path):
    base, cand = _machine_drift_runs(drift=0.93, slowed=1.12)
    raw = _compare(tmp_path / "raw", base, cand, time_tol=0.05)
    assert len(raw.by_verdict("improvement")) >= 25  # every row "improved": the machine did
    shifted = _compare(tmp_path / "shifted", base, cand, time_tol=0.05, common_shift=True)
    assert shifted.common_shift == pytest.approx(0.93, rel=0.02)
    flagged = [r.case for r in shifted.rows if r.verdict in ("regression", "improvement")]
    assert flagged == [f"{CASE}-00"] and shifted.by_verdict("regression")[0].case == flagged[0]
    assert any("common_shift: the candidate's times are 0.9" in w and "beyond time_tol" in w
               for w in shifted.warnings)  # fmt: skip


def test_common_shift_needs_enough_rows_and_excludes_normalize_to(tmp_path):
    base, cand = _machine_drift_runs(drift=1.0, n_rows=5)
    res = _compare(tmp_path, base, cand, common_shift=True)
    assert res.common_shift is None and any("fewer than 8 rows" in w for w in res.warnings)
    with pytest.raises(ValueError, match="common_shift and normalize_to"):
        CompareSettings(common_shift=True, normalize_to="naive")


def _process_side(per_process: list[float], seed: int) -> Side:
    parts = [x for i, m in enumerate(per_process) for x in samples(m, 0.01, seed=seed + i)]
    return Side(ok_row(time_ms=parts) | {"time_ms_median_per_process": per_process}, parts)


def test_a_change_within_between_process_variation_is_not_a_regression():
    """Three processes a side: a +14% pooled shift (significant, CI excluding 1.0) with one
    candidate process among the baseline's fails the t-test on per-process medians; every
    process shifted is a regression."""
    base = _process_side([10.0, 10.2, 10.4], seed=0)
    res = judge(base, _process_side([10.3, 11.6, 11.8], seed=9), CompareSettings(time_tol=0.05))
    assert res.verdict == "unchanged" and not res.reasons and res.time.ci_low > 1.0
    assert res.process is not None and res.process.p_slower > 0.05
    assert res.time.p_slower < 0.01  # the pooled rank test alone would have flagged it
    assert any("not significant" in n and "Welch" in n for n in res.notes)
    res = judge(base, _process_side([11.5, 11.6, 11.8], seed=9), CompareSettings(time_tol=0.05))
    assert res.verdict == "regression" and res.process.p_slower < 0.05
    assert "Welch" in res.reasons[0]


def test_with_two_processes_a_side_every_candidate_process_must_move():
    base = _process_side([10.0, 10.4], seed=0)
    res = judge(base, _process_side([10.3, 11.8], seed=9), CompareSettings(time_tol=0.05))
    assert res.verdict == "unchanged" and res.process is None
    assert any("per-process medians overlap" in n for n in res.notes)
    res = judge(base, _process_side([11.5, 11.8], seed=9), CompareSettings(time_tol=0.05))
    assert res.verdict == "regression"


def test_conflicting_flags_are_one_line_naming_both(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    run = make_run(tmp_path / "r", [ok_row()])
    res = CliRunner().invoke(app, ["compare", str(run), str(run), "--common-shift",
                                   "--normalize-to", "chunked"])  # fmt: skip
    assert res.exit_code == 2
    (line,) = [x for x in res.output.splitlines() if x.strip()]
    assert "common_shift and normalize_to" in line and "errors.pydantic" not in line
