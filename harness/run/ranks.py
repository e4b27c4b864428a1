"""Distributed tasks: the worker starts the rank processes of one task.

Alone, the worker starts all `world_size` ranks; under torchrun (run/launched.py) each launched
process's worker starts only its own rank (`task.launch`), and the ranks of every node meet in the
c10d store launched rank 0 hosts. Either way each rank joins a fresh gloo (CPU, one thread) or NCCL
(CUDA, one GPU) group through a TCPStore (alone: one the worker opens on port 0, so no port is
picked and then lost to another process) and runs the same measurement code as a single-process
task (run/measure_task.py) with its `RankGroup`; rank 0 sends the row back, with where each rank
ran (`placement_fields`). This module knows processes and process groups, nothing about any
implementation: sharding, gathering and exchange observation come from `Impl.distributed`.

A rank that raises reports its status; a rank that dies ends the case as `error` (the worker kills
the others); a rank that hangs is ended by the runner's case timeout, which kills the worker's
whole process group. A rank dies with its worker (run/lifeline.py), and sends its row through a
pipe, not a multiprocessing Queue: a Queue's semaphore, left registered by a killed worker, would
make the resource tracker warn after the runner exits. HARNESS_TEST_RANK_FAULT="die:R", "hang:R"
or "kill:R" (SIGKILL itself once its group is up, mid-case) makes rank R fail, in every case or,
with "@TEXT" appended, in the cases whose name contains TEXT (tests only; `fault_for`).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from harness.errors import Unavailable
from harness.run.lifeline import die_with_parent
from harness.run.measure_task import measure
from harness.run.task import Slot, Task, classify

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


def run_ranks(task: Task) -> dict[str, Any]:
    """Start the ranks of `task` (all of them, or under a launcher only `task.launch`'s), wait
    for rank 0's row (or the one rank's outcome); kill them all if one dies."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    world = task.case.world_size
    launched = task.launch is not None
    if not launched and task.device == "cuda" and world > torch.cuda.device_count():
        raise Unavailable(task.impl, f"world_size {world} needs {world} GPUs (one per rank); "
                                     f"{torch.cuda.device_count()} visible")  # fmt: skip
    store = None
    if launched:
        slot, mine = task.launch, [task.launch.rank]
    else:  # the server lives here until the ranks are done; its port is the kernel's choice
        store = dist.TCPStore(
            "127.0.0.1",
            0,
            world_size=None,
            is_master=True,
            timeout=timedelta(seconds=_GROUP_TIMEOUT_S),
            wait_for_workers=False,
        )
        slot, mine = Slot(rank=0, host="127.0.0.1", port=store.port, prefix="case"), range(world)
    # fork starts a rank in milliseconds; CUDA cannot be forked once initialized
    ctx = mp.get_context("spawn" if task.device == "cuda" else "fork")
    pipes = {r: ctx.Pipe(duplex=False) for r in mine}
    procs = {r: ctx.Process(target=_rank_main, args=(r, world, slot, task, pipes[r][1], launched))
             for r in mine}  # fmt: skip
    for p in procs.values():
        p.start()
    readers = []
    for reader, writer in pipes.values():
        writer.close()  # the worker only reads; a rank that exits silently shows as EOF
        readers.append(reader)
    try:
        while True:
            for reader in wait(readers, timeout=0.2):
                try:
                    return reader.recv()
                except EOFError:  # exited without a message; its exit code tells
                    readers.remove(reader)
            for r, p in procs.items():
                if p.exitcode not in (None, 0):
                    how = (f"signal {signal.Signals(-p.exitcode).name}" if p.exitcode < 0
                           else f"exit code {p.exitcode}")  # fmt: skip
                    reason = f"rank {r} of {world} died ({how})"
                    return {
                        "status": "error",
                        "reason": reason if launched else f"{reason}; others killed",
                    }
            if not readers and all(p.exitcode == 0 for p in procs.values()):
                return {"status": "error", "reason": "the ranks exited without a result"}
    finally:
        for reader, _ in pipes.values():
            reader.close()
        for p in procs.values():
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)
        del store


def _rank_main(rank: int, world: int, slot: Slot, task: Task, results: Any,
               launched: bool) -> None:  # fmt: skip
    die_with_parent()  # never outlive the worker, whatever killed it
    fault = fault_for(rank, task)
    if fault == "die":
        os._exit(3)
    torch.set_num_threads(1)
    if task.device == "cuda":  # under torchrun: this node's GPU of the launched process
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) if launched else rank)
    backend = "nccl" if task.device == "cuda" else "gloo"
    timeout = timedelta(seconds=_GROUP_TIMEOUT_S)
    client = dist.TCPStore(slot.host, slot.port, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(slot.prefix, client), rank=rank,
                            world_size=world, timeout=timeout)  # fmt: skip
    try:
        group = RankGroup(rank, world, task.device)
        places = group.all_gather_object(_place())
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(3600)
        row = measure(task, group)
        if rank == 0:
            results.send({**row, **placement_fields(places, row)} if row else row)
        elif launched:  # this process's worker waits for its one rank's outcome
            results.send({"status": "ok", "reason": ""})
    except Exception as exc:
        status, reason = classify(exc)
        results.send({"status": status, "reason": f"rank {rank}: {reason}"})
    finally:
        results.close()
        dist.destroy_process_group()


def fault_for(rank: int, task: Task) -> str | None:
    """The fault FAULT_ENV asks of rank `rank` in this task ("die", "hang", "kill"; under torchrun
    also "killrunner": its launched process, see run/launched.py), or None."""
    spec, _, where = os.environ.get(FAULT_ENV, "").partition("@")
    kind, _, target = spec.partition(":")
    if target != str(rank) or (where and where not in task.case.name):
        return None
    return kind


def _place() -> dict[str, Any]:
    """Where this rank runs: the host and the node rank. torchrun sets GROUP_RANK (the node's rank
    in the rendezvous), which tells apart two "nodes" launched on one machine; alone, node 0."""
    return {"host": socket.gethostname(), "node_rank": int(os.environ.get("GROUP_RANK", "0"))}


def _per_node(values: Sequence[Any] | None, nodes: list[int], how: Any) -> list[Any] | None:
    if not values or None in values or len(values) != len(nodes):
        return None
    return [how(v for v, n in zip(values, nodes, strict=True) if n == node)
            for node in range(max(nodes) + 1)]  # fmt: skip


def placement_fields(places: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    """Row fields saying where each rank ran and which ring links cross nodes.

    `rank_hosts`, `rank_node_ranks` (torchrun's GROUP_RANK), `rank_nodes` (each rank's node as an
    index 0..num_nodes-1; a node is a (host, node rank) pair), `num_nodes`; `ring_links[r]` is
    "intra" or "inter": whether rank r's ring neighbour r+1 (mod P), to which it sends its K/V
    block, is on the same node; `bytes_sent_inter_node` sums `bytes_sent_per_rank` over the inter
    links; per node (index = node): `bytes_sent_per_node` (sum of its ranks),
    `exposed_comm_ms_per_node` (its slowest rank) and `peak_mem_above_inputs_bytes_per_node` (the
    sum of its ranks' peaks: an upper bound, as they need not coincide).
    """
    keys = [(p["host"], p["node_rank"]) for p in places]
    order = {key: i for i, key in enumerate(sorted(set(keys), key=lambda k: (k[1], k[0])))}
    nodes = [order[k] for k in keys]
    world = len(places)
    links = ["intra" if nodes[r] == nodes[(r + 1) % world] else "inter" for r in range(world)]
    fields: dict[str, Any] = {
        "rank_hosts": [p["host"] for p in places],
        "rank_node_ranks": [p["node_rank"] for p in places],
        "rank_nodes": nodes, "num_nodes": len(order), "ring_links": links,
    }  # fmt: skip
    sent = row.get("bytes_sent_per_rank")
    if sent and len(sent) == world:
        fields["bytes_sent_inter_node"] = sum(b for b, link in zip(sent, links, strict=True)
                                              if link == "inter")  # fmt: skip
    for name, source, how in (("bytes_sent_per_node", "bytes_sent_per_rank", sum),
                              ("exposed_comm_ms_per_node", "exposed_comm_ms_per_rank", max),
                              ("peak_mem_above_inputs_bytes_per_node",
                               "peak_mem_above_inputs_bytes_per_rank", sum)):  # fmt: skip
        per_node = _per_node(row.get(source), nodes, how)
        if per_node is not None:
            fields[name] = per_node
    return fields
