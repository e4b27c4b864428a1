"""`harness compare` on synthetic runs: what is flagged, what is not, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ResultsError
from harness.regress.compare import CompareError, compare_paths
from harness.regress.render import markdown
from tests.helpers.synthetic_runs import CASE, failed_row, make_run, ok_row, samples

OTHER = "attn-b1-s2048-h8-d64-float32-full-bsauto"


def _pair(tmp_path: Path, base_rows, cand_rows, **kw) -> tuple[Path, Path]:
    base = make_run(tmp_path / "base", base_rows, **kw)
    return base, make_run(tmp_path / "cand", cand_rows, **kw)


def _only(result):
    assert len(result.rows) == 1
    return result.rows[0]


def test_15_percent_slowdown_with_tight_samples_is_flagged(tmp_path):
    base = samples(10.0, 0.01, seed=0)
    b, c = _pair(tmp_path, [ok_row(time_ms=base)], [ok_row(time_ms=[x * 1.15 for x in base[::-1]])])
    result = compare_paths(b, c)
    row = _only(result)
    assert row.verdict == "regression" and result.exit_code == 1
    assert row.time.ratio == pytest.approx(1.15)
    assert row.time.p_slower < 1e-3
    assert row.time.ci_low > 1.10 and row.time.ci_high < 1.20
    assert any(r.startswith("time +15.0%") for r in row.reasons)


def test_15_percent_shift_buried_in_noise_is_not_flagged(tmp_path):
    base = samples(10.0, 0.5, seed=0)
    b, c = _pair(tmp_path, [ok_row(time_ms=base)], [ok_row(time_ms=[x * 1.15 for x in base[::-1]])])
    result = compare_paths(b, c)
    row = _only(result)
    assert row.time.ratio == pytest.approx(1.15)  # the effect is there ...
    assert row.time.p_slower > 0.05  # ... the evidence is not
    assert row.time.ci_low < 1.0 < row.time.ci_high
    assert row.verdict == "unchanged" and result.exit_code == 0
    assert any("not significant" in n for n in row.notes)


def test_1_percent_slowdown_is_not_flagged_even_when_significant(tmp_path):
    base = samples(10.0, 0.001, seed=0)
    b, c = _pair(tmp_path, [ok_row(time_ms=base)], [ok_row(time_ms=[x * 1.01 for x in base])])
    row = _only(compare_paths(b, c))
    assert row.time.p_slower < 0.05
    assert row.verdict == "unchanged"


def test_too_few_samples_do_not_gate_time(tmp_path):
    base = samples(10.0, 0.01, n=4)
    b, c = _pair(tmp_path, [ok_row(time_ms=base)], [ok_row(time_ms=[x * 2 for x in base])])
    row = _only(compare_paths(b, c))
    assert row.verdict == "ungated" and row.ungated == ["time"]  # visible, never "unchanged"
    assert any("min_samples" in n and "too few samples" in n for n in row.notes)
    # with 4 + 4 samples the smallest one-sided U-test p-value is 1/70, so it can gate at 0.05
    assert _only(compare_paths(b, c, min_samples=4)).verdict == "regression"


def test_ok_to_oom_is_a_regression_and_sorted_first(tmp_path):
    rows_b = [ok_row(), ok_row(case=OTHER)]
    rows_c = [ok_row(time_ms=samples(10.0 * 1.5, 0.01)), failed_row(case=OTHER, status="oom")]
    result = compare_paths(*_pair(tmp_path, rows_b, rows_c))
    assert [r.verdict for r in result.rows] == ["regression", "regression"]
    assert result.rows[0].case == OTHER  # a status change outranks a slowdown
    assert result.rows[0].reasons[0].startswith("status ok -> oom")


@pytest.mark.parametrize("status", ["error", "timeout"])
def test_ok_to_failure_is_a_regression(tmp_path, status):
    b, c = _pair(tmp_path, [ok_row()], [failed_row(status=status, reason="boom")])
    assert _only(compare_paths(b, c)).verdict == "regression"


def test_failure_to_ok_is_an_improvement(tmp_path):
    b, c = _pair(tmp_path, [failed_row(status="timeout")], [ok_row()])
    result = compare_paths(b, c)
    assert _only(result).verdict == "improvement" and result.exit_code == 0


def test_memory_increase_of_5_percent_is_flagged_and_1_percent_is_not(tmp_path):
    mem = 200 << 20
    b, c = _pair(tmp_path, [ok_row(peak_mem_bytes=mem)], [ok_row(peak_mem_bytes=int(mem * 1.05))])
    row = _only(compare_paths(b, c))
    assert row.verdict == "regression" and row.mem_ratio == pytest.approx(1.05)
    assert any("peak memory" in r for r in row.reasons)
    b, c = _pair(tmp_path / "x", [ok_row(peak_mem_bytes=mem)],
                 [ok_row(peak_mem_bytes=int(mem * 1.01))])  # fmt: skip
    assert _only(compare_paths(b, c)).verdict == "unchanged"


def test_memory_floor_ignores_page_sized_jitter_of_tiny_cases(tmp_path):
    b, c = _pair(tmp_path, [ok_row(peak_mem_bytes=100_000)], [ok_row(peak_mem_bytes=140_000)])
    assert _only(compare_paths(b, c)).verdict == "unchanged"
    assert _only(compare_paths(b, c, mem_floor_bytes=0)).verdict == "regression"


def test_error_above_twice_the_baseline_is_flagged(tmp_path):
    b, c = _pair(tmp_path, [ok_row(err=1e-7, naive_err=1e-6)], [ok_row(err=3e-7, naive_err=1e-6)])
    row = _only(compare_paths(b, c))
    assert row.verdict == "regression" and row.err_ratio == pytest.approx(3.0)


def test_error_newly_above_the_naive_rule_is_flagged(tmp_path):
    b, c = _pair(tmp_path, [ok_row(err=4e-7, naive_err=3e-7)], [ok_row(err=7e-7, naive_err=3e-7)])
    row = _only(compare_paths(b, c))
    assert row.verdict == "regression"
    assert "naive-low-precision rule" in row.reasons[0]


def test_vanished_case_is_listed_and_new_case_too(tmp_path):
    b, c = _pair(tmp_path, [ok_row(), ok_row(case=OTHER)], [ok_row(), ok_row(impl="naive")])
    result = compare_paths(b, c)
    verdicts = {(r.case, r.impl): r.verdict for r in result.rows}
    assert verdicts[(OTHER, "chunked")] == "vanished"
    assert verdicts[(CASE, "naive")] == "new"
    assert result.exit_code == 0
    assert "vanished" in markdown(result) and OTHER in markdown(result)


def test_row_missing_from_an_unfinished_run_is_a_regression(tmp_path):
    b = make_run(tmp_path / "base", [ok_row(), ok_row(case=OTHER)])
    c = make_run(tmp_path / "cand", [ok_row(), ok_row(case=OTHER)])
    lines = (c / "rows.jsonl").read_text().splitlines()
    (c / "rows.jsonl").write_text(lines[0] + "\n")  # the run was killed after one row
    result = compare_paths(b, c)
    assert {r.verdict for r in result.rows} == {"missing", "unchanged"}
    assert result.exit_code == 1


def test_normalization_cancels_a_uniformly_slower_machine(tmp_path):
    fast = samples(10.0, 0.01, seed=1)
    rows_b = [ok_row(impl="sdpa_flash", time_ms=fast), ok_row(time_ms=samples(20.0, 0.01))]
    rows_c = [ok_row(impl="sdpa_flash", time_ms=[x * 1.3 for x in fast]),
              ok_row(time_ms=[x * 1.3 for x in samples(20.0, 0.01)])]  # fmt: skip
    b = make_run(tmp_path / "base", rows_b, device_name="GPU A")
    c = make_run(tmp_path / "cand", rows_c, device_name="GPU B")
    raw = compare_paths(b, c)
    assert raw.exit_code == 1
    assert any("different devices" in w for w in raw.warnings)
    norm = compare_paths(b, c, normalize_to="sdpa_flash")
    chunked = next(r for r in norm.rows if r.impl == "chunked")
    assert chunked.norm_time.ratio == pytest.approx(1.0, rel=0.03)
    assert chunked.time.ratio == pytest.approx(1.3, rel=0.03)
    assert norm.exit_code == 0  # and the reference itself is not gated across devices


def test_normalization_still_catches_a_slower_implementation(tmp_path):
    fast = samples(10.0, 0.01, seed=1)
    rows_b = [ok_row(impl="sdpa_flash", time_ms=fast), ok_row(time_ms=samples(20.0, 0.01))]
    rows_c = [ok_row(impl="sdpa_flash", time_ms=fast), ok_row(time_ms=samples(24.0, 0.01))]
    result = compare_paths(*_pair(tmp_path, rows_b, rows_c), normalize_to="sdpa_flash")
    chunked = next(r for r in result.rows if r.impl == "chunked")
    assert chunked.verdict == "regression" and chunked.norm_time.ratio == pytest.approx(1.2)


def test_thresholds_come_from_the_candidate_suite_unless_flags_are_given(tmp_path):
    base = samples(10.0, 0.01)
    b, c = _pair(tmp_path, [ok_row(time_ms=base)], [ok_row(time_ms=[x * 1.15 for x in base])],
                 compare={"time_tol": 0.25})  # fmt: skip
    assert _only(compare_paths(b, c)).verdict == "unchanged"
    assert _only(compare_paths(b, c, time_tol=0.1)).verdict == "regression"


def test_missing_directory_is_a_clear_error(tmp_path):
    b = make_run(tmp_path / "base", [ok_row()])
    with pytest.raises(ResultsError, match="run directory not found"):
        compare_paths(b, tmp_path / "nope")


def test_different_suites_are_a_clear_error(tmp_path):
    b = make_run(tmp_path / "base", [ok_row()], suite_name="smoke")
    c = make_run(tmp_path / "cand", [ok_row()], suite_name="nightly")
    with pytest.raises(CompareError, match="different suites.*'smoke'.*'nightly'"):
        compare_paths(b, c)


def test_unknown_normalization_reference_lists_the_choices(tmp_path):
    b, c = _pair(tmp_path, [ok_row()], [ok_row()])
    with pytest.raises(CompareError, match="allowed: chunked"):
        compare_paths(b, c, normalize_to="sdpa_flash")


def test_cli_exit_codes_and_summaries(tmp_path):
    runner = CliRunner()
    base = samples(10.0, 0.01)
    b, c = _pair(tmp_path, [ok_row(time_ms=base)], [ok_row(time_ms=[x * 1.2 for x in base])])
    js, md = tmp_path / "cmp.json", tmp_path / "cmp.md"
    res = runner.invoke(app, ["compare", str(b), str(c), "--json", str(js), "--markdown", str(md)])
    assert res.exit_code == 1, res.output
    data = json.loads(js.read_text())
    assert data["regression"] is True and data["rows"][0]["verdict"] == "regression"
    assert "REGRESSION" in md.read_text() and "| regression |" in md.read_text()
    assert runner.invoke(app, ["compare", str(b), str(b)]).exit_code == 0
    res = runner.invoke(app, ["compare", str(b), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "run directory not found" in res.output
    other = make_run(tmp_path / "other", [ok_row()], suite_name="other")
    res = runner.invoke(app, ["compare", str(b), str(other)])
    assert res.exit_code == 2 and "different suites" in res.output
