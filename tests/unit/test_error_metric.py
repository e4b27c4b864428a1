"""The error metrics against hand-computed values, and the chunked reference against naive."""

from __future__ import annotations

import math

import torch

from harness.case import Case
from harness.measure.error import max_abs, rel_l2
from harness.workloads.attention import AttentionWorkload, naive_full


def test_rel_l2_and_max_abs_by_hand():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ||ref|| = 5
    out = torch.tensor([3.0, 4.5])  # diff (0, 0.5)
    assert math.isclose(rel_l2(out, ref), 0.1, rel_tol=1e-12)
    assert math.isclose(max_abs(out, ref), 0.5, rel_tol=1e-12)


def test_rel_l2_non_finite_is_inf():
    ref = torch.ones(3, dtype=torch.float64)
    assert rel_l2(torch.tensor([1.0, float("nan"), 1.0]), ref) == float("inf")


def test_softmax_of_two_keys_by_hand():
    # one query, two keys, head_dim 1: scores q·k/sqrt(1) = (0, ln 3) -> weights (1/4, 3/4)
    q = torch.tensor([[[[1.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[0.0]], [[math.log(3.0)]]]], dtype=torch.float64)
    v = torch.tensor([[[[4.0]], [[8.0]]]], dtype=torch.float64)
    out = naive_full(q, k, v, causal=False)
    assert math.isclose(float(out), 0.25 * 4 + 0.75 * 8, rel_tol=1e-12)


def test_sampled_reference_rows_match_full_naive():
    case = Case(seq_len=300, num_heads=2, head_dim=16, causal=True, dtype="float64")
    wl = AttentionWorkload()
    inputs = wl.make_inputs(case, "cpu", seed=3)
    ref = wl.reference(case, inputs, None, max_rows=50, chunk_rows=16, grad_max_seq=0)
    assert ref.rows is not None and ref.rows.numel() == 50
    full = naive_full(*(inputs.tensors[n] for n in "qkv"), causal=True)
    torch.testing.assert_close(ref.out, full[:, ref.rows], rtol=1e-12, atol=1e-12)
    assert "50 of 300" in ref.note
