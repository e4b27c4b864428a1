"""A synthetic run directory of any size, for the report's tests (unit and browser).

Numbers follow simple, plausible laws (time ∝ S², memory ∝ S or S², naive running out of memory at
long lengths) so the figures look like a real run; one reason carries `<script>` to prove escaping.
Rows carry their implementation's declared facts from `synthetic_runs.IMPL_FACTS`, as the worker
writes them. Rows go to disk in bulk: `RunDir.append` fsyncs every line, too slow for 5,000 rows.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

from harness.case import Case
from harness.measure.flops import case_flops
from harness.results import ROWS, SAMPLES, RunDir
from harness.rows import SCHEMA_VERSION
from tests.helpers.synthetic_runs import impl_facts

IMPLS = ("naive", "chunked", "sdpa_math", "sdpa_flash", "ring_demo")
HOSTILE_REASON = '<script>window.__pwned = 1</script> & "quotes" <b>not bold</b>'
_SPEED = {"naive": 1.0, "chunked": 0.7, "sdpa_math": 0.9, "sdpa_flash": 2.5, "ring_demo": 2.0,
          "bpt": 1.2}  # fmt: skip


def synthetic_row(case: Case, impl: str, phase: str, rng: random.Random) -> dict[str, Any]:
    """One row of `impl` on `case`; `time_samples_ms` holds its raw samples (ok rows only)."""
    s = case.seq_len
    row: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "case": case.name, "impl": impl,
                           "phase": phase, "label": impl, "device": "cpu", **case.to_dict(),
                           **impl_facts(impl), "status": "ok", "reason": ""}  # fmt: skip
    if impl == "naive" and s * case.batch >= 16384:
        return row | {"status": "oom", "reason": "OutOfMemoryError: CUDA out of memory (synthetic)"}
    if impl == "sdpa_math" and s >= 32768:
        return row | {"status": "timeout", "reason": "case exceeded 300 s (synthetic)"}
    if impl == "sdpa_flash" and case.dtype == "float32":
        return row | {"status": "unsupported", "reason": "flash needs float16 or bfloat16"}
    if impl == "chunked" and s == 4096 and case.block_size == 512 and phase == "bwd":
        return row | {"status": "error", "reason": HOSTILE_REASON}
    flops = case_flops(case, phase)
    time_ms = flops / (_SPEED[impl] * 2e10 * (1 + 0.2 * math.log2(s / 256 + 1))) * 1e3
    time_ms *= rng.uniform(0.95, 1.05) / (0.8 * case.world_size if case.world_size > 1 else 1)
    in_bytes = 3 * case.batch * s * case.num_heads * case.head_dim * 4
    quadratic = impl in ("naive", "sdpa_math")
    work = case.batch * case.num_heads * (s * s * 8 if quadratic else s * (case.block_size or 128))
    err = {"float32": 3e-7, "float16": 4e-4, "bfloat16": 3e-3}[case.dtype]
    row |= {
        "time_ms_median": time_ms, "time_ms_p20": time_ms * 0.97, "time_ms_p80": time_ms * 1.04,
        "num_samples": 5, "flops": flops, "tflops": flops / time_ms / 1e9,
        "tokens_per_s": case.batch * s / time_ms * 1e3, "input_bytes": in_bytes,
        "peak_mem_bytes": in_bytes + work, "peak_mem_above_inputs_bytes": work,
        "err_rel_l2": err * rng.uniform(0.8, 1.3) * (2.6 if impl == "sdpa_math" else 1.0),
        "err_max_abs": err * 10, "err_naive_same_dtype_rel_l2": err,
        "time_samples_ms": [time_ms * rng.uniform(0.96, 1.05) for _ in range(5)],
    }  # fmt: skip
    if case.world_size > 1:
        per_rank = row["peak_mem_bytes"] // case.world_size
        row["peak_mem_bytes_per_rank"] = [per_rank] * case.world_size
    return row


def synthetic_cases(num_rows: int) -> list[tuple[Case, str, str]]:
    """(case, impl, phase) triples in sweep order, cut at num_rows (1,200 reach both masks and
    both block sizes; 5,000 also vary heads and head_dim)."""
    out: list[tuple[Case, str, str]] = []
    runs = [(impl, 1) for impl in IMPLS] + [("ring_demo", ws) for ws in (2, 4, 8)]
    grid = itertools.product(
        (8, 16), (64, 128), (False, True), (128, 512), ("float32", "bfloat16", "float16"),
        ("fwd", "bwd", "fwd_bwd"), (256, 512, 1024, 2048, 4096, 8192, 16384, 32768), runs,
    )  # fmt: skip
    for heads, d, causal, bs, dtype, phase, s, (impl, ws) in grid:
        if len(out) == num_rows:
            break
        case = Case(seq_len=s, block_size=bs, dtype=dtype, causal=causal, num_heads=heads,
                    head_dim=d, world_size=ws)  # fmt: skip
        out.append((case, impl, phase))
    return out


def write_triples(root: Path, run_id: str, triples: list[tuple[Case, str, str]],
                  seed: int = 0) -> Path:  # fmt: skip
    """A run directory `root/run_id` with one synthetic row per (case, impl, phase)."""
    rng = random.Random(seed)
    cases = {c.name: c for c, _, _ in triples}
    meta = {"run_id": run_id, "suite_name": "synthetic", "provenance": {
        "device": "cpu", "device_name": "Synthetic CPU", "torch_version": "2.13.0+cpu",
        "cuda_version": None, "git_commit": "0" * 40, "git_dirty": False,
        "utc_time": "2026-01-01T00:00:00+00:00", "hostname": "synthetic"}}  # fmt: skip
    suite = {"cases": [c.to_dict() | {"name": n} for n, c in cases.items()]}
    run = RunDir.create(Path(root) / run_id, meta, suite)
    rows, samples = [], []
    for case, impl, phase in triples:
        row = synthetic_row(case, impl, phase, rng) | {"run_id": run_id}
        times = row.pop("time_samples_ms", None)
        if times is not None:
            samples.append({"schema_version": SCHEMA_VERSION, "case": case.name, "impl": impl,
                            "phase": phase, "time_ms": times})  # fmt: skip
        rows.append(row)
    (run.path / ROWS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run.path / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in samples))
    return run.path


def write_synthetic_run(root: Path, num_rows: int, seed: int = 0) -> Path:
    """`root/synthetic-<num_rows>`: the first num_rows rows of the synthetic sweep."""
    return write_triples(root, f"synthetic-{num_rows}", synthetic_cases(num_rows), seed)
