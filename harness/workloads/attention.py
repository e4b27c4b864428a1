"""The attention workload: q, k, v (batch, seq, heads, head_dim) -> out, same layout.

The float64 reference runs in query-row chunks so S×S never exists; beyond `max_rows` query rows
it evaluates a seeded sample of rows (recorded in the row). Gradient references need every row and
are computed only up to `grad_max_seq`. The error of naive attention in the case's own precision is
computed on the same rows so a reader can apply the "≤ 2× naive low-precision error" rule; that
naive keeps its scores in the case's dtype on purpose (it is `implementations/naive.py`'s
arithmetic), so in float16 it can overflow, and `harness.measure.tolerance` says what then applies.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from harness.case import Case
from harness.registry import Impl
from harness.workloads.base import Bound, Inputs, Reference, sampled_reference

# Legend: q_bshd (batch, seq, heads, head_dim), q_bhsd (batch, heads, seq, head_dim).


def make_qkv(case: Case, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded randn q, k, v in the case's dtype (drawn in float32 on CPU, so identical anywhere)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (case.batch, case.seq_len, case.num_heads, case.head_dim)
    return {
        name: torch.randn(shape, generator=gen, dtype=torch.float32).to(
            dtype=case.torch_dtype, device=device
        )
        for name in ("q", "k", "v")
    }


def rows_attention(
    q_bshd: torch.Tensor,
    k_bshd: torch.Tensor,
    v_bshd: torch.Tensor,
    rows: torch.Tensor,
    *,
    causal: bool,
    compute_dtype: torch.dtype,
    chunk_rows: int,
) -> torch.Tensor:
    """Naive attention for the query rows `rows` only, in `compute_dtype`, chunked over rows."""
    q = q_bshd.to(compute_dtype).transpose(1, 2)
    k = k_bshd.to(compute_dtype).transpose(1, 2)
    v = v_bshd.to(compute_dtype).transpose(1, 2)
    scale = 1.0 / math.sqrt(q.shape[-1])
    key_pos = torch.arange(k.shape[2], device=k.device)
    outs = []
    for start in range(0, rows.numel(), chunk_rows):
        idx = rows[start : start + chunk_rows].to(q.device)
        s = (q[:, :, idx] @ k.transpose(-1, -2)) * scale
        if causal:
            s = s.masked_fill(key_pos[None, :] > idx[:, None], float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v)
    return torch.cat(outs, dim=2).transpose(1, 2)


def naive_full(
    q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *, causal: bool
) -> torch.Tensor:
    rows = torch.arange(q_bshd.shape[1])
    return rows_attention(
        q_bshd, k_bshd, v_bshd, rows, causal=causal, compute_dtype=q_bshd.dtype,
        chunk_rows=q_bshd.shape[1],
    )  # fmt: skip


class AttentionWorkload:
    def make_inputs(self, case: Case, device: str, seed: int) -> Inputs:
        qkv = make_qkv(case, device, seed)
        return Inputs(tensors=qkv)

    def output_shape(self, case: Case) -> tuple[int, ...]:
        return (case.batch, case.seq_len, case.num_heads, case.head_dim)

    def bind(self, impl: Impl, case: Case, inputs: Inputs, *, requires_grad: bool,
             forward_kwargs: dict[str, Any] | None = None) -> Bound:  # fmt: skip
        extra = forward_kwargs or {}
        to_impl = (lambda t: t.transpose(1, 2)) if impl.layout == "bhsd" else (lambda t: t)
        q, k, v = (
            to_impl(inputs.tensors[n]).contiguous().detach().requires_grad_(requires_grad)
            for n in ("q", "k", "v")
        )

        def forward() -> torch.Tensor:
            out = impl.forward(q, k, v, causal=case.causal, block_size=case.block_size, **extra)
            return to_impl(out)  # the transpose is its own inverse

        leaves = {"q": q, "k": k, "v": v} if requires_grad else {}
        return Bound(forward=forward, leaves=leaves, grad_to_public=to_impl)

    def reference(
        self, case: Case, inputs: Inputs, dout: torch.Tensor | None, *, max_rows: int,
        chunk_rows: int, grad_max_seq: int,
    ) -> Reference:  # fmt: skip
        q, k, v = (inputs.tensors[n].detach().cpu() for n in ("q", "k", "v"))
        return sampled_reference(
            case.seq_len,
            q.dtype,
            dout,
            max_rows=max_rows,
            grad_max_seq=grad_max_seq,
            rows_fn=lambda rows, dtype: rows_attention(
                q, k, v, rows, causal=case.causal, compute_dtype=dtype, chunk_rows=chunk_rows
            ),
            grads_fn=lambda dtype: _grads(q, k, v, dout.cpu(), case.causal, dtype),
            workload="attention",
        )

    def select_rows(self, out: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        out = out.detach()
        return out if rows is None else out[:, rows.to(out.device)]


def _grads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, causal: bool,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:  # fmt: skip
    leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = naive_full(*leaves, causal=causal)
    dq, dk, dv = torch.autograd.grad(out, leaves, dout.to(dtype))
    return {"q": dq, "k": dk, "v": dv}
