"""Large logits in float16 and bfloat16: no overflow in our kernels, errors within the rule.

q, k = 60 × randn (head_dim 64: |q·k| reaches ~1e5, past float16's 65504). Our kernels form the
scores in float32, so outputs and gradients stay finite; naive attention keeps its scores in the
input dtype on purpose (the same-precision yardstick) and overflows in float16, and the rule of
`harness.measure.tolerance` then falls back to the unit roundoff. `chunked` used to return NaN
here (its q·kᵀ was formed in float16 before the upcast).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import harness
from harness.case import Case
from harness.measure.error import rel_l2
from harness.measure.tolerance import UNIT_ROUNDOFF, fallback_note, naive_limit
from harness.registry import REGISTRY
from harness.workloads.attention import AttentionWorkload, naive_full
from harness.workloads.base import Inputs
from harness.workloads.layer import PARAM_NAMES, layer_rows, make_layer_inputs

DTYPES = [torch.float16, torch.bfloat16]
OURS = ["chunked", "bpt", "ring"]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _qkv(dtype: torch.dtype, seed: int = 0, seq: int = 128):
    gen = torch.Generator().manual_seed(seed)
    q, k = (60 * torch.randn(1, seq, 2, 64, generator=gen) for _ in range(2))
    v, dout = (torch.randn(1, seq, 2, 64, generator=gen) for _ in range(2))
    return [t.to(dtype) for t in (q, k, v, dout)]


def _attention(name: str, leaves, causal: bool) -> torch.Tensor:
    if name == "ring":  # one rank, no process group: the registry entry needs one
        return harness.ring_attention(*leaves, causal=causal, seq_layout="zigzag")
    return harness.attention(name, *leaves, causal=causal, block_size=32)


def _errors(name: str, q, k, v, dout, causal: bool, dtype: torch.dtype):
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = _attention(name, leaves, causal)
    grads = torch.autograd.grad(out, leaves, dout)
    return out.detach(), grads


def _reference(q, k, v, dout, causal: bool, dtype: torch.dtype):
    leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = naive_full(*leaves, causal=causal)
    return out.detach(), torch.autograd.grad(out, leaves, dout.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_naive_is_the_same_precision_yardstick(dtype: torch.dtype, causal: bool) -> None:
    """By design: float16 scores overflow (NaN out), bfloat16's float32 range does not."""
    q, k, v, _ = _qkv(dtype)
    out = harness.attention("naive", q, k, v, causal=causal)
    assert torch.isfinite(out).all() == (dtype == torch.bfloat16)


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_ours_are_finite_and_within_the_rule(name: str, dtype: torch.dtype, causal: bool) -> None:
    q, k, v, dout = _qkv(dtype, seed=1)
    out, grads = _errors(name, q, k, v, dout, causal, dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)
    ref_out, ref_grads = _reference(q, k, v, dout, causal, torch.float64)
    naive_out, naive_grads = _reference(q, k, v, dout, causal, dtype)
    naive_grad_err = max(rel_l2(g, r) for g, r in zip(naive_grads, ref_grads, strict=True))
    limit = naive_limit("err_rel_l2", rel_l2(naive_out, ref_out), _name(dtype))
    assert limit.rule == ("roundoff" if dtype == torch.float16 else "naive")
    assert rel_l2(out, ref_out) <= limit.limit, limit.describe()
    for n, g, r in zip("qkv", grads, ref_grads, strict=True):
        limit = naive_limit(f"err_d{n}_rel_l2", naive_grad_err, _name(dtype))
        if limit.limit is not None:  # float16 dq, dk: not gated (a saturated softmax)
            assert rel_l2(g, r) <= limit.limit, limit.describe()


def test_chunked_float16_overflow_repro() -> None:
    """The issue's case: q·k past 65504 in float16, causal, block 32; NaN before the fix."""
    gen = torch.Generator().manual_seed(0)
    q, k = (60 * torch.randn(1, 128, 2, 64, generator=gen) for _ in range(2))
    v = torch.randn(1, 128, 2, 64, generator=gen)
    out = harness.attention("chunked", q.half(), k.half(), v.half(), causal=True, block_size=32)
    ref = naive_full(q.half().double(), k.half().double(), v.half().double(), causal=True)
    assert rel_l2(out, ref) <= 8 * UNIT_ROUNDOFF["float16"]


# ---- layers: q and k rows of the QKV projection scaled by 60 -------------------------------


def _layer_inputs(dtype: torch.dtype, causal: bool):
    case = Case(workload="layer", seq_len=64, hidden=64, num_heads=2, head_dim=32,
                dtype=_name(dtype), causal=causal, block_size=32)  # fmt: skip
    t = make_layer_inputs(case, "cpu", seed=0)
    scale = torch.ones(3 * 64, 1)
    scale[: 2 * 64] = 60.0  # q and k rows: logits ~60² larger, v as it was
    t["w_qkv"] = (t["w_qkv"].float() * scale).to(dtype)
    return t


@pytest.mark.parametrize("name", ["vanilla_layer", "memeff_layer", "bpt_layer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_layers_with_large_logits(name: str, dtype: torch.dtype, causal: bool) -> None:
    t = _layer_inputs(dtype, causal)
    leaves = {n: x.clone().requires_grad_(True) for n, x in t.items()}
    y = REGISTRY.get(name).forward(leaves["x"], {n: leaves[n] for n in PARAM_NAMES},
                                   causal=causal, block_size=32, num_heads=2)  # fmt: skip
    if name == "vanilla_layer" and dtype == torch.float16:
        assert not torch.isfinite(y).all()  # naive attention inside: the yardstick, by design
        return
    y.backward(torch.ones_like(y))
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(x.grad).all() for x in leaves.values())

    def rows(dt: torch.dtype) -> torch.Tensor:
        return layer_rows(t["x"], {n: t[n] for n in PARAM_NAMES}, torch.arange(64), num_heads=2,
                          causal=causal, compute_dtype=dt, chunk_rows=64)  # fmt: skip

    ref = rows(torch.float64)
    limit = naive_limit("err_rel_l2", rel_l2(rows(dtype), ref), _name(dtype), "layer")
    # float16: naive overflows and a layer's output is not gated (q, k are rounded before the
    # scores); bfloat16: 2 x the naive layer in bfloat16
    assert limit.rule == ("none" if dtype == torch.float16 else "naive"), limit.describe()
    if limit.limit is not None:
        assert rel_l2(y, ref) <= limit.limit, limit.describe()


# ---- the rule itself, and the row's note ----------------------------------------------------


def test_rule_naive_when_finite_roundoff_or_none_when_not() -> None:
    u16 = UNIT_ROUNDOFF["float16"]
    assert naive_limit("err_rel_l2", 1e-3, "float16").limit == pytest.approx(2e-3 + 1e-9)
    assert naive_limit("err_dq_rel_l2", 1e-3, "bfloat16").limit == pytest.approx(3e-3 + 1e-9)
    for bad in (math.inf, math.nan):
        out = naive_limit("err_rel_l2", bad, "float16")
        assert (out.rule, out.limit) == ("roundoff", 8 * u16)
        dv = naive_limit("err_dv_rel_l2", bad, "float16")
        assert (dv.rule, dv.limit) == ("roundoff", 16 * u16)
        for metric in ("err_dq_rel_l2", "err_dk_rel_l2"):
            assert naive_limit(metric, bad, "float16").rule == "none"
        assert naive_limit("err_rel_l2", bad, "float16", "layer").rule == "none"
        assert naive_limit("err_rel_l2", bad, "int8").rule == "none"
    assert naive_limit("err_rel_l2", None, "float16").rule == "none"
    assert "8 u" in naive_limit("err_rel_l2", math.inf, "float16").describe()


def test_tolerance_imports_no_torch() -> None:
    code = "import sys, harness.measure.tolerance; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reference_records_the_overflow_and_the_rule_applied() -> None:
    q, k, v, dout = _qkv(torch.float16, seed=2, seq=64)
    case = Case(seq_len=64, num_heads=2, head_dim=64, dtype="float16", causal=True)
    sizes = {"max_rows": 4096, "chunk_rows": 32, "grad_max_seq": 4096}
    ref = AttentionWorkload().reference(case, Inputs({"q": q, "k": k, "v": v}), dout, **sizes)
    assert ref.naive_out_rel_l2 == math.inf
    assert all(e == math.inf for e in (ref.naive_grad_rel_l2 or {}).values())
    assert "roundoff rule" in ref.note and "not gated" in ref.note
    assert ref.note == fallback_note("attention", "float16", math.inf, math.inf)
    small = Inputs({"q": q / 60, "k": k / 60, "v": v})
    fine = AttentionWorkload().reference(case, small, dout, **sizes)
    assert math.isfinite(fine.naive_out_rel_l2) and fine.note == ""
