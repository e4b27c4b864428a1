"""Predicted memory and time beside every measured row of a run (`harness model predict RUN_DIR`).

Post hoc, not at run time: the calibration needs the run's rows, a row stays a record of what was
measured, and an old run can be predicted again when the model improves.

Memory: `memory.holds` (what the implementation holds above its inputs, from the sources'
formulas and the code's tensor counts) plus one calibrated constant per (implementation,
workload, phase, shape without the sequence length): the measured excess of that series' shortest
row, clipped at 0 (a fixed overhead cannot be negative). So the shortest row of each series is
in-sample (`calibrated: true`) and every longer row is a prediction.
Time: the roofline of harness/model/flops_time.py over the run's recorded device ceilings
(provenance `device_peaks`: measured copy bandwidth and float32 matmul FLOP/s on CPU, datasheet
figures on known GPUs), with one efficiency per series fitted on the same shortest row.
Record fields: predicted_mem_bytes, mem_ratio (predicted / measured peak_mem_above_inputs_bytes),
s_dominated (the S-dependent terms are at least 80% of the prediction), predicted_time_ms,
time_ratio, calibrated, mem_terms (bytes by term).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.model.devices import Device, from_peaks
from harness.model.flops_time import roofline_s
from harness.model.memory import holds
from harness.model.ring import ModelError

MEASURED = "peak_mem_above_inputs_bytes"
S_DOMINATED = 0.8  # share of the prediction that must come from S-dependent terms
_SERIES = ("impl", "workload", "phase", "batch", "num_heads", "num_kv_heads", "head_dim",
           "head_dim_v", "hidden", "ffn_expansion", "block_size", "dtype", "causal", "mask",
           "world_size", "seq_layout", "page_size", "cache_dist", "seqlen_q_if_decode")  # fmt: skip


def _series(row: dict[str, Any]) -> tuple:
    """Rows that differ only in their length (decode: the cache's; its seqlen_q is a shape)."""
    row = row | {"seqlen_q_if_decode": row.get("seqlen_q") if row.get("workload") == "decode"
                 else None}  # fmt: skip
    return tuple(str(row.get(k)) for k in _SERIES)


def _fixed_terms(terms: dict[str, float]) -> float:
    """The terms that do not grow with S (layer weight gradients)."""
    return terms.get("grads_w", 0.0)


def predict_rows(rows: list[dict[str, Any]], device: Device | None) -> list[dict[str, Any]]:
    """One record per ok row with a measured peak: measured and predicted memory (and time when
    `device` is given), with their ratios. Rows the model cannot price get `reason`."""
    ok = [r for r in rows if r.get("status") == "ok"]
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok:
        series.setdefault(_series(r), []).append(r)
    out = []
    for members in series.values():
        members.sort(key=lambda r: r.get("seq_len") or 0)
        base, offset, eff = members[0], None, None
        for r in members:
            rec = {k: r.get(k) for k in ("case", "impl", "workload", "phase", "seq_len",
                                         "dtype", "causal")}  # fmt: skip
            try:
                terms = holds(r)
            except ModelError as exc:
                out.append(rec | {"reason": str(exc)})
                continue
            except (KeyError, TypeError, ValueError) as exc:  # a row without the shape fields
                out.append(rec | {"reason": f"row lacks a field the model reads: {exc!r}"})
                continue
            formula = sum(terms.values())
            measured = r.get(MEASURED)
            if offset is None and measured is not None:
                offset = max(0.0, measured - formula) if r is base else 0.0
            pred = formula + (offset or 0.0)
            rec.update(measured_mem_bytes=measured, predicted_mem_bytes=pred, mem_terms=terms,
                       mem_offset_bytes=offset or 0.0, calibrated=r is base,
                       s_dominated=(formula - _fixed_terms(terms)) >= S_DOMINATED * pred,
                       mem_ratio=pred / measured if measured else None)  # fmt: skip
            if device is not None and r.get("flops") and r.get("time_ms_median"):
                t = roofline_s(float(r["flops"]), r.get("bytes_moved"), device)
                if eff is None:
                    eff = t / (float(r["time_ms_median"]) * 1e-3)
                pt = t / eff * 1e3
                rec.update(measured_time_ms=r["time_ms_median"], predicted_time_ms=pt,
                           time_ratio=pt / r["time_ms_median"], efficiency=eff)  # fmt: skip
            out.append(rec)
    return out


def predict_run(run_dir: str | Path) -> tuple[Device | None, list[dict[str, Any]]]:
    """(the run's device profile or None, `predict_rows` of its rows)."""
    from harness.results import RunDir

    run = RunDir.open(run_dir)
    prov = run.meta().get("provenance", {})
    peaks = prov.get("device_peaks") or {}
    try:
        device = from_peaks(peaks, float(prov.get("mem_total_bytes") or 0) or 1.0)
    except ModelError:
        device = None
    return device, predict_rows(run.rows(), device)


# Below this a CPU peak reading is not resolved to 15%: per-thread kernel scratch and allocator
# slack move peaks of a few MiB by ~1 MiB between lengths (seen on sdpa_flash and bpt forward).
MIN_RESOLVED_BYTES = 8 << 20


def summary(records: list[dict[str, Any]], band: float = 0.15,
            min_bytes: float = MIN_RESOLVED_BYTES) -> dict[str, Any]:  # fmt: skip
    """Out-of-sample, S-dominated memory records of at least `min_bytes` measured: how many, how
    many within ±band, and the worst ratio."""
    pts = [r for r in records if r.get("mem_ratio") and r.get("s_dominated")
           and not r.get("calibrated") and r["measured_mem_bytes"] >= min_bytes]  # fmt: skip
    within = [r for r in pts if abs(r["mem_ratio"] - 1) <= band]
    worst = max(pts, key=lambda r: abs(r["mem_ratio"] - 1), default=None)
    return {"rows": len(pts), "within": len(within), "band": band,
            "worst": None if worst is None else (worst["impl"], worst["phase"], worst["seq_len"],
                                                 worst["mem_ratio"])}  # fmt: skip
