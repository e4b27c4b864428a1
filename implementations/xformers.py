"""xformers' memory_efficient_attention: the dispatcher's choice, and each forceable op family.

`xformers` lets xformers' dispatcher pick the kernel; `xformers_cutlass`, `xformers_flash`,
`xformers_flash3` and `xformers_ck` force one family with `op=(FwOp, BwOp)` (cutlass: xformers'
own CUTLASS kernel after Rabe & Staats, arXiv 2112.05682; flash / flash3: FlashAttention-2 / -3
as built into xformers; ck: AMD Composable Kernel, ROCm only). Per-case reasons are xformers' own
(`not_supported_reasons` of the op, or the dispatcher's refusal), asked on small tensors with the
case's batch, heads, head_dim and dtype; a reason that depends on the sequence length appears
when the kernel runs. Layout: q_bshd, k_bshd, v_bshd -> out_bshd ([B, M, H, K] in xformers).
Causal: `LowerTriangularMask`, aligned top-left like SDPA (equal to bottom-right when Sq == Sk).
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

import torch

from harness.case import Case
from harness.registry import Availability, Impl, register
from implementations._optional import cuda_reason, import_optional

_MISSING = "xformers is not installed: pip install '.[xformers]'"
_PROBE_MAX_SEQ = 256  # keeps the probe tensors small at any case size


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


def _probe_inputs(case: Case, device: str):
    fmha = importlib.import_module("xformers.ops.fmha")
    shape = (case.batch, min(case.seq_len, _PROBE_MAX_SEQ), case.num_heads, case.head_dim)
    q, k, v = (torch.empty(shape, dtype=case.torch_dtype, device=device) for _ in range(3))
    bias = importlib.import_module("xformers.ops").LowerTriangularMask() if case.causal else None
    return fmha.Inputs(query=q, key=k, value=v, attn_bias=bias)


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
                causal: bool, block_size: int | None = None) -> torch.Tensor:  # fmt: skip
        xops = importlib.import_module("xformers.ops")
        bias = xops.LowerTriangularMask() if causal else None
        q_bshd, k_bshd, v_bshd = (t.contiguous() for t in (q_bshd, k_bshd, v_bshd))
        return xops.memory_efficient_attention(q_bshd, k_bshd, v_bshd, attn_bias=bias,
                                               op=_op(family))  # fmt: skip

    return forward


def _register(name: str, label: str, family: str | None) -> Impl:
    return register(Impl(name=name, label=label, forward=_forward(family), layout="bshd",
                         available=_available(family), unsupported=_limits(family),
                         tags=("third-party", "causal-top-left"), memory_exponent=1))  # fmt: skip


XFORMERS = _register("xformers", "xformers (dispatcher)", None)
XFORMERS_CUTLASS = _register("xformers_cutlass", "xformers cutlass", "cutlass")
XFORMERS_FLASH = _register("xformers_flash", "xformers flash (FA2)", "flash")
XFORMERS_FLASH3 = _register("xformers_flash3", "xformers flash3 (FA3)", "flash3")
XFORMERS_CK = _register("xformers_ck", "xformers ck (ROCm)", "ck")
