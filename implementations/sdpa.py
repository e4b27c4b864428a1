"""torch.nn.functional.scaled_dot_product_attention, one registry entry per forced backend.

sdpa_math (reference composite), sdpa_flash (FlashAttention-2 kernels on CUDA, torch's fused flash
kernel on CPU), sdpa_efficient (xformers-derived CUDA kernel), sdpa_cudnn (cuDNN fused attention).
Layout: q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) -> out (B, Hq, Sq, Dv) (bhsd).

What each case becomes (the mask contract of `harness.masks`):
    GQA/MQA (Hkv < Hq)        enable_gqa=True (query head h uses kv head h // (Hq // Hkv))
    softmax_scale             scale=
    causal_top_left           is_causal=True (SDPA's own alignment)
    causal, Sq == Sk          is_causal=True (the two alignments agree)
    causal, Sq != Sk          CUDA flash / efficient: `torch.nn.attention.bias.causal_lower_right`
                              (torch dispatches it to flash-attn's bottom-right causal kernel, or
                              to the efficient kernel's LowerRight mask type); elsewhere the dense
                              mask below (what torch itself materializes for causal_lower_right
                              when no fused kernel takes it)
    any other kind            a boolean attn_mask = `MaskSpec.dense(Sq, Sk)`, broadcast over batch
                              and heads
The dense mask costs Sq·Sk bytes (what an SDPA user pays for a mask that is not causal; the fused
CUDA paths also convert it to an additive float bias in the input dtype); it is built once per
mask and shape and kept for the next call, as a user would, so timing measures the attention.
Rows with no allowed key give 0 (math and CPU flash, checked in tests/unit/test_dense_masks.py).

Support (facts from torch's sdp_utils.cpp / attention.cpp; CPU checked in the tests):
    sdpa_math       everything (any dtype, every mask kind, GQA, Dv != D, Sq != Sk, scale).
    sdpa_flash      CPU: every mask kind, GQA, Sq != Sk, scale; not Dv != D (torch: "Flash
                    attention requires q,k,v to have the same last dimension").
                    CUDA: float16/bfloat16, head_dim a multiple of 8 up to 256, Dv == D, no
                    attn_mask (so only full and causal masks), is_causal only when Sq == Sk
                    (check_flash_causal_non_square_seqlens; bottom-right causal goes through
                    causal_lower_right), GQA native.
    sdpa_efficient  CUDA only: float16/bfloat16/float32, Dv != D, Sq != Sk, attn_mask (every
                    kind); no GQA (torch's docs: GQA works only for flash and math).
    sdpa_cudnn      CUDA only, cuDNN >= 9: float16/bfloat16, head_dim and Dv multiples of 8 up to
                    128, GQA (torch's cuDNN checks accept Hkv | Hq), full and causal masks only,
                    causal only when Sq == Sk (cuDNN's alignment for Sq != Sk is not verified here).
    On CUDA a fused backend refuses a mask that leaves rows without keys (Sq > Sk): torch warns
    that causal_lower_right "will produce NaNs" there, and it is not verified here.
Strides: torch's fused kernels need a unit last-dim stride (SDPA refuses other inputs with a bare
"No available kernel"), so the forced fused backends get one (a copy only when missing); the math
backend takes any strides as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.case import Case
from harness.masks import MASK_KINDS, MaskSpec
from harness.registry import Availability, Impl, register

_LOW = ("float16", "bfloat16")
# Kinds whose every row keeps a key even when seqlen_q > seqlen_k (positions p < 0).
_NEVER_EMPTY = ("none", "causal_top_left", "prefix_lm")


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


@lru_cache(maxsize=1)
def _dense(spec: MaskSpec, sq: int, sk: int, device: str) -> torch.Tensor:
    """The (Sq, Sk) boolean attn_mask, built once per mask and shape (Sq·Sk bytes)."""
    return spec.dense(sq, sk, device)


def _mask_args(backend: SDPBackend, spec: MaskSpec, sq: int, sk: int,
               device: torch.device) -> dict[str, Any]:  # fmt: skip
    """SDPA's mask keywords for `spec` (see the module docstring)."""
    kind = spec.kind
    if kind == "none":
        return {}
    if kind == "causal_top_left" or (kind == "causal" and sq == sk):
        return {"is_causal": True}
    native = device.type == "cuda" and backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
    )
    if kind == "causal" and native:
        # imported here: torch.nn.attention.bias pulls in torch._dynamo (and its triton probe)
        from torch.nn.attention.bias import causal_lower_right

        return {"attn_mask": causal_lower_right(sq, sk)}
    return {"attn_mask": _dense(spec, sq, sk, str(device))}


def _sdpa(backend: SDPBackend, q_bhsd, k_bhsd, v_bhsd, *, causal: bool,
          block_size: int | None = None, mask: MaskSpec | None = None,
          softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    if backend != SDPBackend.MATH:
        q_bhsd, k_bhsd, v_bhsd = (_unit_last_stride(t) for t in (q_bhsd, k_bhsd, v_bhsd))
    spec = (mask or MaskSpec()).with_causal(causal)
    kwargs = _mask_args(backend, spec, q_bhsd.shape[-2], k_bhsd.shape[-2], q_bhsd.device)
    if softmax_scale is not None:
        kwargs["scale"] = softmax_scale
    if k_bhsd.shape[-3] != q_bhsd.shape[-3]:
        kwargs["enable_gqa"] = True
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q_bhsd, k_bhsd, v_bhsd, **kwargs)


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


def _empty_rows(case: Case, backend: str) -> list[str]:
    """A fused CUDA backend's reason to refuse a mask that may leave query rows without keys."""
    mask = case.mask
    never_empty = mask.kind in _NEVER_EMPTY or (mask.kind == "global_local" and not mask.causal)
    if case.sq <= case.sk or never_empty:
        return []
    return [f"{backend} SDPA on CUDA: seqlen_q {case.sq} > seqlen_k {case.sk} leaves query rows "
            f"without keys under the {mask.kind} mask (output 0 by the contract); torch warns "
            f"its bottom-right causal 'will produce NaNs' there, unverified here"]  # fmt: skip


def _flash_limits(case: Case, device: str) -> list[str]:
    reasons = []
    if device == "cuda":
        if case.dtype not in _LOW:
            reasons.append(f"flash SDPA on CUDA needs float16 or bfloat16; got {case.dtype}")
        if case.head_dim > 256 or case.head_dim % 8:
            reasons.append(f"head_dim must be a multiple of 8 up to 256; got {case.head_dim}")
        kind = case.mask.kind
        if kind == "causal_top_left":
            reasons.append(f"flash SDPA on CUDA refuses is_causal (top-left) when seqlen_q "
                           f"{case.sq} != seqlen_k {case.sk} (torch's "
                           f"check_flash_causal_non_square_seqlens)")  # fmt: skip
        elif kind not in ("none", "causal"):
            reasons.append(f"flash SDPA on CUDA takes no attn_mask (torch's check_for_attn_mask);"
                           f" the {case.mask.slug} mask needs one")  # fmt: skip
        else:
            reasons += _empty_rows(case, "flash")
    return reasons


def _efficient_limits(case: Case, device: str) -> list[str]:
    if case.dtype == "float64":
        return ["memory-efficient SDPA supports float16, bfloat16, float32; got float64"]
    align = 8 if case.dtype in _LOW else 4  # torch's minimum_gemm_alignment on sm80+
    reasons = []
    if case.head_dim % align or case.dim_v % align:
        reasons.append(f"memory-efficient SDPA in {case.dtype} needs head_dim and head_dim_v "
                       f"multiples of {align}; got {case.head_dim}, {case.dim_v}")  # fmt: skip
    return reasons + _empty_rows(case, "memory-efficient")


def _cudnn_limits(case: Case, device: str) -> list[str]:
    reasons = []
    if case.dtype not in _LOW:
        reasons.append(f"cuDNN attention needs float16 or bfloat16; got {case.dtype}")
    dims = [("head_dim", case.head_dim)]
    if case.dim_v != case.head_dim:
        dims.append(("head_dim_v", case.dim_v))
    for name, dim in dims:
        if dim > 128 or dim % 8:
            reasons.append(f"cuDNN attention needs {name} a multiple of 8 up to 128; got {dim}")
    if case.mask.kind == "causal" and case.sq != case.sk:
        reasons.append(f"cuDNN attention: causal with seqlen_q {case.sq} != seqlen_k {case.sk} "
                       f"(which diagonal cuDNN aligns to is not verified here)")  # fmt: skip
    return reasons


_ALL = frozenset({"gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale"})
SDPA_MATH = register(Impl(name="sdpa_math", label="SDPA math",
                          forward=partial(_sdpa, SDPBackend.MATH), layout="bhsd",
                          memory_exponent=2, features=_ALL, mask_kinds=MASK_KINDS))  # fmt: skip
SDPA_FLASH = register(Impl(name="sdpa_flash", label="SDPA flash",
                           forward=partial(_sdpa, SDPBackend.FLASH_ATTENTION), layout="bhsd",
                           unsupported=_flash_limits, memory_exponent=1,
                           features=_ALL - {"head_dim_v"}, mask_kinds=MASK_KINDS))  # fmt: skip
SDPA_EFFICIENT = register(Impl(name="sdpa_efficient", label="SDPA mem-efficient",
                               forward=partial(_sdpa, SDPBackend.EFFICIENT_ATTENTION),
                               layout="bhsd", available=_needs_cuda("memory-efficient"),
                               unsupported=_efficient_limits, memory_exponent=1,
                               features=_ALL - {"gqa"}, mask_kinds=MASK_KINDS))  # fmt: skip
SDPA_CUDNN = register(Impl(name="sdpa_cudnn", label="SDPA cuDNN",
                           forward=partial(_sdpa, SDPBackend.CUDNN_ATTENTION), layout="bhsd",
                           available=_cudnn_available, unsupported=_cudnn_limits,
                           memory_exponent=1, features=_ALL,
                           mask_kinds=("none", "causal")))  # fmt: skip
