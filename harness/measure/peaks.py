"""A device's two roofline ceilings: peak memory bandwidth and peak matmul throughput.

GPUs we know come from the vendor's datasheet (dense, no sparsity; SXM parts); the decoder-only
notes among our sources give the A100 figures (312 TFLOP/s, 2.0 TiB/s for 80 GB). Any other
device, and every CPU, is measured once per run by two probes, recorded in the run's provenance:
a stream copy (`dst.copy_(src)` of twice the last-level cache, 256 MiB to 1 GiB, so it streams
from DRAM; bytes read plus written over the best of 3 times)
and a square float32 matmul (2·n³ FLOPs over the best of 3 times), on the threads the suite runs
with. A measured peak is what this machine reaches with torch, not a datasheet number, so a
kernel can come close to it; the report says which source each ceiling has.

Rows use the ceilings for `bw_fraction` (achieved GB/s ÷ peak) and `flops_fraction`.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

# name fragment -> (memory GB/s, dense bf16/fp16 TFLOP/s, dense fp32 TFLOP/s, source)
DATASHEETS: dict[str, tuple[float, float, float, str]] = {
    "H200": (4800.0, 989.0, 67.0, "NVIDIA H200 SXM datasheet (HBM3e 4.8 TB/s; BF16 989 TFLOP/s "
             "dense)"),
    "H100": (3350.0, 989.0, 67.0, "NVIDIA H100 SXM datasheet (HBM3 3.35 TB/s; BF16 989 TFLOP/s "
             "dense)"),
    "A100": (2039.0, 312.0, 19.5, "NVIDIA A100 80GB SXM datasheet (2,039 GB/s; BF16 312 TFLOP/s)"
             "; the decoder-only notes' table"),
    "B200": (8000.0, 2250.0, 75.0, "NVIDIA HGX B200 datasheet (HBM3e 8 TB/s; BF16 2.25 PFLOP/s "
             "dense)"),
}  # fmt: skip
# Parts whose names contain a fragment above but whose figures differ (PCIe and NVL boards,
# A100 40GB): measured instead of given another part's datasheet.
OTHER_VARIANTS = ("PCIe", "NVL", "40GB")

MIN_COPY_BYTES, MAX_COPY_BYTES = 256 << 20, 1 << 30
MATMUL_N = 1024


def copy_bytes() -> int:
    """The copy probe's buffer: twice the last-level cache (so the copy streams from DRAM, not
    from cache), at least 256 MiB, at most 1 GiB."""
    llc = 0
    for index in range(8):
        path = f"/sys/devices/system/cpu/cpu0/cache/index{index}/size"
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        llc = max(llc, size)
    return min(MAX_COPY_BYTES, max(MIN_COPY_BYTES, 2 * llc))


def _best_seconds(fn: Any, repeats: int, sync: Any) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _copy_seconds(nbytes: int, device: str, sync: Any) -> float:
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return _best_seconds(lambda: dst.copy_(src), 3, sync)  # the buffers go with this frame


def probe(device: str) -> dict[str, Any]:
    """Measure the copy bandwidth (GB/s) and float32 matmul TFLOP/s on `device`."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    nbytes = copy_bytes() if device == "cpu" else MAX_COPY_BYTES
    copy_s = _copy_seconds(nbytes, device, sync)
    a = torch.randn(MATMUL_N, MATMUL_N, device=device)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device)
    mm_s = _best_seconds(lambda: a @ b, 3, sync)
    return {
        "mem_gbytes_per_s": 2 * nbytes / copy_s / 1e9,
        "tflops_fp32": 2 * MATMUL_N**3 / mm_s / 1e12,
        "source": f"measured: copy of {nbytes >> 20} MiB (best of 3), {MATMUL_N}³ float32 "
        f"matmul (best of 3), {torch.get_num_threads()} threads",
    }


@lru_cache(maxsize=4)
def device_peaks(device: str, device_name: str = "") -> dict[str, Any]:
    """The ceilings of `device`: a datasheet row for a known GPU, else the probes' numbers.

    Keys: mem_gbytes_per_s, tflops_fp32, tflops_low (float16/bfloat16; the fp32 probe on a
    measured device), source.
    """
    if device == "cuda" and not any(v in device_name for v in OTHER_VARIANTS):
        for fragment, (bw, low, fp32, source) in DATASHEETS.items():
            if fragment in device_name:
                return {"mem_gbytes_per_s": bw, "tflops_low": low, "tflops_fp32": fp32,
                        "source": source}  # fmt: skip
    measured = probe(device)
    measured["tflops_low"] = measured["tflops_fp32"]
    return measured


def peak_tflops(peaks: dict[str, Any], dtype: str) -> float | None:
    """The compute roof of `dtype`; None for float64 (no float64 peak is recorded)."""
    if dtype not in ("float16", "bfloat16", "float32"):
        return None
    key = "tflops_low" if dtype in ("float16", "bfloat16") else "tflops_fp32"
    value = peaks.get(key)
    return float(value) if value else None


def fractions(row: dict[str, Any], peaks: dict[str, Any] | None) -> dict[str, float]:
    """bw_fraction and flops_fraction of a measured row against the device's ceilings."""
    if not peaks:
        return {}
    out = {}
    bw = peaks.get("mem_gbytes_per_s")
    if bw and isinstance(row.get("gbytes_per_s"), float):
        out["bw_fraction"] = row["gbytes_per_s"] / bw
    top = peak_tflops(peaks, str(row.get("dtype")))
    if top and isinstance(row.get("tflops"), float):
        out["flops_fraction"] = row["tflops"] / top
    return out
