"""`harness history`: per-series time series, and flags only for regressions that persist."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ResultsError
from harness.regress.history import flag_history, latest_regressions, load_history, normalize
from harness.report.history_figure import history_figure
from tests.helpers.synthetic_runs import failed_row, make_run, ok_row, samples


def _nights(root, times_ms, *, impl="chunked", ref_ms=None, statuses=None):
    for i, t in enumerate(times_ms):
        status = (statuses or {}).get(i, "ok")
        rows = [ok_row(impl=impl, time_ms=samples(t, 0.01, seed=i))] if status == "ok" else [
            failed_row(impl=impl, status=status)]  # fmt: skip
        if ref_ms is not None:
            rows.append(ok_row(impl="sdpa_flash", time_ms=samples(ref_ms[i], 0.01, seed=i)))
        make_run(root / f"night{i:02d}", rows, utc_time=f"2026-01-{i + 1:02d}T03:00:00+00:00",
                 commit=f"c{i}")  # fmt: skip


def _flags(root, **kw):
    flagged = flag_history(load_history(root), **kw)
    return flagged[flagged["impl"] == "chunked"]["regressed"].tolist()


def test_one_bad_night_is_not_flagged(tmp_path):
    _nights(tmp_path, [10, 10.2, 9.9, 10.1, 10, 13, 10])
    assert not any(_flags(tmp_path))


def test_two_consecutive_bad_nights_are_flagged(tmp_path):
    _nights(tmp_path, [10, 10.2, 9.9, 10.1, 10, 13, 13.2])
    flags = _flags(tmp_path)
    assert flags == [False] * 6 + [True]
    latest = latest_regressions(flag_history(load_history(tmp_path)))
    assert latest["impl"].tolist() == ["chunked"] and latest["worse"].iloc[0].startswith("time")


def test_needs_a_window_of_ok_nights_before_it_judges(tmp_path):
    _nights(tmp_path, [10, 13, 13])
    assert not any(_flags(tmp_path))


def test_persistent_oom_after_ok_nights_is_flagged(tmp_path):
    _nights(tmp_path, [10, 10, 10, 10, 10, 10], statuses={4: "oom", 5: "oom"})
    assert _flags(tmp_path)[-1] is True


def test_normalized_history_ignores_a_slower_machine(tmp_path):
    times = [10, 10, 10, 10, 13, 13]
    _nights(tmp_path, times, ref_ms=[5, 5, 5, 5, 6.5, 6.5])
    assert _flags(tmp_path)[-1] is True
    frame = normalize(load_history(tmp_path), "sdpa_flash")
    flagged = flag_history(frame)
    assert not flagged["regressed"].any()
    assert flagged[flagged["impl"] == "chunked"]["time_ms_median"].iloc[-1] == pytest.approx(2.0)


def test_bad_input(tmp_path):
    with pytest.raises(ResultsError, match="not found"):
        load_history(tmp_path / "nope")
    with pytest.raises(ResultsError, match="no runs"):
        load_history(tmp_path)
    _nights(tmp_path, [10, 10])
    with pytest.raises(ResultsError, match="allowed: chunked"):
        normalize(load_history(tmp_path), "sdpa_flash")


def test_cli_exit_code_csv_and_figure(tmp_path):
    _nights(tmp_path / "runs", [10, 10.2, 9.9, 10.1, 10, 13, 13.2])
    csv, html = tmp_path / "h.csv", tmp_path / "h.html"
    res = CliRunner().invoke(app, ["history", str(tmp_path / "runs"), "--csv", str(csv),
                                   "--html", str(html)])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "chunked" in res.output and csv.read_text().count("\n") == 8
    assert "plotly" in html.read_text()
    assert CliRunner().invoke(app, ["history", str(tmp_path / "none")]).exit_code == 2


def test_history_figure_has_a_line_per_series_and_marks_flagged_nights(tmp_path):
    _nights(tmp_path, [10, 10.2, 9.9, 10.1, 10, 13, 13.2], ref_ms=[5] * 7)
    fig = history_figure(flag_history(load_history(tmp_path)))
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert sorted(t.name.split()[0] for t in lines) == ["chunked", "sdpa_flash"]
    crosses = [t for t in fig.data if t.mode == "markers"]
    assert len(crosses) == 1 and len(crosses[0].x) == 1 and crosses[0].y[0] > 12
