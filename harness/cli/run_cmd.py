"""`harness run`: a suite into a run directory, with progress and a report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from harness.cli.app import app
from harness.cli.console import err, fail, say
from harness.errors import HarnessError
from harness.rows import FAILED

FAIL_ON_DEFAULT = "error,timeout"
FAIL_ON_HELP = "exit 1 if rows end with these statuses: oom, error, timeout (comma list) or none"


def parse_fail_on(value: str) -> tuple[str, ...]:
    """The statuses `--fail-on` names (`none`: the empty tuple); a bad value exits 2, one line."""
    allowed = f"a comma-separated list of {', '.join(FAILED)}, or none"
    parts = [p.strip() for p in value.split(",")]
    bad = next((p for p in parts if p not in (*FAILED, "none")), None)
    if bad is not None:
        fail(f"--fail-on: unknown status {bad!r} in {value!r}; allowed: {allowed}")
    if "none" in parts and len(parts) > 1:
        fail(f"--fail-on: 'none' cannot be combined with statuses in {value!r}; allowed: {allowed}")
    return () if parts == ["none"] else tuple(dict.fromkeys(parts))


def failed_counts(counts: dict[str, int], fail_on: tuple[str, ...]) -> dict[str, int]:
    """The row counts, by status, that make `run` exit 1 under `--fail-on`."""
    return {status: counts[status] for status in fail_on if counts.get(status)}


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

    # markup=False: the description holds plugin-given names, shown as they are
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                   transient=False)  # fmt: skip
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
    fail_on: str = typer.Option(FAIL_ON_DEFAULT, "--fail-on", help=FAIL_ON_HELP),
) -> None:
    """Run a suite: every case × implementation × phase, one row each, into a run directory.

    Exits 1 when rows end with a status named by --fail-on (by default error or timeout: a broken
    kernel must fail CI, an OOM at a long length is a result), after writing the run and report.
    """
    fail_statuses = parse_fail_on(fail_on)
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
                say(f"{task.case.name}  {task.impl}  {task.phase}", to_err=False)
            cases = len({task.case.name for task in tasks})
            say(f"{len(tasks)} tasks, {cases} cases, device {device}", to_err=False)
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
    say(f"run directory: {run_dir.path}")
    try:
        rows = run_tasks(suite, tasks, run_dir, progress=_progress_printer(len(tasks)))
    except HarnessError as exc:
        fail(str(exc), code=1)
    counts: dict[str, int] = {}
    for row in run_dir.rows():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    say(f"{len(rows)} rows written; totals: {counts}")
    if report:
        _maybe_report(run_dir.path)
    say(str(run_dir.path), to_err=False)
    failed = failed_counts(counts, fail_statuses)
    if failed:
        what = ", ".join(f"{n} {status}" for status, n in failed.items())
        say(f"failed rows: {what} (--fail-on {','.join(fail_statuses)}; `--fail-on none` "
            f"exits 0); see: harness show {run_dir.path}")  # fmt: skip
        raise typer.Exit(1)


def _maybe_report(path: Path) -> None:
    try:
        from harness.report import write_report
    except ImportError:
        return  # the report module arrives with the report issue
    try:
        target = write_report([path], path / "report.html")
    except Exception as exc:  # the rows are safe on disk; a report bug must not fail the run
        say(f"report failed ({type(exc).__name__}: {exc}); rerun: harness report {path}")
        return
    say(f"report: {target}")
