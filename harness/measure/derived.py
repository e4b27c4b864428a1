"""Row fields derived from raw time samples: the summary, FLOPs, TFLOP/s, tokens/s, bytes moved
and the achieved bandwidth.

FLOP convention (harness/measure/flops.py): forward 4·B·H·Sq·Sk·D over the attended pairs
(2·B·H·pairs·(D + D_v) when head_dim_v differs), backward 2.5× forward, a training step (fwd_bwd)
3.5×. Bytes: the compulsory traffic of Q, K, V, O (and dO, dQ, dK, dV backward).
"""

from __future__ import annotations

from typing import Any

from harness.case import Case
from harness.measure.flops import case_bytes, case_flops
from harness.measure.timing import summarize_ms


def time_fields(case: Case, phase: str, samples_ms: list[float]) -> dict[str, Any]:
    """The time, throughput and sample fields of a row, from its raw samples (ms)."""
    summary = summarize_ms(samples_ms)
    seconds = summary["time_ms_median"] * 1e-3
    flops = case_flops(case, phase)
    fields = {
        **summary,
        "num_samples": len(samples_ms),
        "time_samples_ms": list(samples_ms),
        "flops": flops,
        "tflops": flops / seconds / 1e12,
        "tokens_per_s": case.batch * case.sq / seconds,  # decode: new tokens per second
    }
    moved = case_bytes(case, phase)
    if moved is not None:
        fields["bytes_moved"] = moved
        fields["gbytes_per_s"] = moved / seconds / 1e9
        fields["arith_intensity"] = flops / moved  # FLOP per byte: the roofline's x
    return fields
