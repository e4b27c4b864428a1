"""The CLI's two consoles, its one way to fail, and its machine-readable formats.

Every string from results is printed as text. Reasons in rows hold text such as
`[/__w/pytorch/.../pair.cc:537] Read error` (gloo) or `[enforce fail at alloc_cpu.cpp:127]` (an
OOM): as rich markup those are closing tags or styles and either raise `MarkupError` or vanish.
So nothing from results is ever given to rich as markup: cells are `Text`, lines are printed with
`markup=False`, and the JSON / CSV / Markdown formats bypass rich altogether (`write_records`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.text import Text

# `--format` of the commands that list records (`list`, `show`).
FORMATS: tuple[str, ...] = ("table", "json", "csv", "md")


def _width(stream: TextIO) -> int | None:
    """None (rich asks the terminal, or reads COLUMNS) on a terminal or when COLUMNS is set;
    otherwise 160, so tables piped into a log or CI output are not squeezed to rich's 80."""
    isatty = getattr(stream, "isatty", None)
    return None if (isatty is not None and isatty()) or os.environ.get("COLUMNS") else 160


err = Console(stderr=True, width=_width(sys.stderr))
out = Console(width=_width(sys.stdout))


def say(message: str, *, to_err: bool = True, **kwargs: Any) -> None:
    """Print one plain line: never markup, never highlighted, never broken into lines by rich
    (a path or a message must stay whole for scripts, grep and copy-paste)."""
    kwargs.setdefault("soft_wrap", True)
    (err if to_err else out).print(message, markup=False, highlight=False, **kwargs)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (2: a user error)."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def one_line(exc: BaseException) -> str:
    """An exception's message as one line (its first; "" when it has none). An OSError reads
    `[Errno 2] No such file or directory: 'x/y.json'`; a `results.WriteError`
    `cannot write x/y.json: [Errno 28] No space left on device`."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def save_traceback(exc: BaseException) -> str:
    """Write the traceback of `exc` (with the version and the command line) to a new file under
    the system temp folder and return its path; when even that fails (a full disk), the traceback
    goes to stderr and the return value says so."""
    import tempfile
    import traceback

    from harness import __version__

    text = (f"harness {__version__}\nargv: {sys.argv!r}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))  # fmt: skip
    path = None
    try:
        fd, path = tempfile.mkstemp(prefix="harness-internal-error-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    except OSError as write_exc:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        sys.stderr.write(text)
        return f"stderr above (it could not be saved: {one_line(write_exc)})"


def check_choice(flag: str, value: str, allowed: Sequence[str]) -> None:
    """Exit 2 with one line naming the flag, the bad value and the allowed values."""
    if value not in allowed:
        fail(f"{flag}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def cell(value: Any) -> Text:
    """A table cell as plain text."""
    return Text(fmt(value))


def fmt(value: Any) -> str:
    """A value for a human: blank for missing, three significant digits for floats."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def plain(value: Any) -> Any:
    """A value as JSON data: numpy scalars unwrapped, NaN and infinities as null."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    """A value as one CSV / Markdown field: strings verbatim, lists and dicts as JSON."""
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value if isinstance(value, str) else repr(value)


def _md_cell(value: Any) -> str:
    # Only what would end the cell or the row is escaped; everything else is kept as it was.
    return _text(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def write_records(
    records: Iterable[dict[str, Any]],
    columns: Sequence[str],
    fmt_: str,
    stream: TextIO | None = None,
) -> None:
    """Records as JSON (a list of objects), CSV or a Markdown table on stdout, raw values only.

    Machine-readable: numbers unformatted, strings verbatim (never through rich), one key or
    column per name in `columns` (missing values are null / blank).
    """
    stream = stream if stream is not None else sys.stdout
    rows = [[plain(rec.get(c)) for c in columns] for rec in records]
    if fmt_ == "json":
        data = [dict(zip(columns, row, strict=True)) for row in rows]
        stream.write(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    elif fmt_ == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_text(v) for v in row] for row in rows)
    elif fmt_ == "md":
        lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |",
                 "|" + "---|" * len(columns)]  # fmt: skip
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
        stream.write("\n".join(lines) + "\n")
    else:
        raise AssertionError(f"write_records: format {fmt_!r}")
