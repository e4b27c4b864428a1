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
    frontier_cmd.py frontier (max context within a memory budget: harness/frontier/)

`main` is the entry point (the `harness` script, `python -m harness`): it turns what escapes a
command into an exit status CI can tell apart (0 clean, 1 regressed or failed rows, 2 user or
environment error, 3 internal error with the traceback saved to a file).
"""

from __future__ import annotations

import importlib

from harness.cli.app import app

# Command modules register on import; this order is the order of `harness --help`.
for _module in ("run_cmd", "inspect_cmd", "regress_cmd", "model_cmd", "frontier_cmd"):
    importlib.import_module(f"harness.cli.{_module}")


# Exit statuses, for CI to tell apart (`main`).
EXIT_OK, EXIT_FAILED, EXIT_USER, EXIT_INTERNAL = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> None:
    """The `harness` console script and `python -m harness`: the app, with exit statuses.

    0 clean; 1 a regression or failed rows; 2 a user or environment error, one line on stderr (a
    bad option, an unwritable path, a full disk: any OSError, and a HarnessError a command let
    through); 3 an internal error: one line, and the traceback in a file under the temp folder.
    """
    import typer

    from harness.cli.console import one_line, save_traceback, say
    from harness.errors import HarnessError

    try:
        app(args=argv)
    except typer.Exit as exc:  # raised outside a command (typer turns those into SystemExit)
        raise SystemExit(exc.exit_code) from None
    except OSError as exc:
        say(f"error: {one_line(exc) or type(exc).__name__} (a problem of the environment or of "
            "a path given, not of the harness)")  # fmt: skip
        raise SystemExit(EXIT_USER) from None
    except HarnessError as exc:
        say(f"error: {one_line(exc) or type(exc).__name__}")
        raise SystemExit(EXIT_USER) from None
    except Exception as exc:
        where = save_traceback(exc)
        what = ": ".join(filter(None, (type(exc).__name__, one_line(exc))))
        say(f"internal error: {what} (please report; traceback in {where})")
        raise SystemExit(EXIT_INTERNAL) from None


__all__ = ["app", "main"]
