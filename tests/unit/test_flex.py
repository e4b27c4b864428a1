"""FlexAttention (compiled) against the float64 reference, through the harness's own worker.

Each new shape compiles (seconds on CPU), so the default run keeps to two float32 cases, causal
and not, at odd lengths; other dtypes and the recompile-limit check are `slow`; gradients need
CUDA (torch 2.13 has no flex backward on CPU, recorded as `unsupported`).
"""

from __future__ import annotations

import pytest
import torch

from harness.case import Case
from harness.run.task import Task
from harness.run.worker import execute

_TIMING = {"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0}
_ACCURACY = {"ref_max_rows": 1024, "ref_chunk_rows": 256, "grad_ref_max_seq": 2048}


def _row(case: Case, phase: str = "fwd", device: str = "cpu") -> dict:
    task = Task(case=case, impl="flex", phase=phase, device=device, seed=0, timing=_TIMING,
                accuracy=_ACCURACY)  # fmt: skip
    return execute(task)


def _assert_close_to_reference(row: dict, grads: bool = False) -> None:
    assert row["status"] == "ok", row.get("reason")
    # flash-attention's rule: at most 2x the error of naive attention in the same precision
    assert row["err_rel_l2"] <= 2 * row["err_naive_same_dtype_rel_l2"] + 1e-6, row
    if grads:
        naive = row["err_naive_same_dtype_grad_rel_l2"]
        for name in ("q", "k", "v"):
            assert row[f"err_d{name}_rel_l2"] <= 3 * naive + 1e-5, row


@pytest.mark.parametrize(("seq_len", "causal"), [(97, True), (130, False)])
def test_flex_forward_matches_float64_reference(seq_len, causal):
    row = _row(Case(seq_len=seq_len, num_heads=2, head_dim=16, causal=causal))
    _assert_close_to_reference(row)
    assert row["err_rel_l2"] < 1e-5  # float32


def test_flex_backward_on_cpu_is_unsupported_with_torch_reason():
    row = _row(Case(seq_len=33, num_heads=1, head_dim=16), phase="fwd_bwd")
    assert row["status"] == "unsupported"
    assert "backward on CPU" in row["reason"]


def test_flex_float64_on_cpu_is_unsupported():
    row = _row(Case(seq_len=33, num_heads=1, head_dim=16, dtype="float64"))
    assert row["status"] == "unsupported" and "got float64" in row["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [False, True])
def test_flex_low_precision_matches_reference(dtype, causal):
    _assert_close_to_reference(_row(Case(seq_len=257, num_heads=2, head_dim=32, dtype=dtype,
                                         causal=causal)))  # fmt: skip


@pytest.mark.slow
def test_flex_keeps_compiling_past_dynamo_recompile_limit():
    """More distinct cases than dynamo's recompile limit (8) in one process still compile."""
    limit = torch._dynamo.config.recompile_limit
    for seq_len in range(40, 40 + limit + 2):
        _assert_close_to_reference(_row(Case(seq_len=seq_len, num_heads=1, head_dim=16)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_flex_gradients_match_reference_on_cuda(dtype, causal):
    row = _row(Case(seq_len=1025, num_heads=2, head_dim=64, dtype=dtype, causal=causal),
               phase="fwd_bwd", device="cuda")  # fmt: skip
    _assert_close_to_reference(row, grads=True)
