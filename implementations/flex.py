"""torch FlexAttention (`torch.nn.attention.flex_attention`), compiled with torch.compile.

Compiled, flex generates a fused kernel (Triton on CUDA, C++ templates on CPU); eager flex
materializes the S×S scores, so only the compiled path is measured. Layout: q_bhsd (B, Hq, Sq, D),
k_bhsd (B, Hkv, Sk, D), v_bhsd (B, Hkv, Sk, Dv) -> out_bhsd (B, Hq, Sq, Dv).

Masks: every kind of `harness.masks`, as a block mask (`create_block_mask(mask_mod, None, None,
Sq, Sk)`): causal is `q_idx + (Sk - Sq) >= kv_idx` (bottom-right aligned, like flash-attn), every
other kind the `MaskSpec.mask_mod(Sq, Sk)` predicate itself (document and random_block index small
tables that the mask_mod captures; compiled flex lifts them as inputs), the full mask no block mask.
The block mask is built once per case and kept beside the compiled graph, so neither mask building
nor compilation is timed (the harness's untimed check call pays for both). A query row with no
allowed key (Sq > Sk under causal) gives 0. GQA/MQA is flex's `enable_gqa=True` (query head h uses
kv head h // (Hq // Hkv)), `softmax_scale` its `scale=`; Dv != D and Sq != Sk are native (all
checked on CPU in tests/unit/test_dense_masks.py).

Compilation is static-shape and full-graph, and dynamo's caches are reset whenever the case
changes: dynamo's recompile limit (8 per function) would otherwise stop compiling after a few cases
and, with full-graph, fail. On CPU (torch 2.13) compiled flex supports float32, float16 and
bfloat16 and has no backward (torch raises NotImplementedError, recorded as unsupported).
`block_size` is ignored: flex's block mask granularity is its own (128).
Strides: inductor specializes the compiled kernel to its inputs' strides (any strides give the
right answer on CPU, checked in tests/unit/test_strides.py); the strides are part of the case key,
so a new stride pattern resets dynamo like a new case instead of counting toward its recompile
limit.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import torch

from harness.case import Case
from harness.masks import MASK_KINDS, MaskSpec
from harness.registry import Availability, Impl, register

_CPU_DTYPES = ("float32", "float16", "bfloat16")
_state: dict[str, Any] = {"key": None, "fn": None, "mask": None}


def _causal(offset: int) -> Callable[..., Any]:
    """Bottom-right causal: query row i sits at position i + offset, offset = Sk - Sq."""

    def causal(b, h, q_idx, kv_idx):  # noqa: ANN001 - flex's mask_mod signature
        return q_idx + offset >= kv_idx

    return causal


def _mask_mod(spec: MaskSpec, sq: int, sk: int, device: torch.device) -> Callable[..., Any] | None:
    """The mask_mod of `spec` (None for the full mask: flex then needs no block mask)."""
    if spec.kind == "none":
        return None
    if spec.kind == "causal":
        return _causal(sk - sq)
    return spec.mask_mod(sq, sk, device)


def _available(device: str) -> Availability:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError as exc:
        return Availability.no(f"torch {torch.__version__} has no FlexAttention (needs 2.5+): "
                               f"{exc}")  # fmt: skip
    if device == "cuda":
        if not torch.cuda.is_available():
            return Availability.no("needs CUDA: torch sees no CUDA device")
        try:
            import triton  # noqa: F401
        except ImportError:
            return Availability.no("compiled FlexAttention on CUDA needs triton; it is not "
                                   "installed")  # fmt: skip
        return Availability.yes()
    if device != "cpu":
        return Availability.no(f"FlexAttention runs on cpu and cuda here; got {device}")
    from torch._inductor import config

    configured = config.cpp.cxx if isinstance(config.cpp.cxx, tuple) else (config.cpp.cxx,)
    if not any(shutil.which(c) for c in (*configured, "g++", "c++", "clang++") if c):
        return Availability.no("compiled FlexAttention on CPU needs a C++ compiler (g++); "
                               "none found")  # fmt: skip
    return Availability.yes()


def _limits(case: Case, device: str) -> list[str]:
    if device == "cpu" and case.dtype not in _CPU_DTYPES:
        return [f"compiled FlexAttention on CPU supports {', '.join(_CPU_DTYPES)}; "
                f"got {case.dtype}"]  # fmt: skip
    return []


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec,
             scale: float | None) -> tuple[Callable[..., Any], Any]:  # fmt: skip
    """The compiled kernel and block mask of this case, made (once) on its first call."""
    from torch.nn.attention import flex_attention as flex

    key = (tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(t.stride() for t in (q, k, v)),
           q.dtype, q.device, spec, scale, q.requires_grad)  # fmt: skip
    if _state["key"] != key:
        # Inside torch.compile torch's own input checks (no backward on CPU) surface as an opaque
        # dynamo error; run them eagerly first so their NotImplementedError reaches the harness.
        validate = getattr(flex, "_validate_device", None)
        if validate is not None:
            validate(q, k, v)
        torch.compiler.reset()
        mask = None
        sq, sk = q.shape[-2], k.shape[-2]
        mask_mod = _mask_mod(spec, sq, sk, q.device)
        if mask_mod is not None:
            # Eager mask building materializes S×S booleans (17 GB at 128k); compiled, it doesn't.
            # On CPU the extra compile costs more than the small masks of CPU-sized cases.
            make = flex.create_block_mask
            make = torch.compile(make) if q.device.type == "cuda" else make
            mask = make(mask_mod, None, None, sq, sk, device=q.device)
        fn = torch.compile(flex.flex_attention, dynamic=False, fullgraph=True)
        _state.update(key=key, fn=fn, mask=mask)
    return _state["fn"], _state["mask"]


def flex_forward(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *,
                 causal: bool, block_size: int | None = None, mask: MaskSpec | None = None,
                 softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    spec = (mask or MaskSpec()).with_causal(causal)
    fn, block_mask = _prepare(q_bhsd, k_bhsd, v_bhsd, spec, softmax_scale)
    gqa = k_bhsd.shape[-3] != q_bhsd.shape[-3]
    return fn(q_bhsd, k_bhsd, v_bhsd, block_mask=block_mask, scale=softmax_scale, enable_gqa=gqa)


FLEX = register(Impl(name="flex", label="FlexAttention (compiled)", forward=flex_forward,
                     layout="bhsd", available=_available, unsupported=_limits,
                     tags=("torch", "compiled"), memory_exponent=1,
                     features=frozenset({"gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale"}),
                     mask_kinds=MASK_KINDS))  # fmt: skip
