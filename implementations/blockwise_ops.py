"""Per-block attention with log-sum-exp, the log-sum-exp merge, and the tile plan of a mask: the
pieces of blockwise kernels.

Shared by the Blockwise Parallel Transformer (arXiv 2305.19370), Rabe & Staats' chunked attention
(arXiv 2112.05682, the plan only) and ring attention (arXiv 2310.01889): a long attention is a loop
over (query block, key block) pairs; each pair gives a normalized partial output and the
log-sum-exp (lse) of its scores, and partial results of one query block combine exactly by `merge`.
The backward of a pair is FlashAttention-2's (arXiv 2307.08691): given the *final* (merged) output
and lse of the rows, P = exp(S - lse) is the pair's slice of the full softmax and D =
rowsum(dout * out) is the full row's, so per-pair gradients simply add up.

Kernels: torch's fused per-block ops that return lse (CPU flash; CUDA flash for float16/bfloat16,
CUDA memory-efficient otherwise), or a readable pure-torch path (float64, `kernel="torch"`,
head_dim_v != head_dim, and masked tiles on CUDA). The causal mask of a block is aligned top-left:
query i sees keys j <= i, counted from the starts of the two blocks (a diagonal block of a
blockwise loop). Fused kernels are used for causal blocks only when they are square, where top-left
and bottom-right alignments agree. An explicit tile mask (`mask_tile`, bool (sq, sk), True =
attend) goes to the CPU flash kernel as a float `attn_mask` (0 / -inf, the query's dtype): that
kernel gives a fully masked row out 0 but lse 0, so such rows get lse -inf here, and in backward a
-inf lse is handed to it as 0 (its P there is exp(-inf) = 0 either way); elsewhere the torch path.
A fully masked row has out 0, lse -inf and zero gradients on every path.

GQA/MQA: k and v may have fewer heads than q (Hq a multiple of Hkv; query head h uses kv head
h // (Hq // Hkv), flash-attn's grouping). The torch path and the fused kernels on non-causal tiles
fold each group's queries into one sequence, q (B, Hq, sq, D) -> (B, Hkv, G·sq, D), so k and v are
never copied and dk, dv come out summed over the group; causal fused tiles repeat the block's k
and v per query head and sum dk, dv over the group afterwards.

Strides: the fused kernels index the head dim as if its stride were 1; torch's CPU flash kernel
silently reads the wrong elements otherwise (relative error ~1.4), so every operand handed to a
fused kernel gets a unit last-dim stride first (`unit_last_stride`, a no-op when it has one).
Precision: scores are formed and accumulated in float32 whatever the input dtype (the fused
kernels do so inside, the torch path upcasts), so large logits cannot overflow float16.
Known limit (FlashAttention-2's too): the backward's D = rowsum(dout * out) and the recomputed
rowsum of P * dP agree only to rounding, so where the softmax saturates (scaled logits thousands
apart, P one-hot, the true dq and dk ~0) dq and dk are that rounding noise: relative errors of
O(1) in every dtype (q, k = 60 × randn, head_dim 64: dq 1.6 in float16, 8.9 in float32; dv and
the output unaffected): float32 rows there are above the 3x-naive rule (naive: 0.17), float16
rows, where naive overflows, are not gated on dq, dk (`harness.measure.tolerance`).

Tile plan (`tile_plan`): for a mask (`harness.masks.MaskSpec`) and block sizes, every (query block,
key block) pair is classified once — empty (never computed, forward or backward), full (fused, no
mask), lower-triangular on a square tile (fused, is_causal) or partial (a tile mask) — by evaluating
the mask one query-block row at a time, in column chunks (never S×S at once), and cached per
(mask, shapes, blocks, offset, device). Distinct partial tiles are kept (deduplicated: a banded
pattern has O(S / block) of them) up to TILE_CACHE_BYTES per plan, else recomputed per use.

Legend: q_bhsd (batch, heads, seq, head_dim); v_bhsd's last dim is head_dim_v; lse_bhs (batch,
heads, seq) in float32, float64 for float64 inputs; a merged output is kept in the lse's dtype
until it is cast once at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

import torch

from harness.masks import MaskSpec

Kernel = Literal["auto", "torch"]
_LOW = (torch.float16, torch.bfloat16)
_aten = torch.ops.aten


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of statistics and accumulators for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if its last dim has stride 1 (or size 1), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def kv_groups(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor) -> int:
    """G = Hq // Hkv, the query heads per kv head; ValueError when Hkv does not divide Hq."""
    hq, hkv = q_bhsd.shape[1], k_bhsd.shape[1]
    if hkv < 1 or hq % hkv:
        raise ValueError(f"k/v heads {hkv} must divide q heads {hq}")
    return hq // hkv


def fused_kind(q_bhsd: torch.Tensor, sq: int, sk: int, causal: bool, *,
               dim_v: int | None = None, masked: bool = False) -> str | None:  # fmt: skip
    """Which fused op serves this block, or None for the pure-torch path."""
    if causal and sq != sk:
        return None
    if dim_v is not None and dim_v != q_bhsd.shape[-1]:
        return None  # the fused kernels here need head_dim_v == head_dim
    if q_bhsd.device.type == "cpu":
        return "cpu_flash" if q_bhsd.dtype in (torch.float32, *_LOW) else None
    if q_bhsd.device.type == "cuda" and not masked:
        head_dim = q_bhsd.shape[-1]
        if q_bhsd.dtype in _LOW and head_dim % 8 == 0 and head_dim <= 256:
            return "cuda_flash"
        if q_bhsd.dtype == torch.float32:
            return "cuda_efficient"
    return None


# ---- masks and head groups -----------------------------------------------------------------------


@lru_cache(maxsize=16)
def _tril(sq: int, sk: int, device: torch.device) -> torch.Tensor:
    """True where key j is not in the future of query i (top-left aligned)."""
    return torch.ones(sq, sk, dtype=torch.bool, device=device).tril()


def _allowed(sq: int, sk: int, causal: bool, mask_tile: torch.Tensor | None,
             device: torch.device) -> torch.Tensor | None:  # fmt: skip
    """The (sq, sk) bool tile of attended pairs, None when every pair attends."""
    if mask_tile is not None and tuple(mask_tile.shape) != (sq, sk):
        raise ValueError(f"mask_tile must be ({sq}, {sk}); got {tuple(mask_tile.shape)}")
    if not causal:
        return mask_tile
    tril = _tril(sq, sk, device)
    return tril if mask_tile is None else tril & mask_tile


def _fold(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hq, s, ...) -> (B, Hkv, G·s, ...): each group's rows as one sequence."""
    if groups == 1:
        return t
    return t.unflatten(1, (t.shape[1] // groups, groups)).flatten(2, 3)


def _unfold(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, G·s, ...) -> (B, Hq, s, ...), the inverse of `_fold`."""
    if groups == 1:
        return t
    return t.unflatten(2, (groups, t.shape[2] // groups)).flatten(1, 2)


def _float_mask(allowed: torch.Tensor, dtype: torch.dtype, groups: int) -> torch.Tensor:
    """0 where allowed, -inf elsewhere, rows repeated per folded group."""
    fm = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    fm.masked_fill_(~allowed, float("-inf"))
    return fm.repeat(groups, 1) if groups > 1 else fm


# ---- forward -------------------------------------------------------------------------------------


def torch_block_fwd(q_bhsd, k_bhsd, v_bhsd, *, scale: float, causal: bool,
                    mask_tile: torch.Tensor | None = None):  # fmt: skip
    """The readable reference: scores, lse and output in the accumulator dtype."""
    acc = acc_dtype(q_bhsd.dtype)
    groups = kv_groups(q_bhsd, k_bhsd)
    sq, sk = q_bhsd.shape[-2], k_bhsd.shape[-2]
    q = _fold(q_bhsd.to(acc), groups)
    s = (q @ k_bhsd.to(acc).transpose(-1, -2)) * scale  # (B, Hkv, G·sq, sk)
    allowed = _allowed(sq, sk, causal, mask_tile, s.device)
    if allowed is not None:
        s.unflatten(2, (groups, sq)).masked_fill_(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(s - safe[..., None])  # fully masked rows give p = 0 and out = 0
    out = p @ v_bhsd.to(acc)
    return _unfold(out, groups).to(q_bhsd.dtype), _unfold(lse, groups)


def _fused_fwd(kind: str, q, k, v, *, scale: float, causal: bool, attn_mask):
    if kind == "cpu_flash":
        return _aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=attn_mask, scale=scale
        )
    if kind == "cuda_flash":
        out = _aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return out[0], out[1]
    out, lse = _aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale
    )[:2]
    return out, lse[..., : q.shape[-2]]  # the kernel pads lse's seq dim to a multiple of 32


def _dispatch(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, causal: bool,
              mask_tile: torch.Tensor | None, kernel: Kernel,
              ) -> tuple[int, str | None, bool, torch.Tensor | None]:  # fmt: skip
    """(GQA groups, fused kernel or None, causal, mask) of one block, forward and backward alike:
    a causal flag on top of a tile mask is folded into the mask."""
    sq, sk = q_bhsd.shape[-2], k_bhsd.shape[-2]
    groups = kv_groups(q_bhsd, k_bhsd)
    if mask_tile is not None and causal:
        mask_tile, causal = _allowed(sq, sk, True, mask_tile, mask_tile.device), False
    kind = None
    if kernel == "auto":
        kind = fused_kind(q_bhsd, sq, sk, causal, dim_v=v_bhsd.shape[-1],
                          masked=mask_tile is not None)  # fmt: skip
    return groups, kind, causal, mask_tile


def block_fwd(
    q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, *, scale: float,
    causal: bool, kernel: Kernel = "auto", mask_tile: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One block's attention: (out_bhsd in the input dtype, lse_bhs in the accumulator dtype).

    k, v may have fewer heads than q (GQA); `mask_tile` (sq, sk) bool, True = attend, is applied
    on top of `causal` (top-left).
    """
    groups, kind, causal, mask_tile = _dispatch(q_bhsd, k_bhsd, v_bhsd, causal, mask_tile, kernel)
    if kind is None:
        return torch_block_fwd(q_bhsd, k_bhsd, v_bhsd, scale=scale, causal=causal,
                               mask_tile=mask_tile)  # fmt: skip
    fold = groups if not causal else 1
    grouped = causal and groups > 1 and kind == "cpu_flash"
    if grouped:  # a group's heads as a batch of views of one k, v head: no copy
        q, k, v = _group_batch(q_bhsd, k_bhsd, v_bhsd, groups)
    else:
        if causal and groups > 1:  # rows of a causal tile differ per position: repeat k, v
            k_bhsd, v_bhsd = (t.repeat_interleave(groups, dim=1) for t in (k_bhsd, v_bhsd))
        q = unit_last_stride(_fold(q_bhsd, fold))
        k, v = unit_last_stride(k_bhsd), unit_last_stride(v_bhsd)
    attn_mask = None if mask_tile is None else _float_mask(mask_tile, q.dtype, fold)
    out, lse = _fused_fwd(kind, q, k, v, scale=scale, causal=causal, attn_mask=attn_mask)
    if grouped:
        out, lse = out.flatten(0, 1).unflatten(0, q_bhsd.shape[:2]), lse.reshape(q_bhsd.shape[:3])
    out, lse = _unfold(out, fold), _unfold(lse, fold)
    if mask_tile is not None:  # the kernel gives a fully masked row lse 0: make it -inf
        lse = lse.masked_fill(~mask_tile.any(-1), float("-inf"))
    return out, lse


# ---- backward ------------------------------------------------------------------------------------


def torch_block_bwd(dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs, *, scale: float,
                    causal: bool, mask_tile: torch.Tensor | None = None):  # fmt: skip
    """FlashAttention-2's backward of one block, given the rows' final out and lse."""
    acc = acc_dtype(q_bhsd.dtype)
    groups = kv_groups(q_bhsd, k_bhsd)
    sq, sk = q_bhsd.shape[-2], k_bhsd.shape[-2]
    q, dout, out = (_fold(t.to(acc), groups) for t in (q_bhsd, dout_bhsd, out_bhsd))
    k, v = k_bhsd.to(acc), v_bhsd.to(acc)
    s = (q @ k.transpose(-1, -2)) * scale
    allowed = _allowed(sq, sk, causal, mask_tile, s.device)
    if allowed is not None:
        s.unflatten(2, (groups, sq)).masked_fill_(~allowed, float("-inf"))
    lse = _fold(lse_bhs.to(acc), groups)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(s - safe[..., None])
    dv = p.transpose(-1, -2) @ dout  # the folded rows sum over the group
    d_row = (dout * out).sum(-1, keepdim=True)
    ds = p * (dout @ v.transpose(-1, -2) - d_row)
    dq = (ds @ k) * scale
    dk = (ds.transpose(-1, -2) @ q) * scale
    return _unfold(dq, groups).to(q_bhsd.dtype), dk.to(k_bhsd.dtype), dv.to(v_bhsd.dtype)


def _fused_bwd(kind: str, dout, q, k, v, out, lse, *, scale: float, causal: bool, attn_mask):
    if kind == "cpu_flash":
        return _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, causal, attn_mask=attn_mask, scale=scale
        )
    seed = torch.zeros((), dtype=torch.int64, device=q.device)
    if kind == "cuda_flash":
        # cum_seq_q/k as the dense forward returns them: None (an undefined tensor); any defined
        # tensor there selects the varlen kernel, which wants int32 offsets
        return _aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse.contiguous(), None, None, q.shape[-2], k.shape[-2], 0.0,
            causal, seed, seed, scale=scale,
        )  # fmt: skip
    grads = _aten._scaled_dot_product_efficient_attention_backward(
        dout, q, k, v, None, out, lse.contiguous(), seed, seed, 0.0, [True, True, True, False],
        causal, scale=scale,
    )  # fmt: skip
    return grads[0], grads[1], grads[2]


def block_bwd(
    dout_bhsd: torch.Tensor, q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor,
    out_bhsd: torch.Tensor, lse_bhs: torch.Tensor, *, scale: float, causal: bool,
    kernel: Kernel = "auto", mask_tile: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Gradients (dq, dk, dv) of one block; out and lse are the rows' final (merged) values.

    The fused kernels recompute D = rowsum(dout * out) from the `out` they are given, so passing the
    merged out and lse makes each block's gradients its exact share of the full ones. dk, dv have
    k's and v's heads (summed over each GQA group).
    """
    groups, kind, causal, mask_tile = _dispatch(q_bhsd, k_bhsd, v_bhsd, causal, mask_tile, kernel)
    if kind is None:
        return torch_block_bwd(dout_bhsd, q_bhsd, k_bhsd, v_bhsd, out_bhsd, lse_bhs,
                               scale=scale, causal=causal, mask_tile=mask_tile)  # fmt: skip
    fold = groups if not causal else 1
    grouped = causal and groups > 1 and kind == "cpu_flash"
    if grouped:  # as in block_fwd: a group's heads batched over views of one k, v head
        q, k, v = _group_batch(q_bhsd, k_bhsd, v_bhsd, groups)
        dout, out = (unit_last_stride(_heads_to_batch(t, groups)) for t in (dout_bhsd, out_bhsd))
        lse_bhs = lse_bhs.reshape(q.shape[:3])
    else:
        k, v = k_bhsd, v_bhsd
        if causal and groups > 1:
            k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        dout, q, out = (unit_last_stride(_fold(t, fold)) for t in (dout_bhsd, q_bhsd, out_bhsd))
        k, v = unit_last_stride(k), unit_last_stride(v)
    lse = lse_bhs
    attn_mask = None
    if mask_tile is not None:
        attn_mask = _float_mask(mask_tile, q.dtype, fold)
        lse = lse.masked_fill(torch.isneginf(lse), 0.0)  # no key anywhere: P = exp(-inf) = 0
    lse = _fold(lse, fold)
    dq, dk, dv = _fused_bwd(kind, dout, q, k, v, out, lse, scale=scale, causal=causal,
                            attn_mask=attn_mask)  # fmt: skip
    if grouped:  # (b·hk, groups, s, d) back to heads; dk, dv summed over each group
        dq = dq.flatten(0, 1).unflatten(0, q_bhsd.shape[:2])
        dk, dv = (t.sum(1).unflatten(0, k_bhsd.shape[:2]) for t in (dk, dv))
        return dq, dk, dv
    dq = _unfold(dq, fold)
    if causal and groups > 1:
        dk, dv = (t.unflatten(1, (t.shape[1] // groups, groups)).sum(2) for t in (dk, dv))
    return dq, dk, dv


def _heads_to_batch(t_bhsd: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, hk·groups, s, d) → (b·hk, groups, s, d): each kv head's query heads as a batch entry."""
    b, h = t_bhsd.shape[:2]
    return t_bhsd.reshape(b * (h // groups), groups, *t_bhsd.shape[2:])


def _group_batch(q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, groups: int):
    """q as (b·hk, groups, sq, d) and k, v as stride-0 views (b·hk, groups, sk, d) of their own
    heads, for a causal GQA tile: the fused CPU kernel takes the zero head stride, so k and v are
    never repeated (repeat_interleave copied them `groups` times per tile)."""
    q = unit_last_stride(_heads_to_batch(q_bhsd, groups))
    k, v = (unit_last_stride(t).flatten(0, 1)[:, None].expand(-1, groups, -1, -1)
            for t in (k_bhsd, v_bhsd))  # fmt: skip
    return q, k, v


# ---- merge ---------------------------------------------------------------------------------------


def merge(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two normalized partial results of the same rows over disjoint key sets.

    out = out_a + w_b (out_b - out_a) with w_b = exp(lse_b - lse), lse = logaddexp(lse_a, lse_b):
    w_b lies in [0, 1], and rows masked in both parts (lse -inf twice) give 0 instead of NaN.
    The result is in the lse's dtype so a chain of merges never rounds to low precision.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    w_b = torch.exp(lse_b - lse).nan_to_num_(0.0)[..., None]
    out_a = out_a.to(lse.dtype)
    return torch.lerp(out_a, out_b.to(lse.dtype), w_b), lse


def merge_(
    out_acc: torch.Tensor, lse_acc: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> None:
    """In-place `merge` into an accumulator (out_acc in the lse's dtype): the hot-loop form."""
    lse = torch.logaddexp(lse_acc, lse_b)
    w_b = torch.exp(lse_b - lse).nan_to_num_(0.0)[..., None]
    out_acc.lerp_(out_b.to(out_acc.dtype), w_b)
    lse_acc.copy_(lse)


# ---- tile plan -----------------------------------------------------------------------------------

TILE_CACHE_BYTES = 16 * 2**20  # distinct partial tiles kept per plan (bool, one byte a pair)
_EVAL_ELEMENTS = 2**20  # pairs evaluated at once while classifying
TileKind = Literal["full", "causal", "partial"]


class Pair(NamedTuple):
    """One non-empty (query block, key block) pair of a plan."""

    cols: slice
    kind: TileKind  # full: no mask; causal: square, exactly lower-triangular; partial: a tile
    tile: int  # the index of a partial tile in TilePlan.tiles, -1 otherwise


@dataclass(frozen=True, eq=False)
class TilePlan:
    """The non-empty key blocks of every query block. Query row r is the mask's row
    `row_base + r` of a (mask_sq, mask_sk) mask (`MaskSpec.tile`)."""

    spec: MaskSpec
    mask_sq: int
    mask_sk: int
    row_base: int
    device: str
    rows: tuple[slice, ...]
    pairs: tuple[tuple[Pair, ...], ...]
    tiles: tuple[torch.Tensor, ...] | None  # distinct partial tiles; None: over the budget

    @property
    def num_pairs(self) -> int:
        return sum(len(p) for p in self.pairs)

    def count(self, kind: TileKind) -> int:
        return sum(pair.kind == kind for pairs in self.pairs for pair in pairs)

    def tile(self, i: int, pair: Pair) -> torch.Tensor | None:
        """The bool tile of query block i × `pair` (None for a full pair; tril for causal)."""
        if pair.kind == "full":
            return None
        rows = self.rows[i]
        if pair.kind == "causal":
            n = rows.stop - rows.start
            return _tril(n, n, torch.device(self.device))
        if self.tiles is not None and pair.tile >= 0:
            return self.tiles[pair.tile]
        r = torch.arange(rows.start, rows.stop, device=self.device) + self.row_base
        c = torch.arange(pair.cols.start, pair.cols.stop, device=self.device)
        return self.spec.tile(r, c, self.mask_sq, self.mask_sk)


def resolve_mask(causal: bool, mask: MaskSpec | None) -> MaskSpec:
    """The one mask of a call: `mask` (plus causal when `causal`), else causal or none."""
    if mask is None:
        return MaskSpec(kind="causal") if causal else MaskSpec()
    return mask.with_causal(causal)


def tile_plan(
    spec: MaskSpec, seqlen_q: int, seqlen_k: int, block_q: int, block_k: int, *,
    q_offset: int | None = None, device: str | torch.device = "cpu",
) -> TilePlan:  # fmt: skip
    """The classified (query block, key block) pairs of `spec` (cached).

    q_offset None: the queries are the mask's seqlen_q rows (bottom-right aligned against the
    keys); an int: query row r sits at key position q_offset + r (rows of a square seqlen_k mask).
    """
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_size must be positive; got {min(block_q, block_k)}")
    spec = spec.normalized()
    spec.check_params()
    if q_offset is None:
        mask_sq, row_base = seqlen_q, 0
    else:
        mask_sq, row_base = seqlen_k, q_offset
        if spec.kind in ("document", "random_block") and not (
            q_offset >= 0 and q_offset + seqlen_q <= seqlen_k
        ):
            raise ValueError(f"mask {spec.kind}: q_offset {q_offset} puts queries outside the "
                             f"{seqlen_k} keys")  # fmt: skip
    reasons = spec.shape_reasons(mask_sq, seqlen_k)
    if reasons:
        raise ValueError("; ".join(reasons))
    return _plan(spec, seqlen_q, seqlen_k, block_q, block_k, mask_sq, row_base,
                 str(torch.device(device)))  # fmt: skip


def _key_slices(seqlen_k: int, block_k: int, shift: int) -> list[slice]:
    starts = ([0] if shift else []) + list(range(shift, seqlen_k, block_k))
    return [slice(a, min(b, seqlen_k)) for a, b in zip(starts, [*starts[1:], seqlen_k],
                                                       strict=True) if a < seqlen_k]  # fmt: skip


@lru_cache(maxsize=4)  # a sweep runs case by case: a few plans are plenty, and their tiles
def _plan(spec: MaskSpec, sq: int, sk: int, block_q: int, block_k: int, mask_sq: int,
          row_base: int, device: str) -> TilePlan:  # fmt: skip
    dev = torch.device(device)
    top_left = spec.kind == "causal_top_left"
    p0 = row_base + (0 if top_left else sk - mask_sq)  # the key position of query row 0
    # a causal pattern's diagonal tiles are square when the key grid starts at p0's phase
    aligned = spec.is_causal and spec.kind not in ("random_block", "block_sparse")
    shift = p0 % block_k if aligned and block_q == block_k else 0
    row_slices = [slice(a, min(a + block_q, sq)) for a in range(0, sq, block_q)]
    col_slices = _key_slices(sk, block_k, shift)
    tiles: list[torch.Tensor] | None = []
    seen: dict[tuple, int] = {}
    stored = 0

    def store(sub: torch.Tensor) -> int:
        nonlocal tiles, stored
        if tiles is None:
            return -1
        data = sub.contiguous().cpu().numpy().tobytes()
        key = (tuple(sub.shape), hashlib.blake2b(data, digest_size=16).digest())
        if key not in seen:
            stored += sub.numel()
            if stored > TILE_CACHE_BYTES:
                tiles = None
                return -1
            seen[key] = len(tiles)
            tiles.append(sub.clone())
        return seen[key]

    def classify(cols: slice, sub: torch.Tensor | None, n_r: int, count: int | None,
                 r_idx: torch.Tensor) -> Pair | None:  # fmt: skip
        """`count` attended pairs in the tile `sub` (None: evaluate it if needed)."""
        n_c = cols.stop - cols.start
        if count == 0:
            return None
        if count == n_r * n_c:
            return Pair(cols, "full", -1)
        if sub is None:
            sub = spec.tile(r_idx, torch.arange(cols.start, cols.stop, device=dev), mask_sq, sk)
        if n_r == n_c and count == n_r * (n_r + 1) // 2 and torch.equal(sub, _tril(n_r, n_r, dev)):
            return Pair(cols, "causal", -1)
        return Pair(cols, "partial", store(sub))

    pairs = []
    for rows in row_slices:
        n_r = rows.stop - rows.start
        r_idx = torch.arange(rows.start, rows.stop, device=dev) + row_base
        row_pairs: list[Pair | None] = []
        if spec.kind in ("none", "causal", "causal_top_left"):  # by interval arithmetic
            first, last = p0 + rows.start, p0 + rows.stop - 1  # the rows' key positions
            for cols in col_slices:
                n_c = cols.stop - cols.start
                if spec.kind == "none" or cols.stop - 1 <= first:
                    row_pairs.append(Pair(cols, "full", -1))
                elif cols.start > last:
                    continue  # every key is in the future of every row
                elif n_r == n_c and cols.start == first:
                    row_pairs.append(Pair(cols, "causal", -1))
                else:
                    row_pairs.append(classify(cols, None, n_r, None, r_idx))
            pairs.append(tuple(p for p in row_pairs if p is not None))
            continue
        j = 0
        while j < len(col_slices):
            end, width = j + 1, col_slices[j].stop - col_slices[j].start
            while end < len(col_slices):
                w = col_slices[end].stop - col_slices[end].start
                if (width + w) * n_r > _EVAL_ELEMENTS:
                    break
                end, width = end + 1, width + w
            lo, hi = col_slices[j].start, col_slices[end - 1].stop
            t = spec.tile(r_idx, torch.arange(lo, hi, device=dev), mask_sq, sk)
            csum = torch.nn.functional.pad(t.sum(0).cumsum(0), (1, 0)).tolist()
            for cols in col_slices[j:end]:
                a, b = cols.start - lo, cols.stop - lo
                row_pairs.append(classify(cols, t[:, a:b], n_r, int(csum[b] - csum[a]), r_idx))
            j = end
        pairs.append(tuple(p for p in row_pairs if p is not None))
    return TilePlan(spec=spec, mask_sq=mask_sq, mask_sk=sk, row_base=row_base, device=device,
                    rows=tuple(row_slices), pairs=tuple(pairs),
                    tiles=None if tiles is None else tuple(tiles))  # fmt: skip
