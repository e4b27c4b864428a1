"""The Blockwise Parallel Transformer layer (Liu & Abbeel, arXiv 2305.19370), fused per query block.

For each query block: blockwise attention of the block against the keys it may see, then the
output projection, residual, LN2 and FFN of the same rows, inside one loop, so the full-sequence
FFN activation never exists.

Memory, in b·s·h elements of one layer (the paper counts 2bsh of activations for BPT against
8bsh + 2bsh for the FFN and attention of a memory-efficient layer). The whole layer is one
autograd node that saves only the attention output and its lse (≈1 b·s·h; x and the weights are
the caller's). Backward recomputes the rest: LN1 and the K, V projection once (k, v live only
during backward), each query block's q, its post-attention part in chunks of FFN_CHUNK_ROWS rows
(FFN activations exist for one chunk at a time), and every attention tile from the final lse
(FlashAttention-2 backward, arXiv 2307.08691). dq of a query block is final once its keys are
done, so it goes through the q projection and LN1 at once; dk and dv accumulate in place in one
(b, s, 2, heads, head_dim) buffer and dx in another, in the accumulator dtype (float32 for 16-bit
inputs), and K, V's projection and LN1 are differentiated block by block at the end. Backward
peak ≈ k, v + dk, dv + dx + out + the caller's y (≈7 b·s·h) plus one block's transients; a layer
built of autograd ops with one attention call per query block held, per block, a full-size fp32
dk, dv (and dq, dx from slicing's backward) on top. Measured (benchmarks/frontier.py's probe,
CPU fp32, hidden 256, 4 heads, block 1024, fwd_bwd, peak above inputs): bpt_layer / memeff_layer
0.73 → 0.53 at S = 4096 and 0.67 → 0.44 at S = 8192 (block-sized transients weigh less as S grows).
Forward: forward(x_bsh, params, *, causal, block_size, num_heads) -> y_bsh; attention tensors
q_bhsd (batch, heads, seq, head_dim), lse_bhs (batch, heads, seq).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from harness.registry import Impl, register
from implementations.blockwise_ops import TilePlan, acc_dtype, block_bwd, resolve_mask
from implementations.blockwise_ops import unit_last_stride as _unit
from implementations.bpt import DEFAULT_BLOCK_SIZE, blockwise_fwd, bpt_plan, query_blocks
from implementations.layers import post_attention

_QKV_PARAMS = ("ln1_weight", "ln1_bias", "w_qkv")  # the rest are post_attention's
# Rows of the post-attention part (projection, LN2, FFN) run at once; row-wise, so exact.
FFN_CHUNK_ROWS = 256


def _plans(seq: int, block_size: int, causal: bool, device: torch.device
           ) -> list[tuple[slice, TilePlan]]:  # fmt: skip
    """(query rows, their cached tile plan against every key) for each query block."""
    spec = resolve_mask(causal, None)
    return [(rows, bpt_plan(spec, rows.stop - rows.start, seq, block_size, rows.start, device))
            for rows in query_blocks(seq, block_size)]  # fmt: skip


def _heads(t_bsh: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, seq, heads·head_dim) -> a q_bhsd-shaped view (unit last-dim stride)."""
    b, s, hd = t_bsh.shape
    return t_bsh.view(b, s, num_heads, hd // num_heads).transpose(1, 2)


def _project(x_bsh: torch.Tensor, p: dict[str, torch.Tensor], part: slice) -> torch.Tensor:
    """LN1 then the rows `part` of the fused QKV projection (q: [0, h), k and v: [h, 3h))."""
    h = x_bsh.shape[-1]
    a = F.layer_norm(x_bsh, (h,), p["ln1_weight"], p["ln1_bias"])
    return F.linear(a, p["w_qkv"][part])


def _kv(x_bsh: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int
        ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """k_bhsd, v_bhsd of the whole sequence: views of one (b, s, 2, heads, head_dim) tensor."""
    b, s, h = x_bsh.shape
    kv = _project(x_bsh, p, slice(h, 3 * h)).view(b, s, 2, num_heads, h // num_heads)
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    return k, v


def _layer_forward(x_bsh: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int,
                   plans: list[tuple[slice, TilePlan]], keep: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """(y_bsh, out_bhsd, lse_bhs) without autograd; out and lse only when `keep` (backward).
    q is made per query block; k and v for the whole sequence (every block attends to them)."""
    b, s, h = x_bsh.shape
    k, v = _kv(x_bsh, p, num_heads)
    scale = 1.0 / math.sqrt(h // num_heads)
    y_bsh = torch.empty_like(x_bsh)
    out = torch.empty_like(k) if keep else None
    lse = torch.empty(k.shape[:-1], dtype=acc_dtype(k.dtype), device=k.device) if keep else None
    for rows, plan in plans:
        q = _heads(_project(x_bsh[:, rows], p, slice(0, h)), num_heads)
        o, block_lse = blockwise_fwd(q, k, v, scale=scale, plan=plan)
        if keep:
            out[..., rows, :] = o
            lse[..., rows] = block_lse
        for sub in _chunks(rows):
            local = slice(sub.start - rows.start, sub.stop - rows.start)
            y_bsh[:, sub] = post_attention(x_bsh[:, sub], o[..., local, :], p)
        del q, o, block_lse
    return y_bsh, out, lse


def _attention_bwd_(grads: tuple[torch.Tensor, ...], d_attn: torch.Tensor, plan: TilePlan,
                    q, k, v, out, lse, scale: float) -> None:  # fmt: skip
    """Adds one query block's (dq, dk, dv) into `grads` in place: dq of the block's rows (q, out,
    lse, d_attn are the block's), dk and dv of the whole sequence."""
    dq, dk, dv = grads
    for i, r in enumerate(plan.rows):
        for pair in plan.pairs[i]:
            c = pair.cols
            dq_ij, dk_ij, dv_ij = block_bwd(
                d_attn[..., r, :], q[..., r, :], k[..., c, :], v[..., c, :], out[..., r, :],
                lse[..., r], scale=scale, causal=pair.kind == "causal",
                mask_tile=plan.tile(i, pair) if pair.kind == "partial" else None,
            )  # fmt: skip
            dq[..., r, :] += dq_ij
            dk[..., c, :] += dk_ij
            dv[..., c, :] += dv_ij


def _chunks(rows: slice) -> list[slice]:
    """`rows` in pieces of at most FFN_CHUNK_ROWS: the row-wise post-attention part (FFN
    activations of ffn_expansion·hidden per row, and their gradients in backward) is run a piece
    at a time, so its transient memory is independent of the attention block size."""
    return [slice(r, min(r + FFN_CHUNK_ROWS, rows.stop))
            for r in range(rows.start, rows.stop, FFN_CHUNK_ROWS)]  # fmt: skip


def _leaves(p: dict[str, torch.Tensor], names) -> dict[str, torch.Tensor]:
    return {n: p[n].detach().requires_grad_() for n in names}


def _merge(t_bhsd: torch.Tensor) -> torch.Tensor:
    """q_bhsd-shaped -> (batch, seq, heads·head_dim)."""
    b, _, s, _ = t_bhsd.shape
    return t_bhsd.transpose(1, 2).reshape(b, s, -1)


class _BPTLayer(torch.autograd.Function):
    """The whole layer as one node: saves x (the caller's), out and lse; see the module doc."""

    @staticmethod
    def forward(ctx, x_bsh, causal: bool, block_size: int, num_heads: int, names, *weights):
        p = dict(zip(names, weights, strict=True))
        plans = _plans(x_bsh.shape[1], block_size, causal, x_bsh.device)
        y_bsh, out, lse = _layer_forward(x_bsh, p, num_heads, plans, keep=True)
        ctx.save_for_backward(x_bsh, out, lse, *weights)
        ctx.settings = (causal, block_size, num_heads, names)
        return y_bsh

    @staticmethod
    @once_differentiable  # its backward is hand-written: no double backward (one clear error)
    def backward(ctx, dy_bsh):
        causal, block_size, num_heads, names = ctx.settings
        x, out, lse, *weights = ctx.saved_tensors
        p = dict(zip(names, weights, strict=True))
        (b, s, h), dtype = x.shape, x.dtype
        acc = acc_dtype(dtype)
        scale = 1.0 / math.sqrt(h // num_heads)
        k, v = (_unit(t) for t in _kv(x, p, num_heads))  # recomputed, not saved
        dkv = torch.zeros((b, s, 2, num_heads, h // num_heads), dtype=acc, device=x.device)
        dk, dv = dkv.permute(2, 0, 3, 1, 4).unbind(0)
        dx = torch.zeros((b, s, h), dtype=acc, device=x.device)
        dw = {n: torch.zeros_like(w, dtype=acc) for n, w in p.items()}
        post = [n for n in names if n not in _QKV_PARAMS]

        def add(grads, names_, offset: int = 0) -> None:
            for n, gw in zip(names_, grads[offset:], strict=True):
                dw[n] += gw

        for rows, plan in _plans(s, block_size, causal, x.device):
            d_attn = torch.empty_like(out[..., rows, :])
            for sub in _chunks(rows):  # the block's post-attention part, recomputed in chunks
                with torch.enable_grad():
                    x_r = x[:, sub].detach().requires_grad_()
                    a_r = out[..., sub, :].detach().requires_grad_()
                    w = _leaves(p, post)
                    y_r = post_attention(x_r, a_r, {**p, **w})
                    g = torch.autograd.grad(y_r, [x_r, a_r, *w.values()], dy_bsh[:, sub])
                del y_r
                dx[:, sub] += g[0]
                d_attn[..., sub.start - rows.start : sub.stop - rows.start, :] = g[1]
                add(g, post, 2)
                del g
            with torch.enable_grad():  # the block's q, recomputed; its dq is final after its keys
                x_r = x[:, rows].detach().requires_grad_()
                w = _leaves(p, _QKV_PARAMS)
                q_lin = _project(x_r, w, slice(0, h))
            q = _heads(q_lin.detach(), num_heads)
            dq = torch.zeros(q.shape, dtype=acc, device=x.device)
            _attention_bwd_((dq, dk, dv), d_attn, plan, q, k, v, out[..., rows, :],
                            lse[..., rows], scale)  # fmt: skip
            del d_attn, q
            g = torch.autograd.grad(q_lin, [x_r, *w.values()], _merge(dq).to(dtype))
            dx[:, rows] += g[0]
            add(g, _QKV_PARAMS, 1)
            del g, q_lin, dq
        del k, v
        for rows in query_blocks(s, block_size):  # k and v's share, row-wise: a block at a time
            with torch.enable_grad():
                x_r = x[:, rows].detach().requires_grad_()
                w = _leaves(p, _QKV_PARAMS)
                kv_lin = _project(x_r, w, slice(h, 3 * h))
                g = torch.autograd.grad(
                    kv_lin, [x_r, *w.values()], dkv[:, rows].reshape(b, -1, 2 * h).to(dtype)
                )
            dx[:, rows] += g[0]
            add(g, _QKV_PARAMS, 1)
            del g, kv_lin
        del dkv, dk, dv
        return (dx.to(dtype), None, None, None, None,
                *(dw[n].to(p[n].dtype) for n in names))  # fmt: skip


def bpt_layer(x_bsh: torch.Tensor, params: dict[str, torch.Tensor], *, causal: bool,
              block_size: int | None = None, num_heads: int) -> torch.Tensor:  # fmt: skip
    """The layer of harness/workloads/layer.py, blockwise; x_bsh (batch, seq, hidden) -> y_bsh."""
    block_size = block_size or DEFAULT_BLOCK_SIZE
    if block_size < 1:
        raise ValueError(f"block_size must be positive; got {block_size}")
    names = tuple(params)
    needs_grad = x_bsh.requires_grad or any(t.requires_grad for t in params.values())
    if torch.is_grad_enabled() and needs_grad:
        return _BPTLayer.apply(x_bsh, causal, block_size, num_heads, names, *params.values())
    plans = _plans(x_bsh.shape[1], block_size, causal, x_bsh.device)
    return _layer_forward(x_bsh, params, num_heads, plans, keep=False)[0]


BPT_LAYER = register(Impl(name="bpt_layer", label="BPT layer (blockwise attn + FFN)",
                          forward=bpt_layer, workload="layer", memory_exponent=1,
                          uses_block_size=True))  # fmt: skip
