"""Export a run to pytest-benchmark's JSON format, so `pytest-benchmark compare` and its tooling
read our runs.

One benchmark per ok row that has raw samples: group = case + phase (so implementations line up
side by side), name = `impl[case-phase]`, times in seconds as pytest-benchmark stores them. The
statistics are pytest-benchmark's own (`pytest_benchmark.stats.Stats`, a test extra imported only
when exporting).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.results import RunDir, write_json_atomic

FORMAT_VERSION = "5.1.0"  # the pytest-benchmark release whose JSON layout this follows
_EXTRA = ("tflops", "tokens_per_s", "peak_mem_bytes", "err_rel_l2", "err_naive_same_dtype_rel_l2",
          "device", "dtype", "seq_len", "seqlen_q", "seqlen_k", "batch", "num_heads",
          "num_kv_heads", "head_dim", "head_dim_v", "causal", "mask", "mask_density",
          "bytes_moved", "gbytes_per_s", "page_size", "cache_dist")  # fmt: skip


def stats(samples_s: list[float]) -> dict[str, Any]:
    """pytest-benchmark's own statistics (`pytest_benchmark.stats.Stats`) of the samples, so an
    exported run reads exactly as pytest-benchmark would have reported it."""
    if not samples_s:
        raise HarnessError("cannot export a benchmark without samples")
    try:
        from pytest_benchmark.stats import Stats
    except ImportError as e:
        raise HarnessError(
            "exporting to pytest-benchmark needs the pytest-benchmark package: "
            "pip install pytest-benchmark"
        ) from e
    st = Stats()
    for t in samples_s:
        st.update(float(t))
    out: dict[str, Any] = st.as_dict()
    out.update({"data": list(samples_s), "iterations": 1})
    return out


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
