"""The tolerance rule for an error against the float64 reference, including when naive overflows.

The rule (STYLE.md, after flash-attention's tests): an implementation's relative L2 error is at
most NAIVE_FACTOR_OUT = 2 (outputs) or NAIVE_FACTOR_GRAD = 3 (gradients) times the error of naive
attention computed in the same low precision (the row's `err_naive_same_dtype_rel_l2` /
`err_naive_same_dtype_grad_rel_l2`), plus FLOOR.

Naive attention keeps its S×S scores in the input dtype, so in float16 it overflows once
|q·k| > 65504 (scores inf, softmax NaN; its error is inf or NaN) and the yardstick is gone. Its
place is then taken by the dtype's unit roundoff u (2^-11 float16, 2^-8 bfloat16, 2^-24 float32,
2^-53 float64), for the errors that a sound kernel keeps within a few u whatever the logits:

- the attention output (`err_rel_l2` of the attention workload): ≤ 8 u. The output is a convex
  combination of V's rows, given exactly in the dtype (measured: chunked, bpt and ring ≤ 0.11 u
  at logits of 40-100 × randn; naive float16 just below the overflow is 7-54 u, so 8 u is no
  looser than the 2×-naive rule was there).
- dv (`err_dv_rel_l2`): ≤ 16 u. dv = Pᵀ·dout has no cancellation, P ≥ 0 (measured ≤ 7.5 u).

Every other error is not gated when naive overflowed (rule "none"), because it measures the
conditioning, not the kernel. Overflow means scaled logits thousands apart, where the softmax
saturates: the true dq and dk are ~0 (measured in float16: chunked 0.4-27 u, the
FlashAttention-2-style bpt and ring up to 3e5 u; bpt in float32 on the same inputs is O(1)); and
a layer computes q and k and rounds them to the dtype before the scores, which moves logits of
~3600 by ~2 (bpt_layer and memeff_layer outputs: 8-66 u). Non-finite errors are caught anyway:
compare judges a metric that turns NaN or inf by itself.

`naive_limit(...)` gives the limit and which rule applied (`Limit.rule`: "naive", "roundoff" or
"none"; `Limit.describe()` in words). Pure Python, no torch: `harness compare` calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from harness.rows import is_finite_number

NAIVE_FACTOR_OUT = 2.0
NAIVE_FACTOR_GRAD = 3.0
FLOOR = 1e-9  # absolute slack, so that an error of ~0 (float64) cannot trip the ratio
# The unit roundoff u = 2^-p of each dtype (p = significand bits, the implicit one included).
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24,
                 "float64": 2.0**-53}  # fmt: skip
OUTPUT_METRIC = "err_rel_l2"
# (workload, metric) -> c of the fallback bound c·u: the errors that stay a few u at any logits.
ROUNDOFF_FACTOR = {("attention", OUTPUT_METRIC): 8.0, ("attention", "err_dv_rel_l2"): 16.0}

Rule = Literal["naive", "roundoff", "none"]


@dataclass(frozen=True)
class Limit:
    """The largest error `metric` may have (None: not gated), and which rule gave it."""

    metric: str
    limit: float | None
    rule: Rule
    why: str

    def describe(self) -> str:
        bound = f" <= {self.limit:.3g}" if self.limit is not None else " not gated"
        return f"{self.metric}{bound} ({self.rule} rule: {self.why})"


def naive_limit(metric: str, naive_err: Any, dtype: str | None,
                workload: str | None = "attention") -> Limit:  # fmt: skip
    """The tolerance of error `metric` (`err_rel_l2`, `err_dq_rel_l2`, ...) of a row of `workload`
    in `dtype`, whose naive-same-precision error (the output's, or the gradients') is
    `naive_err`."""
    if is_finite_number(naive_err):
        factor = NAIVE_FACTOR_OUT if metric == OUTPUT_METRIC else NAIVE_FACTOR_GRAD
        return Limit(metric, factor * float(naive_err) + FLOOR, "naive",
                     f"{factor:g} x naive {dtype} error {float(naive_err):.3g}")  # fmt: skip
    if naive_err is None:
        return Limit(metric, None, "none", "no naive error recorded")
    overflow = f"naive {dtype} error is {naive_err} (overflow)"
    u = UNIT_ROUNDOFF.get(dtype or "")
    factor = ROUNDOFF_FACTOR.get((workload or "attention", metric))
    if u is None or factor is None:
        return Limit(metric, None, "none", f"{overflow}; no roundoff bound for this error")
    return Limit(metric, factor * u, "roundoff", f"{overflow}; {factor:g} u, u = {u:.3g}")


def fallback_note(workload: str, dtype: str, out_naive: Any, grad_naive: Any = None) -> str:
    """For the row's `ref_note`: the rule its errors fall under when naive overflowed, else ""."""
    parts = []
    if out_naive is not None and not is_finite_number(out_naive):
        parts.append(naive_limit(OUTPUT_METRIC, out_naive, dtype, workload).describe())
    if grad_naive is not None and not is_finite_number(grad_naive):
        dv = naive_limit("err_dv_rel_l2", grad_naive, dtype, workload)
        if dv.limit is not None:
            parts.append(dv.describe())
        parts.append(f"other gradient errors not gated (naive {dtype} gradient error is "
                     f"{grad_naive}, overflow)")  # fmt: skip
    return f"tolerance: {'; '.join(parts)}" if parts else ""
