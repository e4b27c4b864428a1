"""Does the harness's timer agree with the ecosystem's? Side by side, one process, same calls.

Our timer is `harness.measure.timing.time_samples_ms` (the one sample loop every row goes
through), summarized by `summarize_ms`. On CPU it is set beside
`torch.utils.benchmark.Timer.blocked_autorange` (median of its per-block times), with the same
intra-op thread count (`torch.set_num_threads`, and the Timer's `num_threads`); the two timers
alternate for `--rounds` rounds and each pools its samples over the rounds, so a slow spell of a
shared machine falls on both. A call passes when the medians agree within 5% (`--tol`). On CUDA
(when present) `triton.testing.do_bench` (return_mode="median") is set beside ours too, within 3%
(`--tol-cuda`); without triton that column reads "n/a".

Calls: `harness.attention(impl, q, k, v, causal=True)` under no_grad (the harness's fwd phase)
for bpt, sdpa_flash and naive at S 1024 and 2048, b1 h8 d64 float32, and one fwd_bwd training
step built by the harness's own phase builder (`harness.measure.phases.make_phase` on the
attention workload's `bind`). An implementation unavailable here is listed as skipped.

Not a test; numbers from a shared or noisy machine vary run to run (rerun a FAIL before
believing it). Exit status 1 when any comparison fails.

Usage: .venv/bin/python benchmarks/timer_crosscheck.py [--rounds 3] [--threads N]
       [--impl bpt sdpa_flash naive] [--seq 1024 2048] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tbench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from harness.case import Case  # noqa: E402
from harness.errors import Unavailable  # noqa: E402
from harness.measure.phases import make_phase  # noqa: E402
from harness.measure.timing import summarize_ms, time_samples_ms  # noqa: E402
from harness.registry import REGISTRY  # noqa: E402
from harness.run.threads import resolve_threads  # noqa: E402
from harness.workloads import get_workload  # noqa: E402

MIN_RUN_S = 0.5  # each timer's share of one round, about


def forward_call(impl: str, case: Case, device: str) -> Callable[[], Any]:
    """`harness.attention` on the case's seeded inputs, under no_grad (the fwd phase)."""
    inputs = get_workload("attention").make_inputs(case, device, 0).tensors
    q, k, v = inputs["q"], inputs["k"], inputs["v"]

    def fwd() -> None:
        with torch.no_grad():
            harness.attention(impl, q, k, v, causal=case.causal)

    fwd()  # raises Unavailable here, not inside a timer
    return fwd


def phase_call(impl: str, case: Case, phase: str, device: str) -> Callable[[], Any]:
    """The harness's own timed closure of `phase` (as the worker builds it)."""
    workload = get_workload(case.workload)
    inputs = workload.make_inputs(case, device, 0)
    bound = workload.bind(REGISTRY.get(impl), case, inputs, requires_grad=phase != "fwd")
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(workload.output_shape(case), generator=gen).to(case.torch_dtype).to(device)
    fn = make_phase(phase, bound, dout).fn
    fn()
    return fn


def ours_ms(fn: Callable[[], Any], device: str, n: int) -> list[float]:
    return time_samples_ms(fn, device=device, warmup=1, repeats=n, min_repeats=n,
                           max_time_s=math.inf)  # fmt: skip


def torch_ms(fn: Callable[[], Any], threads: int) -> list[float]:
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return [t * 1e3 for t in timer.blocked_autorange(min_run_time=MIN_RUN_S).times]


def triton_ms(fn: Callable[[], Any]) -> float | None:
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return float(do_bench(fn, warmup=25, rep=int(MIN_RUN_S * 1e3), return_mode="median"))


def compare(fn: Callable[[], Any], device: str, threads: int,
            rounds: int) -> dict[str, float | None]:  # fmt: skip
    """Medians (ms) of ours, torch.utils.benchmark's and (CUDA) do_bench's, rounds alternated."""
    probe = ours_ms(fn, device, 1)[0]
    n = max(5, min(200, math.ceil(MIN_RUN_S * 1e3 / max(probe, 1e-3))))
    ours: list[float] = []
    theirs: list[float] = []
    trit: list[float] = []
    for r in range(rounds):
        first_ours = r % 2 == 0  # who goes first alternates too
        if first_ours:
            ours += ours_ms(fn, device, n)
        theirs += torch_ms(fn, threads)
        if device == "cuda" and (t := triton_ms(fn)) is not None:
            trit.append(t)
        if not first_ours:
            ours += ours_ms(fn, device, n)
    return {
        "ours": summarize_ms(ours)["time_ms_median"],
        "torch": statistics.median(theirs),
        "triton": statistics.median(trit) if trit else None,
        "n_ours": len(ours),
        "n_torch": len(theirs),
    }


def verdict(ratio: float, tol: float) -> str:
    return "PASS" if abs(ratio - 1) <= tol else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--impl", nargs="+", default=["bpt", "sdpa_flash", "naive"])
    parser.add_argument("--seq", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--fwd-bwd", default="bpt", help="impl of the fwd_bwd call ('' for none)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--tol", type=float, default=0.05)
    parser.add_argument("--tol-cuda", type=float, default=0.03)
    args = parser.parse_args(argv)

    threads = resolve_threads(args.threads)
    torch.set_num_threads(threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {threads} intra-op threads, {args.rounds} rounds, "
          f"tolerance {args.tol:.0%} (torch.utils.benchmark), "
          f"{args.tol_cuda:.0%} (do_bench)")  # fmt: skip
    head = (f"{'device':6} {'call':32} {'ours ms':>9} {'torch ms':>9} {'ratio':>6}  "
            f"{'':4}  {'do_bench':>9} {'ratio':>6}  {'':4}  samples")  # fmt: skip
    print(head)
    print("-" * len(head))
    failed = False
    for device in devices:
        calls = [(f"{impl} fwd S={s}", impl, "fwd", s) for impl in args.impl for s in args.seq]
        if args.fwd_bwd:
            s = args.seq[0]
            calls.append((f"{args.fwd_bwd} fwd_bwd S={s} (phase)", args.fwd_bwd, "fwd_bwd", s))
        for label, impl, phase, s in calls:
            case = Case(seq_len=s, num_heads=8, head_dim=64, causal=True)
            try:
                fn = (forward_call(impl, case, device) if phase == "fwd"
                      else phase_call(impl, case, phase, device))  # fmt: skip
            except Unavailable as exc:
                print(f"{device:6} {label:32} skipped: {str(exc)[:60]}")
                continue
            m = compare(fn, device, threads, args.rounds)
            ratio = m["ours"] / m["torch"]
            ok = verdict(ratio, args.tol)
            tcol = "      n/a               "
            if m["triton"] is not None:
                tr = m["ours"] / m["triton"]
                tv = verdict(tr, args.tol_cuda)
                failed |= tv == "FAIL"
                tcol = f"{m['triton']:9.3f} {tr:6.3f}  {tv:4}"
            elif device == "cpu":
                tcol = "        –               "
            failed |= ok == "FAIL"
            print(f"{device:6} {label:32} {m['ours']:9.3f} {m['torch']:9.3f} {ratio:6.3f}  "
                  f"{ok:4}  {tcol}  {m['n_ours']}/{m['n_torch']}")  # fmt: skip
            del fn
    print("(ratio = ours / theirs; samples = ours / torch.utils.benchmark blocks)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
