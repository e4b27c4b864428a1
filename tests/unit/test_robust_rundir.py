"""Resume and run directories: a resume completes only the run it was made from (or says why
not), one writer at a time, fresh directories claimed atomically, no link followed out of a run
directory and no command output written over a run's own files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness import results
from harness.cli import app
from harness.errors import ResultsError
from harness.results import DATA_FILES, RunDir
from harness.run.sweep import default_run_dir
from tests.conftest import tiny_suite
from tests.helpers.synthetic_runs import make_run, ok_row, with_axes

REPO = Path(__file__).parents[2]
SUITE = tiny_suite(sweep={"seq_len": [32, 48]}, profiles={"same": {"seed": 0}})
CASES = ("attn-b1-s32-h2-d16-float32-full-bsauto", "attn-b1-s48-h2-d16-float32-full-bsauto")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(results, "_printed", set())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One real `harness run` of a two-task suite, done once; tests work on copies."""
    root = tmp_path_factory.mktemp("real")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    args = ["run", str(suite), "--out", str(root / "out"), "--no-report", "--fail-on", "none"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (run,) = (root / "out").iterdir()
    assert len(RunDir.open(run).rows()) == 2
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _suite(tmp_path: Path, **over) -> Path:
    data = json.loads(json.dumps(SUITE))
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _resume(suite: Path, run: Path, *extra: str):
    return CliRunner().invoke(app, ["run", str(suite), "--resume", str(run), "--no-report",
                                    *extra])  # fmt: skip


def _one_error_line(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line]
    assert res.exit_code == 2 and len(lines) == 1, (res.exit_code, res.output)
    assert lines[0].startswith("error: ") and "Traceback" not in res.output
    return lines[0]


def _edit_meta(run: Path, **provenance) -> None:
    meta = json.loads((run / "run.json").read_text())
    meta["provenance"].update(provenance)
    (run / "run.json").write_text(json.dumps(meta))


SUITE_EDITS = {
    "cases": ({"sweep": {"seq_len": [32, 64]}}, (),
              f"cases (run only: {CASES[1]}; now only: attn-b1-s64-h2-d16-float32-full-bsauto)"),
    "phases": ({"sweep": {"phase": ["fwd", "bwd"]}}, (),
               "suite.sweep.phase (run: ['fwd'], now: ['fwd', 'bwd'])"),
    "implementations": ({"implementations": ["naive", "chunked"]}, (),
                        "suite.implementations (run: ['naive'], now: ['naive', 'chunked'])"),
    "timing": ({"timing": {"repeats": 3}}, (), "suite.timing.repeats (run: 2, now: 3)"),
    "accuracy": ({"accuracy": {"ref_max_rows": 8}}, (),
                 "suite.accuracy.ref_max_rows (run: 1024, now: 8)"),
    "limits": ({"limits": {"case_timeout_s": 9}}, (),
               "suite.limits.case_timeout_s (run: 60.0, now: 9.0)"),
    "suite name": ({"name": "other"}, (), "suite.name (run: 'tiny', now: 'other')"),
    "profile": ({}, ("--profile", "same"), "profile (run: None, now: 'same')"),
}  # fmt: skip


@pytest.mark.parametrize("what", SUITE_EDITS)
def test_resume_refuses_another_suite_or_profile_naming_what_differs(run_copy, tmp_path, what):
    edit, args, named = SUITE_EDITS[what]
    before = _files(run_copy)
    line = _one_error_line(_resume(_suite(tmp_path, **edit), run_copy, *args))
    assert line.startswith(f"error: --resume: {run_copy} differs from this run in "), line
    assert named in line and "--force" in line, line
    assert _files(run_copy) == before  # no row, no resume record, suite.json as it was


@pytest.mark.parametrize(
    ("field", "value"),
    [("device", "cuda"), ("device_name", "NVIDIA H200"), ("torch_version", "2.5.0+cu124"),
     ("cuda_version", "12.4"), ("git_commit", "0" * 40)],
)  # fmt: skip
def test_resume_refuses_a_run_of_another_device_torch_cuda_or_commit(run_copy, tmp_path, field,
                                                                     value):  # fmt: skip
    _edit_meta(run_copy, **{field: value})
    before = _files(run_copy)
    line = _one_error_line(_resume(_suite(tmp_path), run_copy))
    assert f"provenance.{field} (run: {value!r}, now: " in line, line
    assert _files(run_copy) == before


def test_force_resumes_and_records_what_differed(run_copy, tmp_path):
    _edit_meta(run_copy, git_commit="0" * 40, torch_version="1.0")
    rows_before = (run_copy / "rows.jsonl").read_bytes()
    res = _resume(_suite(tmp_path, timing={"repeats": 3}), run_copy, "--force")
    assert res.exit_code == 0, res.output
    assert (run_copy / "rows.jsonl").read_bytes() == rows_before  # nothing was missing
    meta = json.loads((run_copy / "run.json").read_text())
    (event,) = meta["resumes"]
    assert event["forced"] is True and event["pid"] == os.getpid()
    assert {d["what"]: d["run"] for d in event["differs"]} == {
        "provenance.git_commit": "0" * 40, "provenance.torch_version": "1.0",
        "suite.timing.repeats": 2}  # fmt: skip
    # run.json and suite.json now say what the run continued with: neither is stale
    now = {d["what"]: d["now"] for d in event["differs"]}
    assert meta["provenance"]["git_commit"] == now["provenance.git_commit"] != "0" * 40
    assert json.loads((run_copy / "suite.json").read_text())["suite"]["timing"]["repeats"] == 3
    # the same resume again differs in nothing: not forced, recorded all the same
    res = _resume(_suite(tmp_path, timing={"repeats": 3}), run_copy)
    assert res.exit_code == 0, res.output
    last = json.loads((run_copy / "run.json").read_text())["resumes"][-1]
    assert last["forced"] is False and last["differs"] == []


def test_dry_run_resume_lists_only_the_missing_tasks_and_writes_nothing(run_copy, tmp_path):
    rows_file = run_copy / "rows.jsonl"
    rows_file.write_text(rows_file.read_text().splitlines()[0] + "\n")  # killed after one row
    before = _files(run_copy)
    res = _resume(_suite(tmp_path), run_copy, "--dry-run")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        f"{CASES[1]}  naive  fwd",
        f"1 tasks missing from {run_copy} (1 rows there), 1 cases, device cpu",
    ]
    assert _files(run_copy) == before
    # a dry run is refused as the run would be
    line = _one_error_line(_resume(_suite(tmp_path, seed=1), run_copy, "--dry-run"))
    assert "suite.seed (run: 0, now: 1)" in line


def test_a_second_writer_is_refused_with_the_pid_of_the_first(run_copy, tmp_path):
    holder = RunDir.open(run_copy)
    holder.lock()
    before = (run_copy / "rows.jsonl").read_bytes()
    line = _one_error_line(_resume(_suite(tmp_path), run_copy))
    assert line == f"error: {run_copy} is in use by pid {os.getpid()}"
    assert (run_copy / "rows.jsonl").read_bytes() == before
    holder.unlock()
    assert _resume(_suite(tmp_path), run_copy).exit_code == 0
    # a new run holds its directory from the start
    fresh = RunDir.create(tmp_path / "fresh", {"run_id": "fresh"}, {})
    with pytest.raises(ResultsError, match=f"fresh is in use by pid {os.getpid()}$"):
        RunDir.open(fresh.path).lock()


def test_the_lock_goes_with_a_killed_holder(tmp_path):
    run = make_run(tmp_path / "run", [ok_row()])
    code = ("import sys, time; from harness.results import RunDir; r = RunDir.open(sys.argv[1]); "
            "r.lock(); print('locked', flush=True); time.sleep(120)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsError, match=f"in use by pid {proc.pid}$"):
            RunDir.open(run).lock()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    RunDir.open(run).lock()  # SIGKILL freed it: a killed run can be resumed


def test_runs_started_together_into_one_out_get_their_own_directories(tmp_path):
    root, n = tmp_path / "results", 8
    barrier, made, errors = threading.Barrier(n), [], []

    def start() -> None:
        barrier.wait()
        try:
            run_id, path = default_run_dir(root, "tiny")
            made.append(RunDir.create(path, {"run_id": run_id}, {}).path)
        except Exception as exc:  # noqa: BLE001 - any failure is the defect
            errors.append(repr(exc))

    threads = [threading.Thread(target=start) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(made)) == n
    for path in made:
        assert json.loads((path / "run.json").read_text())["run_id"] == path.name
    with pytest.raises(ResultsError, match="holds a run already"):
        RunDir.create(made[0], {"run_id": "again"}, {})


@pytest.mark.parametrize("name", ["rows.jsonl", "samples.jsonl", "run.json", "suite.json", "lock"])
def test_a_symlinked_run_file_is_refused_and_its_target_untouched(run_copy, tmp_path, name):
    outside = tmp_path / "outside"
    data = (run_copy / name).read_bytes() + b"precious, no newline"
    outside.write_bytes(data)
    (run_copy / name).unlink()
    (run_copy / name).symlink_to(outside)
    line = _one_error_line(_resume(_suite(tmp_path), run_copy))
    assert f"{run_copy / name} is a symbolic link (to {outside})" in line, line
    assert outside.read_bytes() == data
    if name == "rows.jsonl":  # nor does the library write through it
        with pytest.raises(ResultsError, match="symbolic link"):
            RunDir(run_copy).append(ok_row())
        assert outside.read_bytes() == data


def _output_cases(base: Path, run: Path, root: Path) -> list[tuple[str, list[str]]]:
    return [
        ("-o", ["report", str(run), "-o", "{target}"]),
        ("-o", ["table", str(run), "-o", "{target}"]),
        ("--json", ["compare", str(base), str(run), "--json", "{target}"]),
        ("--markdown", ["compare", str(base), str(run), "--markdown", "{target}"]),
        ("--csv", ["history", str(root), "--csv", "{target}"]),
        ("--html", ["history", str(root), "--html", "{target}"]),
        ("-o", ["export", "pytest-benchmark", str(run), "-o", "{target}"]),
        ("--json", ["model", "ring", "--max-p", "8", "--json", "{target}"]),
    ]


@pytest.mark.parametrize("index", range(8))
def test_no_output_option_writes_over_a_runs_files(tmp_path, index):
    root = tmp_path / "results"
    base = make_run(root / "base", [ok_row()], utc_time="2026-01-01T00:00:00+00:00")
    run = make_run(root / "run", [ok_row()], utc_time="2026-01-02T00:00:00+00:00")
    flag, args = _output_cases(base, run, root)[index]
    link = tmp_path / "innocent.out"  # a link from outside into the run counts as the run
    for target in [run / name for name in DATA_FILES] + [link]:
        link.unlink(missing_ok=True)
        link.symlink_to(run / "rows.jsonl")
        before = _files(run)
        res = CliRunner().invoke(app, [a.replace("{target}", str(target)) for a in args])
        line = _one_error_line(res)
        assert line.startswith(f"error: {flag}: {target} is the "), line
        assert _files(run) == before, target


def test_an_output_beside_the_run_files_is_fine(tmp_path):
    run = make_run(tmp_path / "run", [with_axes(ok_row())])
    res = CliRunner().invoke(app, ["table", str(run), "-o", str(run / "table.md")])
    assert res.exit_code == 0, res.output
    assert (run / "table.md").exists()
