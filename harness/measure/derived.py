"""Row fields derived from raw time samples: the summary, FLOPs, TFLOP/s and tokens/s.

FLOP convention (harness/measure/flops.py): forward 4·B·H·Sq·Sk·D over the attended pairs,
backward 2.5× forward, a training step (fwd_bwd) 3.5×.
"""

from __future__ import annotations

from typing import Any

from harness.case import Case
from harness.measure.flops import case_flops
from harness.measure.timing import summarize_ms


def time_fields(case: Case, phase: str, samples_ms: list[float]) -> dict[str, Any]:
    """The time, throughput and sample fields of a row, from its raw samples (ms)."""
    summary = summarize_ms(samples_ms)
    seconds = summary["time_ms_median"] * 1e-3
    flops = case_flops(case, phase)
    return {
        **summary,
        "num_samples": len(samples_ms),
        "time_samples_ms": list(samples_ms),
        "flops": flops,
        "tflops": flops / seconds / 1e12,
        "tokens_per_s": case.batch * case.seq_len / seconds,
    }
