"""Transformer layers for the `layer` workload: the shared layer math and the two baselines.

The layer (see harness/workloads/layer.py): pre-LN multi-head attention with output projection and
a GELU FFN, residuals. `vanilla_layer` uses naive attention (the S×S matrix exists) and the
full-sequence FFN, as the BPT paper's "vanilla transformer" (arXiv 2305.19370); `memeff_layer`
swaps in torch's fused memory-efficient attention (FlashAttention-style, no S×S) but keeps the
full-sequence FFN, whose activations (~8·b·s·h in the paper's count) autograd stores.
Forward: forward(x_bsh, params, *, causal, block_size, num_heads) -> y_bsh; layout of the heads:
q_bhsd (batch, heads, seq, head_dim); x_bsh (batch, seq, hidden).
Inputs and parameters of any strides: layer norm and the projections take them as they are, and
q, k, v are views of the QKV projection's fresh output with a unit last-dim stride, which torch's
fused attention needs. Precision: `vanilla_layer` inherits naive attention's float16 overflow at
|q·k| > 65504 by design (see implementations/naive.py); `memeff_layer`'s fused kernel and
`bpt_layer` form scores in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.case import Case
from harness.registry import Impl, register
from implementations.naive import naive_attention


def qkv_heads(x_bsh: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """LN1, the fused QKV projection, and the split into heads: three q_bhsd-shaped views."""
    b, s, h = x_bsh.shape
    a = F.layer_norm(x_bsh, (h,), p["ln1_weight"], p["ln1_bias"])
    qkv = F.linear(a, p["w_qkv"]).view(b, s, 3, num_heads, h // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def post_attention(x_bsh: torch.Tensor, attn_bhsd: torch.Tensor,
                   p: dict[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """Everything after attention, row-wise: heads merged, projection, residual, LN2, FFN."""
    b, s, h = x_bsh.shape
    hid = x_bsh + F.linear(attn_bhsd.transpose(1, 2).reshape(b, s, h), p["w_out"])
    f = F.layer_norm(hid, (h,), p["ln2_weight"], p["ln2_bias"])
    return hid + F.linear(F.gelu(F.linear(f, p["w_ffn1"], p["b_ffn1"])), p["w_ffn2"], p["b_ffn2"])


def vanilla_layer(x_bsh: torch.Tensor, params: dict[str, torch.Tensor], *, causal: bool,
                  block_size: int | None = None, num_heads: int) -> torch.Tensor:  # fmt: skip
    q, k, v = qkv_heads(x_bsh, params, num_heads)
    return post_attention(x_bsh, naive_attention(q, k, v, causal=causal), params)


def memeff_layer(x_bsh: torch.Tensor, params: dict[str, torch.Tensor], *, causal: bool,
                 block_size: int | None = None, num_heads: int) -> torch.Tensor:  # fmt: skip
    q, k, v = qkv_heads(x_bsh, params, num_heads)
    backends = ([SDPBackend.FLASH_ATTENTION] if x_bsh.device.type == "cpu"
                else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])  # fmt: skip
    with sdpa_kernel(backends):
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return post_attention(x_bsh, attn, params)


def memeff_limits(case: Case, device: str) -> list[str]:
    if device == "cuda" and case.dtype == "float64":
        return ["torch's fused CUDA attention kernels have no float64 version"]
    return []


VANILLA_LAYER = register(Impl(name="vanilla_layer", label="Vanilla layer (naive attn + FFN)",
                              forward=vanilla_layer, workload="layer",
                              memory_exponent=2))  # fmt: skip
MEMEFF_LAYER = register(Impl(name="memeff_layer", label="Mem-eff layer (fused attn + FFN)",
                             forward=memeff_layer, workload="layer",
                             unsupported=memeff_limits, memory_exponent=1))  # fmt: skip
