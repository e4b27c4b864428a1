"""The decode workload: seqlen_q new tokens per sequence attend to a KV cache of up to
seqlen_k (`cache_len`) tokens — the memory-bound half of long context.

Inputs: q (batch, seqlen_q, num_heads, head_dim) and a `KVCache` (harness/workloads/kv_cache.py),
contiguous or paged with its pages in a seeded shuffled order; per-sequence lengths are all
seqlen_k (`cache_dist: fixed`) or seeded between seqlen_k / 8 and seqlen_k (`ragged`; never below
seqlen_q). Query i of sequence b sits at position seqlens[b] - seqlen_q + i and sees keys up to it
(bottom-right causal among the new tokens). Forward only: decode has no backward.

The float64 reference reads every sequence's keys through the same cache (`KVCache.gather`, so a
wrong page walk shows), GQA by repeating kv heads; "naive in the case's dtype" is the same
arithmetic in the low precision, the tolerance rule's yardstick. Bytes and FLOPs
(`harness/measure/flops.py`) count each sequence's real length.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.case import Case
from harness.registry import Impl
from harness.workloads.base import Bound, Inputs, Reference
from harness.workloads.kv_cache import KVCache, make_cache

RAGGED_SEED = 0  # the lengths are part of the case (its FLOPs and bytes), not of the run's seed


def decode_seqlens(case: Case) -> list[int]:
    """Each sequence's cache length: seqlen_k, or seeded in
    [max(seqlen_q, seqlen_k / 8), seqlen_k]."""
    if case.cache_dist == "fixed":
        return [case.sk] * case.batch
    low = max(case.sq, case.sk // 8, 1)
    gen = torch.Generator().manual_seed(RAGGED_SEED)
    return torch.randint(low, case.sk + 1, (case.batch,), generator=gen).tolist()


def cache_of(inputs: Inputs) -> KVCache:
    t = inputs.tensors
    table = t.get("block_table")
    page = int(t["k"].shape[1]) if table is not None else None
    return KVCache(k=t["k"], v=t["v"], seqlens=t["seqlens"], block_table=table, page_size=page)


def attend_cache(q_bshd: torch.Tensor, cache: KVCache, *, compute_dtype: torch.dtype,
                 softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    """Decode attention one sequence at a time in `compute_dtype` (the reference's arithmetic)."""
    batch, sq, heads, dim = q_bshd.shape
    group = heads // cache.num_kv_heads
    scale = softmax_scale if softmax_scale is not None else dim**-0.5
    outs = []
    for b in range(batch):
        k, v = (t.to(compute_dtype).transpose(0, 1).repeat_interleave(group, 0)
                for t in cache.gather(b))  # fmt: skip
        n = k.shape[1]
        q = q_bshd[b].to(compute_dtype).transpose(0, 1)  # (heads, sq, dim)
        s = (q @ k.transpose(-1, -2)) * scale
        pos = n - sq + torch.arange(sq, device=s.device)
        allowed = torch.arange(n, device=s.device)[None, :] <= pos[:, None]
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        p = p.masked_fill(~allowed.any(-1)[:, None], 0.0)  # sq > n: rows with no key are 0
        outs.append((p @ v).transpose(0, 1))
    return torch.stack(outs)


class DecodeWorkload:
    def make_inputs(self, case: Case, device: str, seed: int) -> Inputs:
        gen = torch.Generator().manual_seed(seed)

        def draw(*shape: int) -> torch.Tensor:
            t = torch.randn(shape, generator=gen, dtype=torch.float32)
            return t.to(dtype=case.torch_dtype, device=device)

        q = draw(case.batch, case.sq, case.num_heads, case.head_dim)
        k = draw(case.batch, case.sk, case.kv_heads, case.head_dim)
        v = draw(case.batch, case.sk, case.kv_heads, case.dim_v)
        seqlens = torch.tensor(decode_seqlens(case), dtype=torch.int32)
        cache = make_cache(k, v, seqlens, page_size=case.page_size, seed=seed + 1)
        cache.check()  # once per case, untimed: a bad table is a clear error, not a wrong read
        tensors = {"q": q, "k": cache.k, "v": cache.v, "seqlens": cache.seqlens}
        if cache.block_table is not None:
            tensors["block_table"] = cache.block_table
        return Inputs(tensors=tensors)

    def output_shape(self, case: Case) -> tuple[int, ...]:
        return (case.batch, case.sq, case.num_heads, case.dim_v)

    def bind(self, impl: Impl, case: Case, inputs: Inputs, *, requires_grad: bool,
             forward_kwargs: dict[str, Any] | None = None) -> Bound:  # fmt: skip
        if requires_grad:
            raise ValueError("the decode workload is forward only; phase must be fwd")
        options = dict(forward_kwargs or {})
        if case.softmax_scale is not None:
            options["softmax_scale"] = case.softmax_scale
        q, cache = inputs.tensors["q"], cache_of(inputs)

        def forward() -> torch.Tensor:
            return impl.forward(q, cache, **options)

        return Bound(forward=forward)

    def reference(
        self, case: Case, inputs: Inputs, dout: torch.Tensor | None, *, max_rows: int,
        chunk_rows: int, grad_max_seq: int,
    ) -> Reference:  # fmt: skip
        from harness.measure.error import rel_l2
        from harness.measure.tolerance import fallback_note

        cpu = Inputs({n: t.detach().cpu() for n, t in inputs.tensors.items()})
        q, cache = cpu.tensors["q"], cache_of(cpu)
        ref = attend_cache(q, cache, compute_dtype=torch.float64, softmax_scale=case.softmax_scale)
        naive = attend_cache(q, cache, compute_dtype=q.dtype, softmax_scale=case.softmax_scale)
        err = rel_l2(naive, ref)
        return Reference(out=ref, rows=None, grads=None, naive_out_rel_l2=err,
                         note=fallback_note("attention", case.dtype, err, None))  # fmt: skip

    def select_rows(self, out: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return out.detach()
