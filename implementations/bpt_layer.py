"""The Blockwise Parallel Transformer layer (Liu & Abbeel, arXiv 2305.19370), fused per query block.

For each query block: blockwise attention of the block against the keys it may see, then the
output projection, residual, LN2 and FFN of the same rows, inside one loop, so the full-sequence
FFN activation never exists. Each block's post-attention part is checkpointed (recomputed in
backward), and the attention saves only q, k, v, its output and lse (FlashAttention-2 backward),
so a layer stores ~LN1 output + q, k, v + attention output (≈5·b·s·h elements) instead of the
≈15·b·s·h of a layer with memory-efficient attention and a plain FFN.
Forward: forward(x_bsh, params, *, causal, block_size, num_heads) -> y_bsh.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from harness.registry import Impl, register
from implementations.bpt import DEFAULT_BLOCK_SIZE, bpt_attention, query_blocks
from implementations.layers import post_attention, qkv_heads


def bpt_layer(x_bsh: torch.Tensor, params: dict[str, torch.Tensor], *, causal: bool,
              block_size: int | None = None, num_heads: int) -> torch.Tensor:  # fmt: skip
    block_size = block_size or DEFAULT_BLOCK_SIZE
    q, k, v = qkv_heads(x_bsh, params, num_heads)
    grad = torch.is_grad_enabled()
    seq = x_bsh.shape[1]
    ys = []
    for rows in query_blocks(seq, block_size):
        # whole k and v, not slices: causal skips the future blocks itself, and a slice's backward
        # would allocate a full-size zero gradient per query block
        attn = bpt_attention(q[..., rows, :], k, v, causal=causal, block_size=block_size,
                             q_offset=rows.start)  # fmt: skip
        x_rows = x_bsh[:, rows]
        ys.append(checkpoint(post_attention, x_rows, attn, params, use_reentrant=False) if grad
                  else post_attention(x_rows, attn, params))  # fmt: skip
    return torch.cat(ys, dim=1)


BPT_LAYER = register(Impl(name="bpt_layer", label="BPT layer (blockwise attn + FFN)",
                          forward=bpt_layer, workload="layer", memory_exponent=1,
                          uses_block_size=True))  # fmt: skip
