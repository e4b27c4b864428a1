"""`harness model ...`: analytic models on the console."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli.app import model_app
from harness.cli.console import check_choice, fail, out
from harness.errors import HarnessError
from harness.results import check_output_paths

# Past these the model means nothing (no ring has 65536 devices, no context 2**40 tokens).
MAX_P = 65536
MAX_SEQ_LEN = 2**40


def _check_range(flag: str, value: int | None, low: int, high: int) -> None:
    """Exit 2 with one line when an integer option is outside low..high."""
    if value is not None and not low <= value <= high:
        fail(f"{flag}: {value} is out of range; allowed: an integer from {low} to {high}")


def _check_output(flag: str, path: Path | None) -> None:
    """Exit 2 before any work when an output file could not be created where asked."""
    if path is None:
        return
    if path.is_dir():
        fail(f"{flag}: {path} is a directory; allowed: a file path")
    if not path.parent.is_dir():
        fail(f"{flag}: the folder {path.parent} does not exist; create it first")


@model_app.command("ring")
def model_ring(
    profile: str = typer.Option("a100-nvlink", "--profile", help="profile name or YAML file"),
    model: str = typer.Option("7b", "--model", help="model size for memory: 3b, 7b, 13b"),
    phase: str = typer.Option("fwd_bwd", "--phase", help="fwd or fwd_bwd"),
    causal: bool = typer.Option(False, "--causal/--full", help="causal mask (zigzag layout)"),
    max_p: int = typer.Option(4096, "--max-p", help=f"largest device count (1..{MAX_P})"),
    seq_len: int = typer.Option(None, "--seq-len", help="time this length (default: max context)"),
    calibrate: Path = typer.Option(None, "--calibrate", help="a ring run dir to validate against"),
    json_path: Path = typer.Option(None, "--json", help="write the tables here as JSON"),
    stat: str = typer.Option("median", "--stat", help="with --calibrate: median or p20 times"),
    fit_slots: bool = typer.Option(False, "--fit-slots", help="fit concurrent compute on P = 2"),
) -> None:
    """Ring Attention's per-step time, overlap, memory and max context for P = 1..max-p."""
    from harness.model.ring_calibration import STATS

    _check_range("--max-p", max_p, 1, MAX_P)
    _check_range("--seq-len", seq_len, 1, MAX_SEQ_LEN)
    check_choice("--stat", stat, STATS)
    _check_output("--json", json_path)
    from harness.cli.ring_tables import model_ring_command

    try:
        check_output_paths({"--json": json_path})
        model_ring_command(out, profile=profile, model=model, phase=phase, causal=causal,
                           max_p=max_p, seq_len=seq_len, calibrate=calibrate,
                           json_path=json_path, stat=stat, fit_slots=fit_slots)  # fmt: skip
    except HarnessError as exc:
        fail(str(exc))


def _parse_devices(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; exit 2 naming the key, the value and what is allowed."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= c <= MAX_P for c in counts):
        fail(f"--devices: {text!r} is not allowed; allowed: a comma list of integers from 1 to "
             f"{MAX_P}, e.g. 1,8,32")  # fmt: skip
    return counts


@model_app.command("project")
def model_project(
    device: str = typer.Option("H100-80GB", "--device", help="named device profile"),
    params: str = typer.Option("7b", "--params", help="model size: 3b, 7b, 13b"),
    devices: str = typer.Option("1,8,32,256,4096", "--devices", help="device counts, comma list"),
    impl: str = typer.Option("all", "--impl", help="vanilla, memeff, bpt, ring or all"),
    seq_len: int = typer.Option(None, "--seq-len", help="price this length (default: max context)"),
    json_path: Path = typer.Option(None, "--json", help="write the table here as JSON"),
) -> None:
    """Max context and training-step time per implementation on P devices (harness/model/)."""
    _check_range("--seq-len", seq_len, 1, MAX_SEQ_LEN)
    from harness.model.devices import DEVICES
    from harness.model.projection import IMPLS

    check_choice("--device", device, list(DEVICES))
    check_choice("--params", params.lower(), ["3b", "7b", "13b"])
    check_choice("--impl", impl, [*IMPLS, "all"])
    counts = _parse_devices(devices)
    _check_output("--json", json_path)
    from harness.cli.model_tables import project_command

    try:
        project_command(out, device=device, model=params.lower(), devices=counts,
                        impls=IMPLS if impl == "all" else (impl,), json_path=json_path,
                        seq_len=seq_len)  # fmt: skip
    except HarnessError as exc:
        fail(str(exc))


@model_app.command("predict")
def model_predict(
    run_dir: Path = typer.Argument(..., help="a run directory (results/<run>)"),
    json_path: Path = typer.Option(None, "--json", help="write the records here as JSON"),
) -> None:
    """Every ok row's predicted memory (and time) beside the measured value, with the ratio."""
    if not run_dir.is_dir():
        fail(f"RUN_DIR: {run_dir} is not a directory; allowed: a run directory with rows.jsonl")
    _check_output("--json", json_path)
    from harness.cli.model_tables import predict_command

    try:
        predict_command(out, run_dir=run_dir, json_path=json_path)
    except HarnessError as exc:
        fail(str(exc))
