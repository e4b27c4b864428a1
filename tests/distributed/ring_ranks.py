"""Rank bodies for the gloo ring tests (importable, so torch.multiprocessing can spawn them)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from harness.measure.error import rel_l2
from implementations.ring import gather_sequence, ring_attention, shard_sequence
from implementations.ring.seq_layouts import LAYOUTS

SHAPE = (2, 48, 3, 16)  # (batch, seq, heads, head_dim); 48 divides by 2P for P = 2, 3, 4


def reference(causal: bool, seed: int = 0):
    """float64 out and grads of naive attention on the full sequence, with the fp32 inputs."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(SHAPE, generator=gen) for _ in range(4))
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    q64, k64, v64 = (t.transpose(1, 2) for t in leaves)
    s = q64 @ k64.transpose(-1, -2) / SHAPE[-1] ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(SHAPE[1], SHAPE[1], dtype=torch.bool).triu(1), float("-inf"))
    out = (torch.softmax(s, -1) @ v64).transpose(1, 2)
    grads = torch.autograd.grad(out, leaves, dout.double())
    return (q, k, v, dout), out.detach(), grads


def _gather(t: torch.Tensor, seq_layout: str) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return gather_sequence(parts, seq_layout=seq_layout, dim=1)


def errors_on_rank(rank: int, world: int) -> dict[str, float]:
    """Relative L2 errors of the gathered output and grads, per (layout, causal)."""
    result = {}
    for causal in (False, True):
        (q, k, v, dout), ref_out, ref_grads = reference(causal)
        for seq_layout in LAYOUTS:
            local = [shard_sequence(t, seq_layout=seq_layout, rank=rank, world_size=world)
                     for t in (q, k, v, dout)]  # fmt: skip
            leaves = [t.clone().requires_grad_(True) for t in local[:3]]
            out = ring_attention(*leaves, causal=causal, seq_layout=seq_layout)
            out.backward(local[3])
            key = f"{seq_layout}-{'causal' if causal else 'full'}"
            result[f"{key}-out"] = rel_l2(_gather(out.detach(), seq_layout), ref_out)
            for name, leaf, ref in zip("qkv", leaves, ref_grads, strict=True):
                result[f"{key}-d{name}"] = rel_l2(_gather(leaf.grad, seq_layout), ref)
    return result


def run_rank(rank: int, world: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        result = errors_on_rank(rank, world)
        if rank == 0:
            Path(out_path).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


# ---- padding, GQA and unequal shards (tests/unit/test_ring.py) ----------------------------------

# (seq_len, num_kv_heads, head_dim_v, softmax_scale): lengths never a multiple of P or 2P for
# P = 2, 3, 4 (1: most ranks hold only padding), with MHA, GQA and MQA (4 query heads, head_dim 8)
PADDED_CASES = ((15, 4, 8, None), (17, 2, 4, 0.5), (1, 1, 8, None))


def reference_gqa(seq_len: int, num_kv_heads: int, causal: bool, seed: int = 0,
                  head_dim_v: int = 8, softmax_scale: float | None = None):  # fmt: skip
    """float64 out and grads of naive GQA attention on (1, seq_len, 4, 8) queries."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, seq_len, 4, 8, generator=gen)
    dout = torch.randn(1, seq_len, 4, head_dim_v, generator=gen)
    k = torch.randn(1, seq_len, num_kv_heads, 8, generator=gen)
    v = torch.randn(1, seq_len, num_kv_heads, head_dim_v, generator=gen)
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    groups = 4 // num_kv_heads
    q64, k64, v64 = (t.transpose(1, 2) for t in leaves)
    k64, v64 = (t.repeat_interleave(groups, dim=1) for t in (k64, v64))
    s = q64 @ k64.transpose(-1, -2) * (softmax_scale or 8**-0.5)
    if causal:
        s = s.masked_fill(torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1), float("-inf"))
    out = (torch.softmax(s, -1) @ v64).transpose(1, 2)
    grads = torch.autograd.grad(out, leaves, dout.double())
    return (q, k, v, dout), out.detach(), grads


class _Bytes:
    def __init__(self) -> None:
        self.sent: list[int] = []

    def started(self, nbytes: int) -> None:
        self.sent.append(nbytes)

    def wait(self, waits) -> None:
        waits()


def padded_errors_on_rank(rank: int, world: int) -> dict[str, float]:
    """Errors of lengths the layouts cannot split (padded and masked), GQA heads, head_dim_v and
    softmax_scale mixed in; plus
    the largest output/gradient magnitude on padded rows (must be 0) and bytes a step per
    num_kv_heads."""
    from implementations.ring.ring_exchange import observe
    from implementations.ring.seq_layouts import valid_len

    result: dict[str, float] = {}
    for seq_len, kv_heads, head_dim_v, scale in PADDED_CASES:
        for causal in (False, True):
            (q, k, v, dout), ref_out, ref_grads = reference_gqa(seq_len, kv_heads, causal,
                                                                head_dim_v=head_dim_v,
                                                                softmax_scale=scale)  # fmt: skip
            for seq_layout in LAYOUTS:
                local = [shard_sequence(t, seq_layout=seq_layout, rank=rank, world_size=world)
                         for t in (q, k, v, dout)]  # fmt: skip
                real = valid_len(seq_len, seq_layout=seq_layout, rank=rank, world_size=world)
                local[3][:, real:] = 1.0  # a gradient on padded rows must change nothing
                leaves = [t.clone().requires_grad_(True) for t in local[:3]]
                bytes_seen = _Bytes()
                with observe(bytes_seen):
                    out = ring_attention(*leaves, causal=causal, seq_layout=seq_layout,
                                         seq_len=seq_len, softmax_scale=scale)  # fmt: skip
                    out.backward(local[3])
                key = f"S{seq_len}-kv{kv_heads}-{seq_layout}-{'causal' if causal else 'full'}"
                mine = [out.detach(), *(leaf.grad for leaf in leaves)]
                full = [_gather_padded(t, seq_layout, seq_len) for t in mine]
                for name, got, ref in zip(["out", "dq", "dk", "dv"], full, [ref_out, *ref_grads],
                                          strict=True):  # fmt: skip
                    result[f"{key}-{name}"] = rel_l2(got, ref)
                pads = [out.detach()[:, real:], *(leaf.grad[:, real:] for leaf in leaves)]
                result[f"{key}-padmax"] = max((p.abs().max().item() for p in pads if p.numel()),
                                              default=0.0)  # fmt: skip
                result[f"{key}-bytes_per_step"] = max(bytes_seen.sent, default=0)
    return result


def _gather_padded(t: torch.Tensor, seq_layout: str, seq_len: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return gather_sequence(parts, seq_layout=seq_layout, dim=1, seq_len=seq_len)


def unequal_errors_on_rank(rank: int, world: int) -> dict[str, str]:
    """The error each rank raises for `torch.chunk` shards of an odd length (unequal lengths),
    then a run with equal shards (the group must still work afterwards)."""
    x = torch.randn(1, 4 * world - 1, 2, 8, generator=torch.Generator().manual_seed(0))
    result = {}
    for seq_layout in LAYOUTS:
        mine = torch.chunk(x, world, dim=1)[rank]
        try:
            ring_attention(mine, mine, mine, causal=True, seq_layout=seq_layout)
            result[seq_layout] = "no error"
        except ValueError as exc:
            result[seq_layout] = str(exc)
    ok = ring_attention(*(shard_sequence(x, seq_layout="zigzag", rank=rank, world_size=world),) * 3,
                        causal=True, seq_len=x.shape[1])  # fmt: skip
    result["after"] = str(tuple(ok.shape))
    return result


def run_named(rank: int, world: int, port: int, out_path: str, body: str) -> None:
    """Run the rank body `body` of this module; every rank's result lands in out_path as a list."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        result = globals()[body](rank, world)
        everyone: list = [None] * world
        dist.all_gather_object(everyone, result)
        if rank == 0:
            Path(out_path).write_text(json.dumps(everyone))
    finally:
        dist.destroy_process_group()
