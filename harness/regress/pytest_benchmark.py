"""Export a run to pytest-benchmark's JSON format, so `pytest-benchmark compare` and its tooling
read our runs.

One benchmark per ok row that has raw samples: group = case + phase (so implementations line up
side by side), name = `impl[case-phase]`, times in seconds as pytest-benchmark stores them. The
statistics follow pytest-benchmark's definitions (quartiles, 1.5 IQR fences, ops = 1 / mean).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from harness.results import RunDir, write_json_atomic

FORMAT_VERSION = "5.1.0"  # the pytest-benchmark release whose JSON layout this follows
_EXTRA = ("tflops", "tokens_per_s", "peak_mem_bytes", "err_rel_l2", "err_naive_same_dtype_rel_l2",
          "device", "dtype", "seq_len", "batch", "num_heads", "head_dim", "causal")  # fmt: skip


def _quartiles(data: list[float]) -> tuple[float, float]:
    if len(data) < 2:
        return data[0], data[0]
    q = statistics.quantiles(data, n=4)
    return q[0], q[2]


def stats(samples_s: list[float]) -> dict[str, Any]:
    data = sorted(samples_s)
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if len(data) > 1 else 0.0
    q1, q3 = _quartiles(data)
    iqr = q3 - q1
    low_fence, high_fence = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    ld15 = min(x for x in data if x >= low_fence)
    hd15 = max(x for x in data if x <= high_fence)
    iqr_out = sum(1 for x in data if x < low_fence or x > high_fence)
    sd_out = sum(1 for x in data if x < mean - stddev or x > mean + stddev)
    return {
        "min": data[0], "max": data[-1], "mean": mean, "stddev": stddev, "rounds": len(data),
        "median": statistics.median(data), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": iqr_out, "stddev_outliers": sd_out, "outliers": f"{sd_out};{iqr_out}",
        "ld15iqr": ld15, "hd15iqr": hd15, "ops": 1.0 / mean if mean > 0 else 0.0,
        "total": sum(data), "data": list(samples_s), "iterations": 1,
    }  # fmt: skip


def to_pytest_benchmark(run_path: str | Path) -> dict[str, Any]:
    run = RunDir.open(run_path)
    meta = run.meta()
    prov = meta.get("provenance") or {}
    samples = {(s["case"], s["impl"], s["phase"]): s["time_ms"] for s in run.samples()}
    timing = (run.suite().get("suite") or {}).get("timing") or {}
    benchmarks = []
    for row in run.rows():
        key = (row["case"], row["impl"], row["phase"])
        if row.get("status") != "ok" or not samples.get(key):
            continue
        param = f"{row['case']}-{row['phase']}"
        benchmarks.append({
            "group": param, "name": f"{row['impl']}[{param}]",
            "fullname": f"harness::{meta.get('suite_name')}::{row['impl']}[{param}]",
            "params": {"case": row["case"], "phase": row["phase"]}, "param": param,
            "extra_info": {k: row.get(k) for k in _EXTRA if k in row},
            "options": {"disable_gc": False, "timer": "harness", "min_rounds":
                        timing.get("min_repeats"), "max_time": timing.get("max_time_s"),
                        "min_time": 0, "warmup": bool(timing.get("warmup"))},
            "stats": stats([t / 1e3 for t in samples[key]]),
        })  # fmt: skip
    return {
        "machine_info": {
            "node": prov.get("hostname"), "processor": prov.get("cpu_model"),
            "machine": None, "python_implementation": "CPython",
            "python_version": prov.get("python_version"), "system": None,
            "release": prov.get("platform"), "python_compiler": None,
            "cpu": {"brand_raw": prov.get("cpu_model"), "count": prov.get("num_cpus")},
            "device_name": prov.get("device_name"), "torch_version": prov.get("torch_version"),
        },
        "commit_info": {"id": prov.get("git_commit"), "dirty": prov.get("git_dirty"),
                        "project": "attention-harness", "time": prov.get("utc_time")},
        "benchmarks": benchmarks,
        "datetime": prov.get("utc_time"),
        "version": FORMAT_VERSION,
    }  # fmt: skip


def export(run_path: str | Path, out: str | Path) -> int:
    """Write the JSON file; returns the number of benchmarks written."""
    data = to_pytest_benchmark(run_path)
    write_json_atomic(Path(out), data)
    return len(data["benchmarks"])
