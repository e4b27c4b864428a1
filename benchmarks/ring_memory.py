"""How close is ring attention's memory to the ideal 1/P of one device? Per-rank peak × P ÷ the
P = 1 peak, forward (no grad) and a training step (forward + backward), on gloo (CPU ranks).

Peak memory is measured as the harness does (`harness.measure.memory.measure_peak`): each rank's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) above what was live just
before the call, with glibc returning freed blocks to the kernel at once (`MALLOC_ENV`; this script
re-executes itself with it), after one untimed call and one warm-up, and `reset` dropping the
previous call's gradients first. The local q, k, v (and the upstream gradient) exist before the
call, so the peak counts the working set: for fwd_bwd that includes the gradients (3 input-sized
tensors). P = 1 runs the same code without a process group (no exchange).

Why ×P ÷ P1 cannot reach ~1.2 on this code (the note). With U the bytes of one of q, k, v for
the whole sequence (fp32) and w = U/P a rank's share: one device needs only its output (the
first partial output is adopted as the accumulator; no layout copies), so its forward peak is ~U.
A rank needs its output (w), the partial output of a piece while merging it (w/4: full pieces are
merged in 4 row tiles) and the K/V block it receives while computing on another, which it must
keep to forward it next step: one received block at P = 2 (one forward exchange), a fixed pair of
receive buffers at P >= 3 (computing on one while receiving into the other is the overlap), each
2·w·num_kv_heads/num_heads. So the forward ratio is at least 1 + 0.25 + 2 (P = 2) or
1 + 0.25 + 4 (P >= 3) for MHA, whatever the constant: every per-rank term is a multiple of w, the
same order as the single-device peak itself. Backward adds the travelling dK/dV sums (a receive
pair in the accumulator dtype) and the kernel's per-piece dq/dk/dv temporaries. The old code met
~1.3-1.6 only because its single-device peak carried ~7U of copies (bhsd copies of q, k, v, a
stacked K/V copy, a zero-filled accumulator) that the ring shared. The `floor` column prints
1 + (K/V (and dK/dV) receive buffers per rank × P) / (the measured P = 1 peak). Getting below it
needs K/V moved in chunks smaller than a block (a pipelined ring of sub-blocks: memory ~2(P-1)
chunks, P·m kernel calls and m + P - 2 exchanges for m chunks a block), not done here.

`--ring-from FILE` loads `ring_attention` from another revision's ring_attention.py (for a
before/after comparison; `git show REV:implementations/ring/ring_attention.py > FILE`).

Usage: .venv/bin/python benchmarks/ring_memory.py [--seq-len 8192] [--heads 8] [--kv-heads 8]
       [--head-dim 64] [--worlds 1 2 4] [--layout zigzag] [--causal] [--ring-from FILE]
Not a test; numbers on a loaded machine drift by a few MiB (the RSS also holds the interpreter).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.measure.memory import MALLOC_ENV, measure_peak  # noqa: E402
from implementations.ring.seq_layouts import shard_sequence  # noqa: E402

MIB = 2**20


def _ring_fn(path: str | None):
    if path is None:
        from implementations.ring import ring_attention

        return ring_attention
    spec = importlib.util.spec_from_file_location("ring_attention_other", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ring_attention


def _peaks(args: argparse.Namespace, rank: int, world: int) -> dict[str, int]:
    """This rank's peak above live memory for fwd and fwd_bwd (bytes)."""
    ring_attention = _ring_fn(args.ring_from)
    gen = torch.Generator().manual_seed(0)
    s, h, hkv, d = args.seq_len, args.heads, args.kv_heads, args.head_dim
    full = [torch.randn(1, s, heads, d, generator=gen) for heads in (h, hkv, hkv, h)]
    local = [shard_sequence(t, seq_layout=args.layout, rank=rank, world_size=world) for t in full]
    del full
    q, k, v = (t.requires_grad_(True) for t in local[:3])
    dout = local[3]
    extra = {"seq_len": s} if args.ring_from is None else {}

    def fwd() -> None:
        with torch.no_grad():
            ring_attention(q, k, v, causal=args.causal, seq_layout=args.layout, **extra)

    def fwd_bwd() -> None:
        ring_attention(q, k, v, causal=args.causal, seq_layout=args.layout,
                       **extra).backward(dout)  # fmt: skip

    def reset() -> None:
        for t in (q, k, v):
            t.grad = None

    peaks = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        fn()  # the harness's untimed check call
        fn()  # and its warm-up
        if dist.is_initialized():
            dist.barrier()
        peaks[name] = measure_peak(fn, "cpu", reset=reset).above_baseline_bytes
    return peaks


def _rank_main(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))  # fmt: skip
    try:
        peaks = _peaks(args, rank, world)
        everyone: list = [None] * world
        dist.all_gather_object(everyone, peaks)
        if rank == 0:
            Path(out).write_text(json.dumps(everyone))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def per_rank_peaks(args: argparse.Namespace, world: int) -> list[dict[str, int]]:
    if world == 1:
        torch.set_num_threads(1)
        return [_peaks(args, 0, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "peaks.json")
        mp.start_processes(_rank_main, args=(world, _free_port(), args, out), nprocs=world,
                           start_method="fork")  # fmt: skip
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--layout", default="zigzag", choices=["contiguous", "striped", "zigzag"])
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--ring-from", default=None, help="another ring_attention.py to measure")
    args = parser.parse_args()
    args.kv_heads = args.kv_heads or args.heads
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # glibc reads them at start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    worlds = sorted(set(args.worlds) | {1})
    u = args.seq_len * args.heads * args.head_dim * 4  # one of q, k, v for the whole sequence
    kv_share = args.kv_heads / args.heads
    print(f"ring memory: S={args.seq_len} heads={args.heads} kv_heads={args.kv_heads} "
          f"d={args.head_dim} fp32 {args.layout} causal={args.causal} "
          f"({'this tree' if args.ring_from is None else args.ring_from}); "
          f"U = {u / MIB:.1f} MiB; peak = VmHWM above live, max over ranks")  # fmt: skip
    base: dict[str, int] = {}
    print(f"{'P':>2} {'phase':>8} {'peak/rank MiB':>14} {'×P ÷ P1':>8} {'floor':>6}  per rank MiB")
    for world in worlds:
        ranks = per_rank_peaks(args, world)
        for phase in ("fwd", "fwd_bwd"):
            peak = max(r[phase] for r in ranks)
            if world == 1:
                base[phase] = peak
            buffers = 0 if world == 1 else (1 if world == 2 else 2)
            in_flight = buffers * 2 * u * kv_share * (1 if phase == "fwd" else 2)  # (dK/dV too)
            floor = 1 + in_flight / base[phase]
            ratio = peak * world / base[phase]
            listing = " ".join(f"{r[phase] / MIB:.1f}" for r in ranks)
            print(f"{world:>2} {phase:>8} {peak / MIB:>14.1f} {ratio:>8.2f} {floor:>6.2f}  "
                  f"{listing}")  # fmt: skip


if __name__ == "__main__":
    main()
