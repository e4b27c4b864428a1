"""`harness model ...`: analytic models on the console."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli.app import model_app
from harness.cli.console import fail, out
from harness.errors import HarnessError


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
    from harness.cli.ring_tables import model_ring_command

    try:
        model_ring_command(out, profile=profile, model=model, phase=phase, causal=causal,
                           max_p=max_p, seq_len=seq_len, calibrate=calibrate,
                           json_path=json_path, stat=stat, fit_slots=fit_slots)  # fmt: skip
    except HarnessError as exc:
        fail(str(exc))
