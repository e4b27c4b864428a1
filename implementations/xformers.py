"""xformers' memory_efficient_attention: the dispatcher's choice, and each forceable op family.

`xformers` lets xformers' dispatcher pick the kernel; `xformers_cutlass`, `xformers_flash`,
`xformers_flash3` and `xformers_ck` force one family with `op=(FwOp, BwOp)` (cutlass: xformers'
own CUTLASS kernel after Rabe & Staats, arXiv 2112.05682; flash / flash3: FlashAttention-2 / -3
as built into xformers; ck: AMD Composable Kernel, ROCm only). Per-case reasons are xformers' own
(`not_supported_reasons` of the op, or the dispatcher's refusal), asked on small tensors with the
case's batch, heads, head_dim and dtype; a reason that depends on the sequence length appears
when the kernel runs. Layout: q_bshd, k_bshd, v_bshd -> out_bshd ([B, M, H, K] in xformers).
Causal: `LowerTriangularMask`, aligned top-left like SDPA (equal to bottom-right when Sq == Sk).

Availability is xformers' own per-op verdict (`FwOp.is_available()`), not the state of its C++
library: since 0.0.2x `cutlassF-pt` calls torch's `aten._efficient_attention_forward` and `fa2F-pt`
torch's flash kernel, so both work when `xformers._C` was built for another torch (the usual case:
the 0.0.35 wheel targets torch 2.10+cu128, our GPU machines have 2.11+cu130). The build mismatch is
named only as the cause of an op that is not available.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import re
from collections.abc import Callable, Iterator

import torch

from harness.case import Case
from harness.registry import Availability, Impl, register
from implementations._optional import cuda_reason, import_optional

_MISSING = "xformers is not installed: pip install '.[xformers]'"
_PROBE_MAX_SEQ = 256  # keeps the probe tensors small at any case size


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """xformers logs a multi-line warning when its C++ ops do not load; the reason says it once."""
    logger = logging.getLogger("xformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _build_mismatch() -> str:
    """Why xformers' own C++ ops did not load ("" when they did): a cause, never a verdict."""
    cpp = importlib.import_module("xformers._cpp_lib")
    exc = getattr(cpp, "_cpp_library_load_exception", None)
    if exc is None:
        return ""
    info = getattr(exc, "build_info", None)
    if info is not None:
        return (f"xformers' C++ ops were built for torch {info.torch_version} (CUDA "
                f"{info.cuda_version}), this is {torch.__version__}")  # fmt: skip
    text = str(exc).strip().splitlines()
    return f"xformers' C++ ops do not load: {text[0] if text else type(exc).__name__}"


def _with_cause(reason: str) -> str:
    mismatch = _build_mismatch()
    return f"{reason}; {mismatch}" if mismatch else reason


def _family_reason(family: str) -> str:
    module, reason = import_optional(f"xformers.ops.fmha.{family}",
                                     f"this xformers has no fmha.{family} ops")  # fmt: skip
    if module is None:
        return reason
    if family == "ck" and torch.version.hip is None:
        return "xformers' ck kernels need a ROCm (AMD) build of torch"
    fw = module.FwOp
    if hasattr(fw, "is_available") and not fw.is_available():
        return _with_cause(f"xformers' {fw.NAME} operator is not available in this build")
    return ""


def _available(family: str | None) -> Callable[[str], Availability]:
    def available(device: str) -> Availability:
        with _quiet_import():
            _, reason = import_optional("xformers.ops", _MISSING)
        what = f"xformers' {family or 'memory_efficient_attention'} op"
        if not reason:
            reason = cuda_reason(device, what=what)
            reason = _with_cause(reason) if reason else ""
        if not reason and family is not None:
            reason = _family_reason(family)
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
        return xops.memory_efficient_attention(q_bshd, k_bshd, v_bshd, attn_bias=bias,
                                               op=_op(family))  # fmt: skip

    return forward


def _register(name: str, label: str, family: str | None) -> Impl:
    return register(Impl(name=name, label=label, forward=_forward(family), layout="bshd",
                         available=_available(family), unsupported=_limits(family),
                         tags=("third-party", "causal-top-left")))  # fmt: skip


XFORMERS = _register("xformers", "xformers (dispatcher)", None)
XFORMERS_CUTLASS = _register("xformers_cutlass", "xformers cutlass", "cutlass")
XFORMERS_FLASH = _register("xformers_flash", "xformers flash (FA2)", "flash")
XFORMERS_FLASH3 = _register("xformers_flash3", "xformers flash3 (FA3)", "flash3")
XFORMERS_CK = _register("xformers_ck", "xformers ck (ROCm)", "ck")
