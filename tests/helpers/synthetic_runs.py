"""Synthetic run directories for compare / history / export tests, written through RunDir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.results import RunDir
from harness.rows import SCHEMA_VERSION

CASE = "attn-b1-s1024-h8-d64-float32-full-bsauto"

# What each implementation the synthetic runs use declares in its `Impl` (the worker copies both
# facts into every row); tests/unit/test_impl_facts.py checks these against the registry.
# `ring_demo` stands in for a multi-device kernel and is not registered.
IMPL_FACTS: dict[str, dict[str, Any]] = {
    "naive": {"memory_exponent": 2, "uses_block_size": False},
    "sdpa_math": {"memory_exponent": 2, "uses_block_size": False},
    "chunked": {"memory_exponent": 1, "uses_block_size": True},
    "sdpa_flash": {"memory_exponent": 1, "uses_block_size": False},
    "bpt": {"memory_exponent": 1, "uses_block_size": True},
    "ring_demo": {"memory_exponent": 1, "uses_block_size": False},
}


def impl_facts(impl: str) -> dict[str, Any]:
    """The declared facts a row of `impl` carries; none for an implementation not listed."""
    return dict(IMPL_FACTS.get(impl, {}))


def samples(median_ms: float, spread: float, n: int = 10, seed: int = 0) -> list[float]:
    """n samples around `median_ms` with relative spread `spread` (uniform, deterministic)."""
    rng = np.random.default_rng(seed)
    return list(median_ms * (1 + spread * rng.uniform(-1, 1, size=n)))


def ok_row(case: str = CASE, impl: str = "chunked", phase: str = "fwd", *,
           time_ms: list[float] | None = None, peak_mem_bytes: int = 100 << 20,
           err: float = 3e-7, naive_err: float = 3e-7) -> dict[str, Any]:  # fmt: skip
    t = time_ms if time_ms is not None else samples(10.0, 0.01)
    return {
        "schema_version": SCHEMA_VERSION, "case": case, "impl": impl, "phase": phase,
        "status": "ok", "reason": "", "time_samples_ms": t,
        "time_ms_median": float(np.median(t)), "num_samples": len(t),
        "peak_mem_bytes": peak_mem_bytes, "err_rel_l2": err,
        "err_naive_same_dtype_rel_l2": naive_err, **impl_facts(impl),
    }  # fmt: skip


def failed_row(case: str = CASE, impl: str = "chunked", phase: str = "fwd", *,
               status: str = "oom", reason: str = "OOM") -> dict[str, Any]:  # fmt: skip
    return {"schema_version": SCHEMA_VERSION, "case": case, "impl": impl, "phase": phase,
            "status": status, "reason": reason, **impl_facts(impl)}  # fmt: skip


def make_run(path: Path, rows: list[dict[str, Any]], *, suite_name: str = "synth",
             device_name: str = "Test CPU", profile: str | None = None,
             utc_time: str = "2026-01-01T00:00:00+00:00", commit: str = "abc123",
             compare: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """A run directory whose suite asks for exactly the given rows' cases, impls and phases."""
    cases = sorted({r["case"] for r in rows})
    suite: dict[str, Any] = {
        "name": suite_name, "implementations": sorted({r["impl"] for r in rows}),
        "sweep": {"phase": sorted({r["phase"] for r in rows})},
    }  # fmt: skip
    if compare is not None:
        suite["compare"] = compare
    meta = {"run_id": path.name, "suite_name": suite_name, "profile": profile,
            "provenance": {"device_name": device_name, "utc_time": utc_time, "git_commit": commit,
                           "torch_version": "2.13.0+cpu"}}  # fmt: skip
    run = RunDir.create(path, meta, {"suite": suite, "cases": [{"name": c} for c in cases]})
    for row in rows:
        run.append(dict(row, run_id=path.name))
    return path


# A reason hostile to every renderer, as real failures print them: gloo's `[/path:line]` is a rich
# closing tag, an OOM's `[enforce fail at ...]` and `[bold]` are rich styles, `</script><!--`
# would end (or confuse) an HTML script element, `<b>` is HTML and `|` ends a Markdown cell.
MARKUP_REASON = ("RuntimeError: [/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] "
                 "Read error [enforce fail at alloc_cpu.cpp:127] [bold]not bold[/x] | "
                 "</script><!-- <b>x</b>")  # fmt: skip


def with_axes(row: dict[str, Any], seq_len: int = 1024, *, dtype: str = "float32",
              causal: bool = False) -> dict[str, Any]:  # fmt: skip
    """`row` with the case axes that `harness table` and the report pivot on."""
    return row | {"seq_len": seq_len, "dtype": dtype, "causal": causal, "batch": 1,
                  "num_heads": 8, "head_dim": 64, "workload": "attention"}  # fmt: skip


def hostile_pair(root: Path) -> tuple[Path, Path]:
    """A baseline where every row is ok and a candidate where naive fails with MARKUP_REASON and
    flash_attn2 is skipped with it (so `harness table` lists the reason too)."""
    base = [with_axes(ok_row(impl=impl)) for impl in ("chunked", "naive")]
    cand = [
        with_axes(ok_row(impl="chunked")),
        with_axes(failed_row(impl="naive", status="error", reason=MARKUP_REASON)),
        with_axes(failed_row(impl="flash_attn2", status="skipped", reason=MARKUP_REASON)),
    ]
    return make_run(root / "base", base), make_run(root / "cand", cand)
