"""`harness run --fail-on`: a run with failed cases exits 1 (CI notices), after writing it all."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.cli.run_cmd import failed_counts
from harness.results import RunDir
from tests.conftest import tiny_suite


def test_failing_case_exits_1_and_fail_on_chooses_which_statuses_count(
    plugin_site, write_suite, tmp_path
):
    suite = write_suite(tiny_suite(implementations=["plugin_raises", "naive"]))
    out = tmp_path / "results"
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), "--no-report"])
    assert res.exit_code == 1, res.output
    (run,) = out.iterdir()
    statuses = {r["impl"]: r["status"] for r in RunDir(run).rows()}
    assert statuses == {"plugin_raises": "error", "naive": "ok"}  # the sweep went on
    assert "failed rows: 1 error (--fail-on error,timeout" in res.stderr
    assert res.stdout.strip() == str(run)  # the run directory is still printed, for scripts
    # A resume with nothing left to run judges the whole run again, under the new rule.
    for fail_on, code in (("none", 0), ("oom", 0), ("oom,error", 1), ("timeout, error", 1)):
        res = runner.invoke(app, ["run", str(suite), "--resume", str(run), "--no-report",
                                  "--fail-on", fail_on])  # fmt: skip
        assert res.exit_code == code, (fail_on, res.output)


@pytest.mark.parametrize(
    ("value", "words"),
    [("bogus", "'bogus'"), ("oom,errors", "'errors'"), ("", "''"), ("none,oom", "'none'"),
     ("ok", "'ok'")],
)  # fmt: skip
def test_bad_fail_on_is_one_line_exit_2_and_writes_nothing(write_suite, tmp_path, value, words):
    suite = write_suite(tiny_suite())
    out = tmp_path / "results"
    res = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--fail-on", value])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: --fail-on: "), res.output
    assert words in lines[0] and "allowed: " in lines[0] and "oom, timeout, error" in lines[0]
    assert not out.exists()


def test_failed_counts_keep_only_the_named_statuses():
    counts = {"ok": 5, "oom": 2, "error": 1, "skipped": 3}
    assert failed_counts(counts, ("error", "timeout")) == {"error": 1}
    assert failed_counts(counts, ("oom", "error")) == {"oom": 2, "error": 1}
    assert failed_counts(counts, ()) == {}
