"""Every attention implementation against the float64 reference on the shapes and masks users
run: GQA 8:2 and 8:1, seqlen_q 64 / seqlen_k 256 and the reverse with both causal alignments,
a sliding window (16, 0), packed documents [30, 50, 17], each sparse pattern, head_dim_v and
softmax_scale; outputs and gradients, at odd lengths, through `harness.attention`.

An implementation that cannot run a case must say why (`Unavailable` with a reason); our own
kernels (naive, chunked, bpt) and SDPA's math backend must run every case.
"""

from __future__ import annotations

import pytest
import torch

import harness
from harness.errors import Unavailable
from harness.masks import MaskSpec
from harness.registry import REGISTRY
from harness.workloads.attention import rows_attention

MUST_RUN = ("naive", "chunked", "bpt", "sdpa_math")
TOL_FP32 = 2e-5  # relative L2 vs float64; float32 kernels land near 1e-7..1e-6

# name: (batch, seqlen_q, seqlen_k, heads, kv_heads, head_dim, head_dim_v, mask, causal, scale)
CASES = {
    "gqa_8to2_causal": (2, 97, 97, 8, 2, 32, 32, None, True, None),
    "mqa_8to1": (1, 97, 97, 8, 1, 32, 32, None, False, None),
    "q64_k256_causal": (1, 64, 256, 4, 4, 32, 32, None, True, None),
    "q256_k64_causal": (1, 256, 64, 4, 4, 32, 32, None, True, None),
    "q64_k256_top_left": (1, 64, 256, 4, 4, 32, 32, MaskSpec(kind="causal_top_left"), False,
                          None),
    "q256_k64_top_left": (1, 256, 64, 4, 4, 32, 32, MaskSpec(kind="causal_top_left"), False,
                          None),
    "window_16_0": (1, 97, 97, 4, 2, 32, 32, MaskSpec(kind="sliding_window", window=(16, 0)),
                    False, None),
    "documents": (1, 97, 97, 4, 4, 32, 32, MaskSpec(kind="document", doc_lens=(30, 50, 17)),
                  False, None),
    "documents_causal": (2, 97, 97, 4, 4, 32, 32,
                         MaskSpec(kind="document", doc_lens=(30, 50, 17)), True, None),
    "prefix_lm": (1, 97, 97, 4, 4, 32, 32, MaskSpec(kind="prefix_lm", prefix_len=20), False,
                  None),
    "strided": (1, 97, 97, 4, 4, 32, 32, MaskSpec(kind="strided", stride=8), True, None),
    "random_block": (1, 97, 97, 4, 4, 32, 32,
                     MaskSpec(kind="random_block", block=16, density=0.3), False, None),
    "block_sparse": (1, 97, 97, 4, 4, 32, 32, MaskSpec(kind="block_sparse", block=16, band=1),
                     True, None),
    "global_local": (1, 97, 97, 4, 4, 32, 32,
                     MaskSpec(kind="global_local", window=(8, 8), num_global=4), False, None),
    "head_dim_v_48": (1, 97, 97, 4, 2, 32, 48, None, True, None),
    "softmax_scale": (1, 97, 97, 4, 4, 32, 32, None, True, 0.3),
}  # fmt: skip


def _impls() -> list:
    params = []
    for name in REGISTRY.names("attention"):
        impl = REGISTRY.get(name)
        if impl.needs_process_group:
            continue  # ring: tests/unit/test_ring*.py run it on P ranks
        marks = [pytest.mark.slow] if name == "flex" else []  # a compile per case
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _inputs(spec: tuple, dtype=torch.float32):
    b, sq, sk, h, hkv, d, dv, _, _, _ = spec
    gen = torch.Generator().manual_seed(sum(spec[:7]))
    q = torch.randn(b, sq, h, d, generator=gen)
    k = torch.randn(b, sk, hkv, d, generator=gen)
    v = torch.randn(b, sk, hkv, dv, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", _impls())
def test_against_float64(name: str, case: str) -> None:
    spec = CASES[case]
    mask, causal, scale = spec[7], spec[8], spec[9]
    impl = REGISTRY.get(name)
    if not impl.available("cpu").ok:
        pytest.skip(impl.available("cpu").reason)
    q, k, v = _inputs(spec)
    backward = impl.supports_backward and name != "flex"  # flex has no CPU backward (torch 2.13)
    leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]
    try:
        out = harness.attention(name, *leaves, causal=causal, mask=mask, softmax_scale=scale,
                                block_size=32)  # fmt: skip
    except Unavailable as exc:
        assert name not in MUST_RUN, f"{name} must run {case}: {exc.reason}"
        assert exc.reason.strip(), "a refusal needs a reason"
        return
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref = rows_attention(*ref_leaves, torch.arange(q.shape[1]), causal=causal, mask=mask,
                         softmax_scale=scale, compute_dtype=torch.float64,
                         chunk_rows=64)  # fmt: skip
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < TOL_FP32, f"out rel L2 {_rel(out, ref):.2e}"
    if not backward:
        return
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out.backward(dout.to(out.dtype))
    ref.backward(dout)
    for leaf, ref_leaf, what in zip(leaves, ref_leaves, "qkv", strict=True):
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape
        err = _rel(leaf.grad, ref_leaf.grad)
        assert err < TOL_FP32 * 5, f"d{what} rel L2 {err:.2e}"


@pytest.mark.parametrize("name", ["naive", "chunked", "bpt", "sdpa_math", "sdpa_flash"])
def test_bfloat16_document_mask_within_twice_naive(name: str) -> None:
    """The tolerance rule on a low-precision masked case: error ≤ 2× naive bf16's (+ epsilon)."""
    spec = CASES["documents_causal"]
    q, k, v = _inputs(spec, torch.bfloat16)
    mask = spec[7]
    ref = rows_attention(q, k, v, torch.arange(97), causal=True, mask=mask,
                         compute_dtype=torch.float64, chunk_rows=97)  # fmt: skip
    naive = rows_attention(q, k, v, torch.arange(97), causal=True, mask=mask,
                           compute_dtype=torch.bfloat16, chunk_rows=97)  # fmt: skip
    out = harness.attention(name, q, k, v, causal=True, mask=mask, block_size=32)
    assert _rel(out, ref) <= 2 * _rel(naive, ref) + 1e-3


def test_bottom_right_causal_rows_without_keys_are_zero_everywhere() -> None:
    q, k, v = _inputs(CASES["q256_k64_causal"])
    for name in MUST_RUN:
        out = harness.attention(name, q, k, v, causal=True, block_size=32)
        assert torch.isfinite(out).all(), name
        assert not out[:, :192].any(), name  # queries 0..191 precede every key
        assert out[:, 192:].abs().sum() > 0, name


@pytest.mark.parametrize(
    ("shapes", "kwargs", "message"),
    [
        (((1, 8, 8, 16), (1, 8, 3, 16), (1, 8, 3, 16)), {}, "num_kv_heads 3 .* must divide"),
        (((1, 8, 4, 16), (1, 8, 4, 8), (1, 8, 4, 16)), {}, "shapes must be q"),
        (((1, 8, 4, 16), (1, 9, 4, 16), (1, 8, 4, 16)), {}, "shapes must be q"),
        (((1, 8, 4, 16),) * 3, {"window": (4, 0), "mask": "causal"}, "either window= or mask="),
        (((1, 8, 4, 16),) * 3, {"softmax_scale": -1.0}, "softmax_scale must be a positive"),
        (((1, 8, 4, 16),) * 3, {"mask": {"kind": "document", "doc_lens": [3, 4]}},
         "doc_lens sum to 7, but seqlen_k is 8"),
        (((1, 8, 4, 16),) * 3, {"mask": "sliding_window"}, "needs 'window'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_value_error(shapes, kwargs, message) -> None:
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        harness.attention("bpt", q, k, v, **kwargs)


@pytest.mark.parametrize("name", MUST_RUN + ("sdpa_flash",))
def test_float16_rows_without_keys_leave_every_gradient_finite(name: str) -> None:
    """Rows with no key whose raw float16 scores overflow must not spread NaN into dk, dv."""
    q = torch.randn(1, 4, 1, 64).half()
    q[0, :2] = 40.0  # rows 0 and 1 precede both keys (Sq 4 > Sk 2, bottom-right causal)
    k = torch.full((1, 2, 1, 64), 40.0).half()
    v = torch.randn(1, 2, 1, 64).half()
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    out = harness.attention(name, *leaves, causal=True)
    out.float().sum().backward()
    assert not out[0, :2].any()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all(), name
