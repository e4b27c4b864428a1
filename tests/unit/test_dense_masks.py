"""naive, SDPA (math, CPU flash) and FlexAttention on every mask kind, GQA, Sq != Sk, Dv != D and
softmax_scale, against a float64 dense reference written here.

The reference: the (Sq, Sk) mask of `MaskSpec.dense`, k and v repeated per query head
(`repeat_interleave`: query head h uses kv head h // (Hq // Hkv)), a masked softmax, and 0 for
rows without any key. Outputs and dq, dk, dv within 1e-5 relative L2 in float32; flex forward
only (torch 2.13 has no flex backward on CPU), one compile per mask kind with the features folded
into those few cases (each compile costs seconds on CPU).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from harness.case import Case
from harness.masks import MASK_KINDS, MaskSpec
from harness.measure.error import rel_l2
from harness.registry import REGISTRY, declared_reasons

TOL = 1e-5
EAGER = ("naive", "sdpa_math", "sdpa_flash")


def _case(sq: int, sk: int, *, hkv: int = 8, d: int = 32, dv: int | None = None,
          scale: float | None = None, causal: bool = False, **mask: Any) -> Case:  # fmt: skip
    return Case(seq_len=sk, seqlen_q=sq, seqlen_k=sk, num_heads=8, num_kv_heads=hkv, head_dim=d,
                head_dim_v=dv, softmax_scale=scale, causal=causal,
                mask=MaskSpec(**mask) if mask else MaskSpec())  # fmt: skip


# id -> case; every kind of harness.masks, each feature, both orders of Sq and Sk.
CASES: dict[str, Case] = {
    "causal-q64-k256-gqa4": _case(64, 256, hkv=2, causal=True),
    "causal-q256-k64-mqa": _case(256, 64, hkv=1, causal=True),
    "topleft-q64-k256-gqa4": _case(64, 256, hkv=2, kind="causal_top_left"),
    "topleft-q256-k64-mqa": _case(256, 64, hkv=1, kind="causal_top_left"),
    "full-q64-k256-gqa4": _case(64, 256, hkv=2),
    "sliding16-q64-k128": _case(64, 128, kind="sliding_window", window=(16, 0)),
    "sliding16-q128-k64-gqa4": _case(128, 64, hkv=2, kind="sliding_window", window=(16, 0)),
    "document-97": _case(97, 97, hkv=2, kind="document", doc_lens=(30, 50, 17)),
    "document-causal-97": _case(97, 97, causal=True, kind="document", doc_lens=(30, 50, 17)),
    "prefixlm-96": _case(96, 96, hkv=4, kind="prefix_lm", prefix_len=20),
    "strided-96": _case(96, 96, kind="strided", stride=8),
    "strided-q96-k64": _case(96, 64, hkv=2, kind="strided", stride=8),
    "randomblock-q64-k128": _case(64, 128, hkv=2, kind="random_block", block=16, density=0.3),
    "blocksparse-96": _case(96, 96, kind="block_sparse", block=16, band=1),
    "globallocal-96": _case(96, 96, hkv=1, kind="global_local", window=(8, 8), num_global=4),
    "dv48-96": _case(96, 96, d=32, dv=48),
    "dv48-causal-q64-k96-gqa4": _case(64, 96, hkv=2, d=32, dv=48, causal=True),
    "scale0.3-96": _case(96, 96, scale=0.3, kind="document", doc_lens=(40, 56)),
}
# One compiled flex case per mask kind, the features spread over them.
FLEX_CASES: dict[str, Case] = {
    "full-q64-k256-gqa4-dv48-scale0.3": _case(64, 256, hkv=2, dv=48, scale=0.3),
    "causal-q256-k64-mqa": CASES["causal-q256-k64-mqa"],
    "topleft-q64-k256-gqa4": CASES["topleft-q64-k256-gqa4"],
    "sliding16-q128-k64-gqa4": CASES["sliding16-q128-k64-gqa4"],
    "document-97-gqa4-scale0.3": _case(
        97, 97, hkv=2, scale=0.3, kind="document", doc_lens=(30, 50, 17)
    ),  # fmt: skip
    "prefixlm-96": CASES["prefixlm-96"],
    "strided-q96-k64": CASES["strided-q96-k64"],
    "randomblock-q64-k128": CASES["randomblock-q64-k128"],
    "blocksparse-96-dv48": _case(96, 96, dv=48, kind="block_sparse", block=16, band=1),
    "globallocal-96": CASES["globallocal-96"],
}
# What each implementation refuses on CPU (impl, case id) -> a word of the reason.
REFUSED = {("sdpa_flash", "dv48-96"): "head_dim_v", ("sdpa_flash", "dv48-causal-q64-k96-gqa4"):
           "head_dim_v"}  # fmt: skip


def test_the_cases_cover_every_mask_kind():
    assert {c.mask.kind for c in CASES.values()} == set(MASK_KINDS)
    assert {c.mask.kind for c in FLEX_CASES.values()} == set(MASK_KINDS)


def _kwargs(case: Case) -> dict[str, Any]:
    """The registry's forward contract: `causal` for the bottom-right causal mask, `mask=` for any
    other kind, `softmax_scale=` when set."""
    out: dict[str, Any] = {"causal": case.mask.kind == "causal"}
    if not case.mask.is_dense:
        out["mask"] = case.mask
    if case.softmax_scale is not None:
        out["softmax_scale"] = case.softmax_scale
    return out


def _inputs(case: Case, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, hkv, d = case.num_heads, case.kv_heads, case.head_dim
    shapes = [(1, h, case.sq, d), (1, hkv, case.sk, d), (1, hkv, case.sk, case.dim_v)]
    return [torch.randn(*s, generator=gen) for s in shapes]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    """Dense float64 attention: mask from MaskSpec.dense, GQA by repeat_interleave, 0 for rows
    without keys (and zero gradients there)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    allowed = case.mask.dense(case.sq, case.sk)
    empty = ~allowed.any(-1, keepdim=True)
    scores = (q @ k.transpose(-1, -2)) * case.scale
    scores = scores.masked_fill(~(allowed | empty), float("-inf"))
    probs = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
    return probs @ v


def _check(name: str, case: Case, grads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    impl = REGISTRY.get(name)
    base = _inputs(case)
    leaves = [t.clone().requires_grad_(grads) for t in base]
    out = impl.forward(*leaves, **_kwargs(case))
    assert out.dtype == torch.float32
    ref_leaves = [t.double().requires_grad_(grads) for t in base]
    ref = reference(*ref_leaves, case)
    assert out.shape == ref.shape == (1, case.num_heads, case.sq, case.dim_v)
    assert not out.isnan().any()
    assert rel_l2(out.detach(), ref.detach()) <= TOL, rel_l2(out.detach(), ref.detach())
    if not grads:
        return out, []
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, leaves, dout)
    want = torch.autograd.grad(ref, ref_leaves, dout.double())
    for g, w, n in zip(got, want, "qkv", strict=True):
        assert not g.isnan().any(), n
        assert rel_l2(g, w) <= TOL, (f"d{n}", rel_l2(g, w))
    return out, list(got)


@pytest.mark.parametrize("case_id", list(CASES))
@pytest.mark.parametrize("name", EAGER)
def test_matches_float64_dense_reference(name: str, case_id: str):
    case = CASES[case_id]
    impl = REGISTRY.get(name)
    reasons = declared_reasons(impl, case) + impl.unsupported(case, "cpu")
    if (name, case_id) in REFUSED:
        assert reasons and REFUSED[name, case_id] in " ".join(reasons), reasons
        return
    assert reasons == []
    _check(name, case, grads=True)


@pytest.mark.parametrize("name", EAGER)
def test_bottom_right_causal_rows_without_keys_are_zero(name: str):
    """Sq 256 > Sk 64: the first 192 rows see no key; output and gradients exactly 0, no NaN."""
    case = CASES["causal-q256-k64-mqa"]
    out, (dq, dk, dv) = _check(name, case, grads=True)
    assert torch.equal(out[:, :, :192], torch.zeros_like(out[:, :, :192]))
    assert torch.equal(dq[:, :, :192], torch.zeros_like(dq[:, :, :192]))
    assert not any(g.isnan().any() for g in (dq, dk, dv))


@pytest.mark.parametrize("case_id", list(FLEX_CASES))
def test_flex_forward_matches_float64_dense_reference(case_id: str):
    flex = REGISTRY.get("flex")
    if not flex.available("cpu").ok:
        pytest.skip(flex.available("cpu").reason)
    case = FLEX_CASES[case_id]
    assert declared_reasons(flex, case) + flex.unsupported(case, "cpu") == []
    out, _ = _check("flex", case, grads=False)
    if case.mask.kind == "causal" and case.sq > case.sk:
        rows = case.sq - case.sk
        assert torch.equal(out[:, :, :rows], torch.zeros_like(out[:, :, :rows]))


def test_declared_support():
    """Which features and kinds each backend declares, and its per-device reasons on CUDA."""
    flash, eff, cudnn = (REGISTRY.get(n) for n in ("sdpa_flash", "sdpa_efficient", "sdpa_cudnn"))
    for name in ("naive", "sdpa_math", "flex"):
        impl = REGISTRY.get(name)
        assert impl.features == {"gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale"}
        assert impl.mask_kinds == MASK_KINDS
    doc, top, below, above = (
        replace(CASES[c], dtype="bfloat16")
        for c in (
            "document-97",
            "topleft-q64-k256-gqa4",
            "causal-q64-k256-gqa4",
            "causal-q256-k64-mqa",
        )
    )
    assert flash.unsupported(doc, "cpu") == []
    assert any("no attn_mask" in r for r in flash.unsupported(doc, "cuda"))
    assert eff.unsupported(doc, "cuda") == [] and declared_reasons(eff, doc)  # GQA
    assert declared_reasons(cudnn, doc) and not declared_reasons(cudnn, CASES["full-q64-k256-gqa4"])
    assert any("check_flash_causal_non_square" in r for r in flash.unsupported(top, "cuda"))
    assert flash.unsupported(below, "cuda") == []  # causal_lower_right
    assert any("not verified" in r for r in cudnn.unsupported(below, "cuda"))
    assert any("without keys" in r for r in flash.unsupported(above, "cuda"))
    assert any("without keys" in r for r in eff.unsupported(above, "cuda"))
