"""torch.nn.functional.scaled_dot_product_attention, one registry entry per forced backend.

sdpa_math (reference composite), sdpa_flash (FlashAttention-2 kernels on CUDA, torch's fused flash
kernel on CPU), sdpa_efficient (xformers-derived CUDA kernel), sdpa_cudnn (cuDNN fused attention).
Causal is aligned top-left (equal to bottom-right when Sq == Sk). Layout: bhsd.
Strides: torch's fused kernels need a unit last-dim stride (SDPA refuses other inputs with a bare
"No available kernel"), so the forced fused backends get one (a copy only when missing); the math
backend takes any strides as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.case import Case
from harness.registry import Availability, Impl, register

_LOW = ("float16", "bfloat16")


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _sdpa(backend: SDPBackend, q_bhsd, k_bhsd, v_bhsd, *, causal: bool,
          block_size: int | None = None) -> torch.Tensor:  # fmt: skip
    if backend != SDPBackend.MATH:
        q_bhsd, k_bhsd, v_bhsd = (_unit_last_stride(t) for t in (q_bhsd, k_bhsd, v_bhsd))
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q_bhsd, k_bhsd, v_bhsd, is_causal=causal)


def _needs_cuda(what: str) -> Callable[[str], Availability]:
    def available(device: str) -> Availability:
        if device != "cuda":
            return Availability.no(f"needs CUDA: torch's {what} SDPA kernel has no CPU version")
        if not torch.cuda.is_available():
            return Availability.no("torch sees no CUDA device")
        return Availability.yes()

    return available


def _cudnn_available(device: str) -> Availability:
    base = _needs_cuda("cuDNN")(device)
    if not base.ok:
        return base
    version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not version or version < 90000:
        return Availability.no(f"needs cuDNN >= 9 for fused attention; found {version}")
    return Availability.yes()


def _flash_limits(case: Case, device: str) -> list[str]:
    reasons = []
    if device == "cuda":
        if case.dtype not in _LOW:
            reasons.append(f"flash SDPA on CUDA needs float16 or bfloat16; got {case.dtype}")
        if case.head_dim > 256 or case.head_dim % 8:
            reasons.append(f"head_dim must be a multiple of 8 up to 256; got {case.head_dim}")
    return reasons


def _efficient_limits(case: Case, device: str) -> list[str]:
    if case.dtype == "float64":
        return ["memory-efficient SDPA supports float16, bfloat16, float32; got float64"]
    return []


def _cudnn_limits(case: Case, device: str) -> list[str]:
    reasons = []
    if case.dtype not in _LOW:
        reasons.append(f"cuDNN attention needs float16 or bfloat16; got {case.dtype}")
    if case.head_dim > 128 or case.head_dim % 8:
        reasons.append(f"cuDNN attention needs head_dim a multiple of 8 up to 128; "
                       f"got {case.head_dim}")  # fmt: skip
    return reasons


SDPA_MATH = register(Impl(name="sdpa_math", label="SDPA math",
                          forward=partial(_sdpa, SDPBackend.MATH), layout="bhsd",
                          memory_exponent=2))  # fmt: skip
SDPA_FLASH = register(Impl(name="sdpa_flash", label="SDPA flash",
                           forward=partial(_sdpa, SDPBackend.FLASH_ATTENTION), layout="bhsd",
                           unsupported=_flash_limits, memory_exponent=1))  # fmt: skip
SDPA_EFFICIENT = register(Impl(name="sdpa_efficient", label="SDPA mem-efficient",
                               forward=partial(_sdpa, SDPBackend.EFFICIENT_ATTENTION),
                               layout="bhsd", available=_needs_cuda("memory-efficient"),
                               unsupported=_efficient_limits, memory_exponent=1))  # fmt: skip
SDPA_CUDNN = register(Impl(name="sdpa_cudnn", label="SDPA cuDNN",
                           forward=partial(_sdpa, SDPBackend.CUDNN_ATTENTION), layout="bhsd",
                           available=_cudnn_available, unsupported=_cudnn_limits,
                           memory_exponent=1))  # fmt: skip
