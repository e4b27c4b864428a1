"""`harness.attention(...)`: run any registered attention implementation on bshd tensors."""

from __future__ import annotations

from typing import Any

import torch

from harness.case import Case
from harness.errors import Unavailable
from harness.masks import MaskSpec
from harness.registry import REGISTRY, declared_reasons
from harness.workloads.attention import forward_options


def _mask_spec(mask: MaskSpec | str | dict[str, Any] | None, window: Any) -> MaskSpec:
    if window is not None:
        if mask is not None:
            raise ValueError("give either window= or mask=, not both")
        if not (isinstance(window, tuple | list) and len(window) == 2):
            raise ValueError(f"window must be (left, right); got {window!r}")
        return MaskSpec(kind="sliding_window", window=tuple(window))  # ints checked there
    if isinstance(mask, MaskSpec):
        return mask
    return MaskSpec.from_dict(mask)


def case_of(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *, causal: bool,
            block_size: int | None, mask: MaskSpec | None = None,
            softmax_scale: float | None = None) -> Case:  # fmt: skip
    """The Case of these tensors' shapes (ValueError if the shapes cannot go together)."""
    if q_bshd.dim() != 4 or k_bshd.dim() != 4 or v_bshd.dim() != 4:
        shapes = ", ".join(str(tuple(t.shape)) for t in (q_bshd, k_bshd, v_bshd))
        raise ValueError(f"q, k, v must be 4-D (batch, seq, heads, head_dim); got {shapes}")
    batch, seqlen_q, num_heads, head_dim = q_bshd.shape
    kb, seqlen_k, num_kv_heads, kd = k_bshd.shape
    if kb != batch or kd != head_dim or tuple(v_bshd.shape[:3]) != tuple(k_bshd.shape[:3]):
        raise ValueError(
            f"shapes must be q (batch, seqlen_q, num_heads, head_dim), k (batch, seqlen_k, "
            f"num_kv_heads, head_dim), v (batch, seqlen_k, num_kv_heads, head_dim_v); got "
            f"{tuple(q_bshd.shape)}, {tuple(k_bshd.shape)}, {tuple(v_bshd.shape)}"
        )
    if 0 in (*q_bshd.shape, *k_bshd.shape, *v_bshd.shape):
        # an empty sequence or head: kernels divide by these sizes (SIGFPE in bpt)
        raise ValueError(f"q, k, v need every dimension >= 1; got {tuple(q_bshd.shape)}, "
                         f"{tuple(k_bshd.shape)}, {tuple(v_bshd.shape)}")  # fmt: skip
    if num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads {num_kv_heads} (k, v) must divide num_heads {num_heads} "
                         "(q)")  # fmt: skip
    dtype = str(q_bshd.dtype).removeprefix("torch.")
    return Case(batch=batch, seq_len=seqlen_k, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                head_dim_v=v_bshd.shape[3], dtype=dtype, causal=causal,  # type: ignore[arg-type]
                block_size=block_size, mask=mask or MaskSpec(),
                softmax_scale=softmax_scale)  # fmt: skip


def attention(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: tuple[int, int] | None = None,
    softmax_scale: float | None = None,
    mask: MaskSpec | str | dict[str, Any] | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Attention by implementation `name`; raises `Unavailable` (with the reason) if it cannot run.

    q (batch, seqlen_q, num_heads, head_dim), k (batch, seqlen_k, num_kv_heads, head_dim),
    v (batch, seqlen_k, num_kv_heads, head_dim_v) -> out (batch, seqlen_q, num_heads, head_dim_v).
    GQA/MQA and seqlen_q != seqlen_k follow from the shapes (query head h uses kv head
    h // (num_heads // num_kv_heads)). `causal` is bottom-right aligned (query i sees key j iff
    j <= i + seqlen_k - seqlen_q, as flash-attn); `window=(left, right)` is flash-attn's
    window_size (-1 unbounded); `mask` any `harness.masks` kind (a MaskSpec, a kind name, or a
    dict such as {"kind": "document", "doc_lens": [30, 50, 17]}); `softmax_scale` defaults to
    1/sqrt(head_dim). Rows with no attended key are 0. Inputs of any strides; gradients flow for
    implementations with `supports_backward`. ValueError for shapes or arguments that cannot go
    together (one line naming them).

    Strides are passed on as they are, not normalised here: an implementation is also called
    without this function (the worker's binding, `bpt_attention` inside `bpt_layer`,
    `ring_attention`), so each one gives its kernel the layout that kernel needs.
    """
    impl = REGISTRY.get(name)
    if impl.workload == "decode":
        raise Unavailable(name, "serves the decode workload: call harness.REGISTRY.get(name)"
                          ".forward(q, cache) with a harness.workloads.kv_cache.KVCache "
                          "(make_cache builds one)")  # fmt: skip
    if impl.workload != "attention":
        raise Unavailable(name, f"serves the {impl.workload!r} workload, not attention")
    if block_size is not None and (isinstance(block_size, bool) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    if softmax_scale is not None and not (softmax_scale > 0 and softmax_scale < float("inf")):
        raise ValueError(f"softmax_scale must be a positive finite number; got {softmax_scale!r}")
    case = case_of(q, k, v, causal=causal, block_size=block_size, mask=_mask_spec(mask, window),
                   softmax_scale=softmax_scale)  # fmt: skip
    shape_problems = case.mask.shape_reasons(case.sq, case.sk)
    if shape_problems:
        raise ValueError("; ".join(shape_problems))
    availability = impl.available(q.device.type)
    if not availability.ok:
        raise Unavailable(name, availability.reason)
    reasons = declared_reasons(impl, case) or impl.unsupported(case, q.device.type)
    if reasons:
        raise Unavailable(name, "; ".join(reasons))
    if impl.needs_process_group:
        raise Unavailable(name, "needs a process group; use harness.ring_attention")
    options = forward_options(case)
    if impl.layout == "bhsd":
        out = impl.forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **options)
        return out.transpose(1, 2)
    return impl.forward(q, k, v, **options)
