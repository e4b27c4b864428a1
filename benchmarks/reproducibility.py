"""Do medians come back? The S=4096 rows of long_ctx, re-run in separate processes.

Runs `harness run suites/long_ctx.yaml --filter s4096-` `--runs` times (each a fresh runner with
fresh worker processes, one after another) and prints, per ok row, every run's median time, its
ratio to the first run's, and whether the row flagged itself noisy (harness/measure/derived.py).
Target (issue 14), on a quiet machine: every row within 10% of its first run, or flagged noisy.

    .venv/bin/python benchmarks/reproducibility.py [--runs 3] [--filter s4096-] \
        [--suite suites/long_ctx.yaml] [--work /tmp/repro]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from harness.results import RunDir


def _run(suite: str, filter_: str, out: Path) -> Path:
    argv = [sys.executable, "-m", "harness", "run", suite, "--filter", filter_, "--out", str(out)]
    proc = subprocess.run([*argv, "--no-report"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"harness run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--filter", default="s4096-")
    ap.add_argument("--suite", default="suites/long_ctx.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/repro"))
    args = ap.parse_args()

    runs = []
    for i in range(args.runs):
        run = _run(args.suite, args.filter, args.work / f"run{i}")
        runs.append({(r["case"], r["impl"], r["phase"]): r for r in RunDir(run).rows()
                     if r["status"] == "ok"})  # fmt: skip
        print(f"run {i}: {run}", flush=True)

    misses = 0
    print(f"\n{'case':44} {'impl':10} {'phase':8} medians (ms)  ratio to run 0  noisy")
    for key in runs[0]:
        rows = [r.get(key) for r in runs]
        if any(r is None for r in rows):
            continue
        meds = [r["time_ms_median"] for r in rows]
        ratios = [m / meds[0] for m in meds[1:]]
        noisy = any(r.get("noisy") for r in rows)
        within = all(abs(x - 1) <= 0.10 for x in ratios)
        misses += not (within or noisy)
        verdict = "ok" if within else ("flagged noisy" if noisy else "MISS")
        print(f"{key[0]:44} {key[1]:10} {key[2]:8} "
              f"{' '.join(f'{m:8.1f}' for m in meds)}  "
              f"{' '.join(f'{x:5.2f}' for x in ratios)}  {verdict}")  # fmt: skip
    print(f"\nrows outside 10% of their first run and not flagged noisy: {misses} (target 0)")


if __name__ == "__main__":
    main()
