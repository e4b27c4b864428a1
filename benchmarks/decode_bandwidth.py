"""How close does each decode implementation come to the machine's copy bandwidth?

Decode reads the whole KV cache once per step, so it is memory bound: achieved GB/s =
`harness.measure.flops.decode_bytes(case)` (K and V of every sequence's real length, q and the
output) / time, beside the measured copy bandwidth (`harness.measure.peaks.probe`, read + write of
64 MiB). Cases: cache 8k, 16k, 32k × batch 1 and 8, 8 query heads over 1 kv head (GQA 8:1),
head_dim 128, float32, seqlen_q 1, contiguous and paged (page 256, shuffled pages), inputs from
the decode workload itself. For each decode implementation available here: the median time of
`--repeats` calls after a warm-up call (time.perf_counter; p20-p80 beside it; the warm-up pays
for flex's compilation; the implementations' calls interleaved round by round), GB/s, the
fraction of the copy bandwidth, and the ratio of the best torch path (decode_naive,
decode_sdpa_math, decode_sdpa_flash) time to this one's (>= 1: as fast).
Not a test; one process, CPU; numbers from a shared or noisy machine vary run to run.

Usage: .venv/bin/python benchmarks/decode_bandwidth.py [--repeats 5] [--impl NAME ...]
       [--cache 8192 16384 32768] [--batch 1 8] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.case import Case  # noqa: E402
from harness.measure.flops import decode_bytes  # noqa: E402
from harness.measure.peaks import probe  # noqa: E402
from harness.registry import REGISTRY, declared_reasons  # noqa: E402
from harness.workloads.decode import DecodeWorkload, cache_of  # noqa: E402

TORCH_PATHS = ("decode_naive", "decode_sdpa_math", "decode_sdpa_flash")


def time_calls(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """`repeats` timed calls of each function after one warm-up call each (which pays for
    compilation), interleaved round by round so that a burst of load on a shared machine hits
    every implementation alike."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impl", nargs="*", default=None)
    parser.add_argument("--cache", type=int, nargs="*", default=[8192, 16384, 32768])
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.impl or [n for n in REGISTRY.names("decode")
                          if REGISTRY.get(n).available("cpu").ok]  # fmt: skip
    copy_gbs = probe("cpu")["mem_gbytes_per_s"]
    print(f"copy bandwidth {copy_gbs:.1f} GB/s, {torch.get_num_threads()} threads; "
          f"torch {torch.__version__}")  # fmt: skip
    head = f"{'cache':>6} {'B':>2} {'layout':>7} {'impl':<18} {'median ms':>10} {'p20-p80 ms':>17}"
    print(head + f" {'GB/s':>6} {'of copy':>7} {'best torch/this':>15}")
    workload = DecodeWorkload()
    for page in (None, 256):
        for batch in args.batch:
            for cache_len in args.cache:
                case = Case(workload="decode", batch=batch, seqlen_q=1, seqlen_k=cache_len,
                            num_heads=8, num_kv_heads=1, head_dim=128, dtype="float32",
                            page_size=page)  # fmt: skip
                inputs = workload.make_inputs(case, "cpu", seed=0)
                q, cache = inputs.tensors["q"], cache_of(inputs)
                runnable = [REGISTRY.get(n) for n in names]
                runnable = [
                    i
                    for i in runnable
                    if not declared_reasons(i, case) + i.unsupported(case, "cpu")
                ]
                with torch.no_grad():
                    times = time_calls({i.name: partial(i.forward, q, cache) for i in runnable},
                                       args.repeats)  # fmt: skip
                medians = {n: statistics.median(t) for n, t in times.items()}
                best_torch = min((medians[n] for n in TORCH_PATHS if n in medians), default=None)
                for name, samples in times.items():
                    med = medians[name]
                    p20, p80 = statistics.quantiles(samples, n=5)[0], statistics.quantiles(
                        samples, n=5)[3]  # fmt: skip
                    gbs = decode_bytes(case) / med / 1e9
                    ratio = f"{best_torch / med:15.2f}" if best_torch else f"{'-':>15}"
                    layout = "contig" if page is None else f"page{page}"
                    print(f"{cache_len:>6} {batch:>2} {layout:>7} {name:<18} {med * 1e3:10.2f} "
                          f"{p20 * 1e3:8.2f}-{p80 * 1e3:8.2f} {gbs:6.1f} {gbs / copy_gbs:7.0%} "
                          f"{ratio}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
