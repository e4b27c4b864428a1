"""Distributed tasks: the worker starts `world_size` rank processes for one task.

Each rank joins a fresh gloo (CPU, one thread) or NCCL (CUDA, one GPU) group and runs the same
measurement code as a single-process task (run/measure_task.py) with its `RankGroup`; rank 0
sends the row back. This module knows processes and process groups, nothing about any
implementation: sharding, gathering and exchange observation come from `Impl.distributed`.

A rank that raises reports its status; a rank that dies ends the case as `error` (the worker kills
the others); a rank that hangs is ended by the runner's case timeout, which kills the worker's
whole process group. A rank dies with its worker (run/lifeline.py), and sends its row through a
pipe, not a multiprocessing Queue: a Queue's semaphore, left registered by a killed worker, would
make the resource tracker warn after the runner exits. HARNESS_TEST_RANK_FAULT="die:R" or
"hang:R" makes rank R fail (tests only).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from harness.errors import Unavailable
from harness.run.lifeline import die_with_parent
from harness.run.measure_task import measure
from harness.run.task import Task, classify

FAULT_ENV = "HARNESS_TEST_RANK_FAULT"
_GROUP_TIMEOUT_S = 120.0


class RankGroup:
    """This rank's view of the default process group, as the measurement code uses it."""

    def __init__(self, rank: int, world: int, device: str):
        self.rank, self.world, self.device = rank, world, device
        self.backend = str(dist.get_backend())

    def barrier(self) -> None:
        dist.barrier()

    def decide(self, more: bool) -> bool:
        """Rank 0's decision, on every rank (so every rank takes the same number of samples)."""
        on = self.device if self.backend == "nccl" else "cpu"  # NCCL only moves device tensors
        flag = torch.tensor([1.0 if more else 0.0], device=on)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def all_gather_tensor(self, t: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return parts

    def all_gather_object(self, obj: Any) -> list[Any]:
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, obj)
        return everyone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(task: Task) -> dict[str, Any]:
    """Start the ranks of `task`, wait for rank 0's row; kill them all if one dies."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    world = task.case.world_size
    if task.device == "cuda" and world > torch.cuda.device_count():
        raise Unavailable(task.impl, f"world_size {world} needs {world} GPUs (one per rank); "
                                     f"{torch.cuda.device_count()} visible")  # fmt: skip
    # fork starts a rank in milliseconds; CUDA cannot be forked once initialized
    ctx = mp.get_context("spawn" if task.device == "cuda" else "fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(world)]
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, task, pipes[r][1]))
             for r in range(world)]  # fmt: skip
    for p in procs:
        p.start()
    readers = []
    for reader, writer in pipes:
        writer.close()  # the worker only reads; a rank that exits silently shows as EOF
        readers.append(reader)
    try:
        while True:
            for reader in wait(readers, timeout=0.2):
                try:
                    return reader.recv()
                except EOFError:  # exited without a message; its exit code tells
                    readers.remove(reader)
            for r, p in enumerate(procs):
                if p.exitcode not in (None, 0):
                    reason = f"rank {r} of {world} died (exit code {p.exitcode}); others killed"
                    return {"status": "error", "reason": reason}
    finally:
        for reader, _ in pipes:
            reader.close()
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)


def _rank_main(rank: int, world: int, port: int, task: Task, results: Any) -> None:
    die_with_parent()  # never outlive the worker, whatever killed it
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
        row = measure(task, RankGroup(rank, world, task.device))
        if rank == 0:
            results.send(row)
    except Exception as exc:
        status, reason = classify(exc)
        results.send({"status": status, "reason": f"rank {rank}: {reason}"})
    finally:
        results.close()
        dist.destroy_process_group()
