"""Filesystem errors and exit statuses: a missing folder, a file in the way, a read-only folder or
a full disk is one line naming the path and the errno, exit 2, and no temporary file left behind;
a crash is one line, exit 3, and the traceback in a file. Disk-full without root tricks: `open` is
patched to give a file whose write() lands half the data and then fails with ENOSPC.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import tempfile
from pathlib import Path

import pytest

from harness.cli import EXIT_INTERNAL, EXIT_USER, main
from harness.results import WriteError, write_json_atomic, write_text_atomic
from tests.helpers.synthetic_runs import make_run, ok_row

ENOSPC = f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"
ROOT = Path(__file__).parents[2]


class _FullFile:
    """A file on a disk that fills up: half of each write lands, then ENOSPC."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.fixture
def full_disk(monkeypatch):
    """`full_disk(folder)`: files opened for writing under `folder` fill the disk."""
    real_open = io.open

    def arm(folder: Path) -> None:
        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else str(file)
            writing = any(c in mode for c in "wax")
            return _FullFile(f) if writing and name.startswith(str(folder)) else f

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)

    return arm


def _leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if ".tmp" in p.name]


def _cli(capsys, *args: str) -> tuple[int, list[str], str]:
    """Run `harness ARGS` through `main` (the console script's entry): status, stderr lines, out."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), [ln for ln in captured.err.splitlines() if ln.strip()], \
        captured.out  # fmt: skip


# --- the atomic writer ----------------------------------------------------------------------


def test_full_disk_keeps_the_old_file_leaves_no_tmp_and_names_the_path(tmp_path, full_disk):
    target = tmp_path / "run.json"
    write_json_atomic(target, {"old": 1})
    full_disk(tmp_path)
    with pytest.raises(WriteError) as info:
        write_json_atomic(target, {"new": "x" * 100_000})
    assert str(info.value) == f"cannot write {target}: {ENOSPC}"
    assert isinstance(info.value, OSError)  # the CLI's exit 2
    assert target.read_text() == '{\n  "old": 1\n}'
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "where, code",
    [("missing/x.json", errno.ENOENT), ("a_file/x.json", errno.ENOTDIR),
     ("a_dir", errno.EISDIR)],
)  # fmt: skip
def test_unwritable_paths_are_write_errors_naming_the_path(tmp_path, where, code):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_dir").mkdir()
    with pytest.raises(WriteError) as info:
        write_text_atomic(tmp_path / where, "text")
    assert str(info.value).startswith(f"cannot write {tmp_path / where}: [Errno {code}] ")
    assert _leftovers(tmp_path) == []


def test_read_only_folder(tmp_path, monkeypatch):
    # root writes anywhere, so the refusal is simulated where the kernel would give it
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(WriteError, match=r"cannot write .*x.json: \[Errno 30\] Read-only"):
        write_json_atomic(tmp_path / "x.json", {})
    assert _leftovers(tmp_path) == []


# --- commands: one line, exit 2, nothing left behind ----------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from harness.case import Case

    root = tmp_path_factory.mktemp("runs")
    case = Case(seq_len=1024).to_dict()
    make_run(root / "base", [dict(ok_row(), **case), dict(ok_row(impl="naive"), **case)])
    make_run(root / "cand", [dict(ok_row(), **case), dict(ok_row(impl="naive"), **case)],
             utc_time="2026-01-02T00:00:00+00:00")  # fmt: skip
    return root


def _assert_one_line_exit_2(code: int, err: list[str], path: Path | str, errno_: int | None):
    assert code == EXIT_USER, err
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and str(path) in err[0], err
    assert "Traceback" not in err[0]
    if errno_ is not None:
        assert f"[Errno {errno_}]" in err[0], err


@pytest.mark.parametrize(
    "args, out",
    [
        (["compare", "{base}", "{cand}", "--json", "{tmp}/missing/c.json"], "{tmp}/missing/c.json"),
        (["compare", "{base}", "{cand}", "--markdown", "{tmp}/missing/c.md"], "{tmp}/missing/c.md"),
        (["table", "{base}", "-o", "{tmp}/missing/t.md"], "{tmp}/missing/t.md"),
        (["export", "pytest-benchmark", "{base}", "-o", "{tmp}/missing/e.json"],
         "{tmp}/missing/e.json"),
        (["history", "{root}", "--html", "{tmp}/missing/h.html"], "{tmp}/missing/h.html"),
        (["report", "{base}", "-o", "{tmp}/a_file/r.html"], "{tmp}/a_file"),
    ],
    ids=["compare-json", "compare-markdown", "table", "export", "history-html", "report"],
)  # fmt: skip
def test_output_in_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys, runs, args, out):
    (tmp_path / "a_file").write_text("")
    names = {"base": runs / "base", "cand": runs / "cand", "root": runs, "tmp": tmp_path}
    code, err, _ = _cli(capsys, *(a.format(**names) for a in args))
    _assert_one_line_exit_2(code, err, out.format(**names), None)
    assert re.search(r"\[Errno \d+\]", err[0]), err
    assert "not of the harness" in err[0]  # says it is the environment or the path
    assert _leftovers(tmp_path, runs) == []


def test_history_csv_in_a_missing_folder(tmp_path, capsys, runs):
    code, err, _ = _cli(capsys, "history", str(runs), "--csv", str(tmp_path / "missing" / "h.csv"))
    _assert_one_line_exit_2(code, err, tmp_path / "missing", None)  # pandas names the folder


def test_model_ring_json_in_a_missing_folder_fails_before_the_work(tmp_path, capsys):
    code, err, out = _cli(capsys, "model", "ring", "--json", str(tmp_path / "missing" / "m.json"))
    _assert_one_line_exit_2(code, err, tmp_path / "missing", None)
    assert out == ""  # refused before any table


@pytest.mark.parametrize("command", ["report", "export"])
def test_full_disk_is_one_line_exit_2_and_no_tmp(tmp_path, capsys, runs, full_disk, command):
    full_disk(tmp_path)
    target = tmp_path / ("r.html" if command == "report" else "e.json")
    args = (["report", str(runs / "base"), "-o", str(target)] if command == "report"
            else ["export", "pytest-benchmark", str(runs / "base"), "-o", str(target)])  # fmt: skip
    code, err, _ = _cli(capsys, *args)
    _assert_one_line_exit_2(code, err, target, errno.ENOSPC)
    assert err[0].startswith(f"error: cannot write {target}: {ENOSPC}")
    assert _leftovers(tmp_path, runs) == [] and not target.exists()


def test_run_out_a_file_is_one_line_exit_2(tmp_path, capsys, write_suite):
    from tests.conftest import tiny_suite

    (tmp_path / "a_file").write_text("")
    suite = write_suite(tiny_suite())
    code, err, _ = _cli(capsys, "run", str(suite), "--out", str(tmp_path / "a_file"))
    _assert_one_line_exit_2(code, err, tmp_path / "a_file", None)


def test_run_out_on_a_full_disk_is_one_line_exit_2_and_no_tmp(tmp_path, capsys, write_suite,
                                                              full_disk):  # fmt: skip
    from tests.conftest import tiny_suite

    suite = write_suite(tiny_suite())
    full_disk(tmp_path / "runs")
    code, err, _ = _cli(capsys, "run", str(suite), "--out", str(tmp_path / "runs"))
    _assert_one_line_exit_2(code, err, tmp_path / "runs", errno.ENOSPC)
    assert "run.json" in err[0] and _leftovers(tmp_path) == []


# --- exit statuses: 0, 1, 2, 3 ---------------------------------------------------------------


def test_a_crash_is_exit_3_one_line_and_a_traceback_file(tmp_path, capsys, monkeypatch, runs):
    import harness.results

    def boom(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(harness.results.RunDir, "open", boom)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, err, _ = _cli(capsys, "show", str(runs / "base"))
    assert code == EXIT_INTERNAL, err
    assert len(err) == 1, err
    m = re.fullmatch(r"internal error: ZeroDivisionError: boom \(please report; traceback in "
                     r"(.+)\)", err[0])  # fmt: skip
    assert m, err
    saved = Path(m.group(1))
    assert saved.parent == tmp_path and "ZeroDivisionError: boom" in saved.read_text()
    assert "Traceback" in saved.read_text() and "argv" in saved.read_text()


def test_a_crash_on_a_full_disk_still_exits_3(tmp_path, capsys, monkeypatch, runs):
    import harness.results

    def boom(*args, **kwargs):
        raise KeyError("seq_len")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(harness.results.RunDir, "open", boom)
    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    with pytest.raises(SystemExit) as info:
        main(["show", str(runs / "base")])
    assert info.value.code == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err  # the traceback is not lost
    assert err.strip().splitlines()[-1].startswith("internal error: KeyError: 'seq_len'")


@pytest.mark.parametrize(
    "args, code",
    [(["--version"], 0), (["show", "--format", "xml", "."], 2), (["nope"], 2),
     (["show", "{missing}"], 2)],
    ids=["clean", "bad-option", "bad-command", "not-a-run"],
)  # fmt: skip
def test_exit_statuses(tmp_path, capsys, args, code):
    got, err, _ = _cli(capsys, *(a.format(missing=tmp_path / "nope") for a in args))
    assert got == code, err


def test_a_regression_is_exit_1(tmp_path, capsys, runs):
    from tests.helpers.synthetic_runs import samples

    slow = [dict(r, time_samples_ms=samples(30.0, 0.01))
            for r in [ok_row(), ok_row(impl="naive")]]  # fmt: skip
    make_run(tmp_path / "slow", slow, utc_time="2026-01-03T00:00:00+00:00")
    code, _, _ = _cli(capsys, "compare", str(runs / "base"), str(tmp_path / "slow"))
    assert code == 1


def test_the_console_script_and_python_m_go_through_main():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^harness = "harness\.cli:main"$', text, re.M), "[project.scripts]"
    assert "main()" in (ROOT / "harness" / "__main__.py").read_text()
