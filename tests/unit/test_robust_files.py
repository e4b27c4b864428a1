"""Broken result files: every bad line is skipped with a warning naming file and line, never
silently and never with a traceback; a broken run.json / suite.json / rows.jsonl is one line naming
the file (exit 2); one broken run under a history root is skipped, the others are read."""

from __future__ import annotations

import json
import os
import threading

import pytest
from typer.testing import CliRunner

from harness import results
from harness.cli import app
from harness.errors import ResultsError
from harness.regress.history import load_history
from harness.results import RunDir
from harness.rows import SCHEMA_VERSION, validate_row
from tests.helpers.synthetic_runs import failed_row, make_run, ok_row

IMPLS = ("chunked", "naive", "bpt")

# A bad line in the middle of rows.jsonl, and what the warning says about it.
BAD_LINES = {
    "garbage": (b"this is not json", "not JSON"),
    "nul": (b"\x00\x00\x00\x00", "4 NUL bytes"),
    "invalid utf-8": (b'{"case": "\xff\xfe"}', "not UTF-8 text (byte 11 is 0xff)"),
    "array": (b"[1, 2, 3]", "a JSON array, not an object"),
    "null": (b"null", "a JSON null, not an object"),
    "number": (b"42", "a JSON number, not an object"),
    "foreign object": (b'{"foo": 1}', "no case; no impl; no phase; no status"),
    "unknown schema version": (
        b'{"schema_version": 99, "case": "c", "impl": "naive", "phase": "fwd", "status": "ok"}',
        "schema_version 99; this harness reads 1, 2",
    ),
    "unknown status": (
        b'{"schema_version": 2, "case": "c", "impl": "naive", "phase": "fwd", "status": "great"}',
        "status 'great' is not one of ok, skipped",
    ),
    "identity of the wrong type": (
        b'{"schema_version": 2, "case": 5, "impl": null, "phase": "fwd", "status": "ok"}',
        "case 5 is not a name; impl None is not a name",
    ),
    "truncated object, newline kept": (b'{"schema_version": 2, "case": "x', "not JSON"),
}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each warning is printed once per process; every test starts with none printed."""
    monkeypatch.setattr(results, "_printed", set())


def _run(tmp_path, name="run"):
    rows = [ok_row(impl=impl) for impl in IMPLS[:2]] + [failed_row(impl=IMPLS[2])]
    return make_run(tmp_path / name, rows)


def _insert_line(run, line: bytes, at: int = 1, name: str = "rows.jsonl") -> None:
    path = run / name
    lines = path.read_bytes().split(b"\n")
    lines.insert(at, line)
    path.write_bytes(b"\n".join(lines))


def _show(run):
    return CliRunner().invoke(app, ["show", str(run), "--format", "json"])


@pytest.mark.parametrize("kind", BAD_LINES)
def test_a_bad_line_in_the_middle_is_skipped_with_a_warning_naming_file_and_line(tmp_path, kind):
    line, why = BAD_LINES[kind]
    run = _run(tmp_path)
    _insert_line(run, line)
    res = _show(run)
    assert res.exit_code == 0, res.output
    assert sorted(r["impl"] for r in json.loads(res.stdout)) == sorted(IMPLS)  # none else lost
    warnings = [w for w in res.stderr.splitlines() if w]
    assert len(warnings) == 1, res.stderr
    assert warnings[0].startswith(f"warning: {run / 'rows.jsonl'}:2: "), warnings[0]
    assert why in warnings[0]
    # the library: same rows, the warning kept on the RunDir
    rundir = RunDir.open(run)
    assert [r["impl"] for r in rundir.rows()] == list(IMPLS)
    assert rundir.warnings == [warnings[0].removeprefix("warning: ")]


def test_every_bad_line_is_named_and_the_good_ones_all_read(tmp_path):
    run = _run(tmp_path)
    good = (run / "rows.jsonl").read_bytes().splitlines()
    bad = [line for line, _ in BAD_LINES.values()]
    (run / "rows.jsonl").write_bytes(b"\n".join([good[0], *bad, *good[1:]]) + b"\n")
    rundir = RunDir.open(run)
    assert sorted(r["impl"] for r in rundir.rows()) == sorted(IMPLS)
    assert len(rundir.warnings) == len(BAD_LINES)
    for warning, (_, why) in zip(rundir.warnings, BAD_LINES.values(), strict=True):
        assert why in warning


def test_only_a_torn_last_line_is_skipped_quietly_and_repair_cuts_it(tmp_path):
    run = _run(tmp_path)
    rows_file = run / "rows.jsonl"
    whole = rows_file.read_bytes()
    rows_file.write_bytes(whole + b'{"schema_version": 2, "case": "attn-b1-s1024-h8')  # killed
    rundir = RunDir.open(run)
    assert len(rundir.rows()) == 3 and rundir.warnings == []
    rundir.repair()
    assert rows_file.read_bytes() == whole
    # torn NUL-filled tail (a crash that extended the file but lost its data): quiet too
    rows_file.write_bytes(whole + b"\x00" * 64)
    assert len(RunDir.open(run).rows()) == 3 and RunDir.open(run).warnings == []


def test_a_whole_last_row_without_its_newline_is_kept_and_repair_ends_the_line(tmp_path):
    run = _run(tmp_path)
    rows_file = run / "rows.jsonl"
    rows_file.write_bytes(rows_file.read_bytes().rstrip(b"\n"))  # e.g. saved by an editor
    rundir = RunDir.open(run)
    assert len(rundir.rows()) == 3 and rundir.warnings == []
    rundir.repair()
    assert rows_file.read_bytes().endswith(b"}\n")
    rundir.append(failed_row(impl="sdpa_math"))
    assert [r["impl"] for r in RunDir.open(run).rows()] == [*IMPLS, "sdpa_math"]


def test_a_last_line_that_is_json_but_no_row_is_warned_about(tmp_path):
    run = _run(tmp_path)
    rows_file = run / "rows.jsonl"
    rows_file.write_bytes(rows_file.read_bytes() + b'{"foo": 1}')
    rundir = RunDir.open(run)
    assert len(rundir.rows()) == 3
    assert rundir.warnings == [f"{rows_file}:4: no case; no impl; no phase; no status"]


def test_blank_lines_are_no_rows_and_no_warnings(tmp_path):
    run = _run(tmp_path)
    _insert_line(run, b"   ")
    rundir = RunDir.open(run)
    assert len(rundir.rows()) == 3 and rundir.warnings == []


def test_a_second_row_for_one_key_is_kept_and_named(tmp_path):
    run = _run(tmp_path)
    RunDir(run).append(ok_row(impl="naive"))
    rundir = RunDir.open(run)
    assert [r["impl"] for r in rundir.rows()] == [*IMPLS, "naive"]
    (warning,) = rundir.warnings
    assert warning.startswith(f"{run / 'rows.jsonl'}:4: another row for ") and "line 2" in warning


def test_a_bad_samples_line_is_skipped_with_a_warning(tmp_path):
    run = _run(tmp_path)
    _insert_line(run, b'{"schema_version": 2, "case": "c", "impl": "x", "phase": "fwd"}',
                 name="samples.jsonl")  # fmt: skip
    _insert_line(run, b"[]", at=0, name="samples.jsonl")
    rundir = RunDir.open(run)
    assert len(rundir.samples()) == 2  # chunked's and naive's
    assert rundir.warnings == [
        f"{run / 'samples.jsonl'}:1: a JSON array, not an object",
        f"{run / 'samples.jsonl'}:3: time_ms is not a list of numbers",
    ]


def test_a_row_without_schema_version_has_its_runs(tmp_path):
    run = RunDir.create(tmp_path / "run", {"run_id": "x"}, {})
    run.append({"case": "c", "impl": "ring", "phase": "fwd", "status": "ok"})
    rows = RunDir.open(run.path).rows()
    assert rows[0]["schema_version"] == SCHEMA_VERSION and run.warnings == []


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("run.json", b"{garbage", "run.json:1: not JSON (Expecting property name"),
        ("run.json", b"", "run.json:1: not JSON (Expecting value)"),
        ("run.json", b"[1, 2, 3]", "run.json: a JSON array, not an object"),
        ("run.json", b"null", "run.json: a JSON null, not an object"),
        ("run.json", b'{"schema_version": 99}', "run.json: schema_version 99; this harness reads"),
        ("run.json", b'{"schema_version": "2"}', "run.json: schema_version '2'; this harness"),
        ("run.json", b"\xff\xfe{}", "run.json: not UTF-8 text (byte 1)"),
        ("suite.json", b"{garbage", "suite.json:1: not JSON"),
        ("suite.json", b'"a string"', "suite.json: a JSON string, not an object"),
    ],
)  # fmt: skip
def test_a_broken_run_or_suite_file_is_one_line_naming_it_exit_2(tmp_path, name, content, why):
    base = _run(tmp_path, "base")
    run = _run(tmp_path)
    (run / name).write_bytes(content)
    res = CliRunner().invoke(app, ["compare", str(base), str(run)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert f"{run}/{why}" in lines[0]
    assert "Traceback" not in res.output


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_rows_file_that_is_no_regular_file_is_refused_naming_it(tmp_path, kind):
    run = _run(tmp_path)
    rows_file = run / "rows.jsonl"
    rows_file.unlink()
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps(ok_row()) + "\n")
    {"directory": rows_file.mkdir, "fifo": lambda: os.mkfifo(rows_file),
     "symlink": lambda: rows_file.symlink_to(outside)}[kind]()  # fmt: skip
    done = threading.Event()
    box = {}

    def show():  # a FIFO must be refused, not block the read forever
        box["res"] = _show(run)
        done.set()

    threading.Thread(target=show, daemon=True).start()
    assert done.wait(30), f"show hung on a {kind}"
    res = box["res"]
    assert res.exit_code == 2, res.output
    (line,) = [line for line in res.stderr.splitlines() if line]
    expected = {"directory": "is a directory, not a file", "fifo": "is a FIFO, not a file",
                "symlink": f"is a symbolic link (to {outside})"}[kind]  # fmt: skip
    assert line.startswith(f"error: {rows_file} {expected}"), line
    with pytest.raises(ResultsError, match="rows.jsonl"):
        RunDir.open(run).rows()


def test_validate_row_says_why():
    good = {"schema_version": 2, "case": "c", "impl": "naive", "phase": "fwd", "status": "oom"}
    assert validate_row(good) == []
    assert validate_row(good | {"schema_version": 1}) == []
    assert validate_row([1, 2]) == ["a JSON array, not a row object"]
    assert validate_row(None) == ["a JSON null, not a row object"]
    assert validate_row(good | {"schema_version": True}) == [
        "schema_version True; this harness reads 1, 2, 3"]  # fmt: skip
    assert validate_row({k: v for k, v in good.items() if k != "schema_version"}) == [
        "no schema_version; this harness reads 1, 2, 3"]  # fmt: skip
    assert validate_row(good | {"phase": ""}) == ["phase '' is not a name"]
    assert validate_row(good | {"status": ["ok"]}) == [
        "status ['ok'] is not one of ok, skipped, unsupported, oom, timeout, error"]  # fmt: skip


def _history_root(tmp_path):
    root = tmp_path / "history"
    for i in range(3):
        make_run(root / f"night{i}", [ok_row(), failed_row(impl="naive")],
                 utc_time=f"2026-01-0{i + 1}T03:00:00+00:00")  # fmt: skip
    broken = {
        "garbage-run-json": lambda p: (p / "run.json").write_text("{garbage"),
        "future-version": lambda p: (p / "run.json").write_text('{"schema_version": 99}'),
        "rows-is-a-folder": lambda p: ((p / "rows.jsonl").unlink(), (p / "rows.jsonl").mkdir()),
        "samples-not-utf8": lambda p: (p / "samples.jsonl").write_bytes(b"\xff\n"),
    }  # fmt: skip
    for name, damage in broken.items():
        damage(make_run(root / name, [ok_row()], utc_time="2026-01-09T03:00:00+00:00"))
    return root


def test_a_broken_run_under_a_history_root_is_skipped_with_a_warning(tmp_path):
    root = _history_root(tmp_path)
    res = CliRunner().invoke(app, ["history", str(root)])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line]
    skipped = [line for line in warnings if line.endswith(" skipped")]
    expected = {"future-version": "schema_version 99", "garbage-run-json": "not JSON",
                "rows-is-a-folder": "is a directory"}  # fmt: skip
    assert len(skipped) == len(expected), res.stderr
    for line, (name, why) in zip(skipped, expected.items(), strict=True):
        assert line.startswith(f"warning: {root / name}/") and why in line, line
        assert line.endswith(f"; run {root / name} skipped"), line
    samples_file = root / "samples-not-utf8" / "samples.jsonl"
    assert set(warnings) - set(skipped) == {f"warning: {samples_file}:1: not UTF-8 text (byte 1 "
                                            "is 0xff)"}  # fmt: skip
    # the bad samples line is skipped, its run read (its row has no samples)
    frame = load_history(root)
    assert sorted(frame["run_id"].unique()) == ["night0", "night1", "night2", "samples-not-utf8"]
    assert len(frame) == 3 * 2 + 1


def test_an_append_cut_short_by_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
    run = _run(tmp_path)
    before = (run / "rows.jsonl").read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(results.os, "write", half_then_full)
    with pytest.raises(results.WriteError, match=r"cannot write .*rows.jsonl: \[Errno 28\]"):
        RunDir(run).append(failed_row(impl="sdpa_math"))
    monkeypatch.undo()
    assert (run / "rows.jsonl").read_bytes() == before
