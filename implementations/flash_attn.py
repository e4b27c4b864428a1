"""FlashAttention adapters: FA2 (`flash_attn`), FA3 (the Hopper build) and FA4 (`flash_attn.cute`).

FlashAttention-2 (arXiv 2307.08691): `flash_attn.flash_attn_func`, Ampere and newer.
FlashAttention-3 (arXiv 2407.08608): `flash_attn_interface.flash_attn_func` from flash-attention's
hopper/ build, sm90 only; it returns `out` or `(out, lse)` depending on its version.
FlashAttention-4: `flash_attn.cute.flash_attn_func` (CuTe DSL; flash-attn-4 4.0.0b36 accepts
compute capability 8.x-12.x forward but 9.x-12.x backward, so an sm8x fwd_bwd row is an `error`
with its assertion; head_dim 8-256 in multiples of 8 on sm90 but only up to 128, or 256, on
sm100/sm110), returns `out` or `(out, lse)`; its arguments go by keyword (the 4th is `qv`).
Layout: q_bshd (B, Sq, H, D), k_bshd (B, Sk, Hkv, D), v_bshd (B, Sk, Hkv, Dv) -> out_bshd
(B, Sq, H, Dv), the harness's public layout and flash-attn's own, so nothing is transposed.
Strides: the kernels read the head dim with stride 1; any other stride of the last dim is copied
to a unit one here (flash-attn's own wrappers do the same, in the versions we know of), every
other stride goes through as is (the kernels take batch, seq and head strides).

What each call passes (every argument after q, k, v by keyword; the positions differ between
FA2, FA3 and FA4):
- GQA/MQA natively: k, v with fewer heads (query head h reads kv head h // (H // Hkv)).
- `softmax_scale=` as given (None: flash-attn's default 1/sqrt(head_dim)).
- `causal=True` is bottom-right aligned in flash-attn, as in the harness, for any Sq, Sk; a row
  with no key gives 0. `causal_top_left` is the same mask only when Sq == Sk (the case then already
  reads `causal`); otherwise it is a reason.
- sliding_window: `window_size=(left, right)`, inclusive, relative to p = i + Sk - Sq, as the
  harness's mask; -1 is unbounded (FA4 takes None instead). A window with right = 0 (Mistral's
  (W, 0), or any window with the mask's causal flag) also passes `causal=True`, which flash-attn
  reads as right = 0. FA2 alone reads an unbounded right side (-1, or >= Sk) as Sk, which cuts
  the first queries' keys when Sq > Sk + 1 (`_optional.fa2_window_differs`): a reason there.
- document: `flash_attn_varlen_func` with the batch folded into the token dim, B × the documents
  of `mask.document_lengths(Sk)` as sequences (cu_seqlens int32, max_seqlen the longest), the
  mask's causal flag as `causal`; only when Sq == Sk (each document is then square).
- head_dim_v != head_dim: FA2 no (its wrapper pads v to q's head_dim and slices the output back);
  FA3 for (head_dim, head_dim_v) in (128, 192] × (96, 128] or head_dim <= 64 with head_dim_v <=
  512 (hopper/flash_api.cpp); FA4 for (192, 128) on sm100/sm110 (flash_attn/cute/interface.py).
- Every other kind (prefix_lm, strided, random_block, block_sparse, global_local): a reason;
  flash-attn has no such mask (FlexAttention runs them).
The FA4 interface read (flash_attn/cute/interface.py) asserts that its sm90 backward takes no
window and no varlen, so such fwd_bwd rows on sm90 are `error` rows with that assertion.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.case import Case
from harness.masks import MaskSpec
from harness.registry import Availability, Impl, register
from implementations._optional import (
    cuda_reason,
    effective_window,
    fa2_window_differs,
    import_optional,
    low_precision_reasons,
)

# The harness mask kinds flash-attn applies (the others are reasons: flash-attn has no such mask).
MASK_KINDS = ("none", "causal", "causal_top_left", "sliding_window", "document")


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
    features: frozenset[str] = frozenset({"gqa", "seqlen_q_ne_k", "softmax_scale"})
    window_none: bool = False  # an unbounded window side is None (FA4), not -1 (FA2, FA3)


_WITH_DV = frozenset({"gqa", "seqlen_q_ne_k", "softmax_scale", "head_dim_v"})
FA2 = _Flavor("flash_attn2", "FlashAttention-2", ("flash_attn",),
              "flash-attn is not installed: pip install '.[flash]'", (8, 0), None)  # fmt: skip
FA3 = _Flavor("flash_attn3", "FlashAttention-3", ("flash_attn_interface",
              "flash_attn_3.flash_attn_interface"),
              "FlashAttention-3 (flash_attn_interface) is not installed: build flash-attention's "
              "hopper/ package (python setup.py install there)", (9, 0), 9,
              head_dim_multiple=8, features=_WITH_DV)  # fmt: skip
FA4 = _Flavor("flash_attn4", "FlashAttention-4", ("flash_attn.cute",),
              "FlashAttention-4 (flash_attn.cute) is not installed: pip install '.[flash4]'",
              (8, 0), 12, head_dim_multiple=8, features=_WITH_DV, window_none=True)  # fmt: skip


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


def _head_dim_v_reasons(flavor: _Flavor, case: Case, device: str) -> list[str]:
    d, dv = case.head_dim, case.dim_v
    if dv == d:
        return []
    if flavor is FA2:
        return [f"{flavor.label} needs head_dim_v == head_dim (its wrapper pads v to q's head_dim "
                f"and slices the output back); got {d} and {dv}"]  # fmt: skip
    if flavor is FA3:
        if dv % 8 or not ((128 < d <= 192 and 96 < dv <= 128) or (d <= 64 and dv <= 512)):
            return [f"{flavor.label} takes head_dim_v != head_dim only for head_dim in (128, 192] "
                    f"with head_dim_v in (96, 128], or head_dim <= 64 with head_dim_v <= 512 (a "
                    f"multiple of 8); got {d} and {dv}"]  # fmt: skip
        return []
    if (d, dv) != (192, 128) or (device == "cuda" and not _is_blackwell(device)):
        return [f"{flavor.label} takes head_dim_v != head_dim only as (192, 128) on sm100/sm110; "
                f"got {d} and {dv}"]  # fmt: skip
    return []


def mask_reasons(flavor: _Flavor, case: Case) -> list[str]:
    """Why flash-attn cannot apply this case's mask (empty when it can)."""
    mask, sq, sk = case.mask, case.sq, case.sk
    if mask.kind not in MASK_KINDS:
        return [f"{flavor.label} has no {mask.kind} mask (flash-attn takes causal, "
                f"sliding_window and document masks); use flex"]  # fmt: skip
    if mask.kind == "causal_top_left" and sq != sk:
        return [f"{flavor.label} aligns causal masks bottom-right; causal_top_left is another "
                f"mask when seqlen_q {sq} != seqlen_k {sk}"]  # fmt: skip
    if mask.kind == "document" and sq != sk:
        return [f"{flavor.label} runs document masks as varlen sequences of the documents, which "
                f"needs seqlen_q == seqlen_k; got {sq} and {sk}"]  # fmt: skip
    if mask.kind == "sliding_window" and flavor is FA2:
        left, right = effective_window(mask)
        if fa2_window_differs(left, right, sq, sk):
            return [f"{flavor.label} reads window_size right {right} as seqlen_k, which cuts "
                    f"the first queries' keys when seqlen_q {sq} > seqlen_k {sk} + 1"]  # fmt: skip
    return []


def _limits(flavor: _Flavor) -> Callable[[Case, str], list[str]]:
    def unsupported(case: Case, device: str) -> list[str]:
        reasons = low_precision_reasons(case.dtype, case.head_dim,
                                        max_head_dim=flavor.max_head_dim,
                                        head_dim_multiple=flavor.head_dim_multiple,
                                        what=flavor.label)  # fmt: skip
        deepseek = (case.head_dim, case.dim_v) == (192, 128)  # built for sm100/sm110
        if flavor is FA4 and 128 < case.head_dim < 256 and _is_blackwell(device) and not deepseek:
            reasons.append(f"{flavor.label} on sm100/sm110 needs head_dim up to 128, or 256; "
                               f"got {case.head_dim}")  # fmt: skip
        return reasons + _head_dim_v_reasons(flavor, case, device) + mask_reasons(flavor, case)

    return unsupported


@functools.cache
def _kernel(flavor: _Flavor, varlen: bool = False) -> Callable[..., object]:
    module, reason = _import(flavor)
    if module is None:
        raise ImportError(reason)
    return module.flash_attn_varlen_func if varlen else module.flash_attn_func


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


@dataclass(frozen=True)
class Plan:
    """What one call passes: `causal`, `window` ((left, right), -1 unbounded; None: no window),
    and `doc_lens` (None: flash_attn_func; else flash_attn_varlen_func over these documents)."""

    causal: bool
    window: tuple[int, int] | None = None
    doc_lens: tuple[int, ...] | None = None


def plan(causal: bool, mask: MaskSpec | None, seqlen_q: int, seqlen_k: int) -> Plan:
    """The flash-attn arguments for the harness's (causal, mask); NotImplementedError otherwise."""
    if mask is None:
        return Plan(causal=causal)
    mask = mask.with_causal(causal)  # `none` + causal reads `causal`
    kind = mask.kind
    if kind == "none":
        return Plan(causal=False)
    if kind == "causal" or (kind == "causal_top_left" and seqlen_q == seqlen_k):
        return Plan(causal=True)
    if kind == "sliding_window":
        left, right = effective_window(mask)
        if left == -1 and right in (-1, 0):  # no window at all: full or causal
            return Plan(causal=right == 0)
        return Plan(causal=right == 0, window=(left, right))
    if kind == "document" and seqlen_q == seqlen_k:
        return Plan(causal=mask.causal,
                    doc_lens=tuple(mask.document_lengths(seqlen_k)))  # fmt: skip
    raise NotImplementedError(f"flash-attn cannot apply the {kind} mask for seqlen_q {seqlen_q}, "
                              f"seqlen_k {seqlen_k}")  # fmt: skip


def cu_seqlens(doc_lens: tuple[int, ...], batch: int, seqlen: int, device: Any) -> torch.Tensor:
    """(batch * len(doc_lens) + 1,) int32 offsets of the documents of every batch row, in order."""
    starts, offset = [], 0
    for _ in range(batch):
        for n in doc_lens:
            starts.append(offset)
            offset += n
    assert offset == batch * seqlen, (doc_lens, batch, seqlen)
    return torch.tensor([*starts, offset], dtype=torch.int32, device=device)


def _forward(flavor: _Flavor) -> Callable[..., torch.Tensor]:
    def forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                causal: bool, block_size: int | None = None, mask: MaskSpec | None = None,
                softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
        todo = plan(causal, mask, q_bshd.shape[1], k_bshd.shape[1])
        q_bshd, k_bshd, v_bshd = (_unit_last_stride(t) for t in (q_bshd, k_bshd, v_bshd))
        kwargs: dict[str, Any] = {"softmax_scale": softmax_scale, "causal": todo.causal}
        if flavor is FA2:
            kwargs["dropout_p"] = 0.0
        if todo.window is not None:
            kwargs["window_size"] = tuple(None if w < 0 else w for w in todo.window) \
                if flavor.window_none else todo.window  # fmt: skip
        if todo.doc_lens is None:
            out = _kernel(flavor)(q_bshd, k_bshd, v_bshd, **kwargs)
            return out[0] if isinstance(out, tuple) else out
        batch, seqlen = q_bshd.shape[:2]
        cu = cu_seqlens(todo.doc_lens, batch, seqlen, q_bshd.device)
        longest = max(todo.doc_lens)
        q, k, v = (t.reshape(batch * seqlen, *t.shape[2:]) for t in (q_bshd, k_bshd, v_bshd))
        varlen = _kernel(flavor, True)
        out = varlen(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest,
                     max_seqlen_k=longest, **kwargs)  # fmt: skip
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(batch, seqlen, *out.shape[1:])

    return forward


def _register(flavor: _Flavor) -> Impl:
    return register(Impl(name=flavor.name, label=flavor.label, forward=_forward(flavor),
                         layout="bshd", available=_available(flavor), unsupported=_limits(flavor),
                         tags=("third-party", "cuda", "causal-bottom-right"),
                         memory_exponent=1, features=flavor.features,
                         mask_kinds=MASK_KINDS))  # fmt: skip


FLASH_ATTN2 = _register(FA2)
FLASH_ATTN3 = _register(FA3)
FLASH_ATTN4 = _register(FA4)
