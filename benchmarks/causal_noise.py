"""Why do causal rows move between runs? A controlled experiment.

Hypothesis (issue 14): the causal kernels run many short intra-op parallel regions (one per tile
of the triangular schedule), and with as many OpenMP threads as cores every region waits for its
slowest thread; when another process takes one core, the descheduled thread stalls every region,
so causal rows slow down several times while the full-mask rows (few large matmuls) barely move.

For each implementation × mask × thread count, time the forward call (time.perf_counter median of
N calls, p20–p80) on a quiet machine and again while a competing process spins on one core, and
print loaded ÷ quiet. Run it on an otherwise idle machine:

    .venv/bin/python benchmarks/causal_noise.py [--seq-len 2048] [--repeats 7]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch


def _spin(stop) -> None:  # a competing CPU-bound process (another job on a shared runner)
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _time(fn, repeats: int) -> tuple[float, float, float]:
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=5)
    return statistics.median(samples), q[0], q[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--impls", default="bpt,chunked,sdpa_math")
    args = ap.parse_args()
    from harness.registry import REGISTRY

    s, h, d = args.seq_len, 4, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, s, h, d, generator=g) for _ in range(3))
    print(f"S={s} H={h} D={d} fp32 fwd; median ms [p20–p80]; loaded: another process spins a core")
    print(f"{'impl':10} {'mask':7} {'thr':>3} {'quiet':>24} {'loaded':>24} {'loaded/quiet':>12}")
    for name in args.impls.split(","):
        impl = REGISTRY.get(name)
        # the implementation's own tensor layout (bshd or bhsd), as the harness binds it
        qkv = [t.transpose(1, 2) if impl.layout == "bhsd" else t for t in (q, k, v)]
        for causal in (False, True):

            def call(impl=impl, causal=causal, qkv=qkv):
                with torch.no_grad():
                    impl.forward(*qkv, causal=causal, block_size=256)

            for threads in (1, 2):
                torch.set_num_threads(threads)
                quiet = _time(call, args.repeats)
                stop = mp.Event()
                spinner = mp.Process(target=_spin, args=(stop,), daemon=True)
                spinner.start()
                time.sleep(0.2)
                loaded = _time(call, args.repeats)
                stop.set()
                spinner.join()
                fmt = lambda m: f"{m[0]:8.1f} [{m[1]:7.1f}–{m[2]:7.1f}]"  # noqa: E731
                mask = "causal" if causal else "full"
                print(f"{name:10} {mask:7} {threads:>3} {fmt(quiet):>24} {fmt(loaded):>24} "
                      f"{loaded[0] / quiet[0]:>11.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
