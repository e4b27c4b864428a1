"""Verdicts that survive NaN and infinity, and baselines that cannot hide missing rows.

A NaN compares False with everything, so before issue 12 a kernel that started returning NaN
passed `compare` (error 2e-7 -> inf was `unchanged`) and a NaN in the baseline silently switched a
metric's gate off. Now, per gated metric: finite (or absent) -> not finite is a regression, a
baseline that is not finite is the visible verdict `ungated`. `baseline promote` refuses an
unfinished run unless forced, and a forced baseline says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.regress.baseline import describe, promote
from harness.regress.compare import Side, compare_paths, judge
from harness.regress.history import flag_history, load_history
from harness.suite import CompareSettings
from tests.helpers.synthetic_runs import make_run, ok_row, samples

BAD = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
METRICS = ("err_rel_l2", "err_dq_rel_l2", "peak_mem_bytes", "tflops", "tokens_per_s",
           "time_ms_median")  # fmt: skip


def _row(time_ms: list[float] | None = None, **fields: Any) -> dict[str, Any]:
    row = ok_row(err=2e-7, time_ms=time_ms)
    return row | {"err_dq_rel_l2": 1e-6, "tflops": 1.5, "tokens_per_s": 1e5} | fields


def _strict(text: str) -> Any:
    """json.loads that refuses NaN / Infinity (what every other JSON parser does)."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def _one(base: dict, cand: dict, tmp_path: Path, **overrides: Any):
    b = make_run(tmp_path / "base", [base])
    c = make_run(tmp_path / "cand", [cand])
    result = compare_paths(b, c, **overrides)
    assert len(result.rows) == 1
    return result, result.rows[0]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("metric", METRICS)
def test_a_metric_that_stops_being_finite_is_a_regression(tmp_path, metric, bad):
    result, row = _one(_row(), _row(**{metric: BAD[bad]}), tmp_path)
    assert row.verdict == "regression" and result.exit_code == 1
    assert any(r.startswith(metric) and r.endswith(f"-> {BAD[bad]} (not finite)")
               for r in row.reasons), row.reasons  # fmt: skip


@pytest.mark.parametrize("bad", BAD)
def test_a_non_finite_time_sample_is_a_regression_even_with_a_finite_median(tmp_path, bad):
    t = samples(10.0, 0.01)
    _, row = _one(_row(), _row(time_ms=[*t[:-1], BAD[bad]]) | {"time_ms_median": 10.0}, tmp_path)
    assert row.verdict == "regression"
    assert row.reasons == [f"time_ms_median 10 -> {BAD[bad]} (not finite)"]


def test_a_new_error_metric_that_is_nan_is_a_regression(tmp_path):
    base = _row()
    del base["err_dq_rel_l2"]
    _, row = _one(base, _row(err_dq_rel_l2=math.nan), tmp_path)
    assert row.verdict == "regression" and row.reasons == ["err_dq_rel_l2 none -> nan (not finite)"]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("metric", METRICS)
def test_a_non_finite_baseline_is_ungated_visibly_never_a_silent_pass(tmp_path, metric, bad):
    for cand in (_row(), _row(**{metric: BAD[bad]})):  # finite now, or still not finite
        result, row = _one(_row(**{metric: BAD[bad]}), cand, tmp_path / metric / str(id(cand)))
        assert row.verdict == "ungated" and row.ungated == [metric], row
        assert f"{metric}: the baseline's value is {BAD[bad]} (not finite); not gated" in row.notes
        assert result.exit_code == 0 and result.counts() == {"ungated": 1}


def test_a_non_finite_baseline_metric_does_not_switch_the_other_gates_off(tmp_path):
    cand = _row(peak_mem_bytes=10 * (100 << 20), err_rel_l2=1e-3)
    _, row = _one(_row(time_ms_median=math.nan), cand, tmp_path)
    assert row.verdict == "regression" and row.ungated == ["time_ms_median"]
    assert [r.split()[0] for r in row.reasons] == ["peak", "err_rel_l2"]


def test_ungated_rows_are_shown_by_the_terminal_markdown_and_json(tmp_path):
    b = make_run(tmp_path / "base", [_row(err_rel_l2=math.nan)])
    c = make_run(tmp_path / "cand", [_row()])
    js, md = tmp_path / "c.json", tmp_path / "c.md"
    res = CliRunner().invoke(app, ["compare", str(b), str(c), "--json", str(js),
                                   "--markdown", str(md)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 rows not gated" in res.output and "ungated" in res.output
    assert "| ungated |" in md.read_text() and "⚠️" in md.read_text()
    data = _strict(js.read_text())
    assert data["ungated"] == 1 and data["regression"] is False
    assert data["rows"][0]["verdict"] == "ungated" and data["rows"][0]["ungated"] == ["err_rel_l2"]


def test_the_json_summary_is_strict_json_with_non_finite_ratios_as_text(tmp_path):
    b = make_run(tmp_path / "base", [_row(peak_mem_bytes=0)])
    c = make_run(tmp_path / "cand", [_row(peak_mem_bytes=100 << 20, err_rel_l2=math.inf)])
    js = tmp_path / "c.json"
    res = CliRunner().invoke(app, ["compare", str(b), str(c), "--json", str(js)])
    assert res.exit_code == 1, res.output
    row = _strict(js.read_text())["rows"][0]
    assert row["mem_ratio"] == "inf" and row["verdict"] == "regression"


def test_a_non_finite_reference_time_leaves_normalized_time_ungated(tmp_path):
    ref_bad = ok_row(impl="naive") | {"time_ms_median": math.nan}
    b = make_run(tmp_path / "base", [ref_bad, _row()])
    c = make_run(tmp_path / "cand", [ok_row(impl="naive"), _row()])
    result = compare_paths(b, c, normalize_to="naive")
    chunked = next(r for r in result.rows if r.impl == "chunked")
    assert chunked.verdict == "ungated" and chunked.ungated == ["time vs naive"]
    assert any("naive's time is nan in the baseline" in n for n in chunked.notes)


@pytest.mark.parametrize("side", ("base", "cand"))
def test_a_non_finite_naive_yardstick_is_said_not_silently_skipped(tmp_path, side):
    rows = {"base": _row(), "cand": _row()}
    rows[side]["err_naive_same_dtype_rel_l2"] = math.inf
    _, row = _one(rows["base"], rows["cand"], tmp_path)
    assert row.verdict == "unchanged"
    # the note names the naive value and the rule that replaced it (harness/measure/tolerance.py)
    assert any("err_naive_same_dtype_rel_l2 is inf" in n and "rule" in n for n in row.notes)


def test_judge_is_the_same_rule_for_any_caller():
    s = CompareSettings()
    assert judge(Side(_row()), Side(_row(err_rel_l2=math.nan)), s).verdict == "regression"
    assert judge(Side(_row(err_rel_l2=math.nan)), Side(_row()), s).verdict == "ungated"


@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
def test_history_flags_a_kernel_whose_error_stopped_being_finite(tmp_path, bad):
    for night in range(6):
        row = _row(time_ms=samples(10.0, 0.01, seed=night))
        if night >= 4:
            row["err_rel_l2"] = bad
        make_run(tmp_path / f"n{night}", [row], utc_time=f"2026-01-0{night + 1}T03:00:00+00:00")
    flagged = flag_history(load_history(tmp_path))
    last = flagged.iloc[-1]
    assert last["verdict"] == "regression" and bool(last["regressed"])
    assert last["worse"] == f"err_rel_l2 2e-07 -> {bad} (not finite)"


# --- baseline promote: an unfinished run is refused unless forced -----------------------------


def _eight_rows() -> list[dict[str, Any]]:
    """2 cases x 2 impls x 2 phases."""
    return [ok_row(case=c, impl=i, phase=p) for c in ("c1", "c2") for i in ("naive", "chunked")
            for p in ("fwd", "bwd")]  # fmt: skip


def _unfinished(tmp_path: Path) -> Path:
    """A run whose suite asks for 8 rows and holds 4 (fwd only): killed half way."""
    run = make_run(tmp_path / "run", _eight_rows())
    lines = (run / "rows.jsonl").read_text().splitlines()
    (run / "rows.jsonl").write_text("".join(ln + "\n" for ln in lines if '"fwd"' in ln))
    return run


def test_promote_refuses_an_unfinished_run_in_one_line_and_writes_nothing(tmp_path):
    run, root = _unfinished(tmp_path), tmp_path / "baselines"
    res = CliRunner().invoke(app, ["baseline", "promote", str(run), "--root", str(root)])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "4 of the 8 rows suite 'synth' asks for are missing" in line
    assert "(first: c1 chunked bwd)" in line and "--resume" in line and "--force" in line
    assert not root.exists()


def test_forced_promotion_of_an_unfinished_run_is_recorded_and_repeated_by_compare(tmp_path):
    run, root = _unfinished(tmp_path), tmp_path / "baselines"
    res = CliRunner().invoke(app, ["baseline", "promote", str(run), "--root", str(root),
                                   "--force"])  # fmt: skip
    assert res.exit_code == 0, res.output
    target = Path(res.stdout.strip().splitlines()[-1])
    assert "4 of 8 rows missing" in res.output
    facts = describe(target)
    assert facts["forced"] is True and facts["num_missing_rows"] == 4
    assert facts["num_expected_rows"] == 8 and "c1 chunked bwd" in facts["missing_rows"]
    result = compare_paths(target, make_run(tmp_path / "full", _eight_rows()))
    assert any("promoted with --force: 4 rows missing" in w for w in result.warnings)


def test_a_finished_run_is_promoted_unforced(tmp_path):
    rows = [ok_row(impl=i, phase=p) for i in ("naive", "chunked") for p in ("fwd", "bwd")]
    target = promote(make_run(tmp_path / "run", rows), tmp_path / "baselines")
    facts = describe(target)
    assert facts["forced"] is False and facts["num_missing_rows"] == 0
    assert facts["num_expected_rows"] == 4 and facts["missing_rows"] == []
