"""`harness run`: a suite into a run directory, with progress and a report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from harness.cli.app import app
from harness.cli.console import err, fail, out
from harness.errors import HarnessError


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
                fail(f"--resume: {resume} is a run of suite {run_dir.meta().get('suite_name')!r},"
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
        fail(str(exc))
    err.print(f"run directory: {run_dir.path}", highlight=False, markup=False)
    try:
        rows = run_tasks(suite, tasks, run_dir, progress=_progress_printer(len(tasks)))
    except HarnessError as exc:
        fail(str(exc), code=1)
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
