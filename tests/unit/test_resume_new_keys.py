"""A run made before a timing key existed resumes under that key's default without --force."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import tiny_suite

NEW_TIMING_KEYS = ("warmup_ms", "l2_flush", "cuda_graph", "processes")


def test_missing_timing_keys_read_as_their_defaults_but_a_changed_one_still_differs(
    write_suite, tmp_path
):
    suite = write_suite(tiny_suite())
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path), "--no-report"])
    assert res.exit_code == 0, res.output
    (run,) = [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    saved = json.loads((run / "suite.json").read_text())
    for key in NEW_TIMING_KEYS:  # as an older harness wrote it
        del saved["suite"]["timing"][key]
    (run / "suite.json").write_text(json.dumps(saved))
    res = runner.invoke(app, ["run", str(suite), "--resume", str(run), "--no-report"])
    assert res.exit_code == 0, res.output
    changed = write_suite(tiny_suite(timing={"processes": 2}), name="changed.yaml")
    res = runner.invoke(app, ["run", str(changed), "--resume", str(run), "--no-report"])
    assert res.exit_code != 0 and "suite.timing.processes" in res.output, res.output
