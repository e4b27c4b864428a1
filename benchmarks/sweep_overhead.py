"""Where a cheap sweep's wall time goes: fixed startup, the first row, and the overhead per row.

Runs `python -m harness run SUITE --no-report` (default suites/smoke.yaml) `--runs` times in
fresh processes and reads its per-row progress lines (`[k/N] elapsed  case impl phase -> ...`):

- fixed: wall minus the span from the first row's start to the last row's end (interpreter,
  torch import, provenance, run directory);
- first row: the first row's span (the workers start there, importing torch);
- per row: the remaining rows' span / their count; `timed` is the part spent inside sample loops
  (sum of num_samples × median), so `per row − timed / rows` is the harness's own overhead
  (memory pass, float64 reference, pipes, gc).

Medians over the runs with p20–p80 spread (monotonic clock). Not a test; a shared machine's numbers
vary run to run. Usage: .venv/bin/python benchmarks/sweep_overhead.py [--suite S] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINE = re.compile(r"^\[(\d+)/(\d+)\]\s+([\d.]+)s")


def one_run(suite: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "harness", "run", suite, "--out", out, "--no-report"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"harness run failed:\n{proc.stderr[-2000:]}")
        starts = [float(m.group(3)) for m in map(_LINE.match, proc.stderr.splitlines()) if m]
        rows = [json.loads(line) for f in Path(out).glob("*/rows.jsonl")
                for line in f.read_text().splitlines()]  # fmt: skip
    timed = sum(r.get("num_samples", 0) * r.get("time_ms_median", 0.0) for r in rows) / 1e3
    last_end = starts[-1] + float(rows[-1].get("elapsed_s") or 0.0) if rows else 0.0
    span = last_end - starts[0]
    first = starts[1] - starts[0] if len(starts) > 1 else span
    n = max(1, len(rows) - 1)
    return {
        "wall_s": wall,
        "rows": len(rows),
        "fixed_s": wall - span,
        "first_row_s": first,
        "per_row_s": (span - first) / n,
        "timed_per_row_s": timed / len(rows) if rows else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/smoke.yaml")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.suite) for _ in range(args.runs)]
    print(f"{args.suite}: {runs[0]['rows']} rows, {args.runs} runs (median [p20–p80])")
    for key in ("wall_s", "fixed_s", "first_row_s", "per_row_s", "timed_per_row_s"):
        values = sorted(r[key] for r in runs)
        q = statistics.quantiles(values, n=5, method="inclusive") if len(values) > 1 else values * 4
        print(f"  {key:16s} {statistics.median(values):8.3f}  [{q[0]:.3f}–{q[3]:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
