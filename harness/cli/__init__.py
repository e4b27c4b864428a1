"""Command line: `harness run | list | show | report` (and `python -m harness ...`).

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
from rich.text import Text

from harness.errors import HarnessError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run, compare and guard attention implementations.")  # fmt: skip
# Wide enough that tables stay readable when piped into a log or CI output.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)


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


def _progress_printer(total_cases: int) -> Any:
    """A progress bar on a terminal; one line per row in logs (CI, pipes)."""
    if err.is_terminal:
        return _progress_bar(total_cases)
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


def _progress_bar(total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=False)  # fmt: skip
    handle = bar.add_task("starting", total=total)
    bar.start()

    def progress(i: int, n: int, task: Any, row: dict[str, Any] | None) -> None:
        bar.update(handle, total=n, completed=i,
                   description=f"{task.case.name} {task.impl} {task.phase}")  # fmt: skip
        if row is not None and i == n:
            bar.stop()

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
    from harness.run.sweep import default_run_dir, plan, resolve_device, run_tasks
    from harness.suite import load_suite

    try:
        suite = load_suite(suite_path, profile=profile)
        # A dry run only plans, so a CUDA profile can be checked on a machine without a GPU.
        device = "cuda" if dry_run and suite.device == "cuda" else resolve_device(suite.device)
        tasks = plan(suite, device, impls=impl or None, case_filter=filter_)
        if dry_run:
            for task in tasks:
                out.print(f"{task.case.name}  {task.impl}  {task.phase}", highlight=False)
            cases = len({task.case.name for task in tasks})
            out.print(f"{len(tasks)} tasks, {cases} cases, device {device}", highlight=False)
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
    try:
        rows = run_tasks(suite, tasks, run_dir, progress=_progress_printer(len(tasks)))
    except HarnessError as exc:
        _fail(str(exc), code=1)
    counts: dict[str, int] = {}
    for row in run_dir.rows():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    err.print(f"{len(rows)} rows written; totals: {counts}", highlight=False, markup=False)
    if report:
        _maybe_report(run_dir.path)
    out.print(str(run_dir.path), highlight=False, soft_wrap=True)


def _maybe_report(path: Path) -> None:
    try:
        from harness.report import write_report
    except ImportError:
        return  # the report module arrives with the report issue
    try:
        target = write_report([path], path / "report.html")
    except Exception as exc:  # the rows are safe on disk; a report bug must not fail the run
        err.print(f"report failed ({type(exc).__name__}: {exc}); rerun: harness report {path}",
                  highlight=False, markup=False)  # fmt: skip
        return
    err.print(f"report: {target}", highlight=False, markup=False)


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
        _fail(f"--static: unknown format {static!r}; valid: {', '.join(FORMATS)}")
    try:
        target = write_report(run_dirs, out_path, baseline=baseline, static=static,
                              history_root=history)  # fmt: skip
    except (HarnessError, ValueError) as exc:
        _fail(str(exc))
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
        _fail(str(exc))
    if out_path is None:
        print(text, end="")
    else:
        out_path.write_text(text)
        err.print(f"wrote {out_path}", highlight=False, markup=False)


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
    from harness.cli.model import model_ring_command

    try:
        model_ring_command(out, profile=profile, model=model, phase=phase, causal=causal,
                           max_p=max_p, seq_len=seq_len, calibrate=calibrate,
                           json_path=json_path, stat=stat, fit_slots=fit_slots)  # fmt: skip
    except HarnessError as exc:
        _fail(str(exc))


def main() -> None:
    app()


@app.command("compare")
def compare_cmd(
    baseline: Path = typer.Argument(..., help="baseline run directory"),
    candidate: Path = typer.Argument(..., help="candidate run directory"),
    time_tol: float = typer.Option(None, "--time-tol", help="time effect threshold [0.10]"),
    mem_tol: float = typer.Option(None, "--mem-tol", help="peak-memory tolerance [0.02]"),
    err_factor: float = typer.Option(None, "--err-factor", help="error ratio limit [2.0]"),
    alpha: float = typer.Option(None, "--alpha", help="significance level [0.05]"),
    min_samples: int = typer.Option(None, "--min-samples", help="raw samples needed [5]"),
    normalize_to: str = typer.Option(None, "--normalize-to", help="time relative to this impl"),
    json_path: Path = typer.Option(None, "--json", help="write a JSON summary here"),
    md_path: Path = typer.Option(None, "--markdown", help="write a Markdown summary here"),
    show_all: bool = typer.Option(False, "--all", help="list unchanged rows too"),
) -> None:
    """Judge CANDIDATE against BASELINE; exit 1 on regression, 2 on bad input, 0 otherwise.

    Thresholds not given as flags come from the candidate suite's `compare:` section.
    """
    import json

    from harness.regress.compare import compare_paths
    from harness.regress.render import markdown, table

    try:
        result = compare_paths(baseline, candidate, time_tol=time_tol, mem_tol=mem_tol,
                               err_factor=err_factor, alpha=alpha, min_samples=min_samples,
                               normalize_to=normalize_to)  # fmt: skip
    except HarnessError as exc:
        _fail(str(exc))
    for warning in result.warnings:
        err.print(f"note: {warning}", markup=False, highlight=False, soft_wrap=True)
    out.print(table(result, show_all=show_all))
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    if md_path is not None:
        md_path.write_text(markdown(result, show_all=show_all))
    raise typer.Exit(result.exit_code)


@app.command("history")
def history_cmd(
    root: Path = typer.Argument(..., metavar="RESULTS_ROOT", help="folder holding run dirs"),
    suite: str = typer.Option(None, "--suite", help="only runs of this suite"),
    window: int = typer.Option(7, "--window", help="recent nights that form the reference"),
    persist: int = typer.Option(2, "--persist", help="consecutive worse nights to flag"),
    normalize_to: str = typer.Option(None, "--normalize-to", help="time relative to this impl"),
    time_tol: float = typer.Option(None, "--time-tol", help="time tolerance [0.10]"),
    csv_path: Path = typer.Option(None, "--csv", help="write the flagged series here"),
    html_path: Path = typer.Option(None, "--html", help="write the history figure here"),
) -> None:
    """Time series per case over many runs; exit 1 if a regression persists at the newest night."""
    from harness.regress.history import flag_history, latest_regressions, load_history, normalize
    from harness.suite import CompareSettings

    try:
        frame = load_history(root, suite=suite)
        if normalize_to:
            frame = normalize(frame, normalize_to)
        settings = CompareSettings(**({"time_tol": time_tol} if time_tol is not None else {}))
        flagged = flag_history(frame, settings, window=window, persist=persist)
    except (HarnessError, ValueError) as exc:
        _fail(str(exc))
    bad = latest_regressions(flagged)
    nights, series = flagged["run_id"].nunique(), len(flagged.groupby(["case", "impl", "phase"]))
    table = Table(title=f"{len(bad)} series regressed for {persist} nights in a row "
                        f"({nights} runs, {series} series)")  # fmt: skip
    for col in ("suite", "device", "case", "impl", "phase", "latest", "window median", "why"):
        table.add_column(col, overflow="fold")
    for rec in bad.to_dict("records"):
        table.add_row(rec["suite_name"], rec["device_name"], rec["case"], rec["impl"],
                      rec["phase"], _fmt(rec["time_ms_median"]), _fmt(rec["ref_time_ms"]),
                      str(rec["worse"]))  # fmt: skip
    out.print(table)
    if csv_path is not None:
        flagged.to_csv(csv_path, index=False)
    if html_path is not None:
        from harness.report.history_figure import history_figure

        history_figure(flagged).write_html(html_path, include_plotlyjs="cdn")
    raise typer.Exit(1 if len(bad) else 0)


baseline_app = typer.Typer(no_args_is_help=True, help="Curated baselines under results/baselines.")
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("promote")
def baseline_promote(
    run_dir: Path = typer.Argument(..., help="the run to keep as the baseline"),
    root: Path = typer.Option(Path("results/baselines"), "--root", help="baselines folder"),
    force: bool = typer.Option(False, "--force", help="replace a baseline / allow failed rows"),
) -> None:
    """Copy a run's data files to results/baselines/<device>/<suite>[-<profile>]."""
    from harness.regress.baseline import promote

    try:
        target = promote(run_dir, root, force=force)
    except HarnessError as exc:
        _fail(str(exc))
    out.print(str(target), highlight=False)


@baseline_app.command("path")
def baseline_path(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    root: Path = typer.Option(Path("results/baselines"), "--root", help="baselines folder"),
) -> None:
    """Print where the baseline for this run's device, suite and profile lives (exists or not)."""
    from harness.regress.baseline import baseline_dir

    try:
        out.print(str(baseline_dir(run_dir, root)), highlight=False, soft_wrap=True)
    except HarnessError as exc:
        _fail(str(exc))


export_app = typer.Typer(no_args_is_help=True, help="Export runs to other tools' formats.")
app.add_typer(export_app, name="export")


@export_app.command("pytest-benchmark")
def export_pytest_benchmark(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    output: Path = typer.Option(..., "-o", "--output", help="JSON file to write"),
) -> None:
    """Write the run as pytest-benchmark JSON (`pytest-benchmark compare FILE ...` reads it)."""
    from harness.regress.pytest_benchmark import export

    try:
        count = export(run_dir, output)
    except HarnessError as exc:
        _fail(str(exc))
    err.print(f"{count} benchmarks written to {output}", highlight=False, markup=False)
