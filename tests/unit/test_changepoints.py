"""Change points of nightly histories: ruptures proposes, compare's judge decides (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.regress.changepoints import change_points
from harness.regress.history import NAN_FIELDS, SAMPLES, flag_series
from harness.suite import CompareSettings

WINDOW = {"window": 7, "persist": 2, "min_window": 3}


def _history(levels: list[float], *, noise: float, seed: int) -> list[dict]:
    """One series, a night per entry of `levels` (ms): night-to-night noise `noise` (relative,
    Gaussian) on the level, 10 raw samples within 1% around each night's median."""
    rng = np.random.default_rng(seed)
    nights = []
    for level in levels:
        median = level * (1 + noise * rng.standard_normal())
        times = list(median * (1 + 0.01 * rng.uniform(-1, 1, size=10)))
        nights.append(
            {
                "case": "c",
                "impl": "chunked",
                "phase": "fwd",
                "status": "ok",
                "reason": "",
                "time_ms_median": float(np.median(times)),
                "peak_mem_bytes": 100 << 20,
                "err_rel_l2": 3e-7,
                "err_naive_same_dtype_rel_l2": 3e-7,
                SAMPLES: times,
                NAN_FIELDS: [],
            }
        )
    return nights


def _changes(nights: list[dict]) -> list[tuple[int, str, float]]:
    flags = flag_series(nights, CompareSettings(), **WINDOW)
    return [(i, f["change"], f["change_ratio"]) for i, f in enumerate(flags) if f["change"]]


@pytest.mark.parametrize("seed", range(4))
def test_a_20_percent_step_after_night_10_is_one_change_point_at_10(seed):
    nights = _history([10.0] * 10 + [12.0] * 20, noise=0.025, seed=seed)
    changes = _changes(nights)
    assert len(changes) == 1, changes
    night, verdict, ratio = changes[0]
    assert abs(night - 10) <= 1 and verdict == "regression"
    assert ratio == pytest.approx(1.2, rel=0.05)
    flags = flag_series(nights, CompareSettings(), **WINDOW)
    assert flags[-1]["regressed"] and not any(f["regressed"] for f in flags[: night + 1])


@pytest.mark.parametrize("seed", range(6))
def test_pure_noise_over_30_nights_has_no_change_point(seed):
    nights = _history([10.0] * 30, noise=0.03, seed=seed)
    assert _changes(nights) == []
    assert not any(f["regressed"] for f in flag_series(nights, CompareSettings(), **WINDOW))


@pytest.mark.parametrize("seed", range(4))
def test_a_3_percent_step_in_3_percent_noise_is_below_the_threshold(seed):
    # compare's time_tol is 10%: a 3% move may be proposed by the detector, never kept
    nights = _history([10.0] * 15 + [10.3] * 15, noise=0.03, seed=seed)
    assert _changes(nights) == []


def test_a_speedup_is_an_improvement_and_a_return_is_flagged_again():
    nights = _history([10.0] * 8 + [7.0] * 8 + [10.0] * 8, noise=0.02, seed=1)
    changes = _changes(nights)
    assert [(n, v) for n, v, _ in changes] == [(8, "improvement"), (16, "regression")]
    assert changes[1][2] == pytest.approx(10 / 7, rel=0.05)


def test_the_detector_alone_finds_the_step_and_rejects_bad_input():
    rng = np.random.default_rng(0)
    y = 10 * np.r_[np.ones(10), 1.2 * np.ones(20)] * (1 + 0.025 * rng.standard_normal(30))
    assert change_points(y) == [10]
    assert change_points(np.full(30, 5.0)) == []  # deterministic: no move, no change
    assert change_points([1.0, 2.0, 3.0]) == []  # shorter than two segments
    with pytest.raises(ValueError, match="positive and finite"):
        change_points([1.0, 0.0, 1.0, 1.0])


def test_history_cli_lists_the_change_point_and_the_csv_has_its_columns(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app
    from tests.helpers.synthetic_runs import make_run, ok_row

    for i, night in enumerate(_history([10.0] * 6 + [12.5] * 4, noise=0.02, seed=0)):
        make_run(tmp_path / "runs" / f"n{i:02d}", [ok_row(time_ms=night[SAMPLES])],
                 utc_time=f"2026-01-{i + 1:02d}T03:00:00+00:00")  # fmt: skip
    csv = tmp_path / "h.csv"
    res = CliRunner().invoke(app, ["history", str(tmp_path / "runs"), "--csv", str(csv)])
    assert res.exit_code == 1, res.output
    assert "1 change point (" in res.output and "n06" in res.output
    header = csv.read_text().splitlines()[0].split(",")
    assert header[-6:] == ["ref_time_ms", "verdict", "worse", "regressed", "change", "change_ratio"]


@pytest.mark.parametrize("bad", ["error", "nan"])
def test_a_failed_or_nan_night_inside_a_slowdown_does_not_hide_it(bad):
    """Nights 0-3 at 10 ms, 4 at 30 ms, 5 failed (or a NaN median), 6 at 30 ms again: the
    slowdown holds for two timed nights, so night 6 is regressed, judged against nights 0-3."""
    nights = _history([10.0] * 4 + [30.0, 30.0, 30.0], noise=0.01, seed=0)
    if bad == "error":
        nights[5] |= {"status": "error", "reason": "boom", "time_ms_median": None, SAMPLES: []}
    else:
        nights[5] |= {"time_ms_median": float("nan"), NAN_FIELDS: ["time_ms_median"]}
    flags = flag_series(nights, CompareSettings(), **WINDOW)
    assert flags[6]["regressed"] and flags[6]["ref_time_ms"] == pytest.approx(10.0, rel=0.05)
    assert flags[5]["verdict"] == "regression" and not flags[5]["regressed"]  # one bad night
    assert [i for i, f in enumerate(flags) if f["change"]] == [4]
