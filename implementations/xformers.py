"""xformers' memory_efficient_attention: the dispatcher's choice, and each forceable op family.

`xformers` lets xformers' dispatcher pick the kernel; `xformers_cutlass`, `xformers_flash`,
`xformers_flash3` and `xformers_ck` force one family with `op=(FwOp, BwOp)` (cutlass: xformers'
own CUTLASS kernel after Rabe & Staats, arXiv 2112.05682; flash / flash3: FlashAttention-2 / -3
as built into xformers; ck: AMD Composable Kernel, ROCm only). Per-case reasons are xformers' own
(`not_supported_reasons` of the op, or the dispatcher's refusal), asked on small tensors with the
case's batch, heads, head dims, dtype, scale and the very bias and 5-D / folded layout of the call
(`_call_inputs` builds both), the sequence lengths shrunk to at most 257 with their order kept (Sq
<, == or > Sk); a reason that depends on the sequence length itself appears when the kernel runs.
Layout: q_bshd, k_bshd, v_bshd -> out_bshd ([B, M, H, K] in xformers).

What each call passes (xformers.ops.fmha.attn_bias; `scale=` the case's softmax_scale):
- causal=True: `LowerTriangularFromBottomRightMask` (bottom-right, as the harness);
  causal_top_left: `LowerTriangularMask` (top-left; xformers' flash refuses it when Sq != Sk).
- sliding_window (left, right), inclusive around p = i + Sk - Sq, -1 unbounded: right = 0 (or
  the mask's causal flag) is `LowerTriangularFromBottomRightMask().make_local_attention(left + 1)`
  (keys p - left .. p; cutlass and flash take it), any other window
  `LocalAttentionFromBottomRightMask(window_left, window_right)` (p - left <= k <= p + right;
  flash, flash3, ck), an unbounded side as max(Sq, Sk), which reaches every key. xformers' flash
  hands that window to FlashAttention-2, whose clamp differs when Sq > Sk + 1
  (`_optional.fa2_window_differs`): a reason for `xformers` and `xformers_flash` there.
- document: `BlockDiagonalMask.from_seqlens` (`.make_causal()` with the causal flag) over the
  documents of every batch row in order, the batch folded into one sequence (block-diagonal
  biases need B = 1: q, k, v become (1, B·S, ...)); Sq == Sk only.
- GQA/MQA: xformers' 5-D [B, M, G, H, K] inputs, G = num_kv_heads groups of H = num_heads /
  num_kv_heads query heads; k, v are `expand`ed along H (stride 0, no copy), as xformers' own
  GQA example. xformers documents GQA as forward-only: its backward ops refuse 5-D inputs, so a
  GQA fwd_bwd row is an `error` with xformers' message.
- head_dim_v != head_dim goes through; the ops that cannot (flash) say so in the probe.
- Every other kind (prefix_lm, strided, random_block, block_sparse, global_local): a reason;
  xformers has no such bias (FlexAttention runs them).
Strides: xformers' ops refuse a last-dim stride other than 1 and a head stride not a multiple of
their alignment; the per-case probe asks about contiguous tensors, so the call makes its inputs
contiguous too (a no-op for the harness's inputs), and probe and call agree.

Availability follows xformers' own flags. If its C++ library (`xformers._C`) does not load,
xformers marks itself built without CUDA (`_cpp_lib._built_with_cuda`) and refuses every CUDA
op, even `cutlassF-pt` and `fa2F-pt` that run on torch's own kernels; the reason then quotes the
loader's error (the 0.0.35 wheel links libcudart.so.12 and targets torch 2.10+cu128). Otherwise
each forced family asks its op's `is_available()`. flash-attn-4 installs `flash_attn` as a bare
namespace, which xformers 0.0.35 takes for FlashAttention-2 and fails to import, so it is hidden
while xformers loads.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
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
)

_MISSING = "xformers is not installed: pip install '.[xformers]'"
_PROBE_MAX_SEQ = 256  # keeps the probe tensors small at any case size
# The harness mask kinds xformers' biases express (the others are reasons: no such bias).
MASK_KINDS = ("none", "causal", "causal_top_left", "sliding_window", "document")
FEATURES = frozenset({"gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale"})


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Import xformers without its multi-line C++ warning and without FA4's bare `flash_attn`."""
    logger = logging.getLogger("xformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    hide, saved = _only_fa4_namespace(), sys.modules.get("flash_attn")
    if hide:
        sys.modules["flash_attn"] = None  # type: ignore[assignment]  # find_spec then says absent
    try:
        yield
    finally:
        logger.setLevel(level)
        if hide and saved is None:
            del sys.modules["flash_attn"]
        elif hide:
            sys.modules["flash_attn"] = saved


def _only_fa4_namespace() -> bool:
    try:
        spec = importlib.util.find_spec("flash_attn")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin in (None, "namespace") and \
        importlib.util.find_spec("flash_attn.flash_attn_interface") is None  # fmt: skip


def _cpp_problem(cpp: ModuleType) -> str:
    """Why xformers' C++ library did not load ("" when it did), in the loader's own words."""
    exc = getattr(cpp, "_cpp_library_load_exception", None)
    if exc is None:
        return ""
    cause = exc
    while (cause.__cause__ or cause.__context__) is not None:  # the dynamic loader's message
        cause = cause.__cause__ or cause.__context__
    lines = str(cause).strip().splitlines()
    text = f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    info = getattr(exc, "build_info", None)
    if info is not None:
        text += (f"; the wheel was built for torch {info.torch_version} (CUDA "
                 f"{info.cuda_version}), this is {torch.__version__}")  # fmt: skip
    return f"xformers' C++ ops do not load ({text})"


def _family_reason(family: str) -> str:
    module, reason = import_optional(f"xformers.ops.fmha.{family}",
                                     f"this xformers has no fmha.{family} ops")  # fmt: skip
    if module is None:
        return reason
    if family == "ck" and torch.version.hip is None:
        return "xformers' ck kernels need a ROCm (AMD) build of torch"
    fw = module.FwOp
    if hasattr(fw, "is_available") and not fw.is_available():
        return f"xformers' {fw.NAME} operator is not available in this build"
    return ""


def _available(family: str | None) -> Callable[[str], Availability]:
    def available(device: str) -> Availability:
        with _quiet_import():
            _, reason = import_optional("xformers.ops", _MISSING)
        if reason:
            return Availability.no(reason)
        cpp = importlib.import_module("xformers._cpp_lib")
        problem = _cpp_problem(cpp)
        reason = cuda_reason(device, what=f"xformers' {family or 'memory_efficient_attention'} op")
        if reason:
            return Availability.no(f"{reason}; {problem}" if problem else reason)
        if not getattr(cpp, "_built_with_cuda", True) and torch.version.hip is None:
            return Availability.no(f"{problem or 'xformers was built without CUDA'}, so xformers "
                                   "refuses every CUDA op")  # fmt: skip
        reason = _family_reason(family) if family is not None else ""
        return Availability.no(reason) if reason else Availability.yes()

    return available


@functools.cache
def _op(family: str | None) -> tuple[type, type] | None:
    if family is None:
        return None
    module = importlib.import_module(f"xformers.ops.fmha.{family}")
    return (module.FwOp, module.BwOp)


def attn_bias(causal: bool, mask: MaskSpec | None, seqlen_q: int, seqlen_k: int, batch: int,
              device: Any) -> Any:  # fmt: skip
    """The xformers bias for the harness's (causal, mask); NotImplementedError otherwise."""
    bias = importlib.import_module("xformers.ops.fmha.attn_bias")
    if mask is not None:
        mask = mask.with_causal(causal)  # `none` + causal reads `causal`
    kind = "none" if mask is None else mask.kind
    if kind == "causal_top_left" and seqlen_q == seqlen_k:
        kind = "causal"
    if kind == "sliding_window":
        left, right = effective_window(mask)  # type: ignore[arg-type]
        if (left, right) == (-1, -1):
            kind = "none"
        elif (left, right) == (-1, 0):
            kind = "causal"
        elif right == 0:
            return bias.LowerTriangularFromBottomRightMask().make_local_attention(left + 1)
        else:
            wide = max(seqlen_q, seqlen_k)  # reaches every key from every query
            return bias.LocalAttentionFromBottomRightMask(
                window_left=left if left >= 0 else wide, window_right=right if right >= 0 else wide
            )
    if kind == "none":
        return bias.LowerTriangularFromBottomRightMask() if causal else None
    if kind == "causal":
        return bias.LowerTriangularFromBottomRightMask()
    if kind == "causal_top_left":
        return bias.LowerTriangularMask()
    if kind == "document" and seqlen_q == seqlen_k:
        lens = mask.document_lengths(seqlen_k) * batch  # type: ignore[union-attr]
        block = bias.BlockDiagonalMask.from_seqlens(lens, device=device)
        return block.make_causal() if mask.causal else block  # type: ignore[union-attr]
    raise NotImplementedError(f"xformers has no bias for the {kind} mask with seqlen_q "
                              f"{seqlen_q}, seqlen_k {seqlen_k}")  # fmt: skip


def _call_inputs(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                 causal: bool, mask: MaskSpec | None) -> tuple[Any, ...]:  # fmt: skip
    """(query, key, value, attn_bias, out_shape) as memory_efficient_attention takes them: 5-D
    for GQA, the batch folded into one sequence for a block-diagonal (document) bias."""
    batch, seqlen_q, heads, _ = q_bshd.shape
    seqlen_k, kv_heads, dim_v = k_bshd.shape[1], k_bshd.shape[2], v_bshd.shape[3]
    out_shape = (batch, seqlen_q, heads, dim_v)
    bias = attn_bias(causal, mask, seqlen_q, seqlen_k, batch, q_bshd.device)
    q, k, v = (t.contiguous() for t in (q_bshd, k_bshd, v_bshd))
    if mask is not None and mask.kind == "document":  # block-diagonal: batch 1, one sequence
        q, k, v = (t.reshape(1, batch * t.shape[1], *t.shape[2:]) for t in (q, k, v))
    if kv_heads != heads:  # [B, M, G, H, K]: G kv heads, each read by H query heads
        group = heads // kv_heads
        q = q.reshape(*q.shape[:2], kv_heads, group, q.shape[-1])
        k, v = (t.reshape(*t.shape[:2], kv_heads, 1, t.shape[-1])
                .expand(*t.shape[:2], kv_heads, group, t.shape[-1]) for t in (k, v))  # fmt: skip
    return q, k, v, bias, out_shape


def _probe_seqlens(seqlen_q: int, seqlen_k: int) -> tuple[int, int]:
    """Small lengths in the same order as (seqlen_q, seqlen_k): <, == or >."""
    if max(seqlen_q, seqlen_k) <= _PROBE_MAX_SEQ:
        return seqlen_q, seqlen_k
    small = min(seqlen_q, seqlen_k, _PROBE_MAX_SEQ)
    return small + (seqlen_q > seqlen_k), small + (seqlen_k > seqlen_q)


def _probe_mask(mask: MaskSpec, seqlen_k: int, probe_k: int) -> MaskSpec:
    """The case's mask on the probe's lengths: the documents shrunk in proportion (>= 1 each)."""
    if mask.kind != "document" or probe_k == seqlen_k:
        return mask
    lens = [max(1, n * probe_k // seqlen_k) for n in mask.document_lengths(seqlen_k)]
    return MaskSpec(kind="document", causal=mask.causal, doc_lens=tuple(lens))


def _probe_inputs(case: Case, device: str):
    """fmha.Inputs as the call builds them (`_call_inputs`), on small empty tensors."""
    fmha = importlib.import_module("xformers.ops.fmha")
    sq, sk = _probe_seqlens(case.sq, case.sk)
    mask = _probe_mask(case.mask, case.sk, sk)
    if mask.kind == "document":
        sq = sk = sum(mask.document_lengths(sk))
    dtype = case.torch_dtype
    q = torch.empty((case.batch, sq, case.num_heads, case.head_dim), dtype=dtype, device=device)
    k = torch.empty((case.batch, sk, case.kv_heads, case.head_dim), dtype=dtype, device=device)
    v = torch.empty((case.batch, sk, case.kv_heads, case.dim_v), dtype=dtype, device=device)
    q, k, v, bias, _ = _call_inputs(q, k, v, causal=False, mask=mask)
    return fmha.Inputs(query=q, key=k, value=v, attn_bias=bias, scale=case.softmax_scale)


def mask_reasons(family: str | None, case: Case) -> list[str]:
    """Why xformers cannot apply this case's mask (empty when it can)."""
    mask, sq, sk = case.mask, case.sq, case.sk
    if mask.kind not in MASK_KINDS:
        return [f"xformers has no {mask.kind} bias (it takes causal, causal_top_left, "
                f"sliding_window and document masks); use flex"]  # fmt: skip
    if mask.kind == "document" and sq != sk:
        return [f"xformers' block-diagonal bias runs document masks as packed sequences, which "
                f"needs seqlen_q == seqlen_k; got {sq} and {sk}"]  # fmt: skip
    if mask.kind == "sliding_window" and family in (None, "flash"):
        left, right = effective_window(mask)
        wide = max(sq, sk)
        if right != 0 and fa2_window_differs(left if left >= 0 else wide,
                                             right if right >= 0 else wide, sq, sk):  # fmt: skip
            return [f"xformers' flash passes window_right {right} to FlashAttention-2, which "
                    f"reads it as seqlen_k and cuts the first queries' keys when seqlen_q {sq} > "
                    f"seqlen_k {sk} + 1"]  # fmt: skip
    return []


def _condense(message: str) -> str:
    """The dispatcher's multi-line refusal as one line: `op: reason, reason; op: ...`."""
    parts, current = [], None
    for line in message.splitlines():
        head = re.match(r"\s*`([^`]+)` is not supported because:", line)
        if head:
            current = [head.group(1) + ":"]
            parts.append(current)
        elif current is not None and line.strip():
            current.append(line.strip())
    found = "; ".join(" ".join(p) for p in parts)
    return f"no xformers op supports this case: {found or message.strip().splitlines()[0]}"


def _limits(family: str | None) -> Callable[[Case, str], list[str]]:
    def unsupported(case: Case, device: str) -> list[str]:
        reasons = mask_reasons(family, case)
        if reasons:
            return reasons
        inp = _probe_inputs(case, device)
        if family is None:
            dispatch = importlib.import_module("xformers.ops.fmha.dispatch")
            try:
                dispatch._dispatch_fw(inp, False)
            except NotImplementedError as exc:  # the dispatcher's own "no operator" verdict
                return [_condense(str(exc))]
            return []
        fw = _op(family)[0]
        if hasattr(fw, "not_supported_reasons"):
            return [f"xformers {fw.NAME}: {r}" for r in fw.not_supported_reasons(inp)]
        return [] if fw.supports(inp) else [f"xformers {fw.NAME} does not support this case"]

    return unsupported


def _forward(family: str | None) -> Callable[..., torch.Tensor]:
    def forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                causal: bool, block_size: int | None = None, mask: MaskSpec | None = None,
                softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
        xops = importlib.import_module("xformers.ops")
        q, k, v, bias, out_shape = _call_inputs(q_bshd, k_bshd, v_bshd, causal=causal, mask=mask)
        out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=softmax_scale,
                                              op=_op(family))  # fmt: skip
        return out.reshape(out_shape)

    return forward


def _register(name: str, label: str, family: str | None) -> Impl:
    return register(Impl(name=name, label=label, forward=_forward(family), layout="bshd",
                         available=_available(family), unsupported=_limits(family),
                         tags=("third-party", "causal-bottom-right"), memory_exponent=1,
                         features=FEATURES, mask_kinds=MASK_KINDS))  # fmt: skip


XFORMERS = _register("xformers", "xformers (dispatcher)", None)
XFORMERS_CUTLASS = _register("xformers_cutlass", "xformers cutlass", "cutlass")
XFORMERS_FLASH = _register("xformers_flash", "xformers flash (FA2)", "flash")
XFORMERS_FLASH3 = _register("xformers_flash3", "xformers flash3 (FA3)", "flash3")
XFORMERS_CK = _register("xformers_ck", "xformers ck (ROCm)", "ck")
