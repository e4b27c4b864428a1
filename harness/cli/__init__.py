"""Command line: thin typer wrappers over the library (`harness ...` and `python -m harness ...`).

The library returns data; these modules render it. User errors print one line to stderr and exit 2;
nothing is written before a suite validates. Read-only commands import no torch.

    app.py          the typer applications
    console.py      consoles, `fail`, plain-text cells (results are never markup)
    run_cmd.py      run
    inspect_cmd.py  list, show, table, report
    regress_cmd.py  compare, history, baseline, export
    model_cmd.py    model ring (tables in ring_tables.py)
"""

from __future__ import annotations

import importlib

from harness.cli.app import app

# Command modules register on import; this order is the order of `harness --help`.
for _module in ("run_cmd", "inspect_cmd", "regress_cmd", "model_cmd"):
    importlib.import_module(f"harness.cli.{_module}")


def main() -> None:
    app()


__all__ = ["app", "main"]
