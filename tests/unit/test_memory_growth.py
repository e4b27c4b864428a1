"""CPU peak memory, measured by the harness itself: naive grows as S², chunked about linearly."""

from __future__ import annotations

import pytest

from harness.measure.memory import cpu_peak_supported
from harness.results import RunDir
from harness.run.sweep import plan, run_tasks
from harness.suite import parse_suite
from tests.conftest import tiny_suite

pytestmark = pytest.mark.skipif(not cpu_peak_supported(), reason="/proc/self/clear_refs missing")


def test_naive_quadratic_chunked_linear(tmp_path):
    seqs = [512, 1024, 2048]
    data = tiny_suite(implementations=["naive", "chunked"],
                      sweep={"seq_len": seqs, "num_heads": [4], "head_dim": [32],
                             "block_size": [256], "phase": ["fwd", "fwd_bwd"]},
                      timing={"warmup": 0, "repeats": 1, "min_repeats": 1},
                      accuracy={"ref_max_rows": 64, "grad_ref_max_seq": 1})  # fmt: skip
    suite = parse_suite(data)
    run = RunDir.create(tmp_path / "run", {"run_id": "mem", "suite_name": "tiny"}, {})
    run_tasks(suite, plan(suite, "cpu"), run)
    peak = {(r["impl"], r["phase"], r["seq_len"]): r["peak_mem_above_inputs_bytes"]
            for r in run.rows() if r["status"] == "ok"}  # fmt: skip
    assert len(peak) == 12, run.rows()

    scores_bytes = 4 * 2048 * 2048 * 4  # heads · S² · fp32 at the longest S
    assert peak[("naive", "fwd", 2048)] >= scores_bytes  # the S×S matrix really exists
    for phase in ("fwd", "fwd_bwd"):
        naive_growth = peak[("naive", phase, 2048)] / peak[("naive", phase, 512)]
        chunked_growth = peak[("chunked", phase, 2048)] / peak[("chunked", phase, 512)]
        assert naive_growth > 12, (phase, naive_growth)  # S² predicts 16 for 4× the length
        assert chunked_growth < 6, (phase, chunked_growth)  # linear predicts 4
        assert peak[("chunked", phase, 2048)] < peak[("naive", phase, 2048)] / 4
