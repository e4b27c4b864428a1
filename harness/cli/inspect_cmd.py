"""Read-only commands on implementations and runs: `list`, `show`, `table`, `report`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from harness.cli.app import app
from harness.cli.console import FORMATS, check_choice, fail, out, say, write_records
from harness.errors import HarnessError
from harness.results import check_output_paths, write_text_atomic

LIST_COLUMNS = ("name", "label", "workload", "layout", "distributed", "takes", "status", "reason")
_SHORT = {"gqa": "GQA", "seqlen_q_ne_k": "Sq≠Sk", "head_dim_v": "Dv≠D", "softmax_scale": "scale"}


def _takes(impl) -> str:  # noqa: ANN001 - an Impl
    """The shapes and masks an attention implementation declares, in a few words."""
    if impl.workload == "decode":
        names = {"gqa": "GQA", "head_dim_v": "Dv≠D", "softmax_scale": "scale", "paged_kv": "paged"}
        return " ".join(names[f] for f in sorted(impl.features) if f in names) or "contiguous"
    if impl.workload != "attention":
        return ""
    from harness.masks import MASK_KINDS

    feats = " ".join(_SHORT.get(f, f) for f in sorted(impl.features)) or "equal shapes"
    kinds = "all masks" if set(MASK_KINDS) <= set(impl.mask_kinds) else \
        "masks: " + ", ".join(impl.mask_kinds)  # fmt: skip
    return f"{feats}; {kinds}"


@app.command("list")
def list_impls(
    format_: str = typer.Option("table", "--format", help="table, json, csv or md"),
) -> None:
    """Every registered implementation, whether it can run here, and why not."""
    check_choice("--format", format_, FORMATS)
    import torch

    from harness.registry import REGISTRY

    device = "cuda" if torch.cuda.is_available() else "cpu"
    records = []
    for impl in REGISTRY.all():
        av = impl.available(device)
        status = "available" if av.ok else "skipped"
        records.append({"name": impl.name, "label": impl.label, "workload": impl.workload,
                        "layout": impl.layout, "distributed": impl.needs_process_group,
                        "takes": _takes(impl), "status": status,
                        "reason": av.reason})  # fmt: skip
    for name, problem in REGISTRY.plugin_errors.items():
        records.append({"name": name, "label": "", "workload": "", "layout": "",
                        "distributed": None, "takes": "", "status": "broken plugin",
                        "reason": problem})  # fmt: skip
    if format_ != "table":
        write_records(records, LIST_COLUMNS, format_)
        return
    table = Table(title=Text(f"implementations (device: {device}, torch {torch.__version__})"))
    for col in LIST_COLUMNS:
        table.add_column(col, no_wrap=col in ("name", "status"), overflow="fold")
    for rec in records:
        distributed = {True: "yes", False: "no"}.get(rec["distributed"], "")
        # Text cells: "pip install '.[flash]'" and plugin errors are no markup.
        table.add_row(*(Text(distributed if c == "distributed" else str(rec[c] or ""))
                        for c in LIST_COLUMNS))  # fmt: skip
    out.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="run directories"),
    out_path: Path = typer.Option(Path("report.html"), "-o", "--out", help="HTML file to write"),
    baseline: Path = typer.Option(None, "--baseline", help="a run to compare against"),
    static: str = typer.Option(None, "--static", help="also export every figure: png or svg"),
    history: Path = typer.Option(None, "--history", help="add the history of runs under this"),
) -> None:
    """A self-contained, offline HTML report of one or more runs (plotly.js inside the file).

    A run directory given twice (`RUN`, `RUN/`, a symlink) is read once; two copies of one run
    are refused. `--static` is checked (kaleido installed) before anything is written.
    """
    from harness.report import write_report
    from harness.report.data import unique_run_dirs
    from harness.report.static import require_static

    try:
        check_output_paths({"-o": out_path})
        if static is not None:
            require_static(static)
        run_dirs, repeats = unique_run_dirs(run_dirs)
        for note in repeats:
            say(f"note: {note}")
        target = write_report(run_dirs, out_path, baseline=baseline, static=static,
                              history_root=history)  # fmt: skip
    except HarnessError as exc:
        fail(str(exc))
    say(str(target), to_err=False)


@app.command()
def show(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    all_columns: bool = typer.Option(False, "--all", help="every field of every row"),
    format_: str = typer.Option("table", "--format", help="table, json, csv or md"),
) -> None:
    """A readable table of a run's rows (or its rows as JSON, CSV or Markdown)."""
    from harness.cli import show_table
    from harness.results import RunDir

    check_choice("--format", format_, FORMATS)
    try:
        rows = RunDir.open(run_dir).rows()  # plain dicts: no pandas for a quick look
    except HarnessError as exc:
        fail(str(exc))
    if all_columns and rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    else:  # an empty run still gets its CSV header / Markdown columns
        columns = [c for c in show_table.SHOWN if not rows or any(c in r for r in rows)]
    if format_ != "table":
        write_records(rows, columns, format_)
        return
    if not rows:
        say(f"{run_dir}: no rows", to_err=False)
        return
    if all_columns:
        lines = show_table.render_records(rows, columns, title=str(run_dir), width=out.width)
    else:
        lines = show_table.render(rows, title=str(run_dir), width=out.width)
    for line in lines:
        out.print(line, highlight=False)


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
        check_output_paths({"-o": out_path})
        from harness.report.data import normalize

        # normalized as the report reads rows: mask_label and the shape axes exist for any run
        text = pivot_markdown(normalize(load_rows(run_dir)), metric or ["tflops", "peak", "err"])
    except HarnessError as exc:
        fail(str(exc))
    if out_path is None:
        print(text, end="")
    else:
        write_text_atomic(out_path, text)
        say(f"wrote {out_path}")
