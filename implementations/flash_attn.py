"""FlashAttention adapters: FA2 (`flash_attn`), FA3 (the Hopper build) and FA4 (`flash_attn.cute`).

FlashAttention-2 (arXiv 2307.08691): `flash_attn.flash_attn_func`, Ampere and newer.
FlashAttention-3 (arXiv 2407.08608): `flash_attn_interface.flash_attn_func` from flash-attention's
hopper/ build, sm90 only; it returns `out` or `(out, lse)` depending on its version.
FlashAttention-4: `flash_attn.cute.flash_attn_func` (CuTe DSL; flash-attn-4 4.0.0b36 accepts
compute capability 8.x-12.x forward but 9.x-12.x backward, so an sm8x fwd_bwd row is an `error`
with its assertion; head_dim 8-256 in multiples of 8 on sm90 but only up to 128, or 256, on
sm100/sm110), returns `out` or `(out, lse)`; its arguments go by keyword (the 4th is `qv`).
Layout: q_bshd, k_bshd, v_bshd -> out_bshd, the harness's public layout, so nothing is converted.
Strides: the kernels read the head dim with stride 1; any other stride of the last dim is copied
to a unit one here (flash-attn's own wrappers do the same, in the versions we know of), every
other stride goes through as is (the kernels take batch, seq and head strides).
Causal: flash-attn aligns the mask to the bottom-right corner of the score matrix, SDPA and the
harness's float64 reference to the top-left; they agree when Sq == Sk, which every attention case
of the harness has (one seq_len for queries and keys).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.case import Case
from harness.registry import Availability, Impl, register
from implementations._optional import cuda_reason, import_optional, low_precision_reasons


@dataclass(frozen=True)
class _Flavor:
    """What differs between the FlashAttention generations: where to import, which GPUs."""

    name: str
    label: str
    modules: tuple[str, ...]  # tried in order; the first that imports is used
    missing: str
    min_cc: tuple[int, int]
    max_major: int | None
    head_dim_multiple: int = 1
    max_head_dim: int = 256


FA2 = _Flavor("flash_attn2", "FlashAttention-2", ("flash_attn",),
              "flash-attn is not installed: pip install '.[flash]'", (8, 0), None)  # fmt: skip
FA3 = _Flavor("flash_attn3", "FlashAttention-3", ("flash_attn_interface",
              "flash_attn_3.flash_attn_interface"),
              "FlashAttention-3 (flash_attn_interface) is not installed: build flash-attention's "
              "hopper/ package (python setup.py install there)", (9, 0), 9)  # fmt: skip
FA4 = _Flavor("flash_attn4", "FlashAttention-4", ("flash_attn.cute",),
              "FlashAttention-4 (flash_attn.cute) is not installed: pip install '.[flash4]'",
              (8, 0), 12, head_dim_multiple=8)  # fmt: skip


def _import(flavor: _Flavor):
    module, reason = None, flavor.missing
    for name in flavor.modules:
        module, why = import_optional(name, flavor.missing)
        if module is not None:
            return module, ""
        if why != flavor.missing:
            reason = why  # a present-but-broken package says more than a missing one
    return module, reason


def _package_reason(flavor: _Flavor) -> str:
    module, reason = _import(flavor)
    if module is None:
        return reason
    if not callable(getattr(module, "flash_attn_func", None)):
        if flavor is FA2:  # flash-attn-4 alone installs flash_attn as a bare namespace package
            return "flash-attn 2 is not installed (only flash_attn.cute is): pip install '.[flash]'"
        return f"{module.__name__} has no flash_attn_func; its version is not supported"
    version = str(getattr(module, "__version__", ""))
    if flavor is FA2 and version.startswith("1."):
        return f"flash-attn {version} is FlashAttention-1; flash_attn2 needs flash-attn>=2"
    return ""


def _available(flavor: _Flavor) -> Callable[[str], Availability]:
    def available(device: str) -> Availability:
        reason = _package_reason(flavor) or cuda_reason(
            device, min_cc=flavor.min_cc, max_major=flavor.max_major,
            nvidia_only=flavor is not FA2, what=flavor.label,
        )  # fmt: skip
        return Availability.no(reason) if reason else Availability.yes()

    return available


def _is_blackwell(device: str) -> bool:
    return device == "cuda" and torch.cuda.is_available() and \
        torch.cuda.get_device_capability()[0] in (10, 11)  # fmt: skip


def _limits(flavor: _Flavor) -> Callable[[Case, str], list[str]]:
    def unsupported(case: Case, device: str) -> list[str]:
        reasons = low_precision_reasons(case.dtype, case.head_dim,
                                        max_head_dim=flavor.max_head_dim,
                                        head_dim_multiple=flavor.head_dim_multiple,
                                        what=flavor.label)  # fmt: skip
        if flavor is FA4 and 128 < case.head_dim < 256 and _is_blackwell(device):
            reasons.append(f"{flavor.label} on sm100/sm110 needs head_dim up to 128, or 256; "
                           f"got {case.head_dim}")  # fmt: skip
        return reasons

    return unsupported


@functools.cache
def _kernel(flavor: _Flavor) -> Callable[..., object]:
    module, reason = _import(flavor)
    if module is None:
        raise ImportError(reason)
    return module.flash_attn_func


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _forward(flavor: _Flavor) -> Callable[..., torch.Tensor]:
    def forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                causal: bool, block_size: int | None = None) -> torch.Tensor:  # fmt: skip
        kernel = _kernel(flavor)
        q_bshd, k_bshd, v_bshd = (_unit_last_stride(t) for t in (q_bshd, k_bshd, v_bshd))
        if flavor is FA2:
            out = kernel(q_bshd, k_bshd, v_bshd, dropout_p=0.0, softmax_scale=None, causal=causal)
        else:
            out = kernel(q_bshd, k_bshd, v_bshd, softmax_scale=None, causal=causal)
        return out[0] if isinstance(out, tuple) else out

    return forward


def _register(flavor: _Flavor) -> Impl:
    return register(Impl(name=flavor.name, label=flavor.label, forward=_forward(flavor),
                         layout="bshd", available=_available(flavor), unsupported=_limits(flavor),
                         tags=("third-party", "cuda", "causal-bottom-right"),
                         memory_exponent=1))  # fmt: skip


FLASH_ATTN2 = _register(FA2)
FLASH_ATTN3 = _register(FA3)
FLASH_ATTN4 = _register(FA4)
