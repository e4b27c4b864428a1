"""`harness frontier`: the longest context each implementation fits in a memory budget.

A thin driver over the runner (harness/frontier/): one isolated worker task per probed length.
Prints a table (max length, ratio to the shortest of the same workload and phase, peak at the max,
first failure), writes `--json FILE` (harness/frontier/records.py) and `--report FILE.html`
(harness/report/frontier.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from harness.case import DTYPES
from harness.cli.app import app
from harness.cli.console import check_choice, fail, out, say
from harness.errors import HarnessError

PHASES = ("fwd", "bwd", "fwd_bwd")
DEVICES = ("auto", "cpu", "cuda")
_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
MIN_BUDGET, MAX_BUDGET = 1 << 20, 1 << 50  # 1 MiB … 1 PiB, as limits.memory_budget_gb
MAX_SEQLEN = 1 << 30


def parse_budget(text: str | None) -> int | None:
    """'8GiB', '512MiB', '1.5GiB', a number of bytes, or 'device' (None: the runner's default
    guard, 0.8 × the memory free at the worker's start). ValueError names the value."""
    if text is None or text == "device":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]iB|B)?\s*", text)
    allowed = "a size such as 8GiB, 512MiB, 1.5GiB or a number of bytes (1 MiB to 1 PiB), or device"
    if match is None:
        raise ValueError(f"--memory-budget: {text!r} is not a size; allowed: {allowed}")
    value = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if not MIN_BUDGET <= value <= MAX_BUDGET:
        raise ValueError(f"--memory-budget: {text!r} is out of range; allowed: {allowed}")
    return value


def _positive(flag: str, value: int | None, high: int = MAX_SEQLEN) -> None:
    if value is not None and not 1 <= value <= high:
        fail(f"{flag}: {value} is out of range; allowed: an integer from 1 to {high}")


@app.command("frontier")
def frontier(
    impls: list[str] = typer.Option(..., "--impl", help="implementation (repeat for more)"),
    phases: list[str] = typer.Option(["fwd"], "--phase", help="fwd, bwd or fwd_bwd (repeat)"),
    memory_budget: str = typer.Option(
        None, "--memory-budget", help="e.g. 8GiB; default: the device's (0.8 × free)"
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    batch: int = typer.Option(1, "--batch"),
    num_heads: int = typer.Option(8, "--num-heads"),
    head_dim: int = typer.Option(64, "--head-dim", help="attention and decode"),
    hidden: int = typer.Option(512, "--hidden", help="layer workload (head_dim = hidden/heads)"),
    dtype: str = typer.Option("float32", "--dtype"),
    causal: bool = typer.Option(False, "--causal/--full"),
    block_size: int = typer.Option(None, "--block-size", help="default: each impl's own"),
    start: int = typer.Option(None, "--start", help="first length (default: granularity)"),
    granularity: int = typer.Option(
        None, "--granularity", help="lengths tried are multiples (default: block size, 256)"
    ),
    resolution: int = typer.Option(None, "--resolution", help="stop bisecting at this gap"),
    max_seqlen: int = typer.Option(1 << 20, "--max-seqlen", help="largest length tried"),
    timeout_s: float = typer.Option(600.0, "--timeout", help="seconds per probe"),
    threads: int = typer.Option(None, "--threads"),
    json_path: Path = typer.Option(None, "--json", help="write the records here"),
    report_path: Path = typer.Option(None, "--report", help="write the figure here (HTML)"),
) -> None:
    """Largest length (decode: cache length) per implementation and phase within a budget."""
    for phase in phases:
        check_choice("--phase", phase, PHASES)
    check_choice("--device", device, DEVICES)
    check_choice("--dtype", dtype, DTYPES)
    for flag, value in (("--batch", batch), ("--num-heads", num_heads), ("--head-dim", head_dim),
                        ("--hidden", hidden), ("--block-size", block_size), ("--start", start),
                        ("--granularity", granularity), ("--resolution", resolution),
                        ("--max-seqlen", max_seqlen), ("--threads", threads)):  # fmt: skip
        _positive(flag, value)
    if not 0 < timeout_s <= 7 * 86400:
        fail(f"--timeout: {timeout_s} is out of range; allowed: seconds from >0 to 604800")
    if hidden % num_heads:
        fail(f"--hidden: {hidden} is not a multiple of --num-heads {num_heads}; allowed: "
             "multiples of the head count")  # fmt: skip
    for flag, path in (("--json", json_path), ("--report", report_path)):
        if path is not None and (path.is_dir() or not path.parent.is_dir()):
            fail(f"--{flag.lstrip('-')}: {path} is a directory or its folder does not exist; "
                 "allowed: a file path in an existing folder")  # fmt: skip
    try:
        budget = parse_budget(memory_budget)
    except ValueError as exc:
        fail(str(exc))
    granularity = granularity or block_size or 256
    start, resolution = start or granularity, resolution or granularity
    from harness.frontier.search import check_grid

    try:
        check_grid(start, granularity, max_seqlen, resolution)
    except ValueError as exc:
        fail(f"--{str(exc).replace('max_len', 'max-seqlen')}")
    from harness.registry import REGISTRY

    known = REGISTRY.names()
    for name in impls:
        check_choice("--impl", name, known)
    if len(set(impls)) != len(impls):
        fail(f"--impl: {impls} names an implementation twice; allowed: each once")
    _run(impls, phases, budget, device, batch=batch, num_heads=num_heads, head_dim=head_dim,
         hidden=hidden, dtype=dtype, causal=causal, block_size=block_size, start=start,
         granularity=granularity, resolution=resolution, max_seqlen=max_seqlen,
         timeout_s=timeout_s, threads=threads, json_path=json_path,
         report_path=report_path)  # fmt: skip


def _run(impls: list[str], phases: list[str], budget: int | None, device: str, *, batch: int,
         num_heads: int, head_dim: int, hidden: int, dtype: str, causal: bool,
         block_size: int | None, start: int, granularity: int, resolution: int, max_seqlen: int,
         timeout_s: float, threads: int | None, json_path: Path | None,
         report_path: Path | None) -> None:  # fmt: skip
    from harness.frontier.probe import Prober, Shape
    from harness.frontier.records import Grid, Target, document, run_frontier
    from harness.registry import REGISTRY
    from harness.results import write_json_atomic, write_text_atomic
    from harness.run.sweep import resolve_device

    try:
        device = resolve_device(device)
    except HarnessError as exc:
        fail(str(exc))
    shape = Shape(batch=batch, num_heads=num_heads, head_dim=head_dim, hidden=hidden,
                  dtype=dtype, causal=causal, block_size=block_size)  # fmt: skip
    grid = Grid(start=start, granularity=granularity, resolution=resolution,
                max_seqlen=max_seqlen)  # fmt: skip
    targets = [Target(REGISTRY.get(name).workload, name, phase)
               for name in impls for phase in phases]  # fmt: skip

    def progress(target: Target, probe) -> None:
        mib = probe.peak_mem_bytes
        peak = "" if mib is None else f" peak {mib / 2**20:.1f} MiB"
        say(f"{target.impl} {target.phase} {probe.length}: {probe.status}{peak}")

    with Prober(device, budget, threads=threads, timeout_s=timeout_s) as prober:
        records = run_frontier(targets, shape, grid, prober, progress=progress)
    source = "--memory-budget" if budget is not None else "default guard (0.8 × free memory)"
    _print_table(records)
    if json_path is not None:
        write_json_atomic(json_path, document(records, device=device, budget_bytes=budget,
                                              budget_source=source))  # fmt: skip
        say(f"wrote {json_path}")
    if report_path is not None:
        from harness.report.frontier import frontier_html

        write_text_atomic(report_path, frontier_html(records))
        say(f"wrote {report_path}")


def _print_table(records: list[dict]) -> None:
    from rich.table import Table

    from harness.cli.console import cell

    table = Table(title="max context within the budget")
    for column in ("workload", "impl", "phase", "max len", "× shortest", "peak MiB",
                   "budget MiB", "first fail", "status"):  # fmt: skip
        table.add_column(column)
    for rec in records:
        group = [r["max_len"] for r in records if r["max_len"]
                 and (r["workload"], r["phase"]) == (rec["workload"], rec["phase"])]  # fmt: skip
        ratio = rec["max_len"] / min(group) if rec["max_len"] and group else None
        if ratio is not None and rec["capped"]:  # it never failed: a lower bound
            ratio = f"≥ {ratio:.3g}"
        mib = lambda b: None if b is None else b / 2**20  # noqa: E731
        last = "capped" if rec["capped"] else rec["first_fail_len"]
        table.add_row(*(cell(v) for v in (
            rec["workload"], rec["impl"], rec["phase"], rec["max_len"], ratio,
            mib(rec["peak_mem_bytes"]), mib(rec["budget_bytes"]), last,
            rec["first_fail_status"])))  # fmt: skip
    out.print(table)
    for rec in records:
        if rec["first_fail_reason"]:
            say(f"{rec['impl']} {rec['phase']} at {rec['first_fail_len']}: "
                f"{rec['first_fail_reason']}", to_err=False)  # fmt: skip
