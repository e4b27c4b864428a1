"""Read-only commands import no torch (they start in a fraction of a second); `--version`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import harness
from harness.cli import app
from tests.helpers.synthetic_runs import hostile_pair

REPO = Path(__file__).parents[2]

READ_ONLY_MODULES = (
    "harness.cli, harness.results, harness.regress.compare, harness.regress.history, "
    "harness.regress.baseline, harness.regress.pytest_benchmark, harness.report, harness.rows"
)
# Runs the CLI with the given arguments, then (at exit, whatever the exit code) says whether
# torch was imported along the way.
_CLI_THEN_CHECK = """
import atexit, sys
atexit.register(lambda: sys.stderr.write(f"\\ntorch-imported={'torch' in sys.modules}\\n"))
from harness.cli import main
main()
"""


def _python(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)  # fmt: skip


def test_read_only_modules_import_no_torch():
    code = f"import {READ_ONLY_MODULES}; import sys; assert 'torch' not in sys.modules"
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    return hostile_pair(tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["show", "{cand}"], 0),
        (["show", "{cand}", "--format", "json"], 0),
        (["table", "{cand}"], 0),
        (["compare", "{base}", "{cand}"], 1),  # the candidate's naive row regressed to error
        (["report", "{cand}", "-o", "{tmp}/report.html"], 0),
        (["history", "{root}"], 0),
        (["export", "pytest-benchmark", "{base}", "-o", "{tmp}/pb.json"], 0),
        (["baseline", "path", "{base}"], 0),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_read_only_commands_import_no_torch(runs, tmp_path, args, code):
    base, cand = runs
    values = {"base": base, "cand": cand, "root": base.parent, "tmp": tmp_path}
    proc = _python("-c", _CLI_THEN_CHECK, *(a.format(**values) for a in args), cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "torch-imported=False" in proc.stderr, proc.stderr[-2000:]


def test_version_prints_the_package_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == harness.__version__
    proc = _python("-m", "harness", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == harness.__version__
