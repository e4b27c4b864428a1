"""The layer workload and the three layer implementations against the float64 layer: output, dx
and every weight gradient; low precision against vanilla_layer in the same precision; the float64
reference's row sampling; FLOP counts; activations stored by autograd (bpt_layer's point)."""

from __future__ import annotations

import pytest
import torch

from harness.case import Case
from harness.measure.flops import attention_fwd_flops, case_flops, layer_fwd_flops
from harness.registry import REGISTRY
from harness.run.task import Task
from harness.run.worker import execute
from harness.workloads.layer import PARAM_NAMES, LayerWorkload

LAYERS = ("vanilla_layer", "memeff_layer", "bpt_layer")
FP32_TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.double()).norm() / b.double().norm())


def _case(seq: int = 97, dtype: str = "float32", causal: bool = False, block: int = 32) -> Case:
    return Case(workload="layer", seq_len=seq, hidden=32, num_heads=4, head_dim=8,
                dtype=dtype, causal=causal, block_size=block)  # fmt: skip


def _run(name: str, case: Case, inputs, dout: torch.Tensor):
    bound = LayerWorkload().bind(REGISTRY.get(name), case, inputs, requires_grad=True)
    out = bound.forward()
    out.backward(dout)
    return out, {n: t.grad for n, t in bound.leaves.items()}


def _setup(case: Case):
    wl = LayerWorkload()
    inputs = wl.make_inputs(case, "cpu", seed=0)
    dout = torch.randn(inputs.tensors["x"].shape, generator=torch.Generator().manual_seed(1))
    dout = dout.to(case.torch_dtype)
    ref = wl.reference(case, inputs, dout, max_rows=4096, chunk_rows=64, grad_max_seq=4096)
    return inputs, dout, ref


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("seq", "block"), [(97, 32), (64, 64), (50, 4096)])
def test_fp32_layer_matches_float64(name: str, causal: bool, seq: int, block: int) -> None:
    case = _case(seq, causal=causal, block=block)
    inputs, dout, ref = _setup(case)
    out, grads = _run(name, case, inputs, dout)
    assert out.shape == inputs.tensors["x"].shape
    assert _rel(out, ref.out) <= FP32_TOL
    assert set(grads) == {"x", *PARAM_NAMES}
    for leaf, g in grads.items():
        assert _rel(g, ref.grads[leaf]) <= FP32_TOL, leaf


@pytest.mark.parametrize("name", ["memeff_layer", "bpt_layer"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_layer_near_vanilla(name: str, dtype: str) -> None:
    """Output within 2x of vanilla_layer's error in the same dtype; gradients within 3x
    (flash-attention's tests: 2-3x for gradients): bpt_layer's weight gradients add one term per
    query block in the weights' own dtype, as any blockwise or micro-batched step does."""
    case = _case(97, dtype=dtype, causal=True)
    inputs, dout, ref = _setup(case)
    out, grads = _run(name, case, inputs, dout)
    van_out, van_grads = _run("vanilla_layer", case, inputs, dout)
    assert out.dtype == case.torch_dtype
    assert _rel(out, ref.out) <= 2 * _rel(van_out, ref.out) + 1e-4
    for leaf, g in grads.items():
        assert _rel(g, ref.grads[leaf]) <= 3 * _rel(van_grads[leaf], ref.grads[leaf]) + 1e-4, leaf


def test_sampled_reference_rows_equal_the_full_reference() -> None:
    case = _case(80, causal=True)
    wl = LayerWorkload()
    inputs = wl.make_inputs(case, "cpu", seed=0)
    full = wl.reference(case, inputs, None, max_rows=4096, chunk_rows=16, grad_max_seq=0)
    part = wl.reference(case, inputs, None, max_rows=20, chunk_rows=16, grad_max_seq=0)
    assert full.rows is None and part.rows is not None and part.rows.numel() == 20
    torch.testing.assert_close(part.out, wl.select_rows(full.out, part.rows))


def test_inputs_are_seeded_and_x_comes_first() -> None:
    case = _case()
    a = LayerWorkload().make_inputs(case, "cpu", seed=3).tensors
    b = LayerWorkload().make_inputs(case, "cpu", seed=3).tensors
    assert next(iter(a)) == "x"  # the worker draws dout like the first tensor
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert a["w_ffn1"].shape == (4 * 32, 32) and a["w_qkv"].shape == (3 * 32, 32)


def test_layer_flops() -> None:
    case = _case(100)
    dense = 2 * 100 * (4 * 32**2 + 2 * 4 * 32**2)
    assert attention_fwd_flops(case) == 4 * 4 * 100 * 100 * 8
    assert layer_fwd_flops(case) == dense + attention_fwd_flops(case)
    # dense backward is 2x its forward (input and weight gradients), attention's is 2.5x
    assert case_flops(case, "fwd_bwd") == 3 * dense + 3.5 * attention_fwd_flops(case)


def _saved_activation_bytes(name: str, case: Case) -> int:
    """Bytes autograd keeps for backward, leaves (x, weights) excluded, storages counted once."""
    inputs = LayerWorkload().make_inputs(case, "cpu", seed=0)
    bound = LayerWorkload().bind(REGISTRY.get(name), case, inputs, requires_grad=True)
    leaf_ptrs = {t.untyped_storage().data_ptr() for t in bound.leaves.values()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in leaf_ptrs:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bound.forward()
    return sum(storages.values())


def test_bpt_layer_stores_at_most_half_of_memeff_layer() -> None:
    """The paper's point: no full-sequence FFN activation is stored (≈5 vs ≈15 b·s·h)."""
    case = Case(workload="layer", seq_len=1024, hidden=64, num_heads=4, head_dim=16,
                block_size=128)  # fmt: skip
    bpt = _saved_activation_bytes("bpt_layer", case)
    memeff = _saved_activation_bytes("memeff_layer", case)
    bsh_bytes = 1024 * 64 * 4
    assert memeff >= 10 * bsh_bytes
    assert bpt <= 0.5 * memeff
    assert bpt <= 7 * bsh_bytes


def test_layer_row_through_the_worker() -> None:
    case = _case(65, causal=True, block=16)
    task = Task(case=case, impl="bpt_layer", phase="fwd_bwd", device="cpu", seed=0,
                timing={"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0},
                accuracy={"ref_max_rows": 1024, "ref_chunk_rows": 64,
                          "grad_ref_max_seq": 2048})  # fmt: skip
    row = execute(task)
    assert row["status"] == "ok", row.get("reason")
    assert row["err_rel_l2"] <= FP32_TOL and row["err_dw_ffn1_rel_l2"] <= FP32_TOL
    assert row["flops"] == case_flops(case, "fwd_bwd")


def test_layer_impls_are_registered_for_the_layer_workload() -> None:
    assert set(LAYERS) <= set(REGISTRY.names("layer"))
    assert "bpt_layer" not in REGISTRY.names("attention")
