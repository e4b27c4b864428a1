"""Under torchrun: the launched processes run one sweep together, global rank 0 leading.

torchrun (any --nnodes/--nproc-per-node, c10d rendezvous; so also `srun torchrun ...`) sets RANK,
WORLD_SIZE, LOCAL_RANK, GROUP_RANK, MASTER_ADDR/MASTER_PORT in each process it starts. Then:

- Rank 0 is the runner as ever (its plan, its run directory, the only one), with `Leader.pool` in
  place of the worker pools. A single-process task runs in rank 0's own worker; a distributed task
  of world_size P <= WORLD_SIZE is posted, numbered, in the sweep's c10d store (below), and the
  ranks 0..P-1 each run their one rank of it in their own worker (run/ranks.py with `task.launch`),
  meeting in a fresh group under the job's key prefix: the first P launched ranks, one group per
  task, so a rank that dies spoils its own task's group only. P > WORLD_SIZE is `skipped`.
- Every other rank `follow`s: it waits for the next job, runs its rank if it has one, and posts its
  outcome. Rank 0 waits for each participant's outcome (its own worker's case timeout + a little
  slack) and folds failures into the row (`merge`): a rank whose process dies or hangs ends that
  task as `error`/`timeout` on every node while the launched processes, and the sweep, go on.

Rank 0 hosts the sweep's own c10d TCPStore on a port the kernel picks (no port race) and posts
its port with a fresh token in torchrun's store; a follower takes the first posted store that
answers with that token. torchrun's store outlives a restarted group (--max-restarts) with the old
keys in it, and TORCHELASTIC_RESTART_COUNT differs between nodes after a restart (a node restarted
for another's failure keeps its count), so neither can tell rounds apart; a store that lives and
dies with rank 0 can. After a restart rank 0 resumes the run it started before (`run_pointer`: in
--out, naming torchrun's agent process, which lives across restarts) with the task that was in
flight recorded as `error` (`lost_row`): one run directory. Without restarts, `harness run
--resume DIR` finishes the run.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.run.task import Slot, Task

# torchrun's variables this module reads (torch.distributed.run); RANK and WORLD_SIZE say launched
REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# rank 0 waits this long past its own worker's case timeout for the other ranks' outcomes
SLACK_S = 30.0
_FOLLOW_WAIT = timedelta(days=7)  # a follower waits for rank 0's next job as long as the run lasts
_STORE_TIMEOUT = timedelta(seconds=300)
_STATUS_ORDER = ("error", "timeout", "oom", "unsupported", "skipped")
INFLIGHT = "launch_inflight.json"  # in the run directory: the distributed task the ranks are on


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun world (from its environment)."""

    rank: int
    world: int
    local_rank: int
    node_rank: int
    num_nodes: int
    host: str
    port: int
    agent_store: bool  # torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE)
    attempt: int  # TORCHELASTIC_RESTART_COUNT (this node's; see the module's docstring)
    prefix: str = "harness/"

    def describe(self) -> dict[str, Any]:
        """The run's record of the launch (run.json's `launch`)."""
        return {"launcher": "torchrun", "world_size": self.world, "num_nodes": self.num_nodes,
                "master": f"{self.host}:{self.port}", "restart_count": self.attempt}  # fmt: skip


def _int(env: dict[str, str] | Any, key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{key}: {value!r} is not an integer; torchrun sets it to one "
                           "(allowed: 0, 1, 2, ...)") from None  # fmt: skip


def from_env(env: dict[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, or None when run alone (no RANK/WORLD_SIZE, or a world
    of one). Raises HarnessError naming the variable when torchrun's are partly set or bad."""
    env = os.environ if env is None else env
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [k for k in REQUIRED_ENV if not env.get(k)]
    if missing:
        raise HarnessError(f"{missing[0]}: not set, but RANK/WORLD_SIZE are: run under torchrun, "
                           f"which sets all of {', '.join(REQUIRED_ENV)}")  # fmt: skip
    world = _int(env, "WORLD_SIZE")
    rank = _int(env, "RANK")
    if world < 1 or not 0 <= rank < world:
        raise HarnessError(f"RANK: {rank} with WORLD_SIZE {world}; allowed: 0 <= RANK < "
                           "WORLD_SIZE, WORLD_SIZE >= 1")  # fmt: skip
    if world == 1:
        return None
    local_world = _int(env, "LOCAL_WORLD_SIZE", world)
    return Launch(rank=rank, world=world, local_rank=_int(env, "LOCAL_RANK", rank),
                  node_rank=_int(env, "GROUP_RANK", rank // max(local_world, 1)),
                  num_nodes=_int(env, "GROUP_WORLD_SIZE", -(-world // max(local_world, 1))),
                  host=env["MASTER_ADDR"], port=_int(env, "MASTER_PORT"),
                  agent_store=str(env.get("TORCHELASTIC_USE_AGENT_STORE", "")).lower() == "true",
                  attempt=_int(env, "TORCHELASTIC_RESTART_COUNT", 0))  # fmt: skip


_LEADER_KEY = "harness/leader"
_TOKEN_KEY = "harness/token"
_FIND_TIMEOUT_S = 600.0  # a follower waits this long for rank 0's store (it may start slowly)


def open_store(launch: Launch) -> tuple[Any, int]:
    """The sweep's c10d TCPStore and its port, on MASTER_ADDR (rank 0's node: torchrun's rank-0
    agent hosts its own store there). Rank 0 hosts it on a port the kernel picks; a follower finds
    it through torchrun's store (module docstring). Without torchrun's agent store, MASTER_PORT is
    free for this round and rank 0 hosts there (as torch's env:// rendezvous does)."""
    import torch.distributed as dist

    def tcp(port: int, master: bool, timeout: timedelta = _STORE_TIMEOUT) -> Any:
        return dist.TCPStore(launch.host, port, world_size=None, is_master=master,
                             timeout=timeout, wait_for_workers=False)  # fmt: skip

    if not launch.agent_store:
        return tcp(launch.port, launch.rank == 0), launch.port
    board = tcp(launch.port, False)  # torchrun's store: a notice board that outlives rounds
    if launch.rank == 0:
        store, token = tcp(0, True), uuid.uuid4().hex
        store.set(_TOKEN_KEY, token)
        board.set(_LEADER_KEY, f"{store.port} {token}")
        return store, int(store.port)
    deadline = time.monotonic() + _FIND_TIMEOUT_S
    while time.monotonic() < deadline:
        board.wait([_LEADER_KEY], _STORE_TIMEOUT)
        port, token = board.get(_LEADER_KEY).decode().split()
        try:  # a dead round's rank 0 refuses; a reused port answers with another token
            store = tcp(int(port), False, timeout=timedelta(seconds=5))
            if store.get(_TOKEN_KEY).decode() == token:
                store.set_timeout(_STORE_TIMEOUT)
                return store, int(port)
        except Exception:  # DistNetworkError, DistStoreError: not this round's rank 0 (yet)
            pass
        time.sleep(0.5)
    raise HarnessError(f"rank {launch.rank}: rank 0's store did not appear within "
                       f"{_FIND_TIMEOUT_S:.0f}s on {launch.host}")  # fmt: skip


@dataclass(frozen=True)
class _Job:
    tight_malloc: bool
    task: Task  # with `launch` for rank 0; a follower puts its own rank in
    timeout_s: float
    settings: dict[str, Any]  # WorkerPool's device, memory_budget_bytes, threads


@dataclass(frozen=True)
class _Pool:
    """Start a worker pool now (its worker imports torch for seconds), before its first job."""

    tight_malloc: bool
    settings: dict[str, Any]


@dataclass(frozen=True)
class _End:
    exit_code: int  # rank 0's: every launched process exits with it (see `Leader.stop`)


class Leader:
    """Rank 0's side: `pool` makes the pools `run_tasks` uses; `stop` ends the followers."""

    def __init__(self, launch: Launch, store: Any | None = None):
        self.launch = launch
        self.store, self.port = open_store(launch) if store is None else (store, launch.port)
        self._jobs = itertools.count()
        self._stopped = False
        # what the followers exit with unless rank 0 says otherwise: rank 0 stopped early
        self.exit_code = 1
        self.inflight: Path | None = None  # set once the run directory exists

    def pool(self, *, tight_malloc: bool, **settings: Any) -> _LeaderPool:
        self.post(_Pool(tight_malloc, settings))  # the followers start theirs alongside
        return _LeaderPool(self, settings, tight_malloc)

    def post(self, job: _Job | _Pool | _End) -> int:
        k = next(self._jobs)
        self.store.set(f"{self.launch.prefix}job/{k}", pickle.dumps(job))
        return k

    def wait_outcome(self, k: int, rank: int, deadline: float) -> dict[str, Any]:
        key = f"{self.launch.prefix}job/{k}/rank/{rank}"
        left = max(1.0, deadline - time.monotonic())
        try:
            self.store.wait([key], timedelta(seconds=left))
            return pickle.loads(self.store.get(key))
        except Exception as exc:  # the store's timeout (DistStoreError) or a lost connection
            return {
                "status": "timeout",
                "reason": f"rank {rank} reported nothing within {left:.0f}s ({type(exc).__name__})",
            }

    def stop(self, *, wait: bool = True) -> None:
        """Tell every follower the sweep is over and to exit with `exit_code`, and (`wait`) give
        them a moment to read it (where rank 0 hosts the store, its exit would take the store
        away). One exit code everywhere: a node whose process fails skips torchrun's exit barrier,
        where the other nodes' agents would then wait for it for 300 s."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.post(_End(self.exit_code))
            if not wait:
                return
            keys = [f"{self.launch.prefix}bye/{r}" for r in range(1, self.launch.world)]
            self.store.wait(keys, timedelta(seconds=SLACK_S))
        except Exception:  # a follower already gone: torchrun reports it, the run is written
            pass


class _LeaderPool:
    """A WorkerPool for rank 0 whose distributed tasks run on the first P launched ranks."""

    def __init__(self, leader: Leader, settings: dict[str, Any], tight_malloc: bool):
        from harness.run.pool import WorkerPool

        self.leader, self.settings, self.tight_malloc = leader, settings, tight_malloc
        self.local = WorkerPool(**settings, tight_malloc=tight_malloc)

    def run(self, task: Task, timeout_s: float) -> dict[str, Any]:
        world, launched = task.case.world_size, self.leader.launch.world
        if world <= 1 or task.skip_reason:
            return self.local.run(task, timeout_s)
        if world > launched:
            from harness.run.worker import base_row

            row = base_row(task)
            row.update(status="skipped", reason=f"world_size {world} needs {world} launched "
                                                f"ranks; torchrun started {launched}")  # fmt: skip
            return row
        started = time.monotonic()
        # the job's number is its key prefix: the first P ranks meet under it, once
        launch = self.leader.launch
        slot = Slot(rank=0, host=launch.host, port=self.leader.port, prefix="")
        job = _Job(self.tight_malloc, replace(task, launch=slot), timeout_s, self.settings)
        inflight = self.leader.inflight
        if inflight is not None:  # what a restarted group records as lost (`lost_row`)
            inflight.write_text(json.dumps({"key": list(task.key)}))
        k = self.leader.post(job)
        slot = replace(slot, prefix=f"{launch.prefix}job/{k}/pg/")
        row = self.local.run(replace(task, launch=slot), timeout_s)
        deadline = started + timeout_s + SLACK_S
        outcomes = {r: self.leader.wait_outcome(k, r, deadline) for r in range(1, world)}
        row = merge(row, outcomes)
        if inflight is not None:
            inflight.unlink(missing_ok=True)
        row["launcher"] = "torchrun"
        return row

    def close(self, *, now: bool = False) -> None:
        self.local.close(now=now)

    def __getattr__(self, name: str) -> Any:
        """Anything else a WorkerPool offers (its worker's start, pid) is rank 0's own pool's."""
        if name == "local":  # not set yet: no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.local, name)


def merge(row: dict[str, Any], outcomes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's row with the other ranks' outcomes: any rank's failure fails the task.

    The other ranks' reasons come first: when a rank dies, rank 0's own failure (a collective
    whose peer is gone) is the consequence. Status: the first of error, timeout, oom,
    unsupported, skipped that any failing rank has.
    """
    failed = {r: o for r, o in sorted(outcomes.items()) if o.get("status") != "ok"}
    if not failed:
        return row
    if row.get("status") != "ok":
        failed[0] = row
    statuses = [o.get("status") for o in failed.values()]
    status = next((s for s in _STATUS_ORDER if s in statuses), "error")
    reasons = []
    for r, o in failed.items():
        reason = str(o.get("reason") or o.get("status"))
        reasons.append(reason if reason.startswith("rank ") else f"rank {r}: {reason}")
    out = dict(row)
    out.update(status=status, reason="; ".join(reasons)[:1000])
    tracebacks = [f"rank {r}:\n{o['traceback']}" for r, o in failed.items() if o.get("traceback")]
    if tracebacks:
        out["traceback"] = "\n".join(tracebacks)
    return out


def follow(launch: Launch, store: Any | None = None) -> tuple[int, int]:
    """A rank other than 0: run this rank of each distributed job rank 0 posts, until it posts
    the end; returns how many jobs it ran a rank of and rank 0's exit code. Its pools' workers
    are its own."""
    from harness.run.pool import WorkerPool

    store = open_store(launch)[0] if store is None else store
    pools: dict[bool, WorkerPool] = {}
    ran, code = 0, 1
    try:
        for k in itertools.count():
            key = f"{launch.prefix}job/{k}"
            store.wait([key], _FOLLOW_WAIT)
            job: _Job | _Pool | _End = pickle.loads(store.get(key))
            if isinstance(job, _End):
                code = job.exit_code
                break
            if isinstance(job, _Pool):
                if job.tight_malloc not in pools:
                    pools[job.tight_malloc] = WorkerPool(**job.settings,
                                                         tight_malloc=job.tight_malloc)  # fmt: skip
                    if hasattr(pools[job.tight_malloc], "prestart"):
                        pools[job.tight_malloc].prestart()
                continue
            if launch.rank >= job.task.case.world_size:
                continue  # not one of the first P ranks: nothing to do for this job
            # tests: this launched process dies, once (its node's restart count then grows)
            if launch.attempt == 0 and _fault_for(launch.rank, job.task) == "killrunner":
                os.kill(os.getpid(), signal.SIGKILL)
            if job.tight_malloc not in pools:
                pools[job.tight_malloc] = WorkerPool(**job.settings, tight_malloc=job.tight_malloc)
            slot = replace(job.task.launch, rank=launch.rank, prefix=f"{key}/pg/")
            row = pools[job.tight_malloc].run(replace(job.task, launch=slot), job.timeout_s)
            outcome = {n: row[n] for n in ("status", "reason", "traceback") if n in row}
            store.set(f"{key}/rank/{launch.rank}", pickle.dumps(outcome))
            ran += 1
        store.set(f"{launch.prefix}bye/{launch.rank}", b"1")
    finally:
        for pool in pools.values():
            pool.close(now=sys.exc_info()[0] is not None)
    return ran, code


def _fault_for(rank: int, task: Task) -> str | None:
    from harness.run.ranks import fault_for

    return fault_for(rank, task)


def run_pointer(out_root: Path, env: dict[str, str] | None = None) -> Path:
    """The file in --out through which a restarted group's rank 0 finds the run it made before,
    named by torchrun's rendezvous id (--rdzv-id; "none" unless given). It holds `agent_id()`
    and the run directory."""
    run_id = (os.environ if env is None else env).get("TORCHELASTIC_RUN_ID", "none")
    return out_root / f".torchrun-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}"


def agent_id() -> str:
    """torchrun's agent that started this process (host and pid): it lives across restarts of
    the group, and a later job has another."""
    return f"{socket.gethostname()}:{os.getppid()}"


def restarted_run(out_root: Path) -> Path | None:
    """The run this agent's group made before a restart, or None (a first start)."""
    try:
        agent, path = run_pointer(out_root).read_text().split("\n")[:2]
    except (OSError, ValueError):
        return None
    return Path(path) if agent == agent_id() and Path(path).is_dir() else None


def lost_row(run_dir: Path, tasks: Iterable[Task], done: set[Any]) -> dict[str, Any] | None:
    """The `error` row of the distributed task in flight when a launched process died (its key
    in INFLIGHT), unless that task has a row; None when nothing was in flight. Clears INFLIGHT."""
    path = run_dir / INFLIGHT
    try:
        key = tuple(json.loads(path.read_text())["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path.unlink(missing_ok=True)
    task = next((t for t in tasks if t.key == key), None)
    if task is None or key in done:
        return None
    from harness.run.worker import base_row

    row = base_row(task)
    row.update(status="error", reason="a launched process died during this case; torchrun "
                                      "restarted the group and the run resumed")  # fmt: skip
    return row
