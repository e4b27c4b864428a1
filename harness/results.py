"""Run directories: tidy rows (JSONL), raw samples, the expanded suite and provenance.

Rows and samples are appended one line at a time with fsync, so a run killed at any moment leaves
every finished row readable; whole files (suite, provenance) are written atomically through a
rename. Every record carries `schema_version`.

What the files survive:
- A writer (a run, a resume) holds `lock` (flock) for its whole run: a second writer is refused
  with the pid of the first. New run directories are claimed by mkdir, never exists-then-mkdir.
- Run files are opened with O_NOFOLLOW and must be regular files: a symbolic link never leads a
  read or a write out of the directory; it is refused, naming the file.
- Every line is validated (rows by `rows.validate_row`). A bad line is skipped with a warning
  naming file and line, kept on `RunDir.warnings` and printed once on stderr
  (`warning: FILE:LINE: why`, see `set_warning_sink`); only a torn last line, what a killed run
  leaves, is skipped quietly. A broken run.json or suite.json is a ResultsError naming the file.
- `check_output_paths`: no command writes its output over a run's data files.
- `RunDir.resume`: a run resumes only with what made it (suite, profile, device, versions,
  commit) unless forced; every resume is recorded in run.json.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import sys
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.rows import READABLE_VERSIONS, SCHEMA_VERSION, row_key, upgrade, validate_row

ROWS = "rows.jsonl"
SAMPLES = "samples.jsonl"
SUITE = "suite.json"
RUN = "run.json"
LOCK = "lock"
# The files a run directory owns; no command writes its output over one (`check_output_paths`).
DATA_FILES: tuple[str, ...] = (RUN, SUITE, ROWS, SAMPLES, LOCK)
# What a resume must share with the run it completes (`RunDir.resume`): the expanded suite's
# settings and cases, the profile, and these provenance fields.
RESUME_SUITE_KEYS: tuple[str, ...] = ("name", "workload", "implementations", "timing", "limits",
                                      "accuracy", "seed", "device", "threads")  # fmt: skip
RESUME_PROVENANCE_KEYS: tuple[str, ...] = ("device", "device_name", "torch_version",
                                           "cuda_version", "git_commit")  # fmt: skip


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


_warning_sink: Callable[[str], None] | None = _print_warning
_printed: set[str] = set()


def set_warning_sink(sink: Callable[[str], None] | None) -> None:
    """Where warnings about run files go besides `RunDir.warnings` (each message once per
    process); by default stderr as `warning: FILE:LINE: why`, None to keep them quiet."""
    global _warning_sink
    _warning_sink = sink


def warn(message: str) -> None:
    """Report a problem that was skipped (`FILE:LINE: why` or `FILE: why`) through the sink."""
    if _warning_sink is not None and message not in _printed:
        _printed.add(message)
        _warning_sink(message)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """`data` as indented JSON, written atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class WriteError(OSError):
    """A file could not be written (a full disk, a read-only folder); the message names it."""

    def __str__(self) -> str:  # the message as written (OSError would rebuild it from errno)
        return str(self.args[0]) if self.args else super().__str__()


def write_text_atomic(path: str | Path, text: str, *, make_parents: bool = False) -> None:
    """`text` into `path` through a fresh temporary file beside it, fsynced, then renamed over
    it: readers see the old file or the new one, never a part. On failure (a full disk) the
    temporary file is removed and a WriteError names the file."""
    import tempfile

    path = Path(path)
    tmp = None
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the rest of a team
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        why = exc.strerror or str(exc)
        errno_part = f"[Errno {exc.errno}] " if exc.errno else ""
        error = WriteError(f"cannot write {path}: {errno_part}{why}")
        error.errno, error.filename = exc.errno, str(path)  # for callers that branch on them
        raise error from exc
    finally:  # also on Ctrl-C mid-write: never leave a temporary file behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):  # fmt: skip
        if test(mode):
            return kind
    return "a file"


def _link_message(path: Path) -> str:
    return (f"{path} is a symbolic link (to {os.readlink(path)}); a run's files are never "
            "followed out of its directory")  # fmt: skip


def _open(path: Path, flags: int) -> int:
    """A descriptor of a run file: never through a symbolic link, never anything but a regular
    file (O_NONBLOCK: a FIFO in a file's place is refused instead of hanging the read)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if os.path.islink(path):
            raise ResultsError(_link_message(path)) from None
        if exc.errno == errno.EISDIR:
            raise ResultsError(f"{path} is a directory, not a file") from None
        raise ResultsError(f"{path}: {exc.strerror}") from None
    kind = _kind(os.fstat(fd).st_mode)
    if kind != "a file":
        os.close(fd)
        raise ResultsError(f"{path} is {kind}, not a file")
    os.set_blocking(fd, True)
    return fd


def _check_file(path: Path) -> None:
    """Refuse a run file that exists as anything but a regular file (a link above all)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise ResultsError(_link_message(path))
    if _kind(mode) != "a file":
        raise ResultsError(f"{path} is {_kind(mode)}, not a file")


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _read_json(path: Path) -> dict[str, Any]:
    """A whole-file JSON object (run.json, suite.json); else a ResultsError naming the file."""
    with open(_open(path, os.O_RDONLY), "rb") as f:
        data = f.read()
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise ResultsError(f"{path}: not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise ResultsError(f"{path}: a JSON {_json_kind(value)}, not an object")
    return value


def _append_line(path: Path, record: dict[str, Any]) -> None:
    data = memoryview((json.dumps(record, default=str, allow_nan=True) + "\n").encode())
    fd = _open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        start = os.fstat(fd).st_size
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except OSError as exc:  # a full disk: no half line left for the next append to run into
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise WriteError(f"cannot write {path}: {exc}") from exc
    finally:
        os.close(fd)


Problems = Callable[[dict[str, Any]], list[str]]


def _parse(raw: bytes, problems: Problems, version: int | None) -> tuple[Any, str | None, bool]:
    """(record, why not, torn): a line as a valid record, or why it is none; `torn` when the
    bytes are no JSON value at all (what a write cut short leaves)."""
    if b"\x00" in raw:
        return None, f"{raw.count(0)} NUL bytes (a write lost in a crash?)", True
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start + 1} is {raw[exc.start]:#04x})", True
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at column {exc.colno})", True
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({type(exc).__name__}: {exc})", True
    if not isinstance(value, dict):
        return None, f"a JSON {_json_kind(value)}, not an object", False
    if "schema_version" not in value and version is not None:
        value = {"schema_version": version, **value}  # written without one: its run's version
    why = "; ".join(problems(value))
    return (None, why, False) if why else (value, None, False)


def _sample_problems(record: dict[str, Any]) -> list[str]:
    """Why a samples.jsonl record is unreadable: a row's identity and a list of times."""
    problems = validate_row({**record, "status": "ok"})
    times = record.get("time_ms")
    if not isinstance(times, list) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) for t in times
    ):
        problems.append("time_ms is not a list of numbers")
    return problems


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # `FILE:LINE: why` for every line skipped on read (also printed once: `warn`)
        self.warnings: list[str] = []
        self._lock: weakref.finalize | None = None

    @classmethod
    def create(cls, path: str | Path, run_meta: dict[str, Any], suite: dict[str, Any]) -> RunDir:
        """A new run in `path`, locked for this process: the folder is made here, or is the empty
        one `default_run_dir` claimed; a folder that holds a run already is refused."""
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(
                f"{run.path}: cannot make a run directory ({exc.strerror})"
            ) from None
        run.lock()
        try:
            held = [n for n in DATA_FILES if n != LOCK and os.path.lexists(run.path / n)]
            if held:
                raise ResultsError(f"{run.path} holds a run already ({held[0]}); finish it with "
                                   "--resume or choose another --out")  # fmt: skip
            write_json_atomic(run.path / RUN, {"schema_version": SCHEMA_VERSION, **run_meta})
            write_json_atomic(run.path / SUITE, {"schema_version": SCHEMA_VERSION, **suite})
        except BaseException:
            run.unlock()
            raise
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not os.path.lexists(run.path / RUN):
            raise ResultsError(f"not a run directory (no {RUN}): {run.path}")
        version = run.meta().get("schema_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ResultsError(
                f"{run.path / RUN}: schema_version {version!r}; this harness reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        return run

    @classmethod
    def resume(cls, path: str | Path, meta: dict[str, Any], expanded: dict[str, Any], *,
               force: bool = False, write: bool = True) -> RunDir:  # fmt: skip
        """The run at `path`, to be completed by a run of `expanded` (the suite as suite.json
        holds it) under `meta` (profile, argv, provenance); locked unless `write` is False.

        Refused (ResultsError, one line naming what differs) when the run was made with another
        suite, profile, device, torch / CUDA version or commit (`differences`), unless `force`.
        Every resume is recorded in run.json's `resumes` (utc_time, argv, forced, differs); a
        forced one brings run.json and suite.json up to date (its event keeps the old values).
        """
        run = cls.open(path)
        if write:
            run.lock()
        try:
            differs = run.differences(meta, expanded)
            if differs and not force:
                raise ResultsError(f"--resume: {run.path} differs from this run in "
                                   f"{describe_differences(differs)}; pass --force to resume it "
                                   "anyway (recorded in its run.json)")  # fmt: skip
            if write:
                run._record_resume(meta, expanded, differs)
        except BaseException:
            run.unlock()
            raise
        return run

    def lock(self) -> None:
        """Hold this run directory until `unlock` or exit (a killed process lets go too); a second
        writer is refused: "RUN is in use by pid N". Its files must be regular files."""
        if self._lock is not None:
            return
        fd = _open(self.path / LOCK, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise ResultsError(f"{self.path} is in use by pid {holder}") from None
            raise ResultsError(f"{self.path / LOCK}: cannot lock ({exc.strerror})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = weakref.finalize(self, os.close, fd)
        try:
            for name in DATA_FILES:
                _check_file(self.path / name)
        except ResultsError:
            self.unlock()
            raise

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock()
            self._lock = None

    def meta(self) -> dict[str, Any]:
        return _read_json(self.path / RUN)

    def suite(self) -> dict[str, Any]:
        return _read_json(self.path / SUITE)

    def append(self, row: dict[str, Any]) -> None:
        """Write a row; its raw time samples go to samples.jsonl, the row keeps their count."""
        row = dict(row)
        samples = row.pop("time_samples_ms", None)
        if samples is not None:
            _append_line(self.path / SAMPLES, {
                "schema_version": SCHEMA_VERSION, "case": row["case"], "impl": row["impl"],
                "phase": row["phase"], "time_ms": samples,
            })  # fmt: skip
        _append_line(self.path / ROWS, row)

    def repair(self) -> None:
        """Make the next append start a fresh line: cut a torn last line (a run killed mid-write);
        a whole record that lacks only its newline gets one instead."""
        version = self._version()
        for name, problems in ((ROWS, validate_row), (SAMPLES, _sample_problems)):
            path = self.path / name
            if not os.path.lexists(path):
                continue
            with open(_open(path, os.O_RDWR), "r+b") as f:
                data = f.read()
                if not data or data.endswith(b"\n"):
                    continue
                cut = data.rfind(b"\n") + 1
                if _parse(data[cut:], problems, version)[0] is not None:
                    f.write(b"\n")
                else:
                    f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())

    def _version(self) -> int | None:
        """run.json's schema_version: the version of records written without one."""
        try:
            version = self.meta().get("schema_version")
        except ResultsError:
            return None
        return version if type(version) is int and version in READABLE_VERSIONS else None

    def _records(self, name: str, problems: Problems) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, record) for every valid line; the others are warned about and skipped,
        but for a torn last line (no newline, no JSON), which a killed run leaves."""
        path = self.path / name
        if not os.path.lexists(path):
            return
        version = self._version()
        with open(_open(path, os.O_RDONLY), "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                record, why, torn = _parse(raw, problems, version)
                if record is not None:
                    yield number, record
                elif not (torn and not raw.endswith(b"\n")):
                    self._warn(f"{path}:{number}: {why}")

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
        warn(message)

    def rows(self) -> list[dict[str, Any]]:
        """Every valid row in the current schema (`upgrade`), in file order."""
        rows, seen = [], {}
        for number, record in self._records(ROWS, validate_row):
            key = row_key(record)
            if key in seen:
                self._warn(f"{self.path / ROWS}:{number}: another row for {' '.join(key)} "
                           f"(also at line {seen[key]})")  # fmt: skip
            seen.setdefault(key, number)
            rows.append(upgrade(record))
        return rows

    def samples(self) -> list[dict[str, Any]]:
        return [record for _, record in self._records(SAMPLES, _sample_problems)]

    def done_keys(self) -> set[tuple[str, str, str]]:
        return {row_key(r) for r in self.rows()}

    def differences(self, meta: dict[str, Any], expanded: dict[str, Any]) -> list[dict[str, Any]]:
        """What a resume under `meta` / `expanded` would change: `{"what", "run", "now"}` for the
        profile, each RESUME_PROVENANCE_KEYS field, each leaf of RESUME_SUITE_KEYS and the
        phases; for `cases` "run" / "now" list the names only one side has (or has otherwise)."""
        old_meta = self.meta()
        try:
            old_suite = self.suite()
        except ResultsError as exc:  # compared as empty: every setting differs
            self._warn(str(exc))
            old_suite = {}
        new_suite = json.loads(json.dumps(expanded, default=str))
        out = _diff("profile", old_meta.get("profile"), meta.get("profile"))
        old_prov, new_prov = _dict(old_meta.get("provenance")), _dict(meta.get("provenance"))
        for key in RESUME_PROVENANCE_KEYS:
            out += _diff(f"provenance.{key}", old_prov.get(key), new_prov.get(key))
        old_spec, new_spec = _dict(old_suite.get("suite")), _dict(new_suite.get("suite"))
        for key in RESUME_SUITE_KEYS:
            old_value = old_spec.get(key)
            if key == "timing" and isinstance(old_value, dict):
                old_value = {**_timing_defaults(), **old_value}  # keys added since: defaults
            out += _diff(f"suite.{key}", old_value, new_spec.get(key))
        old_phases = _dict(old_spec.get("sweep")).get("phase")
        out += _diff("suite.sweep.phase", old_phases, _dict(new_spec.get("sweep")).get("phase"))
        old_cases, new_cases = _cases(old_suite), _cases(new_suite)
        if old_cases != new_cases:
            only_run = sorted(n for n, c in old_cases.items() if new_cases.get(n) != c)
            only_now = sorted(n for n, c in new_cases.items() if old_cases.get(n) != c)
            out.append({"what": "cases", "run": only_run, "now": only_now})
        return out

    def _record_resume(self, meta: dict[str, Any], expanded: dict[str, Any],
                       differs: list[dict[str, Any]]) -> None:  # fmt: skip
        old = self.meta()
        whats = {d["what"] for d in differs}
        new = dict(old)
        if "profile" in whats:
            new["profile"] = meta.get("profile")
        if "suite.name" in whats:
            new["suite_name"] = meta.get("suite_name")
        changed = [w.split(".", 1)[1] for w in whats if w.startswith("provenance.")]
        if changed:
            now = _dict(meta.get("provenance"))
            new["provenance"] = {**_dict(old.get("provenance")), **{k: now.get(k) for k in changed}}
        event = {"utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "argv": meta.get("argv"), "pid": os.getpid(), "forced": bool(differs),
                 "differs": differs}  # fmt: skip
        resumes = old.get("resumes")
        new["resumes"] = [*(resumes if isinstance(resumes, list) else []), event]
        write_json_atomic(self.path / RUN, new)
        if any(w == "cases" or w.startswith("suite.") for w in whats):
            write_json_atomic(self.path / SUITE, {"schema_version": SCHEMA_VERSION, **expanded})


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _cases(expanded: dict[str, Any]) -> dict[str, Any]:
    cases = expanded.get("cases")
    return (
        {c.get("name"): c for c in cases if isinstance(c, dict)} if isinstance(cases, list) else {}
    )


def _diff(what: str, old: Any, new: Any) -> list[dict[str, Any]]:
    """The leaves where `old` and `new` differ (dicts compared key by key), named by dotted path."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted({*old, *new}, key=str)
                for d in _diff(f"{what}.{k}", old.get(k), new.get(k))]  # fmt: skip
    return [] if old == new else [{"what": what, "run": old, "now": new}]


def _timing_defaults() -> dict[str, Any]:
    """The `timing` keys' defaults, which a run made before a key existed was measured with."""
    from harness.suite import Timing

    return Timing().model_dump(mode="json")


def describe_differences(differs: list[dict[str, Any]], shown: int = 4) -> str:
    """Differences as one line: `profile (run: None, now: 'gpu'), cases (run only: ...)`."""

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    def names(values: list[str]) -> str:
        more = f" and {len(values) - 2} more" if len(values) > 2 else ""
        return (", ".join(values[:2]) + more) or "none"

    parts = [f"cases (run only: {names(d['run'])}; now only: {names(d['now'])})"
             if d["what"] == "cases" else f"{d['what']} (run: {short(d['run'])}, now: "
             f"{short(d['now'])})" for d in differs[:shown]]  # fmt: skip
    if len(differs) > shown:
        parts.append(f"and {len(differs) - shown} more")
    return ", ".join(parts)


def check_output_paths(paths: dict[str, str | Path | None]) -> None:
    """Refuse (ResultsError) an output option whose path resolves (links followed) to one of a run
    directory's data files: `report RUN -o RUN/rows.jsonl` must not replace the rows. Commands
    call this first, so nothing is written."""
    for flag, path in paths.items():
        if path is None:
            continue
        target = Path(os.path.realpath(path))
        if target.name in DATA_FILES and any(
            os.path.lexists(target.parent / name) for name in (RUN, ROWS)
        ):
            raise ResultsError(f"{flag}: {path} is the {target.name} of the run directory "
                               f"{target.parent}; outputs never replace a run's files, choose "
                               "another path")  # fmt: skip


def load_rows(path: str | Path):
    """The rows of a run directory as a pandas DataFrame (one row per case × impl × phase)."""
    import pandas as pd

    run = RunDir.open(path)
    frame = pd.DataFrame.from_records(run.rows())
    if not frame.empty and "run_id" not in frame.columns:
        frame.insert(0, "run_id", run.meta().get("run_id"))
    return frame
