"""Error metrics against a float64 reference: relative L2 and max-abs.

The reference lives on the host (it is float64, and GPUs are slow at it) while the output may be
on the device: both are compared on the host, whatever devices they come from.
"""

from __future__ import annotations

import torch


def _host64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_2 / ||ref||_2, computed in float64 on the host; inf when out has non-finite
    values. Same shapes; any devices."""
    ref = _host64(ref)
    diff = _host64(out) - ref
    denom = torch.linalg.vector_norm(ref)
    num = torch.linalg.vector_norm(diff)
    if not torch.isfinite(num):
        return float("inf")
    return float(num / denom) if denom > 0 else float(num)


def max_abs(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| in float64 on the host; inf when out has non-finite values; any devices."""
    diff = (_host64(out) - _host64(ref)).abs()
    if diff.numel() == 0:
        return 0.0
    value = diff.max()
    return float(value) if torch.isfinite(value) else float("inf")
