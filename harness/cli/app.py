"""The typer applications; command modules attach to these (see harness/cli/__init__.py)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run, compare and guard attention implementations.")  # fmt: skip
model_app = typer.Typer(no_args_is_help=True, help="Analytic models (past one machine).")
app.add_typer(model_app, name="model")
baseline_app = typer.Typer(no_args_is_help=True, help="Curated baselines under results/baselines.")
app.add_typer(baseline_app, name="baseline")
export_app = typer.Typer(no_args_is_help=True, help="Export runs to other tools' formats.")
app.add_typer(export_app, name="export")


def _print_version(value: bool) -> None:
    if value:
        from harness import __version__  # `harness` imports no torch: this stays instant

        print(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version, exit"
    ),
) -> None:
    """Options before any command (`harness --version`); the help text is the app's."""
