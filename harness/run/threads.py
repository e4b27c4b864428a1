"""The intra-op thread count a worker measures with when the suite sets no `threads`.

The default is deliberate: the number of physical cores this process may run on, that is the CPUs
of its affinity mask (`os.sched_getaffinity`: taskset, a container's cpuset) counted once per
physical core (hyperthread siblings share one, by /sys/devices/system/cpu/cpuN/topology), and no
more than a cgroup v2 CPU quota allows (`cpu.max`, rounded up). Not torch's own default: on x86
that is cpuinfo's count of the whole machine's physical cores, which ignores the affinity mask and
the quota, so a 2-CPU container on a 64-core host would run 64 threads on 2 CPUs. Not the size of
the affinity mask either: two threads on sibling hyperthreads contend for one core's floating-point
units, which adds noise rather than speed to dense kernels. `OMP_NUM_THREADS` is not consulted (the
worker's `torch.set_num_threads` overrides it); set the suite's `threads` to choose. Every row
records the count it was measured with (`num_threads`). This module imports no torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _physical_cores(cpus: set[int], sys_cpu: Path = _SYS_CPU) -> int:
    """How many physical cores `cpus` span; each CPU its own core where the topology is not
    readable (then hyperthreads count, as the affinity mask does)."""
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            cores.add(("cpu", str(cpu)))
            continue
        cores.add((package, core))
    return len(cores)


def _quota_cpus(cpu_max: Path = _CGROUP_CPU_MAX) -> int | None:
    """The CPUs a cgroup v2 quota allows (`cpu.max`: "QUOTA PERIOD", rounded up), or None."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup v2, or "max" (no quota)
        return None


def default_threads() -> int:
    """The physical cores of this process's affinity mask, capped by a cgroup CPU quota; ≥ 1."""
    count = _physical_cores(_allowed_cpus())
    quota = _quota_cpus()
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity mask), capped by a cgroup quota."""
    count = len(_allowed_cpus())
    quota = _quota_cpus()
    return max(1, min(count, quota) if quota is not None else count)


def resolve_threads(threads: int | None) -> int:
    """The suite's `threads` when set, else `default_threads()`."""
    return threads if threads else default_threads()
