"""Command line: thin typer wrappers over the library (`harness ...` and `python -m harness ...`).

The library returns data; these modules render it. User errors print one line to stderr and exit 2;
nothing is written before a suite validates. Read-only commands (`--help`, `--version`, `show`,
`table`, `report`, `compare`, `history`, `export`, `baseline`) import no torch, so they start fast.

    app.py          the typer applications, `--version`
    console.py      consoles, `fail`, `--format json|csv|md` (results are never markup)
    run_cmd.py      run (`--fail-on`)
    inspect_cmd.py  list, show, table, report
    show_table.py   show's terminal view (units that fit, reasons as numbered notes)
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
