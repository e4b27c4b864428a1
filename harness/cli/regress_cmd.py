"""Regression commands: `compare` (the one judge), `history`, `baseline`, `export`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from harness.cli.app import app, baseline_app, export_app
from harness.cli.console import fail, fmt, out, say
from harness.errors import HarnessError
from harness.results import check_output_paths, write_text_atomic


@app.command("compare")
def compare_cmd(
    baseline: Path = typer.Argument(..., help="baseline run directory"),
    candidate: Path = typer.Argument(..., help="candidate run directory"),
    time_tol: float = typer.Option(None, "--time-tol", help="time effect threshold [0.10]"),
    impl_tol: float = typer.Option(
        None, "--impl-tol", help="an implementation's effect threshold, all rows together [0.065]"
    ),
    mem_tol: float = typer.Option(None, "--mem-tol", help="peak-memory tolerance [0.02]"),
    err_factor: float = typer.Option(None, "--err-factor", help="error ratio limit [2.0]"),
    alpha: float = typer.Option(None, "--alpha", help="significance level [0.05]"),
    min_samples: int = typer.Option(None, "--min-samples", help="raw samples needed [5]"),
    normalize_to: str = typer.Option(None, "--normalize-to", help="time relative to this impl"),
    common_shift: bool = typer.Option(
        None,
        "--common-shift/--no-common-shift",
        help="judge time after removing the run-wide shift",
    ),
    json_path: Path = typer.Option(None, "--json", help="write a JSON summary here"),
    md_path: Path = typer.Option(None, "--markdown", help="write a Markdown summary here"),
    show_all: bool = typer.Option(False, "--all", help="list unchanged rows too"),
) -> None:
    """Judge CANDIDATE against BASELINE; exit 1 on regression, 2 on bad input, 0 otherwise.

    Thresholds not given as flags come from the candidate suite's `compare:` section.
    """
    import json

    from harness.regress.compare import compare_paths
    from harness.regress.render import impl_table, markdown, table

    try:
        check_output_paths({"--json": json_path, "--markdown": md_path})
        result = compare_paths(baseline, candidate, time_tol=time_tol, impl_tol=impl_tol,
                               mem_tol=mem_tol,
                               err_factor=err_factor, alpha=alpha, min_samples=min_samples,
                               normalize_to=normalize_to, common_shift=common_shift)  # fmt: skip
    except HarnessError as exc:
        fail(str(exc))
    for warning in result.warnings:
        say(f"note: {warning}")
    out.print(table(result, show_all=show_all))
    if (impls := impl_table(result)) is not None:
        out.print(impls)
    if json_path is not None:  # strings verbatim: reasons quote rows as they are
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2, default=str,
                                                ensure_ascii=False))  # fmt: skip
    if md_path is not None:
        write_text_atomic(md_path, markdown(result, show_all=show_all))
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
    """Time series per case over many runs; exit 1 if a regression persists at the newest night.

    Change points come from ruptures (PELT) and are kept only when compare's rule finds the
    segments differ; a night is flagged when a regression change holds for --persist nights.
    """
    from pydantic import ValidationError
    from rich.text import Text

    from harness.regress import history as hist
    from harness.suite import CompareSettings

    try:  # the flag is checked here; thresholds otherwise come from each suite's `compare:`
        CompareSettings(**({"time_tol": time_tol} if time_tol is not None else {}))
    except ValidationError as exc:  # a bad flag is a user error; anything else below is a bug
        fail(f"--time-tol: {exc.errors()[0]['msg']} (got {time_tol})")
    try:
        check_output_paths({"--csv": csv_path, "--html": html_path})
        frame = hist.load_history(root, suite=suite)
        if normalize_to:
            frame = hist.normalize(frame, normalize_to)
        flagged = hist.flag_history(
            frame, window=window, persist=persist, overrides={"time_tol": time_tol}
        )
    except HarnessError as exc:
        fail(str(exc))
    bad = hist.latest_regressions(flagged)
    nights, series = flagged["run_id"].nunique(), len(flagged.groupby(["case", "impl", "phase"]))
    table = Table(title=f"{len(bad)} series regressed for {persist} nights in a row "
                        f"({nights} runs, {series} series)")  # fmt: skip
    for col in ("suite", "device", "case", "impl", "phase", "latest", "window median", "why"):
        table.add_column(col, overflow="fold")
    for rec in bad.to_dict("records"):  # cells as Text: reasons may hold "[...]" (not markup)
        table.add_row(*(Text(fmt(rec[k])) for k in ("suite_name", "device_name", "case", "impl",
                                               "phase", "time_ms_median", "ref_time_ms",
                                               "worse")))  # fmt: skip
    out.print(table)
    changes = flagged[flagged["change"].notna()]
    if len(changes):  # every judged step, older ones too: where a level moved and by how much
        plural = "s" if len(changes) != 1 else ""
        steps = Table(title=f"{len(changes)} change point{plural} (judged by compare's rule)")
        for col in ("suite", "device", "case", "impl", "phase", "run", "change", "time ratio"):
            steps.add_column(col, overflow="fold")
        for rec in changes.to_dict("records"):
            steps.add_row(*(Text(fmt(rec[k])) for k in ("suite_name", "device_name", "case",
                                                        "impl", "phase", "run_id", "change",
                                                        "change_ratio")))  # fmt: skip
        out.print(steps)
    if csv_path is not None:  # the raw samples stay in the run directories
        plain = flagged.drop(
            columns=[hist.SAMPLES, hist.NAN_FIELDS, hist.SUITE_COMPARE], errors="ignore"
        )
        write_text_atomic(csv_path, plain.to_csv(index=False))
    if html_path is not None:
        from harness.report.history_figure import history_figure

        # plotly.js inside the file: CI artifacts are opened offline, where a CDN page is blank
        write_text_atomic(html_path, history_figure(flagged).to_html(include_plotlyjs=True))
    raise typer.Exit(1 if len(bad) else 0)


@baseline_app.command("promote")
def baseline_promote(
    run_dir: Path = typer.Argument(..., help="the run to keep as the baseline"),
    root: Path = typer.Option(Path("results/baselines"), "--root", help="baselines folder"),
    force: bool = typer.Option(False, "--force", help="replace a baseline / allow failed rows"),
) -> None:
    """Copy a run's data files to results/baselines/<device>/<suite>[-<profile>].

    Refuses (exit 2) a run with failed rows or an unfinished one (rows its suite asks for are
    missing) unless --force; a forced baseline records it in its baseline.json.
    """
    from harness.regress.baseline import describe, promote

    try:
        target = promote(run_dir, root, force=force)
    except HarnessError as exc:
        fail(str(exc))
    facts = describe(target)
    if facts.get("num_missing_rows") or facts.get("failed_rows"):
        say(f"note: forced: {facts.get('num_missing_rows', 0)} of {facts.get('num_expected_rows')} "
            f"rows missing, {len(facts.get('failed_rows') or [])} failed (recorded in "
            f"{target / 'baseline.json'})")  # fmt: skip
    say(str(target), to_err=False)


@baseline_app.command("path")
def baseline_path(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    root: Path = typer.Option(Path("results/baselines"), "--root", help="baselines folder"),
) -> None:
    """Print where the baseline for this run's device, suite and profile lives (exists or not)."""
    from harness.regress.baseline import baseline_dir

    try:
        say(str(baseline_dir(run_dir, root)), to_err=False)
    except HarnessError as exc:
        fail(str(exc))


@export_app.command("pytest-benchmark")
def export_pytest_benchmark(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    output: Path = typer.Option(..., "-o", "--output", help="JSON file to write"),
) -> None:
    """Write the run as pytest-benchmark JSON (`pytest-benchmark compare FILE ...` reads it)."""
    from harness.regress.pytest_benchmark import export

    try:
        check_output_paths({"-o": output})
        count = export(run_dir, output)
    except HarnessError as exc:
        fail(str(exc))
    say(f"{count} benchmarks written to {output}")
