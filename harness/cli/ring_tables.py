"""`harness model ring`: the ring model's tables on the console (and as JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.model.ring import MODELS, ModelError, Workload, load_profile, table
from harness.results import write_text_atomic


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def _tokens(n: float) -> str:
    return f"{n / 1e3:,.0f}k" if n >= 1e4 else f"{n:,.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def model_ring_command(out: Console, *, profile: str, model: str, phase: str, causal: bool,
                       max_p: int, seq_len: int | None, calibrate: Path | None,
                       json_path: Path | None, stat: str = "median",
                       fit_slots: bool = False) -> None:  # fmt: skip
    """Print the P table (and, with `calibrate`, predicted vs measured); errors are ModelError."""
    if model not in MODELS:
        raise ModelError(f"unknown model {model!r}; allowed: {', '.join(MODELS)}")
    if phase not in ("fwd", "fwd_bwd"):
        raise ModelError(f"unknown phase {phase!r}; allowed: fwd, fwd_bwd")
    prof = load_profile(profile)
    w = Workload(**MODELS[model], causal=causal, phase=phase)  # type: ignore[arg-type]
    rows = table(prof, w, max_p=max_p, seq_len=seq_len)
    mask = "causal" if causal else "full"
    t = Table(title=Text(f"ring model: {prof.name}, {model} ({phase}, {mask})"
                    f"; overlap from block >= {rows[0]['overlap_block_tokens']:,.0f} tokens"),
              caption=Text(prof.source))  # fmt: skip
    for col in ("P", "seq", "compute/step ms", "comm/step ms", "step ms", "total ms", "overlap",
                "mem/device", "max context"):  # fmt: skip
        t.add_column(col, justify="right", overflow="fold")
    for r in rows:
        if r["max_context_tokens"] == 0 and seq_len is None:
            t.add_row(str(r["world_size"]), "-", "", "", "", "", "", "", "does not fit")
            continue
        t.add_row(str(r["world_size"]), _tokens(r["seq_len"]), _ms(r["step_compute_s"]),
                  _ms(r["step_comm_s"]), _ms(r["step_s"]), _ms(r["total_s"]),
                  "yes" if r["overlap"] else "no", _gib(r["mem_total_bytes"]),
                  _tokens(r["max_context_tokens"]))  # fmt: skip
    out.print(t)
    report: dict[str, Any] = {"profile": prof.model_dump(), "workload": w.model_dump(),
                              "table": rows}  # fmt: skip
    if calibrate is not None:
        report.update(_print_validation(out, calibrate, stat, fit_slots))
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=2, default=float))


def _print_validation(out: Console, run_dir: Path, stat: str,
                      fit_slots: bool) -> dict[str, Any]:  # fmt: skip
    from harness.model.ring_calibration import validate

    prof, recs = validate(run_dir, stat, fit_slots)
    t = Table(title=Text(f"calibrated on {run_dir}: link {prof.link_bytes_per_s / 1e9:.3g} GB/s, "
                    f"latency {prof.link_latency_s * 1e3:.3g} ms, "
                    f"{prof.flops / 1e9:.3g} GFLOP/s a rank, compute slots "
                    f"{prof.compute_slots or 'unlimited'}"))  # fmt: skip
    for col in ("P", "seq", "mask", "phase", f"measured {stat} ms", "predicted ms", "error %",
                "comm ms meas/pred"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in recs:
        fitted = " (fit)" if r.get("in_sample") else ""
        t.add_row(str(r["world_size"]) + fitted, str(r["seq_len"]),
                  "causal" if r["causal"] else "full",
                  r["phase"], f"{r['measured_ms']:.1f}", f"{r['predicted_ms']:.1f}",
                  f"{r['error_pct']:+.0f}",
                  f"{r['measured_comm_ms']:.1f}/{r['predicted_comm_ms']:.1f}")  # fmt: skip
    out.print(t)
    held = [r for r in recs if not r.get("in_sample")]
    within = sum(abs(r["error_pct"]) <= 25 for r in held)
    out.print(f"{within} of {len(held)} out-of-sample predictions within 25% of measured {stat}",
              highlight=False)  # fmt: skip
    return {"calibrated_profile": prof.model_dump(), "validation": recs}
