"""Curated baselines: a run's data files copied to results/baselines/<device>/<suite>[-<profile>].

Baselines are committed, so only the small data files travel (no report.html), and a run with a
failed row is refused unless forced: a baseline that already fails would hide regressions.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import HarnessError, ResultsError
from harness.results import ROWS, RUN, SAMPLES, SUITE, RunDir, write_json_atomic
from harness.rows import FAILED

DEFAULT_ROOT = Path("results/baselines")
MARKER = "baseline.json"


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
        "promoted_from": str(run.path.resolve()), "run_id": run.meta().get("run_id"),
        "promoted_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_rows": len(rows), "failed_rows": failed,
    })  # fmt: skip
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def describe(path: str | Path) -> dict:
    marker = Path(path) / MARKER
    return json.loads(marker.read_text()) if marker.exists() else {}
