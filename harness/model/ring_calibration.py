"""Calibrate the ring model (harness/model/ring.py) on a gloo run and check its predictions.

From a run directory of the `ring` implementation (suites/ring_model_validation.yaml):
- per-block compute time: the P = 1 rows at the local length n = S/P (forward, and fwd_bwd minus
  forward for the backward block; non-causal for full blocks, causal for the diagonal block);
- link bandwidth and latency: a non-negative least-squares fit of every P > 1 row's `comm_ms`
  (its exchanges replayed without compute) = num_exchanges · latency + bytes per rank / bandwidth.
Then every P > 1 row is predicted from those alone and compared with its measured median time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.model.ring import (
    PROFILES,
    BlockTimes,
    DeviceProfile,
    ModelError,
    Workload,
    predict,
)

_SHAPE = ("impl", "batch", "num_heads", "head_dim", "dtype")
_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


def fit_link(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(bandwidth bytes/s, latency s) from rows with comm_ms, num_exchanges, bytes_sent_per_rank."""
    import numpy as np
    from scipy.optimize import nnls

    pts = [r for r in rows if r.get("world_size", 1) > 1 and r.get("comm_ms") and
           r.get("num_exchanges")]  # fmt: skip
    if len(pts) < 2:
        raise ModelError("calibration needs at least two ok rows with world_size > 1 and comm_ms")
    a = np.array([[r["num_exchanges"], max(r["bytes_sent_per_rank"])] for r in pts], float)
    y = np.array([r["comm_ms"] * 1e-3 for r in pts])
    scale = a.max(axis=0)  # columns of very different size: solve on a unit scale
    (lat, inv_bw), _ = nnls(a / scale, y)
    lat, inv_bw = lat / scale[0], inv_bw / scale[1]
    if inv_bw <= 0:
        raise ModelError("the comm_ms of the run do not grow with bytes; cannot fit a bandwidth")
    return 1.0 / inv_bw, float(lat)


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in _SHAPE)


def block_times(rows: list[dict[str, Any]], like: dict[str, Any], n: int,
                stat: str = "median") -> BlockTimes | None:  # fmt: skip
    """The P = 1 rows of `like`'s shape at length n, as per-block times; None if missing."""
    t: dict[tuple[bool, str], float] = {}
    for r in rows:
        if r.get("world_size", 1) == 1 and r["seq_len"] == n and _key(r) == _key(like):
            t[(bool(r["causal"]), r["phase"])] = r[f"time_ms_{stat}"] * 1e-3

    def bwd(causal: bool) -> float | None:
        fb, f = t.get((causal, "fwd_bwd")), t.get((causal, "fwd"))
        return fb - f if fb is not None and f is not None and fb > f else None

    if (False, "fwd") not in t:
        return None
    return BlockTimes(local_len=n, fwd_full_s=t[(False, "fwd")], bwd_full_s=bwd(False),
                      fwd_causal_s=t.get((True, "fwd")), bwd_causal_s=bwd(True))  # fmt: skip


def calibrated_profile(rows: list[dict[str, Any]], num_cpus: int | None) -> DeviceProfile:
    """The CPU profile with this run's link fit, achieved FLOP/s and core count."""
    bw, lat = fit_link(rows)
    base = PROFILES["cpu-gloo"]
    ones = [r for r in rows if r.get("world_size", 1) == 1 and r.get("tflops")]
    achieved = base.achieved_fraction
    if ones:
        best = max(ones, key=lambda r: r["seq_len"])
        achieved = min(1.0, best["tflops"] * 1e12 / base.peak_flops)
    return base.model_copy(update={
        "name": "cpu-gloo-calibrated", "link_bytes_per_s": bw, "link_latency_s": lat,
        "achieved_fraction": achieved, "compute_slots": num_cpus or base.compute_slots,
        "source": "fitted to a ring run: link from comm_ms, achieved FLOP/s from P = 1 rows",
    })  # fmt: skip


STATS = ("median", "p20")


def validate(run_dir: str | Path, stat: str = "median",
             fit_slots: bool = False) -> tuple[DeviceProfile, list[dict[str, Any]]]:  # fmt: skip
    """(calibrated profile, one record per P > 1 row: predicted vs measured).

    `stat` picks the time statistic on both sides: the median, or p20 (the less contended samples
    of a shared, noisy machine). `fit_slots` fits the effective number of ranks that compute at
    full speed at once (a shared machine has fewer than its cores) on the P = 2 rows, so only the
    P >= 3 predictions are out of sample (`in_sample` says which).
    """
    if stat not in STATS:
        raise ModelError(f"unknown statistic {stat!r}; allowed: {', '.join(STATS)}")
    if fit_slots:
        _, recs = _validate(run_dir, stat, slots=float("inf"))
        ratios = sorted(r["measured_ms"] / r["predicted_ms"] for r in recs if r["world_size"] == 2)
        if not ratios:
            raise ModelError(f"{run_dir}: --fit-slots needs world_size 2 rows")
        slots = 2.0 / max(1.0, ratios[len(ratios) // 2])  # two ranks at 1/ratio speed each
        prof, recs = _validate(run_dir, stat, slots=slots)
        return prof, [r | {"in_sample": r["world_size"] == 2} for r in recs]
    return _validate(run_dir, stat)


def _validate(
    run_dir: str | Path, stat: str, slots: float | None = None
) -> tuple[DeviceProfile, list[dict[str, Any]]]:
    from harness.results import RunDir

    run = RunDir.open(run_dir)
    rows = [r for r in run.rows() if r.get("status") == "ok" and r.get("workload",
            "attention") == "attention" and "world_size" in r]  # fmt: skip
    num_cpus = run.meta().get("provenance", {}).get("num_cpus")
    profile = calibrated_profile(rows, num_cpus)
    if slots is not None:
        profile = profile.model_copy(update={"compute_slots": None if slots == float("inf")
                                             else slots})  # fmt: skip
    out = []
    for r in rows:
        p, s = r["world_size"], r["seq_len"]
        if p == 1 or s % p or r["phase"] not in ("fwd", "fwd_bwd"):
            continue
        blocks = block_times(rows, r, s // p, stat)
        if blocks is None or (r["phase"] == "fwd_bwd" and blocks.bwd_full_s is None):
            continue
        w = Workload(batch=r["batch"], num_heads=r["num_heads"], head_dim=r["head_dim"],
                     dtype_bytes=_BYTES[r["dtype"]], causal=bool(r["causal"]),
                     seq_layout=r["seq_layout"], phase=r["phase"])  # fmt: skip
        pred = predict(profile, w, p, s, blocks)
        measured = r[f"time_ms_{stat}"]
        out.append({
            "case": r["case"], "phase": r["phase"], "world_size": p, "seq_len": s,
            "causal": bool(r["causal"]), "seq_layout": r["seq_layout"],
            "stat": stat, "measured_ms": measured,
            "predicted_ms": pred.total_s * 1e3,
            "error_pct": 100.0 * (pred.total_s * 1e3 - measured) / measured,
            "measured_comm_ms": r.get("comm_ms"),
            "predicted_comm_ms": pred.comm_total_s * 1e3,
            "measured_overlap_fraction": r.get("overlap_fraction"),
            "predicted_overlap": pred.overlap,
        })  # fmt: skip
    if not out:
        raise ModelError(f"{run_dir}: no world_size > 1 row has P = 1 rows at its local length "
                         "(fwd, and fwd_bwd for fwd_bwd rows)")  # fmt: skip
    return profile, out
