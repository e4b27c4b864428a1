"""`harness model project` and `harness model predict`: their tables on the console (and JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.results import write_text_atomic


def _tokens(n: float | None) -> str:
    if not n:
        return "does not fit"
    return f"{n / 1e6:,.2f}M" if n >= 1e6 else f"{n / 1e3:,.1f}k" if n >= 1e4 else f"{n:,.0f}"


def _g(x: float | None, scale: float = 1.0) -> str:
    return "" if x is None else f"{x / scale:.3g}"


def project_command(out: Console, *, device: str, model: str, devices: list[int],
                    impls: tuple[str, ...], json_path: Path | None,
                    seq_len: int | None = None) -> None:  # fmt: skip
    from harness.model.devices import get_device
    from harness.model.projection import project

    dev = get_device(device)
    recs = project(dev, model, devices, impls, seq_len)
    at = "max context" if seq_len is None else f"{_tokens(seq_len)} tokens"
    t = Table(title=Text(f"projection: {model} training step on {dev.name} (mfu {dev.mfu}); "
                         f"time at {at}"), caption=Text(dev.source))  # fmt: skip
    for col in ("impl", "P", "max context", "step s", "tokens/s, all P"):
        t.add_column(col, justify="right")
    for r in recs:
        fits = r["step_time_s"] is not None or seq_len is None
        t.add_row(r["impl"], str(r["devices"]), _tokens(r["max_context_tokens"]),
                  _g(r["step_time_s"]) if fits else "does not fit",
                  _g(r["tokens_per_s"]))  # fmt: skip
    out.print(t)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps({"device": dev.__dict__, "table": recs}, indent=2))


def predict_command(out: Console, *, run_dir: Path, json_path: Path | None) -> None:
    from harness.model.predict import predict_run, summary

    device, recs = predict_run(run_dir)
    t = Table(title=Text(f"model vs measured: {run_dir}"),
              caption=Text("memory: peak above inputs, MiB; * = calibration row (in-sample); "
                           "S = S-dependent terms dominate"))  # fmt: skip
    t.add_column("case", justify="left", overflow="fold")  # the name says causal, mask, P
    for col in ("impl", "phase", "mem meas", "mem pred", "ratio", "flags", "ms meas", "ms pred",
                "ratio "):  # fmt: skip
        t.add_column(col, justify="right")
    t.add_column("note", justify="left")
    for r in recs:
        if "reason" in r:
            t.add_row(str(r.get("case")), str(r["impl"]), str(r["phase"]), "", "", "", "",
                      "", "", "", Text(r["reason"]))  # fmt: skip
            continue
        flag = ("*" if r["calibrated"] else "") + ("S" if r["s_dominated"] else "")
        t.add_row(str(r.get("case")), str(r["impl"]), str(r["phase"]),
                  _g(r["measured_mem_bytes"], 2**20), _g(r["predicted_mem_bytes"], 2**20),
                  _g(r["mem_ratio"]), flag, _g(r.get("measured_time_ms")),
                  _g(r.get("predicted_time_ms")), _g(r.get("time_ratio")), "")  # fmt: skip
    out.print(t)
    s = summary(recs)
    if not s["rows"]:
        out.print(
            Text(
                "no out-of-sample row is S-dominated and >= 8 MiB: this run's rows are too "
                "small to test the memory model (its overheads dominate them)"
            )
        )
    else:
        out.print(Text(f"out-of-sample S-dominated rows of >= 8 MiB within ±{s['band']:.0%}: "
                       f"{s['within']} of {s['rows']}; worst {s['worst']}"))  # fmt: skip
    payload: dict[str, Any] = {"device": None if device is None else device.__dict__,
                               "records": recs, "summary": s}  # fmt: skip
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(payload, indent=2, default=str))
