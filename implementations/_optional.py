"""Shared availability checks for adapters around optional third-party packages.

Each check returns "" when all is well, else one sentence for `Availability.no`. Imports happen
only when a check runs (never at module import), so a missing or broken package never breaks the
registry. The mask helpers at the end are shared by the flash-attn and xformers adapters.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from harness.masks import MaskSpec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def import_optional(module: str, missing: str) -> tuple[ModuleType | None, str]:
    """(module, "") or (None, why): `missing` when the package is absent, else the import error.

    A package that is present but does not import (ABI mismatch, missing CUDA libraries) is a
    different problem from an absent one, so its own error text is kept.
    """
    try:
        return importlib.import_module(module), ""
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name in (module, top) or (exc.name and module.startswith(exc.name + ".")):
            return None, missing
        return None, f"{module} is installed but does not import: {_first_line(exc)}"
    except Exception as exc:  # any import-time failure is a reason, not a crash
        return None, f"{module} is installed but does not import: {_first_line(exc)}"


def cuda_reason(device: str, *, min_cc: tuple[int, int] | None = None,
                max_major: int | None = None, nvidia_only: bool = False,
                what: str = "this kernel") -> str:  # fmt: skip
    """Why `what` cannot run on `device` for lack of CUDA or of a suitable compute capability."""
    if device != "cuda":
        return f"needs CUDA: {what} has no CPU version"
    if not torch.cuda.is_available():
        return "needs CUDA: torch sees no CUDA device"
    if nvidia_only and torch.version.hip is not None:
        return f"needs an NVIDIA GPU: {what} has no ROCm build here"
    found = tuple(torch.cuda.get_device_capability())
    if min_cc is not None and found < min_cc:
        return (f"compute capability {min_cc[0]}.{min_cc[1]}+ needed for {what}; "
                f"found {found[0]}.{found[1]}")  # fmt: skip
    if max_major is not None and found[0] > max_major:
        return (f"{what} supports compute capability up to {max_major}.x; "
                f"found {found[0]}.{found[1]}")  # fmt: skip
    return ""


def low_precision_reasons(case_dtype: str, head_dim: int, *, max_head_dim: int,
                          head_dim_multiple: int = 1, what: str) -> list[str]:  # fmt: skip
    """The dtype / head_dim limits shared by the FlashAttention family."""
    reasons = []
    if case_dtype not in ("float16", "bfloat16"):
        reasons.append(f"{what} supports float16 and bfloat16; got {case_dtype}")
    if head_dim > max_head_dim or head_dim % head_dim_multiple:
        multiple = f"a multiple of {head_dim_multiple} " if head_dim_multiple > 1 else ""
        reasons.append(f"{what} needs head_dim {multiple}up to {max_head_dim}; got {head_dim}")
    return reasons


def fa2_window_differs(left: int, right: int, seqlen_q: int, seqlen_k: int) -> bool:
    """Whether FlashAttention-2 runs another mask than `p - left <= kv <= p + right` (-1 unbounded,
    p = i + seqlen_k - seqlen_q) for this window_size.

    FA2's `mha_fwd` / `mha_varlen_fwd` (csrc/flash_attn/flash_api.cpp) first set a side >= seqlen_k
    to -1, then `set_params_fprop` turns a -1 right side into seqlen_k when the left side is
    bounded; the right bound p + seqlen_k stops short of the last key for the query rows with
    p < -1, which exist only when seqlen_q > seqlen_k + 1. The left side is always exact, and so
    is FlashAttention-3 (hopper/flash_api.cpp clamps at seqlen_k - 1 / seqlen_q - 1 instead).
    """
    if seqlen_q <= seqlen_k + 1 or 0 <= right < seqlen_k:
        return False
    if left < 0 or left >= seqlen_k:  # both sides unbounded for FA2: no mask at all
        return 0 <= right < seqlen_q - 1
    return right != seqlen_k


def effective_window(mask: MaskSpec) -> tuple[int, int]:
    """A sliding_window mask's (left, right), -1 unbounded, with its causal flag folded in."""
    left, right = mask.window or (-1, -1)
    return (left, 0) if mask.causal else (left, right)
