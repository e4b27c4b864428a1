"""Between-process variance: each row timed in `timing.processes` fresh worker processes.

Two nights differ by more than two sample loops in one process do: a fresh process gets its own
allocator history, page placement, thread pool and clock state. Like asv's `processes` (one round
per process, benchmarks interleaved within a round), a run with processes = N > 1 measures every
row in round 0 as usual (memory pass and time pass), then times each row that came out `ok` again
in rounds 1 .. N-1, each round in one fresh timing worker shared by the round's rows, so round r of
every row comes before round r+1 and slow drift of the machine spreads over all rows alike.

The row holds the pooled samples of every round (what `harness compare` tests), the median of each
process (`time_ms_median_per_process`) and the worker pids (`worker_pids`). Resume: a row is written
once all its rounds are done (rows that fail or are skipped in round 0 at once); a run killed before
its last round re-measures its unwritten rows from round 0.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from harness.run.task import Task

Measure = Callable[[Task], tuple[dict[str, Any], int | None]]  # a row and its worker's pid


def merge_rounds(
    task: Task, rounds: list[dict[str, Any]], pids: list[int | None]
) -> dict[str, Any]:
    """One row from a task's rounds: round 0's row (memory fields and all) with the pooled samples.

    A failed later round makes the row failed, its reason saying which process failed.
    """
    from harness.measure.contention import merge_noise
    from harness.measure.derived import PROCESS_CI_MIN, process_noise_fields, time_fields
    from harness.measure.peaks import fractions

    row = dict(rounds[0])
    row.update(processes=len(rounds), worker_pids=list(pids))
    row["elapsed_s"] = sum(float(r.get("elapsed_s") or 0.0) for r in rounds)
    for k, later in enumerate(rounds[1:], start=2):
        if later.get("status") != "ok":
            row.update(status=later.get("status"), reason=f"time pass in process {k} of "
                       f"{len(rounds)}: {later.get('reason') or ''}".rstrip())  # fmt: skip
            return row
    per_process = [list(r["time_samples_ms"]) for r in rounds]
    pooled = [s for samples in per_process for s in samples]
    medians = [statistics.median(s) for s in per_process]
    row.update(time_fields(task.case, task.phase, pooled))
    row.update(fractions(row, task.device_peaks))
    if len(rounds) >= PROCESS_CI_MIN:  # trust from the processes' agreement (derived.py)
        row.pop("noise_note", None)
        row.update(process_noise_fields(medians))
    else:  # two processes: the pooled rules (in process order, drift sees them apart) and each's
        notes = [f"process {k}: {r['noise_note']}" for k, r in enumerate(rounds, start=1)
                 if r.get("noisy") and r.get("noise_note")]  # fmt: skip
        if row.get("noisy") and row.get("noise_note"):
            notes.insert(0, f"pooled: {row['noise_note']}")
        row["noisy"] = bool(notes)
        if notes:
            row["noise_note"] = "; ".join(notes)
        else:
            row.pop("noise_note", None)
    row["time_ms_median_per_process"] = medians
    # contended if any process was (its samples are in the pool); CPU others took: the most any did
    shared = [f"process {k}: {r['contention_note']}" for k, r in enumerate(rounds, start=1)
              if r.get("contended")]  # fmt: skip
    row.pop("contended", None)
    row.pop("contention_note", None)
    if shared:  # noisy, and the note says why (as contention.merge_noise does for one process)
        merge_noise(row, {"contended": True, "contention_note": "; ".join(shared)})
    for key in ("other_cpu_cores", "steal_cpu_cores"):
        seen = [r[key] for r in rounds if r.get(key) is not None]
        if seen:
            row[key] = max(seen)
    return row


def round_pools(make_pool: Callable[..., Any], settings: dict[str, Any], timeout: float
                ) -> tuple[Callable[[int], Measure], Callable[[bool], None]]:  # fmt: skip
    """A fresh timing worker per round (ordinary malloc, as the time pass's), and its closer."""
    held: list[Any] = []

    def fresh(r: int) -> Measure:
        pool = make_pool(**settings, tight_malloc=False)
        held.append(pool)

        def measure(task: Task) -> tuple[dict[str, Any], int | None]:
            row = pool.run(task, timeout)
            return row, getattr(pool, "pid", None)

        return measure

    def close(now: bool) -> None:
        while held:
            held.pop().close(now=now)

    return fresh, close


def run_rounds(todo: list[Task], processes: int, *, first: Measure,
               fresh_time_pass: Callable[[int], Measure], close_round: Callable[[bool], None],
               emit: Callable[[dict[str, Any]], None],
               progress: Callable[[int, int, Task, dict[str, Any] | None], None] | None = None,
               ) -> list[dict[str, Any]]:  # fmt: skip
    """Measure `todo` in `processes` rounds; `emit` writes a finished row (the caller's append).

    first(task): round 0 (memory and time passes, as a run with one process makes them).
    fresh_time_pass(r): the measure of round r (a time pass in a new worker); close_round(now)
    ends that worker after the round (`now`: killed, when something is raised through here).
    """
    total = len(todo) * processes
    step = 0
    done: list[dict[str, Any]] = []
    rounds: dict[int, list[dict[str, Any]]] = {}
    pids: dict[int, list[int | None]] = {}
    for i, task in enumerate(todo):
        if progress:
            progress(step, total, task, None)
        row, pid = first(task)
        step += processes if row.get("status") != "ok" else 1
        if row.get("status") == "ok":
            rounds[i], pids[i] = [row], [pid]
        else:
            emit(row)
            done.append(row)
        if progress:
            progress(step, total, task, row)
    for r in range(1, processes):
        measure = fresh_time_pass(r)
        try:
            for i in sorted(rounds):
                task = todo[i]
                if progress:
                    progress(step, total, task, None)
                row, pid = measure(replace(task, measure="time"))
                step += 1
                rounds[i].append(row)
                pids[i].append(pid)
                if r == processes - 1 or row.get("status") != "ok":
                    merged = merge_rounds(task, rounds.pop(i), pids.pop(i))
                    emit(merged)
                    done.append(merged)
                    step += processes - 1 - r
                    row = merged
                if progress:
                    progress(step, total, task, row)
        except BaseException:
            close_round(True)
            raise
        close_round(False)
    return done
