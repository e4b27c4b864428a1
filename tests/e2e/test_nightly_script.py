"""The commands the nightly workflow runs (.ci/nightly), end to end on CPU with real runs.

Night 1 has no baseline (exit 0); it is promoted; night 2 runs with the test plugin slowed by
20 ms per call and must fail with the slowed implementation listed as a regression.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from harness.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = str(ROOT / "tests" / "plugins")


def _nightly(tmp_path: Path, out: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, SUITE="tests/plugins/demo.yaml", RESULTS=str(tmp_path / "results"),
                BASELINES=str(tmp_path / "baselines"), OUT=str(tmp_path / out),
                HARNESS=f"{sys.executable} -m harness",
                PYTHONPATH=os.pathsep.join([PLUGINS, str(ROOT)]), **env)  # fmt: skip
    return subprocess.run([str(ROOT / ".ci" / "nightly")], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=240)  # fmt: skip


def test_nightly_script_catches_a_slowed_implementation(tmp_path):
    first = _nightly(tmp_path, "out1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "No baseline" in (tmp_path / "out1" / "compare.md").read_text()
    run1 = (tmp_path / "out1" / "run_dir.txt").read_text().strip()
    bench = json.loads((tmp_path / "out1" / "pytest-benchmark.json").read_text())
    assert {b["name"].split("[")[0] for b in bench["benchmarks"]} >= {"sdpa_math", "slowed_sdpa"}

    promoted = subprocess.run([sys.executable, "-m", "harness", "baseline", "promote", run1,
                               "--root", str(tmp_path / "baselines")], cwd=ROOT,
                              capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=PLUGINS))  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr

    second = _nightly(tmp_path, "out2", HARNESS_TEST_SLOWDOWN_MS="20")
    assert second.returncode == 1, second.stderr[-3000:]
    summary = json.loads((tmp_path / "out2" / "compare.json").read_text())
    slowed = next(r for r in summary["rows"] if r["impl"] == "slowed_sdpa")
    assert slowed["verdict"] == "regression"
    assert slowed["time"]["ratio"] > 3 and slowed["time"]["p_slower"] < 0.01
    assert "slowed_sdpa" in (tmp_path / "out2" / "compare.md").read_text()
    history = (tmp_path / "out2" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2 * 4  # header + 2 nights x 4 implementations


def test_workflow_calls_the_tested_script_with_a_valid_suite_and_profile():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    steps = workflow["jobs"]["nightly"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    call = next(r for r in runs if ".ci/nightly" in r)
    env = dict(part.split("=", 1) for part in call.split() if "=" in part)
    suite = load_suite(ROOT / env["SUITE"], profile=env["PROFILE"])
    assert suite.device == "cuda"
    # compare tests every process's samples pooled: each profile reaches min_samples (>= 5)
    for each in (suite, load_suite(ROOT / env["SUITE"])):
        t = each.timing
        assert t.min_repeats * t.processes >= each.compare.min_samples >= 5
        assert each.warnings() == []
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["if"] == "always()"
