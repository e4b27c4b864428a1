"""The layer workload: one pre-LayerNorm transformer block, x (batch, seq, hidden) -> y, same shape.

    h = x + attn(LN1(x)) @ W_out^T        attn: multi-head, q/k/v = LN1(x) @ W_qkv^T split in 3
    y = h + GELU(LN2(h) @ W_1^T + b_1) @ W_2^T + b_2

The seeds' layer (Liu & Abbeel, arXiv 2305.19370): attention with output projection, an FFN of
expansion `ffn_expansion` (4), residuals. Weights are seeded and shared by every implementation;
they are leaves like x, so fwd_bwd returns dx and every weight gradient. The float64 reference
computes K and V for every row (O(S·h²)) but attention and FFN only for the (maybe sampled)
checked rows, so S×S never exists; gradient references need every row, up to `grad_max_seq`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.case import Case
from harness.registry import Impl
from harness.workloads.attention import rows_attention
from harness.workloads.base import Bound, Inputs, Reference, sampled_reference

PARAM_NAMES = ("ln1_weight", "ln1_bias", "w_qkv", "w_out", "ln2_weight", "ln2_bias",
               "w_ffn1", "b_ffn1", "w_ffn2", "b_ffn2")  # fmt: skip


def make_layer_inputs(case: Case, device: str, seed: int) -> dict[str, torch.Tensor]:
    """x first (the worker draws dout like the first tensor), then the seeded parameters.

    Weights are randn / sqrt(fan_in) so activations stay O(1); LayerNorm affine parameters are
    near (1, 0) but not exactly, so their gradients are checked too.
    """
    assert case.hidden is not None, "the layer workload needs a hidden size"
    gen = torch.Generator().manual_seed(seed)
    h, ffn = case.hidden, case.hidden * case.ffn_expansion

    def draw(*shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        t = torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean
        return t.to(dtype=case.torch_dtype, device=device)

    return {
        "x": draw(case.batch, case.seq_len, h),
        "ln1_weight": draw(h, std=0.1, mean=1.0), "ln1_bias": draw(h, std=0.1),
        "w_qkv": draw(3 * h, h, std=h**-0.5), "w_out": draw(h, h, std=h**-0.5),
        "ln2_weight": draw(h, std=0.1, mean=1.0), "ln2_bias": draw(h, std=0.1),
        "w_ffn1": draw(ffn, h, std=h**-0.5), "b_ffn1": draw(ffn, std=0.1),
        "w_ffn2": draw(h, ffn, std=ffn**-0.5), "b_ffn2": draw(h, std=0.1),
    }  # fmt: skip


def layer_rows(x: torch.Tensor, p: dict[str, torch.Tensor], rows: torch.Tensor, *,
               num_heads: int, causal: bool, compute_dtype: torch.dtype,
               chunk_rows: int) -> torch.Tensor:  # fmt: skip
    """The layer's output for the rows `rows` only, everything in `compute_dtype`."""
    x = x.to(compute_dtype)
    p = {n: t.to(compute_dtype) for n, t in p.items()}
    b, s, h = x.shape
    a = F.layer_norm(x, (h,), p["ln1_weight"], p["ln1_bias"])
    q, k, v = (a @ p["w_qkv"].T).view(b, s, 3, num_heads, h // num_heads).unbind(2)
    attn = rows_attention(q, k, v, rows, causal=causal, compute_dtype=compute_dtype,
                          chunk_rows=chunk_rows).reshape(b, rows.numel(), h)  # fmt: skip
    hid = x[:, rows] + attn @ p["w_out"].T
    f = F.layer_norm(hid, (h,), p["ln2_weight"], p["ln2_bias"])
    f = F.gelu(f @ p["w_ffn1"].T + p["b_ffn1"]) @ p["w_ffn2"].T + p["b_ffn2"]
    return hid + f


class LayerWorkload:
    def make_inputs(self, case: Case, device: str, seed: int) -> Inputs:
        return Inputs(tensors=make_layer_inputs(case, device, seed))

    def output_shape(self, case: Case) -> tuple[int, ...]:
        return (case.batch, case.seq_len, case.hidden)

    def bind(self, impl: Impl, case: Case, inputs: Inputs, *, requires_grad: bool,
             forward_kwargs: dict[str, Any] | None = None) -> Bound:  # fmt: skip
        extra = forward_kwargs or {}
        leaves = {n: t.detach().clone().requires_grad_(requires_grad)
                  for n, t in inputs.tensors.items()}  # fmt: skip
        x, params = leaves["x"], {n: leaves[n] for n in PARAM_NAMES}

        def forward() -> torch.Tensor:
            return impl.forward(x, params, causal=case.causal, block_size=case.block_size,
                                num_heads=case.num_heads, **extra)  # fmt: skip

        return Bound(forward=forward, leaves=leaves if requires_grad else {})

    def reference(
        self, case: Case, inputs: Inputs, dout: torch.Tensor | None, *, max_rows: int,
        chunk_rows: int, grad_max_seq: int,
    ) -> Reference:  # fmt: skip
        tensors = {n: t.detach().cpu() for n, t in inputs.tensors.items()}
        x, params = tensors["x"], {n: tensors[n] for n in PARAM_NAMES}
        common = {"num_heads": case.num_heads, "causal": case.causal, "chunk_rows": chunk_rows}
        every = torch.arange(case.seq_len)
        return sampled_reference(
            case.seq_len,
            x.dtype,
            dout,
            max_rows=max_rows,
            grad_max_seq=grad_max_seq,
            rows_fn=lambda rows, dtype: layer_rows(x, params, rows, compute_dtype=dtype, **common),
            grads_fn=lambda dtype: _grads(tensors, dout.cpu(), every, common, dtype),
            workload="layer",
        )

    def select_rows(self, out: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        out = out.detach()
        return out if rows is None else out[:, rows.to(out.device)]


def _grads(tensors: dict[str, torch.Tensor], dout: torch.Tensor, rows: torch.Tensor,
           common: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:  # fmt: skip
    leaves = {n: t.to(dtype).requires_grad_(True) for n, t in tensors.items()}
    params = {n: leaves[n] for n in PARAM_NAMES}
    out = layer_rows(leaves["x"], params, rows, compute_dtype=dtype, **common)
    grads = torch.autograd.grad(out, list(leaves.values()), dout.to(dtype))
    return dict(zip(leaves, grads, strict=True))
