"""Read-only commands on implementations and runs: `list`, `show`, `table`, `report`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from harness.cli.app import app
from harness.cli.console import err, fail, fmt, out
from harness.errors import HarnessError


@app.command("list")
def list_impls() -> None:
    """Every registered implementation, whether it can run here, and why not."""
    import torch

    from harness.registry import REGISTRY

    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = Table(title=f"implementations (device: {device}, torch {torch.__version__})")
    for col in ("name", "label", "workload", "layout", "distributed", "status", "reason"):
        table.add_column(col, no_wrap=col in ("name", "status"), overflow="fold")
    for impl in REGISTRY.all():
        av = impl.available(device)
        cells = (impl.name, impl.label, impl.workload, impl.layout,
                 "yes" if impl.needs_process_group else "no",
                 "available" if av.ok else "skipped", av.reason)  # fmt: skip
        table.add_row(*(Text(c) for c in cells))  # Text: "pip install '.[flash]'" is no markup
    for name, problem in REGISTRY.plugin_errors.items():
        table.add_row(*(Text(c) for c in (name, "", "", "", "", "broken plugin", problem)))
    out.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="run directories"),
    out_path: Path = typer.Option(Path("report.html"), "-o", "--out", help="HTML file to write"),
    baseline: Path = typer.Option(None, "--baseline", help="a run to compare against"),
    static: str = typer.Option(None, "--static", help="also export every figure: png or svg"),
    history: Path = typer.Option(None, "--history", help="add the history of runs under this"),
) -> None:
    """A self-contained, offline HTML report of one or more runs (plotly.js inside the file)."""
    from harness.report import write_report
    from harness.report.static import FORMATS

    if static is not None and static not in FORMATS:
        fail(f"--static: unknown format {static!r}; valid: {', '.join(FORMATS)}")
    try:
        target = write_report(run_dirs, out_path, baseline=baseline, static=static,
                              history_root=history)  # fmt: skip
    except (HarnessError, ValueError) as exc:
        fail(str(exc))
    out.print(str(target), highlight=False)


@app.command()
def show(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    all_columns: bool = typer.Option(False, "--all", help="every column"),
) -> None:
    """A readable table of a run's rows."""
    from harness.results import load_rows

    try:
        frame = load_rows(run_dir)
    except HarnessError as exc:
        fail(str(exc))
    if frame.empty:
        out.print("no rows")
        return
    cols = list(frame.columns) if all_columns else [
        c for c in ("case", "impl", "phase", "status", "time_ms_median", "tflops",
                    "peak_mem_bytes", "err_rel_l2", "err_naive_same_dtype_rel_l2", "reason")
        if c in frame.columns
    ]  # fmt: skip
    table = Table(title=str(run_dir))
    for c in cols:
        table.add_column(c, overflow="fold")
    for rec in frame[cols].to_dict("records"):
        table.add_row(*(fmt(rec[c]) for c in cols))
    out.print(table)


@app.command("table")
def table_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    metric: list[str] = typer.Option(None, "--metric", help="tflops, time, peak or err"),
    out_path: Path = typer.Option(None, "-o", "--out", help="write the Markdown here"),
) -> None:
    """Markdown tables of a run: implementations down, sequence lengths across."""
    from harness.report.tables import pivot_markdown
    from harness.results import load_rows

    try:
        text = pivot_markdown(load_rows(run_dir), metric or ["tflops", "peak", "err"])
    except HarnessError as exc:
        fail(str(exc))
    if out_path is None:
        print(text, end="")
    else:
        out_path.write_text(text)
        err.print(f"wrote {out_path}", highlight=False, markup=False)
