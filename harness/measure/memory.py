"""Peak memory of one call.

CUDA: the caching allocator's high-water mark after a reset (plus reserved bytes, and NVML's
device-level usage where pynvml is importable, since NCCL buffers bypass the allocator).
CPU: the kernel's resident-set high-water mark (VmHWM), reset through /proc/self/clear_refs before
the call. tracemalloc cannot see tensor storage, so it is never used. The worker runs with glibc's
mmap threshold lowered so freed tensors go back to the kernel at once and RSS tracks live tensors.
The price: every large CPU allocation is fresh, page-faulted memory in timed calls too, as in a
cold allocator (switching thresholds at run time with mallopt + malloc_trim was tried and gave
peak readings that varied up to 3× between identical runs, so we keep the stable readings).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
# Env vars for the worker process: return freed blocks to the OS at once, few arenas.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
              "MALLOC_ARENA_MAX": "2"}  # fmt: skip

# The timing worker: fixed thresholds at the top of glibc's dynamic range (32 MiB mmap threshold,
# freed heap kept), so whether a block is page-faulted fresh does not depend on history.
TIMING_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_ARENA_MAX": "2",
}


@dataclass(frozen=True)
class PeakMemory:
    above_baseline_bytes: int | None
    cuda_reserved_bytes: int | None = None
    device_used_bytes: int | None = None
    method: str = ""


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field} missing from {_STATUS}")
    return int(match.group(1)) * 1024


def cpu_peak_supported() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def _nvml_used(index: int) -> int | None:
    try:
        import pynvml  # optional
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # NVML missing or refused: the allocator numbers still stand
        return None


def live_bytes(device: str) -> int:
    """Memory live now: allocated bytes on CUDA, resident set size on CPU."""
    if device == "cuda":
        return torch.cuda.memory_allocated()
    return _status_kib("VmRSS")


def measure_peak(fn: Callable[[], Any], device: str,
                 reset: Callable[[], None] | None = None) -> PeakMemory:  # fmt: skip
    """Run `fn` once and return its peak memory above what was live just before it.

    `reset` drops what earlier calls left behind (gradients, outputs) before the baseline is read,
    so the peak of the call counts everything the call itself allocates.
    """
    if reset is not None:
        reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return PeakMemory(
            above_baseline_bytes=torch.cuda.max_memory_allocated() - base,
            cuda_reserved_bytes=torch.cuda.max_memory_reserved(),
            device_used_bytes=_nvml_used(torch.cuda.current_device()),
            method="torch.cuda.max_memory_allocated",
        )
    if not cpu_peak_supported():
        fn()
        return PeakMemory(None, method="unavailable: /proc/self/clear_refs not writable")
    base = _status_kib("VmRSS")
    _CLEAR_REFS.write_text("5")
    fn()
    peak = _status_kib("VmHWM")
    return PeakMemory(above_baseline_bytes=max(0, peak - base), method="VmHWM")
