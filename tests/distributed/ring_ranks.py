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
