"""Distributed cases: the worker starts `world_size` rank processes for one task and builds its row.

Each rank joins a fresh gloo (CPU, one thread) or NCCL (CUDA, one GPU) group on a free port, builds
the full seeded inputs, takes its shard in the case's sequence layout, and measures itself with the
same phase closures and memory probe as single-device tasks; every timed sample starts after a
barrier and the row's sample is the slowest rank's. Rank 0 gathers the output and gradients for
the error against the float64 reference on the full sequence, and every rank's numbers: peak
memory, bytes sent per ring step, exposed (waited) communication time, and the time of the same
exchanges replayed without compute, which gives the overlap fraction.

A rank that raises reports its status; a rank that dies ends the case as `error` (the worker kills
the others); a rank that hangs is ended by the runner's case timeout, which kills the worker's
whole process group. HARNESS_TEST_RANK_FAULT="die:R" or "hang:R" makes rank R fail (tests only).
"""

from __future__ import annotations

import os
import queue
import socket
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from harness.errors import Unavailable
from harness.measure.flops import case_flops
from harness.measure.memory import measure_peak
from harness.measure.phases import make_phase, run_once_for_check
from harness.measure.timing import summarize_ms
from harness.registry import REGISTRY
from harness.workloads.attention import make_qkv
from harness.workloads.base import Bound, Inputs

FAULT_ENV = "HARNESS_TEST_RANK_FAULT"
_GROUP_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(task: Any) -> dict[str, Any]:
    """Start the ranks of `task`, wait for rank 0's row; kill them all if one dies."""
    import multiprocessing as mp

    world = task.case.world_size
    if task.device == "cuda" and world > torch.cuda.device_count():
        raise Unavailable(task.impl, f"world_size {world} needs {world} GPUs (one per rank); "
                                     f"{torch.cuda.device_count()} visible")  # fmt: skip
    # fork starts a rank in milliseconds; CUDA cannot be forked once initialized
    ctx = mp.get_context("spawn" if task.device == "cuda" else "fork")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, task, results))
             for r in range(world)]  # fmt: skip
    for p in procs:
        p.start()
    try:
        while True:
            try:
                return results.get(timeout=0.2)
            except queue.Empty:
                pass
            for r, p in enumerate(procs):
                if p.exitcode not in (None, 0):
                    reason = f"rank {r} of {world} died (exit code {p.exitcode}); others killed"
                    return {"status": "error", "reason": reason}
    finally:
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)


def _rank_main(rank: int, world: int, port: int, task: Any, results: Any) -> None:
    from harness.run.worker import classify

    fault = os.environ.get(FAULT_ENV, "")
    if fault == f"die:{rank}":
        os._exit(3)
    torch.set_num_threads(1)
    if task.device == "cuda":
        torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if task.device == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=_GROUP_TIMEOUT_S))  # fmt: skip
    try:
        if fault == f"hang:{rank}":
            time.sleep(3600)
        row = _measure_rank(task, rank, world)
        if rank == 0:
            results.put(row)
    except Exception as exc:
        status, reason = classify(exc)
        results.put({"status": status, "reason": f"rank {rank}: {reason}"})
    finally:
        dist.destroy_process_group()


class _CommRecorder:
    """Ring-exchange observer: bytes per exchange and the time spent waiting for them."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.wait_s = 0.0

    def started(self, nbytes: int) -> None:
        self.sent.append(nbytes)

    def wait(self, waits) -> None:
        t0 = time.perf_counter()
        waits()
        self.wait_s += time.perf_counter() - t0


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed_ms(fn, device: str) -> float:
    dist.barrier()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _samples(fn, task: Any) -> list[float]:
    """This rank's samples; rank 0 decides when to stop so every rank runs the same count."""
    t = task.timing
    samples: list[float] = []
    started = time.perf_counter()
    go = torch.ones(1)
    while go.item():
        samples.append(_timed_ms(fn, task.device))
        more = len(samples) < t["repeats"] and not (
            len(samples) >= t["min_repeats"] and time.perf_counter() - started > t["max_time_s"]
        )
        go.fill_(float(more))
        dist.broadcast(go, src=0)  # gloo object: CPU tensor; NCCL needs the device
    return samples


def _replay_ms(sent: list[int], device: str) -> float:
    """The recorded exchanges again, without compute: the communication time if none is hidden."""
    from implementations.ring.ring_exchange import Ring

    ring = Ring()
    bufs = [(torch.empty(n, dtype=torch.uint8, device=device),
             torch.empty(n, dtype=torch.uint8, device=device)) for n in sent]  # fmt: skip

    def replay() -> None:
        for out, into in bufs:
            ring.start([out], [into]).wait()

    replay()
    return min(_timed_ms(replay, device) for _ in range(3))


def _gather_seq(t: torch.Tensor, layout: str, world: int) -> torch.Tensor | None:
    from implementations.ring.seq_layouts import gather_sequence

    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return gather_sequence([p.cpu() for p in parts], seq_layout=layout, dim=1)


def _measure_rank(task: Any, rank: int, world: int) -> dict[str, Any]:
    from harness.run.worker import _CaseCache, _errors
    from implementations.ring.ring_exchange import observe
    from implementations.ring.seq_layouts import load_imbalance, shard_sequence

    case, device = task.case, task.device
    impl = REGISTRY.get(task.impl)
    full = make_qkv(case, device, task.seed)
    dout_full = torch.randn(full["q"].shape, generator=torch.Generator().manual_seed(task.seed + 1)
                            ).to(case.torch_dtype).to(device)  # fmt: skip
    shard = lambda t: shard_sequence(t, seq_layout=case.seq_layout, rank=rank, world_size=world)  # noqa: E731
    needs_grad = task.phase != "fwd"
    local = {n: shard(t).detach().requires_grad_(needs_grad) for n, t in full.items()}
    dout = shard(dout_full) if needs_grad else None
    local_input_bytes = sum(t.numel() * t.element_size() for t in local.values())

    def forward() -> torch.Tensor:
        return impl.forward(local["q"], local["k"], local["v"], causal=case.causal,
                            block_size=case.block_size, seq_layout=case.seq_layout)  # fmt: skip

    bound = Bound(forward=forward, leaves=local if needs_grad else {})
    out, grads = run_once_for_check(task.phase, bound, dout)
    out_full = _gather_seq(out, case.seq_layout, world)
    grads_full = ({n: _gather_seq(g, case.seq_layout, world) for n, g in grads.items()}
                  if grads is not None else None)  # fmt: skip
    row: dict[str, Any] = {}
    if rank == 0:
        state = _CaseCache(inputs=Inputs({n: t.cpu() for n, t in full.items()}),
                           dout=dout_full.cpu())  # fmt: skip
        row.update(_errors(task, state, out_full, grads_full))
    del out, grads, out_full, grads_full, full

    fn = make_phase(task.phase, bound, dout)
    for _ in range(task.timing["warmup"]):
        fn()
    dist.barrier()
    mem = measure_peak(fn, device)
    samples = _samples(fn, task)
    with observe(_CommRecorder()) as rec:
        observed_ms = _timed_ms(fn, device)
    comm_ms = _replay_ms(rec.sent, device) if rec.sent else 0.0
    mine = {"samples": samples, "peak": mem.above_baseline_bytes, "sent": rec.sent,
            "exposed_ms": rec.wait_s * 1e3, "comm_ms": comm_ms,
            "observed_ms": observed_ms}  # fmt: skip
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank != 0:
        return {}

    worst = [max(r["samples"][i] for r in everyone) for i in range(len(samples))]
    summary = summarize_ms(worst)
    peaks = [r["peak"] for r in everyone]
    peak_max = None if None in peaks else max(peaks)
    flops = case_flops(case, task.phase)
    comm = max(r["comm_ms"] for r in everyone)
    exposed = max(r["exposed_ms"] for r in everyone)
    row.update(summary)
    row.update({
        "status": "ok", "reason": "", "label": impl.label, "num_samples": len(worst),
        "time_samples_ms": worst, "flops": flops,
        "tflops": flops / (summary["time_ms_median"] * 1e-3) / 1e12,
        "tokens_per_s": case.batch * case.seq_len / (summary["time_ms_median"] * 1e-3),
        "peak_mem_above_inputs_bytes": peak_max,
        "peak_mem_bytes": None if peak_max is None else peak_max + local_input_bytes,
        "peak_mem_above_inputs_bytes_per_rank": peaks,
        "input_bytes": local_input_bytes, "mem_method": mem.method,
        "bytes_sent_per_step_per_rank": [max(r["sent"], default=0) for r in everyone],
        "bytes_sent_per_rank": [sum(r["sent"]) for r in everyone],
        "num_exchanges": len(everyone[0]["sent"]),
        "comm_ms": comm, "exposed_comm_ms": exposed,
        "exposed_comm_ms_per_rank": [r["exposed_ms"] for r in everyone],
        "overlap_fraction": max(0.0, min(1.0, 1.0 - exposed / comm)) if comm > 0 else None,
        "load_imbalance": load_imbalance(case.seq_layout, world_size=world,
                                         local_len=case.seq_len // world, causal=case.causal),
        "comm_backend": dist.get_backend(),
    })  # fmt: skip
    return row
