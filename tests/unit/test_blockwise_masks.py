"""bpt and chunked against a float64 dense reference for every mask kind, GQA/MQA, Sq != Sk
(bottom-right causal and top-left), head_dim_v != head_dim and softmax_scale: outputs and
dq/dk/dv, odd lengths, block sizes that divide nothing; a bfloat16 spot check; and bpt's tile
plan skips empty tiles (a sparse pattern computes only the pairs it touches)."""

from __future__ import annotations

import math

import pytest
import torch

from harness.masks import MASK_KINDS, MaskSpec
from implementations import blockwise_ops
from implementations.blockwise_ops import block_bwd, block_fwd, tile_plan
from implementations.bpt import bpt_attention
from implementations.chunked import chunked_attention

FP32_TOL = 1e-5
IMPLS = {"bpt": bpt_attention, "chunked": chunked_attention}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _inputs(sq: int, sk: int, *, hq: int = 8, hkv: int = 2, d: int = 16, dv: int | None = None,
            dtype: torch.dtype = torch.float32, seed: int = 0):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    dv = dv or d
    q = torch.randn(2, hq, sq, d, generator=gen)
    k = torch.randn(2, hkv, sk, d, generator=gen)
    v = torch.randn(2, hkv, sk, dv, generator=gen)
    dout = torch.randn(2, hq, sq, dv, generator=gen)
    return [t.to(dtype) for t in (q, k, v)], dout.to(dtype)


def reference(qkv, dout, spec: MaskSpec, scale: float | None = None):
    """float64 dense attention: GQA by repeat_interleave, masked softmax, empty rows -> 0."""
    q, k, v = (t.detach().double().requires_grad_(True) for t in qkv)
    groups = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = spec.dense(q.shape[-2], k.shape[-2])
    s = (q @ kk.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    denom = p.sum(-1, keepdim=True)
    out = (p / torch.where(denom > 0, denom, torch.ones_like(denom))) @ vv
    grads = torch.autograd.grad(out, (q, k, v), dout.double())
    return out.detach(), grads


def _run(fn, qkv, dout, **kw):
    leaves = [t.clone().requires_grad_(True) for t in qkv]
    out = fn(*leaves, **kw)
    grads = torch.autograd.grad(out, leaves, dout)
    return out, grads


def _check(name: str, qkv, dout, spec: MaskSpec | None, *, causal: bool = False,
           block_size: int = 24, scale: float | None = None,
           tol: float = FP32_TOL) -> None:  # fmt: skip
    kw = {"causal": causal, "block_size": block_size}
    if spec is not None:
        kw["mask"] = spec
    if scale is not None:
        kw["softmax_scale"] = scale
    out, grads = _run(IMPLS[name], qkv, dout, **kw)
    full = (spec or MaskSpec()).with_causal(causal)
    ref, ref_grads = reference(qkv, dout, full, scale)
    assert out.shape == (*qkv[0].shape[:-1], qkv[2].shape[-1]) and out.dtype == qkv[0].dtype
    assert torch.isfinite(out).all()
    assert _rel(out, ref) <= tol, ("out", _rel(out, ref))
    for g_name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert g.shape == qkv["qkv".index(g_name)].shape
        assert torch.isfinite(g).all(), f"d{g_name}"
        assert _rel(g, r) <= tol, (f"d{g_name}", _rel(g, r))


SPARSE = {
    "sliding_window": MaskSpec(kind="sliding_window", window=(16, 0)),
    "prefix_lm": MaskSpec(kind="prefix_lm", prefix_len=21),
    "strided": MaskSpec(kind="strided", stride=7),
    "random_block": MaskSpec(kind="random_block", block=16, density=0.3, seed=3),
    "block_sparse": MaskSpec(kind="block_sparse", block=16, band=1),
    "global_local": MaskSpec(kind="global_local", window=(8, 8), num_global=5),
    "causal_top_left": MaskSpec(kind="causal_top_left"),
    "none": MaskSpec(),
}


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("hkv", [2, 1])
@pytest.mark.parametrize(("sq", "sk"), [(64, 256), (256, 64)])
@pytest.mark.parametrize("kind", ["causal", "causal_top_left"])
def test_gqa_and_unequal_lengths(name: str, hkv: int, sq: int, sk: int, kind: str) -> None:
    qkv, dout = _inputs(sq, sk, hkv=hkv)
    if kind == "causal":
        _check(name, qkv, dout, None, causal=True, block_size=24)
    else:
        _check(name, qkv, dout, MaskSpec(kind="causal_top_left"), block_size=24)


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", list(SPARSE))
def test_every_mask_kind(name: str, kind: str, causal: bool) -> None:
    qkv, dout = _inputs(97, 97, hkv=2)
    _check(name, qkv, dout, SPARSE[kind], causal=causal, block_size=20)


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("causal", [False, True])
def test_document_mask(name: str, causal: bool) -> None:
    qkv, dout = _inputs(97, 97, hkv=1)
    spec = MaskSpec(kind="document", doc_lens=(30, 50, 17))
    _check(name, qkv, dout, spec, causal=causal, block_size=16)


@pytest.mark.parametrize("name", list(IMPLS))
def test_sliding_window_unequal_lengths(name: str) -> None:
    """bottom-right sliding window with Sq < Sk (a KV cache), keys not a multiple of blocks."""
    qkv, dout = _inputs(45, 131, hkv=2)
    _check(name, qkv, dout, SPARSE["sliding_window"], block_size=16)


@pytest.mark.parametrize("name", list(IMPLS))
def test_head_dim_v_and_softmax_scale(name: str) -> None:
    qkv, dout = _inputs(77, 77, hkv=2, d=32, dv=48)
    _check(name, qkv, dout, None, causal=True, block_size=20, scale=0.3)
    _check(name, qkv, dout, SPARSE["strided"], block_size=32, scale=0.3)
    qkv, dout = _inputs(64, 64, hkv=8, d=32)
    _check(name, qkv, dout, SPARSE["global_local"], block_size=20, scale=0.3)


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("block_size", [11, 33, 97, 4096])
def test_block_sizes_that_divide_nothing(name: str, block_size: int) -> None:
    qkv, dout = _inputs(97, 97, hkv=1)
    _check(name, qkv, dout, SPARSE["random_block"], block_size=block_size)
    _check(name, qkv, dout, None, causal=True, block_size=block_size)


@pytest.mark.parametrize("name", list(IMPLS))
def test_bfloat16_spot_check(name: str) -> None:
    """bf16 inputs (float32 scores inside): outputs and gradients within 1e-2 relative L2 of
    float64 on the same inputs (measured ~2e-3 to 3.5e-3: the bf16 results' own rounding)."""
    qkv, dout = _inputs(97, 131, hkv=2, dtype=torch.bfloat16)
    _check(name, qkv, dout, SPARSE["sliding_window"], causal=True, block_size=32, tol=1e-2)


@pytest.mark.parametrize("name", list(IMPLS))
def test_rows_without_keys_are_zero_with_zero_gradients(name: str) -> None:
    """Sq > Sk causal: the first Sq - Sk rows see no key (bottom-right): out 0, dq 0, no NaN."""
    qkv, dout = _inputs(100, 30, hkv=2)
    out, grads = _run(IMPLS[name], qkv, dout, causal=True, block_size=16)
    assert torch.isfinite(out).all() and (out[..., :70, :] == 0).all()
    assert (grads[0][..., :70, :] == 0).all()


def test_bpt_query_offset_need_not_be_a_block_multiple() -> None:
    qkv, _ = _inputs(96, 96, hkv=2)
    q, k, v = qkv
    full = bpt_attention(q, k, v, causal=True, block_size=32)
    part = bpt_attention(q[..., 50:, :], k, v, causal=True, block_size=32, q_offset=50)
    torch.testing.assert_close(part, full[..., 50:, :])
    plan = tile_plan(MaskSpec(kind="causal"), 46, 96, 32, 32, q_offset=50)
    assert plan.count("partial") == 0  # the shifted key grid keeps the diagonal tiles square


def test_block_sparse_computes_only_the_diagonal_blocks(monkeypatch) -> None:
    """band 0 at the bpt block size: one pair per query block, all full, forward and backward."""
    spec = MaskSpec(kind="block_sparse", block=32, band=0)
    plan = tile_plan(spec, 256, 256, 32, 32)
    assert plan.num_pairs == 8 and plan.count("full") == 8
    calls = {"fwd": 0, "bwd": 0}

    def counting(key, fn):
        def wrapped(*args, **kw):
            calls[key] += 1
            return fn(*args, **kw)

        return wrapped

    import implementations.bpt as bpt

    monkeypatch.setattr(bpt, "block_fwd", counting("fwd", block_fwd))
    monkeypatch.setattr(bpt, "block_bwd", counting("bwd", block_bwd))
    qkv, dout = _inputs(256, 256, hkv=2)
    _check("bpt", qkv, dout, spec, block_size=32)
    assert calls == {"fwd": 8, "bwd": 8}


def test_sparse_plans_cost_in_proportion_to_their_tiles() -> None:
    s, b = 1024, 64
    n = s // b
    causal = tile_plan(MaskSpec(kind="causal"), s, s, b, b)
    assert causal.num_pairs == n * (n + 1) // 2 and causal.count("causal") == n
    window = tile_plan(MaskSpec(kind="sliding_window", window=(128, 0)), s, s, b, b)
    assert window.num_pairs <= 4 * n  # a band of 3 tiles a row (and the first rows fewer)
    doc = tile_plan(MaskSpec(kind="document", doc_lens=(512, 512)), s, s, b, b)
    assert doc.num_pairs == 2 * (n // 2) ** 2 and doc.count("partial") == 0
    # distinct partial tiles are deduplicated: a band's tiles repeat along the diagonal
    assert window.tiles is not None and len(window.tiles) <= 4


def test_plan_is_cached_and_every_kind_classifies() -> None:
    for kind in MASK_KINDS:
        extra = {"causal": MaskSpec(kind="causal"),
                 "document": MaskSpec(kind="document", num_docs=3)}  # fmt: skip
        spec = extra.get(kind) or SPARSE.get(kind)
        assert spec is not None, kind
        a = tile_plan(spec, 97, 97, 20, 20)
        assert a is tile_plan(spec, 97, 97, 20, 20)
        dense = spec.dense(97, 97)
        for i, rows in enumerate(a.rows):
            covered = torch.zeros(97, dtype=torch.bool)
            for pair in a.pairs[i]:
                covered[pair.cols] = True
                tile = a.tile(i, pair)
                want = dense[rows, pair.cols]
                assert torch.equal(want, torch.ones_like(want) if tile is None else tile)
            assert not dense[rows][:, ~covered].any()  # what the plan skips is masked


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_block_ops_mask_tile_with_fully_masked_rows(kernel: str) -> None:
    """block_fwd/block_bwd with a tile mask and GQA: masked rows lse -inf, out 0, grads 0."""
    qkv, dout = _inputs(24, 40, hkv=2)
    q, k, v = qkv
    gen = torch.Generator().manual_seed(1)
    tile = torch.rand(24, 40, generator=gen) < 0.4
    tile[5] = False
    out, lse = block_fwd(q, k, v, scale=0.3, causal=False, kernel=kernel, mask_tile=tile)
    spec_ref = reference(qkv, dout, _TileSpec(tile), 0.3)
    assert _rel(out, spec_ref[0]) <= FP32_TOL
    assert torch.isneginf(lse[..., 5]).all() and (out[..., 5, :] == 0).all()
    grads = block_bwd(dout, q, k, v, out, lse, scale=0.3, causal=False, kernel=kernel,
                      mask_tile=tile)  # fmt: skip
    for g, r in zip(grads, spec_ref[1], strict=True):
        assert torch.isfinite(g).all() and _rel(g, r) <= FP32_TOL
    assert (grads[0][..., 5, :] == 0).all()


class _TileSpec:
    """A stand-in MaskSpec whose dense mask is a given tile (for the block-level test)."""

    def __init__(self, tile: torch.Tensor) -> None:
        self._tile = tile

    def dense(self, sq: int, sk: int) -> torch.Tensor:
        return self._tile


def test_tile_cache_budget_falls_back_to_recomputing(monkeypatch) -> None:
    monkeypatch.setattr(blockwise_ops, "TILE_CACHE_BYTES", 10)
    blockwise_ops._plan.cache_clear()
    spec = MaskSpec(kind="strided", stride=5)
    plan = tile_plan(spec, 60, 60, 16, 16)
    assert plan.tiles is None and plan.count("partial") > 0
    qkv, dout = _inputs(60, 60, hkv=2)
    _check("bpt", qkv, dout, spec, block_size=16)
    blockwise_ops._plan.cache_clear()
