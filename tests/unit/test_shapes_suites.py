"""Shapes and masks through the whole harness path: suite axes -> cases -> the worker's row.

The worker binds the case's inputs (GQA shapes, Sq != Sk, a mask, views of a packed qkv or a
strided last dim, scaled logits), runs the implementation with the case's options, and scores it
against the masked float64 reference; the row carries the shape, the mask, its density, FLOPs
over the attended pairs and the bytes moved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.case import Case
from harness.masks import MaskSpec
from harness.measure.flops import attention_bytes, case_flops
from harness.run.task import Task
from harness.run.worker import execute
from harness.suite import load_suite

ROOT = Path(__file__).parents[2]
TIMING = {"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0}
ACCURACY = {"ref_max_rows": 1024, "ref_chunk_rows": 64, "grad_ref_max_seq": 2048}
TOL = 2e-5

CASES = {
    "gqa_doc_packed": Case(seq_len=97, num_heads=4, head_dim=16, input_layout="packed_qkv",
                           mask=MaskSpec(kind="document", doc_lens=(30, 50, 17)), causal=True),
    "q33_k97_strided_last": Case(seq_len=97, seqlen_q=33, num_heads=4, num_kv_heads=2,
                                 head_dim=16, causal=True, input_layout="strided_last"),
    "window_scaled_logits": Case(seq_len=80, num_heads=2, head_dim=16, input_scale=4.0,
                                 mask=MaskSpec(kind="sliding_window", window=(16, 0)),
                                 softmax_scale=0.2),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["naive", "chunked", "bpt", "sdpa_flash"])
def test_worker_row_of_a_shaped_case(impl: str, case: str) -> None:
    c = CASES[case]
    row = execute(Task(case=c, impl=impl, phase="fwd_bwd", device="cpu", seed=0, timing=TIMING,
                       accuracy=ACCURACY))  # fmt: skip
    assert row["status"] == "ok", row.get("reason")
    assert row["err_rel_l2"] <= TOL
    for g in ("dq", "dk", "dv"):
        assert row[f"err_{g}_rel_l2"] <= 5 * TOL, (g, row[f"err_{g}_rel_l2"])
    assert (row["seqlen_q"], row["seqlen_k"], row["num_kv_heads"]) == (c.sq, c.sk, c.kv_heads)
    assert row["mask"] == c.mask.kind and 0 < row["mask_density"] <= 1
    assert row["flops"] == case_flops(c, "fwd_bwd")
    assert row["bytes_moved"] == attention_bytes(c, "fwd_bwd")


def test_an_implementation_without_the_feature_gets_a_reason() -> None:
    # ring takes GQA (k/v travel with their own heads) but not seqlen_q != seqlen_k
    c = Case(seq_len=64, seqlen_q=32, num_heads=4, num_kv_heads=2, head_dim=16, world_size=2,
             seq_layout="zigzag")  # fmt: skip
    row = execute(Task(case=c, impl="ring", phase="fwd", device="cpu", seed=0, timing=TIMING,
                       accuracy=ACCURACY))  # fmt: skip
    assert row["status"] == "unsupported"
    assert "seqlen_q 32 != seqlen_k 64" in row["reason"] and "GQA" not in row["reason"]


@pytest.mark.parametrize("name", ["shapes", "sparse"])
def test_the_shapes_and_sparse_suites_expand(name: str) -> None:
    for profile in (None, "gpu"):
        suite = load_suite(ROOT / "suites" / f"{name}.yaml", profile=profile)
        cases = suite.cases()
        assert cases
        if name == "shapes":
            assert {c.kv_heads for c in cases} == {8, 2, 1}
            assert any(c.sq != c.sk for c in cases) and {c.head_dim for c in cases} == {
                64,
                128,
                192,
            }
            assert any(c.head_dim == 192 and c.dim_v == 128 for c in cases)
        else:
            kinds = {c.mask.kind for c in cases}
            assert {"causal", "sliding_window", "block_sparse", "random_block", "strided",
                    "global_local", "document"} <= kinds  # fmt: skip


def test_a_case_whose_inputs_fail_is_not_left_half_cached(monkeypatch) -> None:
    """Every task of a case whose inputs cannot be made reports that error, not a stale cache."""
    from harness.workloads.attention import AttentionWorkload

    def fail(self, case, device, seed):
        raise RuntimeError("cannot make these inputs")

    monkeypatch.setattr(AttentionWorkload, "make_inputs", fail)
    c = Case(seq_len=33, num_heads=2, head_dim=8)
    for impl in ("naive", "bpt"):
        row = execute(Task(case=c, impl=impl, phase="fwd", device="cpu", seed=0, timing=TIMING,
                           accuracy=ACCURACY))  # fmt: skip
        assert row["status"] == "error" and "cannot make these inputs" in row["reason"], row


def test_packed_qkv_needs_equal_shapes() -> None:
    row = execute(Task(case=Case(seq_len=32, num_heads=4, num_kv_heads=2, head_dim=8,
                                 input_layout="packed_qkv"), impl="naive", phase="fwd",
                       device="cpu", seed=0, timing=TIMING, accuracy=ACCURACY))  # fmt: skip
    assert row["status"] == "unsupported" and "packed_qkv needs" in row["reason"]
