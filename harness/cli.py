"""Command line: `harness run | list | show` (and `python -m harness ...`).

User errors print one line to stderr and exit 2; nothing is written before a suite validates.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from harness.errors import HarnessError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run, compare and guard attention implementations.")  # fmt: skip
err = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command("list")
def list_impls() -> None:
    """Every registered implementation, whether it can run here, and why not."""
    import torch

    from harness.registry import REGISTRY

    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = Table(title=f"implementations (device: {device}, torch {torch.__version__})")
    for col in ("name", "label", "workload", "layout", "distributed", "status", "reason"):
        table.add_column(col)
    for impl in REGISTRY.all():
        av = impl.available(device)
        table.add_row(impl.name, impl.label, impl.workload, impl.layout,
                      "yes" if impl.needs_process_group else "no",
                      "available" if av.ok else "skipped", av.reason)  # fmt: skip
    for name, problem in REGISTRY.plugin_errors.items():
        table.add_row(name, "", "", "", "", "broken plugin", problem)
    out.print(table)


def _progress_printer(total_cases: int) -> Any:
    started = time.perf_counter()

    def progress(i: int, n: int, task: Any, row: dict[str, Any] | None) -> None:
        elapsed = time.perf_counter() - started
        if row is None:
            err.print(f"[{i + 1}/{n}] {elapsed:7.1f}s  {task.case.name}  {task.impl}  {task.phase}",
                      highlight=False, markup=False, end="")  # fmt: skip
            return
        status = row.get("status")
        extra = (f"{row['time_ms_median']:.2f} ms" if status == "ok"
                 else (row.get("reason") or "")[:80])  # fmt: skip
        err.print(f"  -> {status} {extra}", highlight=False, markup=False)

    return progress


@app.command()
def run(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="suite YAML file"),
    impl: list[str] = typer.Option(None, "--impl", help="run only these implementations"),
    filter_: str = typer.Option(None, "--filter", help="run only cases whose name contains this"),
    out_root: Path = typer.Option(Path("results"), "--out", help="folder that receives the run"),
    profile: str = typer.Option(None, "--profile", help="a profile of the suite (e.g. gpu)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the tasks, run nothing"),
    resume: Path = typer.Option(None, "--resume", help="finish the missing rows of this run"),
    report: bool = typer.Option(True, "--report/--no-report", help="write report.html at the end"),
) -> None:
    """Run a suite: every case × implementation × phase, one row each, into a run directory."""
    from harness import provenance
    from harness.results import RunDir
    from harness.runner import default_run_dir, plan, resolve_device, run_tasks
    from harness.suite import load_suite

    try:
        suite = load_suite(suite_path, profile=profile)
        device = resolve_device(suite.device)
        tasks = plan(suite, device, impls=impl or None, case_filter=filter_)
        if dry_run:
            for task in tasks:
                out.print(f"{task.case.name}  {task.impl}  {task.phase}", highlight=False)
            out.print(f"{len(tasks)} tasks, {len(suite.cases())} cases", highlight=False)
            return
        if resume is not None:
            run_dir = RunDir.open(resume)
            if run_dir.meta().get("suite_name") != suite.name:
                _fail(f"--resume: {resume} is a run of suite {run_dir.meta().get('suite_name')!r},"
                      f" not {suite.name!r}")  # fmt: skip
        else:
            run_id, path = default_run_dir(out_root, suite.name)
            meta = {"run_id": run_id, "suite_name": suite.name, "suite_path": str(suite_path),
                    "profile": profile, "argv": sys.argv,
                    "provenance": provenance.collect(device, suite.seed)}  # fmt: skip
            cases = [c.to_dict() | {"name": c.name} for c in suite.cases()]
            expanded = {"suite": suite.model_dump(mode="json"), "cases": cases}
            run_dir = RunDir.create(path, meta, expanded)
    except HarnessError as exc:
        _fail(str(exc))
    err.print(f"run directory: {run_dir.path}", highlight=False, markup=False)
    rows = run_tasks(suite, tasks, run_dir, progress=_progress_printer(len(tasks)))
    counts: dict[str, int] = {}
    for row in run_dir.rows():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    err.print(f"{len(rows)} rows written; totals: {counts}", highlight=False, markup=False)
    if report:
        _maybe_report(run_dir.path)
    out.print(str(run_dir.path), highlight=False)


def _maybe_report(path: Path) -> None:
    try:
        from harness.report import write_report
    except ImportError:
        return  # the report module arrives with the report issue
    target = write_report([path], path / "report.html")
    err.print(f"report: {target}", highlight=False, markup=False)


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
        _fail(str(exc))
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
        table.add_row(*(_fmt(rec[c]) for c in cols))
    out.print(table)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


model_app = typer.Typer(no_args_is_help=True, help="Analytic models (past one machine).")
app.add_typer(model_app, name="model")


@model_app.command("ring")
def model_ring(
    profile: str = typer.Option("a100-nvlink", "--profile", help="profile name or YAML file"),
    model: str = typer.Option("7b", "--model", help="model size for memory: 3b, 7b, 13b"),
    phase: str = typer.Option("fwd_bwd", "--phase", help="fwd or fwd_bwd"),
    causal: bool = typer.Option(False, "--causal/--full", help="causal mask (zigzag layout)"),
    max_p: int = typer.Option(4096, "--max-p", min=1, help="largest device count"),
    seq_len: int = typer.Option(None, "--seq-len", help="time this length (default: max context)"),
    calibrate: Path = typer.Option(None, "--calibrate", help="a ring run dir to validate against"),
    json_path: Path = typer.Option(None, "--json", help="write the tables here as JSON"),
    stat: str = typer.Option("median", "--stat", help="with --calibrate: median or p20 times"),
    fit_slots: bool = typer.Option(False, "--fit-slots", help="fit concurrent compute on P = 2"),
) -> None:
    """Ring Attention's per-step time, overlap, memory and max context for P = 1..max-p."""
    from harness.ring_cli import model_ring_command

    try:
        model_ring_command(out, profile=profile, model=model, phase=phase, causal=causal,
                           max_p=max_p, seq_len=seq_len, calibrate=calibrate,
                           json_path=json_path, stat=stat, fit_slots=fit_slots)  # fmt: skip
    except HarnessError as exc:
        _fail(str(exc))


def main() -> None:
    app()
