"""Does a sparse mask cost in proportion to its density? bpt (and compiled flex, if it runs here)
on dense causal and sparse patterns of roughly equal density (~12% of the S×S pairs).

For each pattern: density = MaskSpec.attended_pairs / (Sq·Sk); the median time of `--repeats`
runs after a warm-up (time.perf_counter; p20-p80 beside it) of the forward (no grad) and of
forward + backward; the time relative to dense causal; and the fraction of the density-
proportional ideal, (density / density_causal) / (time / time_causal): 1.0 means the pattern
costs exactly its share of causal's work, less means overhead (partial tiles pay for their
masked pairs; an ideal blockwise kernel touches only the tiles a pattern meets).
bpt's tile counts (computed pairs of all pairs, and how many of them are partial) come from its
cached plan (`implementations.blockwise_ops.tile_plan`). Not a test; single process, CPU, fp32;
numbers from a shared or noisy machine vary by 10-20% run to run.

Usage: .venv/bin/python benchmarks/sparse_density.py --seq-len 2048 [--block-size 128]
       [--repeats 5] [--heads 8] [--head-dim 64] [--no-flex] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.masks import MaskSpec  # noqa: E402
from implementations.blockwise_ops import tile_plan  # noqa: E402
from implementations.bpt import bpt_attention  # noqa: E402

TARGET = 0.12


def patterns(seq: int, block: int) -> dict[str, MaskSpec]:
    """Dense causal, then sparse patterns with parameters chosen for ~TARGET density."""
    n = math.ceil(seq / block)
    band = max(0, round((TARGET * n - 1) / 2))  # (2·band + 1) blocks of n a row
    keep = min(1.0, max(0.01, (TARGET - 1 / n) / (1 - 1 / n)))  # the diagonal block is kept too
    # local band of 2s-1 plus every s-th key; the small-stride root (s < sqrt(S)) of the target
    stride = min(range(2, max(3, math.isqrt(seq))),
                 key=lambda s: abs((2 * s - 1) / seq + 1 / s - TARGET))  # fmt: skip
    window = max(1, round(TARGET * seq / block)) * block  # whole blocks: (512, 0) at 4096/128
    half = round((TARGET - 2 * (seq // 64) / seq) * seq / 2)
    docs = max(1, round(1 / TARGET))  # equal documents: density 1 / docs
    lens = tuple(seq // docs + (i < seq % docs) for i in range(docs))
    return {
        "dense causal": MaskSpec(kind="causal"),
        f"sliding_window ({window},0)": MaskSpec(kind="sliding_window", window=(window, 0)),
        f"block_sparse b{block} band{band}": MaskSpec(kind="block_sparse", block=block, band=band),
        f"random_block b{block} p{keep:.3f}": MaskSpec(kind="random_block", block=block,
                                                       density=round(keep, 3)),  # fmt: skip
        f"strided {stride}": MaskSpec(kind="strided", stride=stride),
        f"global_local ({half},{half}) g{seq // 64}": MaskSpec(
            kind="global_local", window=(half, half), num_global=seq // 64),
        f"document {docs} equal docs": MaskSpec(kind="document", doc_lens=lens),
    }  # fmt: skip


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: plans, compilation, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> tuple[float, float, float]:
    if len(times) < 2:
        return times[0], times[0], times[0]
    cuts = statistics.quantiles(times, n=5, method="inclusive")
    return statistics.median(times), cuts[0], cuts[3]


def flex_forward() -> tuple[Callable | None, str]:
    try:
        from implementations.flex import FLEX

        ok = FLEX.available("cpu")
        return (FLEX.forward, "") if ok.ok else (None, ok.reason)
    except Exception as exc:  # noqa: BLE001 - report and go on without flex
        return None, f"{type(exc).__name__}: {exc}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seq, block = args.seq_len, args.block_size
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, args.heads, seq, args.head_dim, generator=gen)
                     for _ in range(4))  # fmt: skip
    impls: dict[str, Callable] = {"bpt": bpt_attention}
    if not args.no_flex:
        fn, why = flex_forward()
        if fn is None:
            print(f"flex: skipped ({why})")
        else:
            impls["flex"] = fn
    print(
        f"S={seq} heads={args.heads} d={args.head_dim} fp32 cpu threads="
        f"{torch.get_num_threads()} bpt block={block} repeats={args.repeats} (median, p20-p80)"
    )
    rows = []
    specs = patterns(seq, block)
    info = {}
    for name, spec in specs.items():
        plan = tile_plan(spec, seq, seq, block, block)
        n = len(plan.rows)
        info[name] = (spec.attended_pairs(seq, seq) / (seq * seq),
                      f"{plan.num_pairs}/{n * n} ({plan.count('partial')} partial)")  # fmt: skip
    # every bpt run first: flex's compilation (inductor's worker processes) must not overlap them
    for impl, fn in impls.items():
        for name, spec in specs.items():
            density, tiles = info[name]
            kw = {"causal": True} if spec.kind == "causal" else {"causal": False, "mask": spec}

            def fwd(fn=fn, kw=kw):
                with torch.no_grad():
                    return fn(q, k, v, block_size=block, **kw)

            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]

            def fwd_bwd(fn=fn, kw=kw, leaves=leaves):
                fn(*leaves, block_size=block, **kw).backward(dout)

            for phase, step in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                try:
                    stats = summary(timed(step, args.repeats))
                except Exception as exc:  # noqa: BLE001 - say why and go on
                    reason = str(exc).strip().splitlines()[0][:90] if str(exc) else ""
                    print(f"{impl} {name} {phase}: failed: {type(exc).__name__}: {reason}")
                    continue
                rows.append((impl, name, density, phase, stats, tiles if impl == "bpt" else ""))
                print(f"  {impl:4s} {phase:7s} {name:34s} {stats[0] * 1e3:9.1f} ms", flush=True)
    base = {(r[0], r[3]): (r[2], r[4][0]) for r in rows if r[1] == "dense causal"}
    print()
    head = (f"{'impl':4s} {'phase':7s} {'pattern':34s} {'density':>7s} {'median ms':>10s} "
            f"{'p20-p80 ms':>15s} {'rel causal':>10s} {'ideal frac':>10s}  bpt tiles")  # fmt: skip
    print(head)
    print("-" * len(head))
    for impl, name, density, phase, (med, p20, p80), tiles in rows:
        rel = frac = float("nan")
        if (impl, phase) in base:
            d0, t0 = base[(impl, phase)]
            rel = med / t0
            frac = (density / d0) / rel
        print(
            f"{impl:4s} {phase:7s} {name:34s} {density:7.3f} {med * 1e3:10.1f} "
            f"{f'{p20 * 1e3:.1f}-{p80 * 1e3:.1f}':>15s} {rel:10.3f} {frac:10.2f}  {tiles}"
        )


if __name__ == "__main__":
    main()
