"""Every attention implementation on a CUDA device, through the harness's own worker path, against
the float64 reference on the host (marked gpu: run with `pytest -m gpu` where torch sees CUDA).

The first GPU run found two faults that no CPU test could: errors compared a device output with
the host reference (every row failed), and bpt's CUDA flash backward selected the varlen kernel.
So this checks, for each implementation and both phases, that a row is `ok` within the tolerance
rule (harness/measure/tolerance.py) or says why it cannot run, never `error`.
"""

from __future__ import annotations

import pytest
import torch

from harness.case import Case
from harness.measure.tolerance import naive_limit
from harness.registry import REGISTRY
from harness.run.task import Task
from harness.run.worker import execute

_TIMING = {"warmup": 1, "repeats": 2, "min_repeats": 1, "max_time_s": 1.0}
_ACCURACY = {"ref_max_rows": 256, "ref_chunk_rows": 128, "grad_ref_max_seq": 2048}
_NOT_RUN = ("skipped", "unsupported")


def _attention_impls() -> list[str]:
    return REGISTRY.names("attention")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("phase", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", _attention_impls())
def test_every_impl_on_cuda_is_ok_within_tolerance_or_says_why_not(impl, causal, phase):
    # an odd length: no kernel's tile divides it, so the ragged last tile is exercised
    case = Case(seq_len=1031, num_heads=2, head_dim=64, dtype="bfloat16", causal=causal,
                block_size=256)  # fmt: skip
    task = Task(case=case, impl=impl, phase=phase, device="cuda", seed=0, timing=_TIMING,
                accuracy=_ACCURACY)  # fmt: skip
    row = execute(task)
    if row["status"] in _NOT_RUN:
        assert row.get("reason"), row
        return
    assert row["status"] == "ok", (row.get("reason"), row.get("traceback"))
    out = naive_limit("err_rel_l2", row["err_naive_same_dtype_rel_l2"], "bfloat16")
    assert out.limit is not None and row["err_rel_l2"] <= out.limit, (out.describe(), row)
    assert row["time_ms_median"] > 0 and row["peak_mem_bytes"] > 0
    if phase == "fwd_bwd":
        naive = row["err_naive_same_dtype_grad_rel_l2"]
        for name in ("q", "k", "v"):
            limit = naive_limit(f"err_d{name}_rel_l2", naive, "bfloat16")
            assert limit.limit is not None and row[f"err_d{name}_rel_l2"] <= limit.limit, (
                limit.describe(), row)  # fmt: skip
