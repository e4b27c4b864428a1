"""The attention workload: q (batch, seqlen_q, num_heads, head_dim), k (batch, seqlen_k,
num_kv_heads, head_dim), v (batch, seqlen_k, num_kv_heads, head_dim_v) -> out (batch, seqlen_q,
num_heads, head_dim_v), the harness's public layout (bshd).

The float64 reference applies the case's mask (`harness.masks`, the same predicate every backend
is given), GQA by repeating each kv head for its group of query heads (query head h uses kv head
h // (num_heads // num_kv_heads), as flash-attn and SDPA's enable_gqa), and the case's softmax
scale; it runs in query-row chunks so Sq×Sk never exists, and a row with no attended key is 0.
Beyond `max_rows` query rows it evaluates a seeded sample of rows (recorded in the row). Gradient
references need every row and are computed only up to `grad_max_seq`. The error of naive attention
in the case's own precision is computed on the same rows so a reader can apply the "≤ 2× naive
low-precision error" rule; that naive keeps its scores in the case's dtype on purpose (it is
`implementations/naive.py`'s arithmetic), so in float16 it can overflow, and
`harness.measure.tolerance` says what then applies.

Input realism: `input_scale` multiplies q and k (logits grow with its square); `input_layout`
hands the implementation views of one packed qkv tensor (`packed_qkv`: (batch, seq, 3, heads,
head_dim), a sequence stride of 3·heads·head_dim) or views with a strided last dim
(`strided_last`: (..., head_dim, 2), a last-dim stride of 2), so suites exercise stride handling
as users' code does.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.case import Case
from harness.masks import MaskSpec
from harness.registry import Impl
from harness.workloads.base import Bound, Inputs, Reference, sampled_reference

# Legend: q_bshd (batch, seq, heads, head_dim), q_bhsd (batch, heads, seq, head_dim).


def qkv_shapes(case: Case) -> dict[str, tuple[int, ...]]:
    """The public (bshd) shapes of q, k and v."""
    return {
        "q": (case.batch, case.sq, case.num_heads, case.head_dim),
        "k": (case.batch, case.sk, case.kv_heads, case.head_dim),
        "v": (case.batch, case.sk, case.kv_heads, case.dim_v),
    }


def layout_reasons(case: Case) -> list[str]:
    """Why the case's `input_layout` cannot hold its shapes (packed qkv needs equal shapes)."""
    if case.input_layout == "packed_qkv" and not (
        case.sq == case.sk and case.kv_heads == case.num_heads and case.dim_v == case.head_dim
    ):
        return ["input_layout packed_qkv needs seqlen_q == seqlen_k, num_kv_heads == num_heads "
                "and head_dim_v == head_dim"]  # fmt: skip
    return []


def make_qkv(case: Case, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded randn q, k, v in the case's dtype (drawn in float32 on CPU, so identical anywhere),
    q and k times `input_scale`, laid out as `input_layout` says (views share one storage)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = qkv_shapes(case)
    drawn = {n: torch.randn(shapes[n], generator=gen, dtype=torch.float32) for n in ("q", "k", "v")}
    if case.input_scale != 1.0:
        drawn["q"] = drawn["q"] * case.input_scale
        drawn["k"] = drawn["k"] * case.input_scale

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype=case.torch_dtype, device=device)

    if case.input_layout == "packed_qkv":
        packed = put(torch.stack([drawn["q"], drawn["k"], drawn["v"]], dim=2))
        return dict(zip(("q", "k", "v"), packed.unbind(2), strict=True))
    if case.input_layout == "strided_last":
        out = {}
        for name, t in drawn.items():  # each (..., head_dim, 2): the last dim has stride 2
            pair = put(torch.stack([t, torch.zeros_like(t)], dim=-1))
            out[name] = pair[..., 0]
        return out
    return {name: put(t) for name, t in drawn.items()}


def forward_options(case: Case) -> dict[str, Any]:
    """The keyword arguments of an attention `forward` for this case (the registry's contract):
    `causal` for the bottom-right causal mask, `mask=` only for other kinds, `softmax_scale=`
    only when set."""
    options: dict[str, Any] = {"causal": case.mask.kind == "causal",
                               "block_size": case.block_size}  # fmt: skip
    if not case.mask.is_dense:
        options["mask"] = case.mask
    if case.softmax_scale is not None:
        options["softmax_scale"] = case.softmax_scale
    return options


def rows_attention(
    q_bshd: torch.Tensor,
    k_bshd: torch.Tensor,
    v_bshd: torch.Tensor,
    rows: torch.Tensor,
    *,
    causal: bool = False,
    compute_dtype: torch.dtype,
    chunk_rows: int,
    mask: MaskSpec | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention for the query rows `rows` only, in `compute_dtype`, chunked over rows.

    The mask is `mask` (with the causal constraint added when `causal`); GQA repeats kv heads
    for their query-head group; a row with no attended key is 0 (not NaN).
    """
    spec = (mask or MaskSpec()).with_causal(causal)
    sq, sk = q_bshd.shape[1], k_bshd.shape[1]
    group = q_bshd.shape[2] // k_bshd.shape[2]
    q = q_bshd.to(compute_dtype).transpose(1, 2)
    k = k_bshd.to(compute_dtype).transpose(1, 2).repeat_interleave(group, dim=1)
    v = v_bshd.to(compute_dtype).transpose(1, 2).repeat_interleave(group, dim=1)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    cols = torch.arange(sk, device=k.device)
    outs = []
    for start in range(0, rows.numel(), chunk_rows):
        idx = rows[start : start + chunk_rows].to(q.device)
        s = (q[:, :, idx] @ k.transpose(-1, -2)) * scale
        if spec.kind != "none":
            allowed = spec.tile(idx, cols, sq, sk)
            s = s.masked_fill(~allowed, float("-inf"))
            p = torch.softmax(s, dim=-1).masked_fill(~allowed.any(-1)[:, None], 0.0)
        else:
            p = torch.softmax(s, dim=-1)
        outs.append(p @ v)
    return torch.cat(outs, dim=2).transpose(1, 2)


def naive_full(
    q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *, causal: bool = False,
    mask: MaskSpec | None = None, softmax_scale: float | None = None,
) -> torch.Tensor:  # fmt: skip
    rows = torch.arange(q_bshd.shape[1])
    return rows_attention(
        q_bshd, k_bshd, v_bshd, rows, causal=causal, compute_dtype=q_bshd.dtype,
        chunk_rows=q_bshd.shape[1], mask=mask, softmax_scale=softmax_scale,
    )  # fmt: skip


class AttentionWorkload:
    def make_inputs(self, case: Case, device: str, seed: int) -> Inputs:
        qkv = make_qkv(case, device, seed)
        return Inputs(tensors=qkv)

    def output_shape(self, case: Case) -> tuple[int, ...]:
        return (case.batch, case.sq, case.num_heads, case.dim_v)

    def bind(self, impl: Impl, case: Case, inputs: Inputs, *, requires_grad: bool,
             forward_kwargs: dict[str, Any] | None = None) -> Bound:  # fmt: skip
        options = forward_options(case) | (forward_kwargs or {})
        to_impl = (lambda t: t.transpose(1, 2)) if impl.layout == "bhsd" else (lambda t: t)
        # Contiguous in the implementation's layout (untimed), unless the case asks for views.
        same = case.input_layout != "contiguous"
        q, k, v = (
            (to_impl(inputs.tensors[n]) if same else to_impl(inputs.tensors[n]).contiguous())
            .detach()
            .requires_grad_(requires_grad)
            for n in ("q", "k", "v")
        )

        def forward() -> torch.Tensor:
            return to_impl(impl.forward(q, k, v, **options))  # the transpose is its own inverse

        leaves = {"q": q, "k": k, "v": v} if requires_grad else {}
        return Bound(forward=forward, leaves=leaves, grad_to_public=to_impl)

    def reference(
        self, case: Case, inputs: Inputs, dout: torch.Tensor | None, *, max_rows: int,
        chunk_rows: int, grad_max_seq: int,
    ) -> Reference:  # fmt: skip
        q, k, v = (inputs.tensors[n].detach().cpu() for n in ("q", "k", "v"))
        spec = {"mask": case.mask, "softmax_scale": case.softmax_scale}
        return sampled_reference(
            case.sq,
            q.dtype,
            dout,
            max_rows=max_rows,
            grad_max_seq=grad_max_seq,
            rows_fn=lambda rows, dtype: rows_attention(
                q, k, v, rows, compute_dtype=dtype, chunk_rows=chunk_rows, **spec
            ),
            grads_fn=lambda dtype: _grads(q, k, v, dout.cpu(), spec, dtype),
            workload="attention",
        )

    def select_rows(self, out: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        out = out.detach()
        return out if rows is None else out[:, rows.to(out.device)]


def _grads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, spec: dict[str, Any],
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:  # fmt: skip
    leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = naive_full(*leaves, **spec)
    dq, dk, dv = torch.autograd.grad(out, leaves, dout.to(dtype))
    return {"q": dq, "k": dk, "v": dv}
