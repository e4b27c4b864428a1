"""`harness.attention(...)`: run any registered attention implementation on (b, s, h, d) tensors."""

from __future__ import annotations

import torch

from harness.case import Case
from harness.errors import Unavailable
from harness.registry import REGISTRY


def case_of(q_bshd: torch.Tensor, *, causal: bool, block_size: int | None) -> Case:
    batch, seq_len, num_heads, head_dim = q_bshd.shape
    dtype = str(q_bshd.dtype).removeprefix("torch.")
    return Case(batch=batch, seq_len=seq_len, num_heads=num_heads, head_dim=head_dim,
                dtype=dtype, causal=causal, block_size=block_size)  # type: ignore[arg-type]  # fmt: skip


def attention(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    block_size: int | None = None,
) -> torch.Tensor:
    """Attention by implementation `name`; raises `Unavailable` (with the reason) if it cannot run.

    q, k, v: (batch, seq, heads, head_dim) with equal shapes, of any strides (views of a packed
    qkv, transposes, broadcast expands); the output has the same layout. Gradients flow through for
    implementations with `supports_backward`.

    Strides are passed on as they are, not normalised here: an implementation is also called
    without this function (the worker's binding, `bpt_attention` inside `bpt_layer`,
    `ring_attention`), so each one gives its kernel the layout that kernel needs (a fused kernel
    a unit last-dim stride, copied only when missing) and none is silently wrong on a view; a
    copy here would also tax the implementations that take any strides (naive, chunked, math).
    """
    impl = REGISTRY.get(name)
    if impl.workload != "attention":
        raise Unavailable(name, f"serves the {impl.workload!r} workload, not attention")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must share the shape (batch, seq, heads, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if 0 in q.shape:  # an empty sequence or head: kernels divide by these sizes (SIGFPE in bpt)
        raise ValueError(f"q, k, v need every dimension >= 1; got shape {tuple(q.shape)}")
    if block_size is not None and (isinstance(block_size, bool) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    availability = impl.available(q.device.type)
    if not availability.ok:
        raise Unavailable(name, availability.reason)
    reasons = impl.unsupported(case_of(q, causal=causal, block_size=block_size), q.device.type)
    if reasons:
        raise Unavailable(name, "; ".join(reasons))
    if impl.needs_process_group:
        raise Unavailable(name, "needs a process group; use harness.ring_attention")
    if impl.layout == "bhsd":
        out = impl.forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                           causal=causal, block_size=block_size)  # fmt: skip
        return out.transpose(1, 2)
    return impl.forward(q, k, v, causal=causal, block_size=block_size)
