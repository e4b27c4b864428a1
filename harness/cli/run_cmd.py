"""`harness run`: a suite into a run directory, with progress and a report."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

import typer

from harness.cli.app import app
from harness.cli.console import err, fail, say
from harness.errors import HarnessError
from harness.rows import FAILED

FAIL_ON_DEFAULT = "error,timeout"
FAIL_ON_HELP = "exit 1 if rows end with these statuses: oom, error, timeout (comma list) or none"
FORCE_HELP = ("with --resume: resume even a run made with another suite, profile, device, torch "
              "or commit (recorded in its run.json)")  # fmt: skip


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
    line_open = [False]  # a task's line waits for its status

    def progress(i: int, n: int, task: Any, row: dict[str, Any] | None) -> None:
        elapsed = time.perf_counter() - started
        if row is None:
            err.print(f"[{i + 1}/{n}] {elapsed:7.1f}s  {task.case.name}  {task.impl}  {task.phase}",
                      highlight=False, markup=False, end="")  # fmt: skip
            line_open[0] = True
            return
        status = row.get("status")
        extra = (f"{row['time_ms_median']:.2f} ms" if status == "ok"
                 else (row.get("reason") or "")[:80])  # fmt: skip
        err.print(f"  -> {status} {extra}", highlight=False, markup=False)
        line_open[0] = False

    def stop() -> None:  # interrupted: end the task's line
        if line_open[0]:
            err.print(highlight=False, markup=False)

    progress.stop = stop  # type: ignore[attr-defined]
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

    progress.stop = bar.stop  # type: ignore[attr-defined]
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
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    ctx: typer.Context = None,  # type: ignore[assignment]  # given by typer: the lock's lifetime
    report: bool = typer.Option(True, "--report/--no-report", help="write report.html at the end"),
    fail_on: str = typer.Option(FAIL_ON_DEFAULT, "--fail-on", help=FAIL_ON_HELP),
) -> None:
    """Run a suite: every case × implementation × phase, one row each, into a run directory.

    Exits 1 when rows end with a status named by --fail-on (by default error or timeout: a broken
    kernel must fail CI, an OOM at a long length is a result), after writing the run and report.
    """
    fail_statuses = parse_fail_on(fail_on)
    from harness.suite import check_suite, read_suite

    try:  # the file, --impl and --filter first: refused in a blink, before torch is imported
        suite = read_suite(suite_path, profile=profile)
        suite.select(impl or None, filter_)
        launch = _launch()
    except HarnessError as exc:
        fail(str(exc))
    leader = None
    if launch is not None and launch.rank != 0:  # under torchrun: the others follow rank 0
        if not dry_run:
            _follow(launch)
        return
    if launch is not None and not dry_run:  # rank 0 runs the sweep and writes the run
        from harness.run.launched import Leader

        leader = Leader(launch)
        if ctx is not None:  # the followers end with rank 0, however it ends
            ctx.call_on_close(leader.stop)
        if resume is None:  # torchrun restarted the group: the same run goes on
            from harness.run.launched import restarted_run

            resume = restarted_run(out_root)
            if resume is not None:
                say(f"torchrun restarted the group: resuming {resume}")
    from harness.results import RunDir
    from harness.run.interrupt import Interrupted, stop_on_signals
    from harness.run.sweep import default_run_dir, plan, resolve_device, run_tasks

    try:
        check_suite(suite, str(suite_path))  # the implementations: imports the registry, torch
        # A dry run only plans, so a CUDA profile can be checked on a machine without a GPU.
        device = "cuda" if dry_run and suite.device == "cuda" else resolve_device(suite.device)
        tasks = plan(suite, device, impls=impl or None, case_filter=filter_)
        if resume is not None or not dry_run:
            meta = {"run_id": None, "suite_name": suite.name, "suite_path": str(suite_path),
                    "profile": profile, "argv": sys.argv,
                    "provenance": _provenance(device, suite.seed, suite.threads)}  # fmt: skip
            if launch is not None:
                meta["launch"] = launch.describe()
            peaks = meta["provenance"].get("device_peaks")
            tasks = [dataclasses.replace(t, device_peaks=peaks) for t in tasks]
            cases = [c.to_dict() | {"name": c.name} for c in suite.cases()]
            expanded = {"suite": suite.model_dump(mode="json"), "cases": cases}
        if resume is not None:  # locked; refused if made with another suite etc., unless --force
            run_dir = RunDir.resume(resume, meta, expanded, force=force, write=not dry_run)
            if dry_run:
                done = run_dir.done_keys()
                tasks = [task for task in tasks if task.key not in done]
        if dry_run:
            _warn(suite)
            for task in tasks:
                say(f"{task.case.name}  {task.impl}  {task.phase}", to_err=False)
            num_cases = len({task.case.name for task in tasks})
            where = f" missing from {resume} ({len(done)} rows there)" if resume else ""
            say(f"{len(tasks)} tasks{where}, {num_cases} cases, device {device}", to_err=False)
            return
        if resume is None:
            run_id, path = default_run_dir(out_root, suite.name)
            run_dir = RunDir.create(path, meta | {"run_id": run_id}, expanded)
        if ctx is not None:  # the lock goes when the command ends, however it ends
            ctx.call_on_close(run_dir.unlock)
        if leader is not None:
            _lead(leader, run_dir, tasks, out_root)
    except HarnessError as exc:
        fail(str(exc))
    say(f"run directory: {run_dir.path}")
    _warn(suite)  # after every refusal: an error stays one line
    progress = _progress_printer(len(tasks))
    try:
        with stop_on_signals():  # SIGINT, SIGTERM, SIGHUP: every worker killed at once
            if leader is None:
                rows = run_tasks(suite, tasks, run_dir, progress=progress)
            else:  # an internal error's traceback goes to torchrun's error file too
                from torch.distributed.elastic.multiprocessing.errors import record

                rows = record(run_tasks)(suite, tasks, run_dir, progress=progress,
                                         make_pool=leader.pool)  # fmt: skip
    except HarnessError as exc:
        fail(str(exc), code=1)
    except Interrupted as stop:
        progress.stop()
        if leader is not None:
            leader.exit_code = stop.exit_code
            leader.stop(wait=False)
        again = ["harness", "run", str(suite_path), "--resume", str(run_dir.path)]
        again += ["--profile", profile] if profile else []
        again += [arg for name in impl or [] for arg in ("--impl", name)]
        again += ["--filter", filter_] if filter_ else []
        again += [] if report else ["--no-report"]
        with suppress(OSError):  # after SIGHUP the terminal may be gone
            done = run_dir.done_keys()
            say(f"stopped by {stop.name}: {sum(t.key in done for t in tasks)} of {len(tasks)} "
                f"rows written; to finish the run: {shlex.join(again)}")  # fmt: skip
        _exit_now(stop.exit_code)
    counts: dict[str, int] = {}
    for row in run_dir.rows():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    say(f"{len(rows)} rows written; totals: {counts}")
    if report:
        _maybe_report(run_dir.path)
    say(str(run_dir.path), to_err=False)
    failed = failed_counts(counts, fail_statuses)
    if leader is not None:  # every launched process exits as rank 0 does (Leader.stop)
        leader.exit_code = 1 if failed else 0
        leader.stop()
    if failed:
        what = ", ".join(f"{n} {status}" for status, n in failed.items())
        say(f"failed rows: {what} (--fail-on {','.join(fail_statuses)}; `--fail-on none` "
            f"exits 0); see: harness show {run_dir.path}")  # fmt: skip
        raise typer.Exit(1)


def _lead(leader: Any, run_dir: Any, tasks: list[Any], out_root: Path) -> None:
    """Rank 0 under torchrun: where a restarted group finds this run, and the case that was in
    flight when a launched process died (an `error` row, harness/run/launched.py)."""
    from harness.run.launched import INFLIGHT, agent_id, lost_row, run_pointer

    lost = lost_row(run_dir.path, tasks, run_dir.done_keys())
    if lost is not None:
        run_dir.append({**lost, "run_id": run_dir.meta().get("run_id")})
    if run_dir.path.parent.resolve() == out_root.resolve():  # a run this command made in --out
        run_pointer(out_root).write_text(f"{agent_id()}\n{run_dir.path}\n")
    leader.inflight = run_dir.path / INFLIGHT


def _launch() -> Any:
    """This process's place under torchrun (harness/run/launched.py), or None when alone."""
    from harness.run.launched import from_env

    return from_env()


def _follow(launch: Any) -> None:
    """A launched rank other than 0: run its part of rank 0's sweep; rank 0 writes the run."""
    from torch.distributed.elastic.multiprocessing.errors import record

    from harness.run.launched import follow

    say(f"rank {launch.rank} of {launch.world} (node {launch.node_rank}): following rank 0's "
        "sweep; rank 0 writes the run directory")  # fmt: skip
    ran, code = record(follow)(launch)
    say(f"rank {launch.rank}: done; ran its rank of {ran} distributed tasks; exit {code} as rank "
        "0 does")  # fmt: skip
    if code:
        raise typer.Exit(code)


def _exit_now(code: int) -> NoReturn:
    """Exit without tearing the interpreter down: after a stop signal the rows are on disk
    (fsync) and every worker is reaped, while a teardown with torch loaded takes about a CPU
    second, with the signals' default actions back (another Ctrl-C would end it by signal)."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _warn(suite: Any) -> None:
    """A suite that runs, but not as meant (harness.suite.Suite.warnings)."""
    for line in suite.warnings():
        say(f"warning: {line}")


def _provenance(device: str, seed: int, threads: int | None) -> dict[str, Any]:
    import torch

    from harness import provenance
    from harness.measure.peaks import device_peaks
    from harness.run.threads import resolve_threads

    if device == "cuda" and not torch.cuda.is_available():  # a dry run planning for a GPU
        return {"device": device}
    before = torch.get_num_threads()
    # the provenance's num_threads and the peak probes: the threads the workers will use
    torch.set_num_threads(resolve_threads(threads))
    try:
        info = provenance.collect(device, seed)
        info["device_peaks"] = device_peaks(device, str(info.get("device_name") or ""))
    finally:
        torch.set_num_threads(before)
    return info


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
