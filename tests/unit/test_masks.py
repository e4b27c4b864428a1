"""The mask predicates, the masked float64 reference and the case/suite/row plumbing of shapes.

Each kind's predicate is checked against a plain-Python definition written from the papers
(element by element, no tensors), the reference against a per-row loop; both at odd lengths and
with seqlen_q on either side of seqlen_k.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.case import Case
from harness.masks import MASK_KINDS, POSITION_TABLE_KINDS, MaskSpec, density
from harness.measure.flops import attention_bytes, attention_fwd_flops, case_pairs
from harness.rows import SCHEMA_VERSION, upgrade
from harness.workloads.attention import make_qkv, rows_attention

SPECS = {
    "none": MaskSpec(),
    "causal": MaskSpec(kind="causal"),
    "causal_top_left": MaskSpec(kind="causal_top_left"),
    "sliding_window": MaskSpec(kind="sliding_window", window=(5, 2)),
    "document": MaskSpec(kind="document", doc_lens=(7, 11, 5)),
    "prefix_lm": MaskSpec(kind="prefix_lm", prefix_len=6),
    "strided": MaskSpec(kind="strided", stride=4),
    "random_block": MaskSpec(kind="random_block", block=4, density=0.3, seed=3),
    "block_sparse": MaskSpec(kind="block_sparse", block=4, band=1),
    "global_local": MaskSpec(kind="global_local", window=(2, 3), num_global=3),
}


def _by_hand(spec: MaskSpec, i: int, j: int, sq: int, sk: int, keep=None) -> bool:
    """The definition of each kind, one pair at a time (module docstring of harness.masks)."""
    p = i if spec.kind == "causal_top_left" else i + sk - sq
    if spec.kind == "none":
        ok = True
    elif spec.kind in ("causal", "causal_top_left"):
        ok = j <= p
    elif spec.kind == "sliding_window":
        left, right = spec.window
        ok = (left < 0 or j >= p - left) and (right < 0 or j <= p + right)
    elif spec.kind == "document":
        bounds = [0]
        for n in spec.doc_lens:
            bounds.append(bounds[-1] + n)
        doc = [d for d in range(len(spec.doc_lens)) for _ in range(spec.doc_lens[d])]
        ok = p >= 0 and doc[p] == doc[j]
    elif spec.kind == "prefix_lm":
        ok = j < spec.prefix_len or j <= p
    elif spec.kind == "strided":
        ok = abs(p - j) < spec.stride or (p - j) % spec.stride == 0
    elif spec.kind == "random_block":
        ok = p >= 0 and bool(keep[p // spec.block, j // spec.block])
    elif spec.kind == "block_sparse":
        ok = abs(math.floor(p / spec.block) - j // spec.block) <= spec.band
    else:  # global_local
        left, right = spec.window
        ok = (j >= p - left and j <= p + right) or j < spec.num_global or 0 <= p < spec.num_global
    return ok and (not spec.causal or j <= p)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize(("sq", "sk"), [(23, 23), (9, 23), (23, 19)])
@pytest.mark.parametrize("causal", [False, True])
def test_each_kind_is_its_definition(kind: str, sq: int, sk: int, causal: bool) -> None:
    spec = SPECS[kind].with_causal(causal)
    if kind == "document":
        spec = MaskSpec(kind="document", doc_lens=(sk - 12, 7, 5), causal=spec.causal)
    if spec.shape_reasons(sq, sk):  # refused, with a reason, exactly for the table kinds
        assert kind in POSITION_TABLE_KINDS and sq > sk
        return
    keep = None
    if kind == "random_block":
        n = math.ceil(sk / spec.block)
        keep = torch.rand(n, n, generator=torch.Generator().manual_seed(spec.seed)) < spec.density
        keep |= torch.eye(n, dtype=torch.bool)
    want = torch.tensor([[_by_hand(spec, i, j, sq, sk, keep) for j in range(sk)]
                         for i in range(sq)])  # fmt: skip
    assert torch.equal(spec.dense(sq, sk), want)
    assert spec.attended_pairs(sq, sk) == int(want.sum())
    rows, cols = torch.tensor([0, 5, sq - 1]), torch.tensor([1, 2, sk - 1])
    assert torch.equal(spec.tile(rows, cols, sq, sk), want[rows][:, cols])


def test_window_follows_flash_attn_and_is_causal_when_right_is_zero() -> None:
    spec = MaskSpec(kind="sliding_window", window=(16, 0))
    assert spec.is_causal
    dense = spec.dense(64, 256)
    # bottom-right: query 0 sits at key position 192 and sees keys 176..192 (17 keys)
    assert dense[0].nonzero().flatten().tolist() == list(range(176, 193))
    assert MaskSpec(kind="sliding_window", window=(-1, -1)).dense(5, 7).all()


def test_causal_alignments_differ_only_off_the_square() -> None:
    br, tl = MaskSpec(kind="causal"), MaskSpec(kind="causal_top_left")
    assert torch.equal(br.dense(9, 9), tl.dense(9, 9))
    assert not torch.equal(br.dense(4, 9), tl.dense(4, 9))
    assert br.dense(4, 9)[0].sum() == 6 and tl.dense(4, 9)[0].sum() == 1
    # Sq > Sk: the first Sq - Sk queries see no key at all under bottom-right alignment
    assert not br.dense(9, 4)[:5].any() and br.dense(9, 4)[5:].any(-1).all()


def test_seeded_documents_cover_the_sequence() -> None:
    spec = MaskSpec(kind="document", num_docs=5, seed=7)
    lens = spec.document_lengths(97)
    assert len(lens) == 5 and sum(lens) == 97 and min(lens) >= 1
    assert lens == MaskSpec(kind="document", num_docs=5, seed=7).document_lengths(97)
    assert lens != MaskSpec(kind="document", num_docs=5, seed=8).document_lengths(97)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (MaskSpec(kind="sliding_window"), "needs 'window'"),
        (MaskSpec(kind="strided", stride=0), "stride must be >= 1"),
        (MaskSpec(kind="strided", stride=2, window=(1, 1)), "'window' does not apply"),
        (MaskSpec(kind="document"), "exactly one of doc_lens"),
        (MaskSpec(kind="random_block", block=4, density=1.5), "density must be in (0, 1]"),
        (MaskSpec(kind="sliding_window", window=(-2, 0)), "-1 (unbounded)"),
        (MaskSpec(kind="bogus"), "allowed: none, causal"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_are_one_clear_error(spec: MaskSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec.check_params()


def _per_row_reference(q, k, v, spec: MaskSpec, scale: float) -> torch.Tensor:
    """Attention one (batch, head, row) at a time in float64, with the mask from `dense`."""
    b, sq, h, _ = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    allowed = spec.dense(sq, sk)
    out = torch.zeros(b, sq, h, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // hkv)
            for i in range(sq):
                keys = allowed[i].nonzero().flatten()
                if keys.numel() == 0:
                    continue
                s = (k[bi, keys, kh].double() @ q[bi, i, hi].double()) * scale
                w = torch.softmax(s, 0)
                out[bi, i, hi] = w @ v[bi, keys, kh].double()
    return out


@pytest.mark.parametrize("kind", ["causal", "causal_top_left", "document", "global_local",
                                  "random_block"])  # fmt: skip
@pytest.mark.parametrize(("sq", "sk"), [(23, 23), (7, 23), (23, 9)])
def test_reference_is_masked_attention_row_by_row(kind: str, sq: int, sk: int) -> None:
    spec = SPECS[kind] if kind != "document" else MaskSpec(kind="document", doc_lens=(sk - 4, 4))
    if spec.shape_reasons(sq, sk):
        assert kind in POSITION_TABLE_KINDS and sq > sk
        return
    case = Case(seq_len=sk, seqlen_q=sq, num_heads=4, num_kv_heads=2, head_dim=8, head_dim_v=6,
                batch=2, mask=spec, softmax_scale=0.7)  # fmt: skip
    t = make_qkv(case, "cpu", seed=1)
    got = rows_attention(t["q"], t["k"], t["v"], torch.arange(sq), compute_dtype=torch.float64,
                         chunk_rows=5, mask=spec, softmax_scale=0.7)  # fmt: skip
    want = _per_row_reference(t["q"], t["k"], t["v"], spec, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(got).all()


def test_fully_masked_rows_are_zero_with_zero_gradients() -> None:
    q = torch.randn(1, 9, 2, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 4, 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 4, 2, 8, dtype=torch.float64, requires_grad=True)
    out = rows_attention(q, k, v, torch.arange(9), causal=True, compute_dtype=torch.float64,
                         chunk_rows=4)  # fmt: skip
    assert torch.isfinite(out).all() and not out[:, :5].any() and out[:, 5:].abs().sum() > 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and not q.grad[:, :5].any()


def test_case_names_of_earlier_cases_are_unchanged() -> None:
    assert Case(seq_len=1024, causal=True).name == "attn-b1-s1024-h8-d64-float32-causal-bsauto"
    assert Case(seq_len=97).name == "attn-b1-s97-h8-d64-float32-full-bsauto"
    # top-left causal on a square is the same mask as causal: the same case
    assert Case(seq_len=64, mask=MaskSpec(kind="causal_top_left")).name == Case(
        seq_len=64, causal=True).name  # fmt: skip
    gqa = Case(seq_len=256, seqlen_q=64, num_kv_heads=2, head_dim_v=32, softmax_scale=0.5,
               mask=MaskSpec(kind="sliding_window", window=(16, 0)))  # fmt: skip
    assert gqa.name == ("attn-b1-s256-h8-d64-q64-k256-kv2-dv32-scale0.5-float32-"
                        "slidingwindow-window16_0-bsauto")  # fmt: skip
    assert Case.from_dict(gqa.to_dict()) == gqa and gqa.causal


def test_case_refuses_kv_heads_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="num_kv_heads 3 must divide num_heads 8"):
        Case(num_kv_heads=3)


def test_flops_count_the_attended_pairs_and_bytes_count_kv_heads() -> None:
    square = Case(seq_len=100, num_heads=4, head_dim=8)
    assert attention_fwd_flops(square) == 4 * 4 * 100 * 100 * 8
    causal = Case(seq_len=100, num_heads=4, head_dim=8, causal=True)
    assert case_pairs(causal) == 100 * 101 // 2
    window = Case(seq_len=100, num_heads=4, head_dim=8,
                  mask=MaskSpec(kind="sliding_window", window=(9, 0)))  # fmt: skip
    assert case_pairs(window) == sum(min(i + 1, 10) for i in range(100))
    dv = Case(seq_len=10, num_heads=1, head_dim=8, head_dim_v=24)
    assert attention_fwd_flops(dv) == 2 * 10 * 10 * (8 + 24)
    mha, gqa = Case(seq_len=64, num_heads=8), Case(seq_len=64, num_heads=8, num_kv_heads=1)
    per = 64 * 64 * 4  # one (seq, head_dim) tensor in float32
    assert attention_bytes(mha, "fwd") == 4 * 8 * per
    assert attention_bytes(gqa, "fwd") == (8 + 1 + 1 + 8) * per
    assert attention_bytes(mha, "fwd_bwd") == attention_bytes(mha, "fwd") + 8 * 8 * per
    assert density(MaskSpec(kind="causal"), 64, 64) == pytest.approx(65 / 128)


def test_v2_rows_are_upgraded_to_the_shapes_they_meant() -> None:
    old = {"schema_version": 2, "case": "c", "impl": "bpt", "phase": "fwd", "status": "ok",
           "seq_len": 512, "num_heads": 8, "head_dim": 64, "causal": True}  # fmt: skip
    new = upgrade(old)
    assert new["schema_version"] == SCHEMA_VERSION == 3
    assert (new["seqlen_q"], new["seqlen_k"], new["num_kv_heads"], new["head_dim_v"]) == (
        512, 512, 8, 64)  # fmt: skip
    assert new["mask"] == "causal" and new["softmax_scale"] is None


def test_causal_flag_keeps_causal_top_left_top_left() -> None:
    spec = MaskSpec(kind="causal_top_left").with_causal(True)
    assert spec == MaskSpec(kind="causal_top_left")
    assert Case(seq_len=8, seqlen_q=4, mask=spec, causal=True).mask == spec


def test_prefix_lm_is_not_causal_and_causal_removes_its_lookahead() -> None:
    prefix = MaskSpec(kind="prefix_lm", prefix_len=3)
    assert not prefix.is_causal and prefix.dense(6, 6)[0, 2]  # row 0 sees the prefix's key 2
    assert prefix.with_causal(True) == MaskSpec(kind="causal")
    assert not Case(seq_len=6, mask=prefix).causal


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "strided", "stirde": 2}, "unknown parameter 'stirde'; allowed: kind, causal"),
        ({"kind": "document", "num_docs": 2, "seed": True}, "seed must be an integer"),
        ({"kind": "sliding_window", "window": [1.7, 0]}, "window must be \\[left, right\\] of"),
        ({"kind": "document", "doc_lens": [16], "seed": 3}, "seed applies only to random_block"),
        ({"kind": "random_block", "block": 4, "density": True}, "density must be a number"),
    ],
)
def test_mask_values_of_the_wrong_type_are_value_errors(data, message) -> None:
    with pytest.raises(ValueError, match=message):
        MaskSpec.from_dict(data).check_params()


def test_a_list_window_is_a_hashable_spec() -> None:
    spec = MaskSpec(kind="sliding_window", window=[4, 0])  # type: ignore[arg-type]
    assert spec.window == (4, 0) and hash(spec) == hash(MaskSpec("sliding_window", window=(4, 0)))


def test_one_mask_under_two_spellings_is_refused_in_a_suite() -> None:
    from harness.errors import SuiteError
    from harness.suite import parse_suite

    data = {"name": "m", "implementations": ["naive"],
            "sweep": {"mask": ["causal", {"kind": "none", "causal": True}]}}  # fmt: skip
    with pytest.raises(SuiteError, match="is the same mask as"):
        parse_suite(data)
    data["sweep"]["mask"] = [{"kind": "strided", "stride": True}]
    with pytest.raises(SuiteError, match="must be a number, not a boolean"):
        parse_suite(data)
