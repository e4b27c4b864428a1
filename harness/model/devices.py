"""Named device profiles for projections: memory, dense bf16 FLOP/s, HBM and interconnect bandwidth.

Numbers are vendor datasheet figures (dense, no sparsity; SXM boards for NVIDIA), the same ones
harness/measure/peaks.py uses for roofline fractions; each profile names its source. The
interconnect figure is one-way bandwidth to one ring neighbour (what Ring Attention's overlap
condition c >= F/B divides by, arXiv 2310.01889 §3). `mfu` is the fraction of peak FLOP/s a
training step reaches, a planning assumption (not a datasheet figure): 0.5 by default, in line
with the ~50% model FLOPs utilization the Ring Attention paper reports for its runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.model.ring import DeviceProfile, ModelError

GB = 1e9
GIB = 2**30


@dataclass(frozen=True)
class Device:
    """One accelerator. Units: bytes, FLOP/s, bytes/s."""

    name: str
    memory_bytes: float
    peak_flops: float  # dense bf16/fp16
    hbm_bytes_per_s: float
    link_bytes_per_s: float  # one way, to one neighbour
    source: str
    mfu: float = 0.5
    link_latency_s: float = 5e-6

    @property
    def flops(self) -> float:
        """Achieved FLOP/s (peak × mfu)."""
        return self.peak_flops * self.mfu

    def ring_profile(self) -> DeviceProfile:
        """The same device as harness/model/ring.py's profile (for its step-time model)."""
        return DeviceProfile(name=self.name, peak_flops=self.peak_flops,
                             achieved_fraction=self.mfu, link_bytes_per_s=self.link_bytes_per_s,
                             link_latency_s=self.link_latency_s, memory_bytes=self.memory_bytes,
                             source=self.source)  # fmt: skip

    def with_memory(self, memory_bytes: float) -> Device:
        return replace(self, memory_bytes=memory_bytes)


DEVICES: dict[str, Device] = {d.name: d for d in [
    Device("A100-80GB", 80 * GB, 312e12, 2039 * GB, 300 * GB,
           "NVIDIA A100 80GB SXM datasheet: 312 TFLOP/s bf16 dense, 2,039 GB/s HBM2e, NVLink "
           "600 GB/s both directions (300 one way); decoder-only notes App. C.1"),
    Device("H100-80GB", 80 * GB, 989e12, 3350 * GB, 450 * GB,
           "NVIDIA H100 SXM datasheet: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3, NVLink 900 GB/s "
           "both directions (450 one way)"),
    Device("H200-141GB", 141 * GB, 989e12, 4800 * GB, 450 * GB,
           "NVIDIA H200 SXM datasheet: 141 GB HBM3e at 4.8 TB/s, 989 TFLOP/s bf16 dense, NVLink "
           "900 GB/s both directions"),
    Device("B200", 180 * GB, 2250e12, 8000 * GB, 900 * GB,
           "NVIDIA HGX/DGX B200 datasheet: 1,440 GB for 8 GPUs (180 GB each) HBM3e at 8 TB/s, "
           "2.25 PFLOP/s bf16 dense, NVLink 5 1.8 TB/s both directions (900 one way)"),
    Device("TPUv4", 32 * GIB, 275e12, 1200 * GB, 50 * GB,
           "Google Cloud TPU v4 documentation: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s; ICI "
           "link ~50 GB/s one way (Jouppi et al., TPU v4, arXiv 2304.01433)"),
]}  # fmt: skip


def get_device(name: str) -> Device:
    """A named profile (exact name, case-insensitive); ModelError naming the allowed names."""
    for key, dev in DEVICES.items():
        if key.lower() == name.lower():
            return dev
    raise ModelError(f"device: unknown value {name!r}; allowed: {', '.join(DEVICES)}")


def from_peaks(peaks: dict, memory_bytes: float, name: str = "this-machine") -> Device:
    """A profile from a run's recorded ceilings (harness/measure/peaks.py: mem_gbytes_per_s,
    tflops_fp32/tflops_low), for predicting the rows of that run. mfu = 1: the calibration
    (harness/model/predict.py) fits each implementation's achieved fraction instead."""
    bw = float(peaks.get("mem_gbytes_per_s") or 0) * GB
    flops = float(peaks.get("tflops_fp32") or peaks.get("tflops_low") or 0) * 1e12
    if bw <= 0 or flops <= 0:
        raise ModelError("the run records no device peaks (provenance: mem_gbytes_per_s, "
                         "tflops_fp32); cannot build its device profile")  # fmt: skip
    return Device(name, memory_bytes, flops, bw, 1.0, str(peaks.get("source", "")), mfu=1.0)
