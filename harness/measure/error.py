"""Error metrics against a float64 reference: relative L2 and max-abs."""

from __future__ import annotations

import torch


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_2 / ||ref||_2, computed in float64; inf when out has non-finite values."""
    diff = out.detach().to(torch.float64) - ref.to(torch.float64)
    denom = torch.linalg.vector_norm(ref.to(torch.float64))
    num = torch.linalg.vector_norm(diff)
    if not torch.isfinite(num):
        return float("inf")
    return float(num / denom) if denom > 0 else float(num)


def max_abs(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.detach().to(torch.float64) - ref.to(torch.float64)).abs()
    if diff.numel() == 0:
        return 0.0
    value = diff.max()
    return float(value) if torch.isfinite(value) else float("inf")
