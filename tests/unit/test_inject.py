"""The injected slowdown that benchmarks/false_alarms.py uses to test the regression judge."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import HarnessError
from harness.results import RunDir
from harness.run.inject import SLOWDOWN_ENV, injected_slowdowns, slowed
from tests.conftest import tiny_suite


def test_parses_names_and_fractions():
    assert injected_slowdowns("") == {}
    assert injected_slowdowns("sdpa_math=0.1, bpt=0.03") == {"sdpa_math": 0.1, "bpt": 0.03}


@pytest.mark.parametrize("text", ["sdpa_math", "=0.1", "bpt=fast", "bpt=-0.1", "bpt=11"])
def test_bad_entries_name_the_variable_and_the_form(text):
    with pytest.raises(HarnessError, match=rf"{SLOWDOWN_ENV}: .* is not NAME=FRACTION"):
        injected_slowdowns(text)


def test_slowed_call_takes_at_least_one_plus_fraction_of_its_own_time(monkeypatch):
    monkeypatch.setenv(SLOWDOWN_ENV, "x=0.5")
    inner: list[float] = []

    def work() -> int:
        t0 = time.perf_counter()
        total = sum(range(200_000))
        inner.append(time.perf_counter() - t0)
        return total

    fn, fraction = slowed(work, "x", "cpu")
    assert fraction == 0.5
    t0 = time.perf_counter()
    assert fn() == sum(range(200_000))  # the result passes through
    assert time.perf_counter() - t0 >= 1.5 * inner[0]
    assert slowed(work, "y", "cpu") == (work, 0.0)  # other implementations untouched
    with pytest.raises(HarnessError, match="CPU only"):
        slowed(work, "x", "cuda")


@pytest.mark.slow  # a whole run (two workers); the hook itself is tested above
def test_a_run_records_the_slowdown_on_the_named_implementation_only(write_suite, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    monkeypatch.setenv(SLOWDOWN_ENV, "naive=0.2")
    suite = write_suite(tiny_suite(implementations=["naive", "sdpa_math"]))
    res = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path), "--no-report"])
    assert res.exit_code == 0, res.output
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and (p / "run.json").exists()]
    rows = {r["impl"]: r for r in RunDir(run).rows()}
    assert rows["naive"]["injected_slowdown"] == 0.2
    assert "injected_slowdown" not in rows["sdpa_math"]
