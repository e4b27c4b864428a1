"""Does the nightly judge cry wolf? Same-commit pairs, and pairs with a known injected slowdown.

For each of N pairs: one baseline run of the nightly suite, one candidate at the same commit (the
null: every flagged row is a false alarm), and one candidate per injected slowdown, where
HARNESS_TEST_SLOWDOWN makes one implementation's timed calls (1 + f)× slower
(harness/run/inject.py). Each run is a fresh `harness run` (new worker processes), so the pairs
hold the between-process variance that separates two nights. Every candidate is judged by
`harness compare`'s rule (harness/regress/compare.py) against its pair's baseline.

Targets (issue 14): 0 rows flagged over all null pairs; a 10% slowdown flagged (the slowed
implementation's verdict, or ≥ 1 of its rows, a `regression`) in ≥ 4 of 5 pairs; a 3% slowdown
flagged in at most 1. Flagged counts rows and implementations (harness/regress/implementations.py)
alike.

    .venv/bin/python benchmarks/false_alarms.py [--pairs 5] [--impl sdpa_math] \
        [--slowdowns 0.10,0.03] [--suite suites/nightly.yaml] [--work /tmp/false_alarms]

Takes pairs × (2 + len(slowdowns)) nightly runs (~2 min each on 2 CPU cores). Run it on an idle
machine; `--reuse` keeps runs already in --work (the script can be resumed). The same runs are also
judged with the per-process medians removed (the pooled samples alone, the rule before the process
became the unit of replication), an ablation printed at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from harness.regress.compare import compare, load_run, settings_for
from harness.regress.processes import PER_PROCESS

FLAGGED = ("regression", "improvement", "changed")  # any verdict that would make someone look


def _run(suite: str, out: Path, env_extra: dict[str, str], reuse: bool) -> Path:
    done = sorted(p.parent for p in out.glob("*/run.json")) if out.exists() else []
    if reuse and done:
        return done[-1]
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-m", "harness", "run", suite, "--out", str(out),
                           "--no-report"], env=env, capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"harness run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _judge(base: Path, cand: Path, impl: str | None, pooled_only: bool = False,
           overrides: dict | None = None) -> tuple[Counter, list[str], int]:  # fmt: skip
    """(row verdict counts, every flagged row and implementation, whether `impl` was caught:
    its implementation verdict or one of its rows a `regression`)."""
    b, c = load_run(base), load_run(cand)
    if pooled_only:
        for run in (b, c):
            for row in run.rows.values():
                row.pop(PER_PROCESS, None)
    comparison = compare(b, c, settings_for(c, overrides or {}))
    verdicts = Counter(r.verdict for r in comparison.rows)
    flagged = [f"{r.impl} {r.case} {r.phase}: {r.verdict} ({'; '.join(r.reasons or r.notes[:1])})"
               for r in comparison.rows if r.verdict in FLAGGED]  # fmt: skip
    flagged += [f"{r.impl} (implementation): {r.verdict} ({r.reason})"
                for r in comparison.implementations if r.verdict != "unchanged"]  # fmt: skip
    caught = any(r.impl == impl and r.verdict == "regression" for r in comparison.rows)
    caught |= any(r.impl == impl and r.verdict == "regression" for r in comparison.implementations)
    return verdicts, flagged, int(caught)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--impl", default="sdpa_math", help="the implementation slowed down")
    ap.add_argument("--slowdowns", default="0.10,0.03")
    ap.add_argument("--suite", default="suites/nightly.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/false_alarms"))
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument(
        "--impl-tol",
        type=float,
        default=None,
        help="judge with this impl_tol instead of the one each run's suite recorded",
    )
    args = ap.parse_args()
    slowdowns = [float(s) for s in args.slowdowns.split(",") if s]

    pairs: list[tuple[Path, Path, dict[float, Path]]] = []
    for i in range(args.pairs):
        base = _run(args.suite, args.work / f"pair{i}" / "base", {}, args.reuse)
        null = _run(args.suite, args.work / f"pair{i}" / "null", {}, args.reuse)
        slowed = {}
        for f in slowdowns:
            env = {"HARNESS_TEST_SLOWDOWN": f"{args.impl}={f}"}
            slowed[f] = _run(args.suite, args.work / f"pair{i}" / f"slow{f:g}", env, args.reuse)
        pairs.append((base, null, slowed))
        print(f"pair {i}: {base.parent.parent}", flush=True)

    summary = []
    over = {"impl_tol": args.impl_tol}
    for pooled_only in (False, True):
        rule = "pooled samples only (ablation)" if pooled_only else "compare as shipped"
        print(f"\n=== {rule} ===")
        null_flags = null_regressions = 0
        hits: dict[float, int] = dict.fromkeys(slowdowns, 0)
        for i, (base, null, slowed) in enumerate(pairs):
            verdicts, flagged, _ = _judge(base, null, None, pooled_only, over)
            null_flags += len(flagged)
            null_regressions += sum(": regression" in f for f in flagged)
            print(f"pair {i} null: {dict(verdicts)}", *(f"  FLAGGED {f}" for f in flagged),
                  sep="\n")  # fmt: skip
            for f, slow in slowed.items():
                verdicts, flagged, caught = _judge(base, slow, args.impl, pooled_only, over)
                mine = [x for x in flagged if x.startswith(f"{args.impl} ")]
                others = [x for x in flagged if not x.startswith(f"{args.impl} ")]
                hits[f] += caught
                print(f"pair {i} +{f:.0%} {args.impl}: {'caught' if caught else 'missed'}; "
                      f"other rows/implementations flagged: {len(others)}",
                      *(f"  HIT {x}" for x in mine), *(f"  FLAGGED {x}" for x in others),
                      sep="\n")  # fmt: skip
        line = (f"{rule}: null pairs {null_flags} rows/implementations flagged "
                f"({null_regressions} regressions) "
                f"in {args.pairs} pairs (target 0); ")  # fmt: skip
        line += "; ".join(f"+{f:.0%} on {args.impl} flagged in {hits[f]} of {args.pairs} pairs"
                          for f in slowdowns)  # fmt: skip
        summary.append(line)
    print("", *summary, sep="\n")


if __name__ == "__main__":
    main()
