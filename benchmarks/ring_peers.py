"""Our ring vs lucidrains' ring-attention-pytorch vs our Ulysses on P gloo ranks (CPU): time of the
forward and of forward + backward, and the max abs error of the output and gradients vs float64.

Every implementation gets the same inputs (seeded, fp32 by default, sharded by
`shard_sequence(..., seq_layout="contiguous")`) and its results are gathered the same way
(`gather_sequence`), so errors compare like for like. The reference is float64 blockwise attention
on the whole sequence (`bpt_attention` on float64 inputs: its pure-torch path, exact up to float64
rounding) with the same upstream gradient. Time: each sample is the slowest rank's
`time.perf_counter` (monotonic) span of one call, after a barrier; median and p20-p80 of
`--repeats` samples after one warm-up. One thread per rank by default (`--threads`).

Known (see implementations/ring_peers.py): ring-attention-pytorch 0.5.20's backward at P >= 2
returns dK + dV as dK, so its dk/dv errors are O(1); its output and dq are right.
torch context_parallel does not run on CPU (TORCH_CP_CPU there), so it is not in this script.
Not a test; numbers from a loaded machine vary by tens of percent.

Usage: .venv/bin/python benchmarks/ring_peers.py [--seq-len 8192] [--heads 8] [--head-dim 64]
       [--world 2] [--causal both|true|false] [--repeats 3] [--impls ring,ring_attention_pytorch,
       ulysses] [--threads 1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.registry import REGISTRY  # noqa: E402
from implementations.bpt import bpt_attention  # noqa: E402
from implementations.ring.seq_layouts import gather_sequence, shard_sequence  # noqa: E402

IMPLS = ("ring", "ring_attention_pytorch", "ulysses")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _inputs(args: argparse.Namespace) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shape = (1, args.seq_len, args.heads, args.head_dim)
    return [torch.randn(shape, generator=gen) for _ in range(4)]  # q, k, v, dout (fp32)


def reference(args: argparse.Namespace, causal: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """float64 out and (dq, dk, dv) of the whole sequence."""
    q, k, v, dout = _inputs(args)
    leaves = [t.double().transpose(1, 2).requires_grad_(True) for t in (q, k, v)]
    out = bpt_attention(*leaves, causal=causal, block_size=1024)
    grads = torch.autograd.grad(out, leaves, dout.double().transpose(1, 2))
    return out.detach().transpose(1, 2), [g.transpose(1, 2) for g in grads]


def _percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _gathered(t: torch.Tensor, world: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return gather_sequence(parts, seq_layout="contiguous", dim=1)


def _measure(impl_name: str, causal: bool, phase: str, args, rank: int, world: int):
    impl = REGISTRY.get(impl_name)
    dtype = DTYPES[args.dtype]
    local = [shard_sequence(t, seq_layout="contiguous", rank=rank, world_size=world).to(dtype)
             for t in _inputs(args)]  # fmt: skip
    q, k, v = (t.requires_grad_(phase == "fwd_bwd") for t in local[:3])
    dout = local[3]

    def call():
        if phase == "fwd":
            with torch.no_grad():
                return impl.forward(q, k, v, causal=causal, seq_layout="contiguous"), None
        for t in (q, k, v):
            t.grad = None
        out = impl.forward(q, k, v, causal=causal, seq_layout="contiguous")
        out.backward(dout)
        return out, [t.grad for t in (q, k, v)]

    out, grads = call()  # warm-up, and the values checked
    result = {"out": _gathered(out.detach().float(), world)}
    if grads is not None:
        result["grads"] = [_gathered(g.float(), world) for g in grads]
    samples = []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        call()
        samples.append(_slowest(time.perf_counter() - t0))
    return result, samples


def _run_rank(rank: int, world: int, port: int, args: argparse.Namespace, out_path: str) -> None:
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=timedelta(seconds=3600))  # fmt: skip
    rows = []
    try:
        for causal in args.causal_values:
            ref = reference(args, causal) if rank == 0 else None
            for name in args.impls:
                for phase in ("fwd", "fwd_bwd"):
                    result, samples = _measure(name, causal, phase, args, rank, world)
                    if rank != 0:
                        continue
                    ref_out, ref_grads = ref
                    err = (result["out"].double() - ref_out).abs().max().item()
                    grads = result.get("grads", [])  # none for fwd
                    pairs = zip(grads, ref_grads[: len(grads)], strict=True)
                    grad_errs = [(g.double() - r).abs().max().item() for g, r in pairs]
                    rows.append({"impl": name, "causal": causal, "phase": phase,
                                 "median_s": statistics.median(samples),
                                 "p20_s": _percentile(samples, 0.2),
                                 "p80_s": _percentile(samples, 0.8),
                                 "err_out": err, "err_grads": grad_errs})  # fmt: skip
                    print(_line(rows[-1]), flush=True)
        if rank == 0:
            Path(out_path).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def _line(row: dict) -> str:
    errs = row["err_grads"]
    grads = " ".join(f"d{n}={e:.1e}" for n, e in zip("qkv"[: len(errs)], errs, strict=True))
    return (f"{row['impl']:<24} {'causal' if row['causal'] else 'full':<6} {row['phase']:<8} "
            f"{row['median_s']:8.3f} s  [{row['p20_s']:.3f}-{row['p80_s']:.3f}]  "
            f"out={row['err_out']:.1e} {grads}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--causal", choices=("both", "true", "false"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--impls", default=",".join(IMPLS))
    args = parser.parse_args(argv)
    args.causal_values = {"both": (False, True), "true": (True,), "false": (False,)}[args.causal]
    args.impls = [n for n in args.impls.split(",") if n]
    for name in args.impls:
        if name not in IMPLS:
            parser.error(f"--impls: unknown {name!r}; allowed: {', '.join(IMPLS)}")
        why = REGISTRY.get(name).available("cpu")
        if not why.ok:
            parser.error(f"--impls: {name} cannot run here: {why.reason}")
    if args.seq_len % args.world or args.heads % args.world:
        parser.error(f"--seq-len {args.seq_len} and --heads {args.heads} must divide by --world "
                     f"{args.world} (contiguous shards; Ulysses splits heads)")  # fmt: skip
    print(f"P={args.world} S={args.seq_len} heads={args.heads} d={args.head_dim} {args.dtype} "
          f"gloo, {args.threads} thread(s)/rank, {args.repeats} samples after 1 warm-up; "
          f"errors: max abs vs float64", flush=True)  # fmt: skip
    print(f"{'impl':<24} {'mask':<6} {'phase':<8} {'median':>10}  [p20-p80]", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        out_path = str(Path(tmp) / "rows.json")
        mp.start_processes(_run_rank, args=(args.world, port, args, out_path), nprocs=args.world,
                           start_method="fork")  # fmt: skip
        rows = json.loads(Path(out_path).read_text())
    by = {(r["impl"], r["causal"], r["phase"]): r for r in rows}
    print("\nrelative to ring (median time ratio, >1 slower):")
    for (name, causal, phase), row in by.items():
        base = by.get(("ring", causal, phase))
        if base and name != "ring":
            ratio = row["median_s"] / base["median_s"]
            print(f"  {name:<24} {'causal' if causal else 'full':<6} {phase:<8} {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
