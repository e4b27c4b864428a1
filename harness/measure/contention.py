"""CPU time that other processes (and the hypervisor) took while a row was being timed.

Why it matters (issue 14, benchmarks/causal_noise.py): on a CPU with as many intra-op threads as
cores, a parallel region ends only when its slowest thread does, and a thread descheduled for
another process's time slice (milliseconds) stalls the region. With one other process spinning on
this 2-core machine, blockwise kernels made of many short regions (bpt, chunked; S=2048) ran 2-7×
slower on 2 threads and one large SDPA op 1.8-2×, while 1 thread moved 0.99-1.10×. The slowdown is
steady when the other process is (the issue's causal rows were 7× apart between runs, each with
tight p20-p80 bands), and then looks like a real number; only the machine's accounting shows it. So
every timed row records how much CPU others used, and a row whose cores were oversubscribed is
flagged noisy rather than drawn as a confident line: others used more than the CPUs the row's
threads left free (usable CPUs - threads, all ranks' together) plus a quarter of a core. One thread
on a 2-CPU machine leaves a CPU to the rest of the system; two threads do not.

Source: Linux /proc/stat (proc(5): the first "cpu" line, in USER_HZ ticks; `steal` is time a
virtual CPU waited for the hypervisor) and the process's own CPU time (`os.times`, all threads).
Where /proc/stat cannot be read the fields are absent and nothing is flagged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

# Other processes' average use, in cores, beyond the CPUs the row's threads left free, above which
# a CPU row is flagged: a quarter of a core taken from a thread already moved causal rows by > 10%
# on 2 cores (benchmarks/causal_noise.py).
OTHER_CORES_FLAG = 0.25
STEAL_CORES_FLAG = 0.25
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _proc_stat() -> tuple[float, float] | None:
    """(busy seconds, steal seconds) of the whole machine since boot, or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in
    # user/nice, so it is not added again); busy = all but idle and iowait.
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) * _TICK_S, steal * _TICK_S


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True)
class CpuWindow:
    """A snapshot taken before timing; `stop()` gives this process's share of the interval."""

    wall: float
    own: float
    machine: tuple[float, float] | None

    @classmethod
    def start(cls) -> CpuWindow:
        return cls(time.perf_counter(), _own_cpu_s(), _proc_stat())

    def stop(self) -> dict[str, float] | None:
        """{wall_s, own_cpu_s, machine_busy_s, steal_s} of the interval, or None."""
        end = _proc_stat()
        if self.machine is None or end is None:
            return None
        return {
            "wall_s": time.perf_counter() - self.wall,
            "own_cpu_s": _own_cpu_s() - self.own,
            "machine_busy_s": end[0] - self.machine[0],
            "steal_s": end[1] - self.machine[1],
        }


def contention_fields(windows: list[dict[str, float] | None], device: str, *, threads: int,
                      cpus: int) -> dict[str, Any]:  # fmt: skip
    """Row fields from every rank's window (one for a single process): `other_cpu_cores` (the
    machine's busy CPU time minus the ranks' own, per second of wall time), `steal_cpu_cores`,
    and, on CPU above the thresholds, `contended` with a `contention_note` saying so.

    threads: the intra-op threads of all the row's ranks together; cpus: the CPUs the process
    may use (affinity mask, cgroup quota: harness/run/threads.py `usable_cpus`).
    """
    if not windows or any(w is None for w in windows):
        return {}
    wall = max(w["wall_s"] for w in windows)  # type: ignore[index]
    if wall <= 0.05:  # under a few ticks of /proc/stat: no honest figure
        return {}
    own = sum(w["own_cpu_s"] for w in windows)  # type: ignore[index]
    # every rank read the same machine counters over (nearly) the same interval: use rank 0's
    busy, steal = windows[0]["machine_busy_s"], windows[0]["steal_s"]  # type: ignore[index]
    others = max(0.0, (busy - own) / wall)
    fields: dict[str, Any] = {"other_cpu_cores": round(others, 3),
                              "steal_cpu_cores": round(max(0.0, steal / wall), 3)}  # fmt: skip
    if device != "cpu":
        return fields
    notes = []
    free = max(0, cpus - threads)
    if others >= free + OTHER_CORES_FLAG:
        notes.append(f"other processes used {others:.2f} CPU cores while it was timed, with "
                     f"{threads} of {cpus} CPUs busy with its threads")  # fmt: skip
    if fields["steal_cpu_cores"] >= STEAL_CORES_FLAG:
        notes.append(f"the hypervisor took {fields['steal_cpu_cores']:.2f} cores (steal)")
    if notes:
        fields["contended"] = True
        fields["contention_note"] = "; ".join(notes)
    return fields


def merge_noise(row: dict[str, Any], fields: dict[str, Any]) -> None:
    """Add contention fields to a row; a contended row is noisy, its note appended."""
    row.update(fields)
    if fields.get("contended"):
        row["noisy"] = True
        row["noise_note"] = "; ".join(filter(None, [row.get("noise_note"),
                                                    fields["contention_note"]]))  # fmt: skip
