"""The CLI's two consoles and its one way to fail; every string from results is printed as text.

Reasons in rows hold text such as `[/__w/pytorch/.../pair.cc:537] Read error` (gloo) or
`[enforce fail at alloc_cpu.cpp:127]` (an OOM): as rich markup those are closing tags or styles
and either raise `MarkupError` or vanish. So nothing from results is ever given to rich as markup:
cells are `Text`, lines are printed with `markup=False`.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

# Wide enough that tables stay readable when piped into a log or CI output.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)


def say(message: str, *, to_err: bool = True, **kwargs: Any) -> None:
    """Print one plain line (never markup, never highlighted)."""
    (err if to_err else out).print(message, markup=False, highlight=False, **kwargs)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: a user error)."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def cell(value: Any) -> Text:
    """A table cell as plain text."""
    return Text(fmt(value))


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
