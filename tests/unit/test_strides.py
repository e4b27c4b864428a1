"""Inputs of any strides give the right answer (or a clear reason), in every implementation.

Views a user hands `harness.attention` as they are: a last dim with stride 3 (`unbind(-1)` of a
trailing qkv axis, which torch's CPU flash kernel used to read wrongly: bpt's relative error was
1.4), a transposed view, broadcast stride-0 dims (a head axis, and a last dim), and the packed
`(b, s, 3, h, d)` qkv of a fused projection. Output and dq, dk, dv against float64, within 1e-5
relative L2 in float32; the leaves are the strided views themselves. Ring (it needs a process
group in the registry) is checked through `ring_attention` at one rank and on two gloo ranks, and
its per-block kernels and sharding directly; the layers with strided x and weights.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
import torch
import torch.multiprocessing as mp

import harness
from harness.case import Case
from harness.measure.error import rel_l2
from harness.registry import REGISTRY
from harness.workloads.attention import naive_full
from harness.workloads.layer import PARAM_NAMES, layer_rows, make_layer_inputs

TOL = 1e-5
B, S, H, D = 1, 64, 2, 32


def _unbind_last(gen):
    return torch.randn(B, S, H, D, 3, generator=gen).unbind(-1)


def _transposed(gen):
    return [torch.randn(B, H, S, D, generator=gen).transpose(1, 2) for _ in range(3)]


def _broadcast(gen):
    q = torch.randn(B, S, H, D, generator=gen)
    k = torch.randn(B, S, 1, D, generator=gen).expand(B, S, H, D)  # one K head for all (GQA)
    v = torch.randn(B, S, H, 1, generator=gen).expand(B, S, H, D)  # stride 0 in the last dim
    return q, k, v


def _packed(gen):
    return torch.randn(B, S, 3, H, D, generator=gen).unbind(2)


KINDS: dict[str, Callable] = {"unbind_last": _unbind_last, "transposed": _transposed,
                              "broadcast": _broadcast, "packed": _packed}  # fmt: skip
ATTENTION = [i.name for i in REGISTRY.all() if i.workload == "attention"
             and not i.needs_process_group and not i.name.startswith("plugin_")]  # fmt: skip


def _inputs(kind: str, seed: int = 0) -> list[torch.Tensor]:
    views = KINDS[kind](torch.Generator().manual_seed(seed))
    leaves = [t.detach().requires_grad_(True) for t in views]  # detach keeps the strides
    if kind != "transposed":
        assert any(t.stride(-1) != 1 for t in leaves) or kind == "packed"
    return leaves


def _reference(leaves, dout, causal):
    ref = [t.detach().double().requires_grad_(True) for t in leaves]
    out = naive_full(*ref, causal=causal)
    return out.detach(), torch.autograd.grad(out, ref, dout.double())


def _params(name: str):
    """Each implementation × stride kind; compiled ones (seconds per new stride pattern) run one
    kind by default and the rest as `slow`."""
    for kind in KINDS:
        slow = "compiled" in REGISTRY.get(name).tags and kind != "unbind_last"
        yield pytest.param(name, kind, marks=[pytest.mark.slow] if slow else [],
                           id=f"{name}-{kind}")  # fmt: skip


@pytest.mark.parametrize(("name", "kind"), [p for n in ATTENTION for p in _params(n)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_strided_inputs_match_float64(name: str, kind: str, causal: bool) -> None:
    impl = REGISTRY.get(name)
    availability = impl.available("cpu")
    if not availability.ok:
        pytest.skip(availability.reason)
    reasons = impl.unsupported(Case(seq_len=S, num_heads=H, head_dim=D, causal=causal), "cpu")
    if reasons:
        pytest.skip("; ".join(reasons))
    leaves = _inputs(kind)
    dout = torch.randn(B, S, H, D, generator=torch.Generator().manual_seed(7))
    try:
        out = harness.attention(name, *leaves, causal=causal, block_size=16)
    except NotImplementedError as exc:  # flex: torch has no FlexAttention backward on CPU
        assert "backward" in str(exc)
        leaves = [t.detach() for t in leaves]
        out, dout = harness.attention(name, *leaves, causal=causal, block_size=16), None
    ref_out, ref_grads = _reference(leaves, torch.zeros_like(out) if dout is None else dout,
                                    causal)  # fmt: skip
    assert rel_l2(out, ref_out) <= TOL
    if dout is not None:
        grads = torch.autograd.grad(out, leaves, dout)
        for n, g, r in zip("qkv", grads, ref_grads, strict=True):
            assert rel_l2(g, r) <= TOL, f"d{n}"


def test_sdpa_flash_takes_a_strided_last_dim():
    """It used to raise a bare "No available kernel" here."""
    q, k, v = _inputs("unbind_last")
    out = harness.attention("sdpa_flash", q, k, v, causal=True)
    assert rel_l2(out, _reference([q, k, v], torch.zeros_like(out), True)[0]) <= TOL


# ---- ring: one rank, its blocks, its sharding, two gloo ranks -------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_ring_attention_one_rank_strided(kind: str, causal: bool) -> None:
    leaves = _inputs(kind, seed=1)
    dout = torch.randn(B, S, H, D, generator=torch.Generator().manual_seed(8))
    out = harness.ring_attention(*leaves, causal=causal, seq_layout="zigzag")
    ref_out, ref_grads = _reference(leaves, dout, causal)
    assert rel_l2(out, ref_out) <= TOL
    for n, g, r in zip("qkv", torch.autograd.grad(out, leaves, dout), ref_grads, strict=True):
        assert rel_l2(g, r) <= TOL, f"d{n}"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_block_kernels_take_every_operand_strided(causal: bool) -> None:
    """block_fwd / block_bwd (bpt's and ring's per-block kernels) called directly with operands
    whose last dim has stride 2, dout and out included, agree with the pure-torch path."""
    from implementations.blockwise_ops import block_bwd, block_fwd, fused_kind

    gen = torch.Generator().manual_seed(3)
    q, k, v, dout = (torch.randn(2, H, S, D, 2, generator=gen)[..., 0] for _ in range(4))
    assert fused_kind(q, S, S, causal) == "cpu_flash" and q.stride(-1) == 2
    out, lse = block_fwd(q, k, v, scale=D**-0.5, causal=causal)
    ref_out, ref_lse = block_fwd(q, k, v, scale=D**-0.5, causal=causal, kernel="torch")
    assert rel_l2(out, ref_out) <= TOL and rel_l2(lse, ref_lse) <= TOL
    strided_out = torch.empty(*out.shape, 3)[..., 1].copy_(out)
    grads = block_bwd(dout, q, k, v, strided_out, lse, scale=D**-0.5, causal=causal)
    ref = block_bwd(dout, q, k, v, out, lse, scale=D**-0.5, causal=causal, kernel="torch")
    for n, g, r in zip("qkv", grads, ref, strict=True):
        assert rel_l2(g, r) <= TOL, f"d{n}"


@pytest.mark.parametrize("seq_layout", ["contiguous", "striped", "zigzag"])
def test_shard_sequence_of_a_strided_tensor(seq_layout: str) -> None:
    packed = torch.randn(2, 48, 3, 4, 3)
    x = packed[..., 1]  # last-dim stride 3
    for rank in range(4):
        shard = harness.shard_sequence(x, seq_layout=seq_layout, rank=rank, world_size=4)
        dense = harness.shard_sequence(x.contiguous(), seq_layout=seq_layout, rank=rank,
                                       world_size=4)  # fmt: skip
        assert shard.is_contiguous() and torch.equal(shard, dense)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ring_rank(rank: int, world: int, port: int, out_path: str) -> None:
    import os
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        errors = {}
        for causal in (False, True):
            full = _inputs("unbind_last", seed=2)
            dout = torch.randn(B, S, H, D, generator=torch.Generator().manual_seed(9))
            ref_out, ref_grads = _reference(full, dout, causal)

            def shard(t: torch.Tensor) -> torch.Tensor:
                # a strided local shard: this rank's rows, with a last-dim stride of 3 again
                local = harness.shard_sequence(t.detach(), seq_layout="zigzag", rank=rank,
                                               world_size=world)  # fmt: skip
                return torch.stack([local] * 3, dim=-1)[..., 1]

            leaves = [shard(t).requires_grad_(True) for t in full]
            out = harness.ring_attention(*leaves, causal=causal, seq_layout="zigzag")
            out.backward(shard(dout))
            for key, local, ref in (("out", out.detach(), ref_out),
                                    *((f"d{n}", leaf.grad, r) for n, leaf, r
                                      in zip("qkv", leaves, ref_grads, strict=True))):  # fmt: skip
                parts = [torch.empty_like(local) for _ in range(world)]
                dist.all_gather(parts, local.contiguous())
                gathered = harness.gather_sequence(parts, seq_layout="zigzag", dim=1)
                errors[f"{'causal' if causal else 'full'}-{key}"] = rel_l2(gathered, ref)
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(errors, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ring_two_gloo_ranks_with_strided_shards(tmp_path) -> None:
    out_path = tmp_path / "errors.json"
    mp.start_processes(_ring_rank, args=(2, _free_port(), str(out_path)), nprocs=2,
                       start_method="fork")  # fmt: skip
    errors = json.loads(out_path.read_text())
    assert len(errors) == 8
    assert all(e <= TOL for e in errors.values()), errors


# ---- layers: strided x and weights ----------------------------------------------------------


LAYERS = [i.name for i in REGISTRY.all() if i.workload == "layer"
          and not i.name.startswith("plugin_")]  # fmt: skip


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_layers_take_strided_inputs_and_weights(name: str, causal: bool) -> None:
    case = Case(workload="layer", seq_len=40, hidden=32, num_heads=4, head_dim=8, causal=causal,
                block_size=16)  # fmt: skip
    dense = make_layer_inputs(case, "cpu", seed=0)
    strided = dict(dense)
    strided["x"] = torch.stack([dense["x"]] * 2, dim=-1)[..., 0]  # last-dim stride 2
    strided["w_qkv"] = dense["w_qkv"].t().contiguous().t()  # a transposed view
    strided["ln1_weight"] = torch.stack([dense["ln1_weight"]] * 3, dim=-1)[..., 2]
    assert strided["x"].stride(-1) == 2 and strided["w_qkv"].stride(-1) != 1
    leaves = {n: t.detach().requires_grad_(True) for n, t in strided.items()}
    y = REGISTRY.get(name).forward(leaves["x"], {n: leaves[n] for n in PARAM_NAMES}, causal=causal,
                                   block_size=16, num_heads=4)  # fmt: skip
    dout = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    y.backward(dout)
    ref_leaves = {n: t.detach().double().requires_grad_(True) for n, t in dense.items()}
    ref = layer_rows(ref_leaves["x"], {n: ref_leaves[n] for n in PARAM_NAMES}, torch.arange(40),
                     num_heads=4, causal=causal, compute_dtype=torch.float64,
                     chunk_rows=40)  # fmt: skip
    ref.backward(dout.double())
    assert rel_l2(y, ref) <= TOL
    for n in ("x", "w_qkv", "ln1_weight"):
        assert rel_l2(leaves[n].grad, ref_leaves[n].grad) <= TOL, n
