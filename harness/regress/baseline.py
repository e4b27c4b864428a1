"""Curated baselines: a run's data files copied to results/baselines/<device>/<suite>[-<profile>].

Baselines are committed, so only the small data files travel (no report.html). A run with a
failed row, or an unfinished run (rows its suite asks for are missing: compare would call them
`new` and pass), is refused unless forced: such a baseline would hide regressions. A forced
baseline says so in its baseline.json (`forced`, what was missing or failed); compare repeats it.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, ResultsError
from harness.results import ROWS, RUN, SAMPLES, SUITE, RunDir, write_json_atomic
from harness.rows import FAILED, Key, row_key

DEFAULT_ROOT = Path("results/baselines")
MARKER = "baseline.json"
_LISTED = 50  # missing rows named in baseline.json (the count is always there)


def expected_keys(suite: dict[str, Any]) -> set[Key]:
    """Every (case, impl, phase) a run's expanded suite (its suite.json) asks for."""
    spec = suite.get("suite") or {}
    cases = [c.get("name") for c in suite.get("cases") or []]
    phases = (spec.get("sweep") or {}).get("phase") or []
    impls = spec.get("implementations") or []
    return {(c, i, p) for c in cases for i in impls for p in phases}


def slug(text: str) -> str:
    """A folder-safe name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def baseline_dir(run_path: str | Path, root: str | Path = DEFAULT_ROOT) -> Path:
    """Where the baseline for runs like `run_path` (same device, suite and profile) lives."""
    meta = RunDir.open(run_path).meta()
    device = (meta.get("provenance") or {}).get("device_name") or "unknown"
    name = meta.get("suite_name") or "suite"
    if meta.get("profile"):
        name += f"-{meta['profile']}"
    return Path(root) / slug(device) / slug(name)


def promote(run_path: str | Path, root: str | Path = DEFAULT_ROOT, *,
            force: bool = False) -> Path:  # fmt: skip
    """Copy a run's data files to its baseline folder (replacing an old baseline only if forced)."""
    run = RunDir.open(run_path)
    rows = run.rows()
    if not rows:
        raise ResultsError(f"{run.path} has no rows; nothing to promote")
    failed = [f"{r['case']} {r['impl']} {r['phase']}: {r['status']}" for r in rows
              if r.get("status") in FAILED]  # fmt: skip
    if failed and not force:
        raise HarnessError(f"{run.path} has {len(failed)} failed rows (first: {failed[0]}); "
                           "fix them or pass --force")  # fmt: skip
    meta = run.meta()
    expected = expected_keys(run.suite())
    missing = sorted(expected - {row_key(r) for r in rows})
    if missing and not force:
        suite, path = f"suite {meta.get('suite_name')!r}", meta.get("suite_path") or "SUITE"
        if meta.get("suite_path"):
            suite += f" ({path})"
        profile = f" --profile {meta['profile']}" if meta.get("profile") else ""
        raise HarnessError(
            f"{run.path} is unfinished: {len(missing)} of the {len(expected)} rows {suite} asks "
            f"for are missing (first: {' '.join(missing[0])}); finish it with `harness run "
            f"{path}{profile} --resume {run.path}` or pass --force"
        )
    target = baseline_dir(run.path, root)
    if target.exists() and not force:
        raise HarnessError(f"a baseline already exists at {target}; pass --force to replace it")
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (RUN, SUITE, ROWS, SAMPLES):
        if (run.path / name).exists():
            shutil.copy2(run.path / name, staging / name)
    write_json_atomic(staging / MARKER, {
        "promoted_from": str(run.path.resolve()), "run_id": meta.get("run_id"),
        "promoted_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_rows": len(rows), "failed_rows": failed,
        # `forced`: promoted with --force (past the failed / missing rows listed, if any)
        "forced": force, "num_expected_rows": len(expected),
        "num_missing_rows": len(missing), "missing_rows": [" ".join(k) for k in missing[:_LISTED]],
    })  # fmt: skip
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def describe(path: str | Path) -> dict:
    marker = Path(path) / MARKER
    return json.loads(marker.read_text()) if marker.exists() else {}
