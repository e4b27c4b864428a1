"""Every decode implementation against float64 references: contiguous and paged (shuffled pages,
a cache length that is not a multiple of the page), ragged lengths, GQA 8:2 and 8:1, seqlen_q 1
and 4 (bottom-right causal among the new tokens, and a query row with no key), head_dim_v !=
head_dim, softmax_scale; float32 and bfloat16; through the harness worker too."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from harness.case import Case
from harness.measure.error import rel_l2
from harness.registry import REGISTRY, declared_reasons
from harness.run.task import Task
from harness.run.worker import execute
from harness.workloads.decode import attend_cache
from harness.workloads.kv_cache import KVCache, make_cache
from implementations.decode_split_kv import decode_split_kv, split_tokens

DECODE = REGISTRY.names("decode")
HEADS, DIM, CACHE = 8, 32, 100


@dataclass(frozen=True)
class Shape:
    lens: tuple[int, ...]
    kv_heads: int
    sq: int = 1
    page: int | None = None
    dim_v: int = DIM
    scale: float | None = None

    @property
    def id(self) -> str:
        cache = "contig" if self.page is None else f"page{self.page}"
        extra = (f"-dv{self.dim_v}" if self.dim_v != DIM else "") + (
            f"-scale{self.scale}" if self.scale else "")  # fmt: skip
        lens = "x".join(map(str, self.lens))
        return f"{cache}-len{lens}-kv{self.kv_heads}-q{self.sq}{extra}"


F32 = [
    Shape((CACHE, CACHE), 2),
    Shape((CACHE, CACHE), 2, page=16),
    Shape((CACHE, 37, 3), 1, sq=4),  # ragged; the third sequence has a query row with no key
    Shape((CACHE, 61), 2, sq=4, page=16, dim_v=48, scale=0.3),
    Shape((CACHE, 45), 1, dim_v=48, scale=0.3),
    Shape((58, CACHE, 17), 1, page=16),
]
BF16 = [Shape((CACHE, 37), 2, sq=4), Shape((58, CACHE), 1, page=16)]


def _inputs(shape: Shape, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, KVCache]:
    gen = torch.Generator().manual_seed(seed)
    batch = len(shape.lens)

    def draw(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen).to(dtype)

    q = draw(batch, shape.sq, HEADS, DIM)
    k = draw(batch, CACHE, shape.kv_heads, DIM)
    v = draw(batch, CACHE, shape.kv_heads, shape.dim_v)
    lens = torch.tensor(shape.lens)
    return q, make_cache(k, v, lens, page_size=shape.page, seed=seed + 1)


def _loop_reference(q: torch.Tensor, cache: KVCache, scale: float | None) -> torch.Tensor:
    """One query row at a time, keys read through the block table by hand (float64)."""
    batch, sq, heads, dim = q.shape
    group = heads // cache.num_kv_heads
    scale = scale if scale is not None else dim**-0.5
    out = torch.zeros(batch, sq, heads, cache.head_dim_v, dtype=torch.float64)
    for b in range(batch):
        n = int(cache.seqlens[b])
        if cache.block_table is None:
            keys, values = cache.k[b, :n], cache.v[b, :n]
        else:
            page = cache.page_size
            rows = [(int(cache.block_table[b, j // page]), j % page) for j in range(n)]
            keys = torch.stack([cache.k[p, o] for p, o in rows])
            values = torch.stack([cache.v[p, o] for p, o in rows])
        for i in range(sq):
            last = n - sq + i  # the query's position: it sees keys 0 .. last
            if last < 0:
                continue
            for h in range(heads):
                kh = keys[: last + 1, h // group].double()
                vh = values[: last + 1, h // group].double()
                p = torch.softmax((kh @ q[b, i, h].double()) * scale, dim=0)
                out[b, i, h] = p @ vh
    return out


def _run(name: str, q: torch.Tensor, cache: KVCache, shape: Shape) -> torch.Tensor:
    impl = REGISTRY.get(name)
    case = Case(workload="decode", batch=len(shape.lens), seqlen_q=shape.sq, seqlen_k=CACHE,
                num_heads=HEADS, num_kv_heads=shape.kv_heads, head_dim=DIM,
                head_dim_v=shape.dim_v, softmax_scale=shape.scale, page_size=shape.page,
                cache_dist="ragged" if len(set(shape.lens)) > 1 else "fixed",
                dtype=str(q.dtype).removeprefix("torch."))  # fmt: skip
    availability = impl.available("cpu")
    if not availability.ok:
        pytest.skip(availability.reason)
    reasons = declared_reasons(impl, case) + impl.unsupported(case, "cpu")
    if reasons:
        pytest.skip("; ".join(reasons))
    kwargs = {} if shape.scale is None else {"softmax_scale": shape.scale}
    return impl.forward(q, cache, **kwargs)


@pytest.mark.parametrize("shape", F32, ids=lambda s: s.id)
@pytest.mark.parametrize("name", DECODE)
def test_float32_matches_float64_references(name: str, shape: Shape) -> None:
    q, cache = _inputs(shape, torch.float32)
    out = _run(name, q, cache, shape)
    ref = attend_cache(q, cache, compute_dtype=torch.float64, softmax_scale=shape.scale)
    loop = _loop_reference(q, cache, shape.scale)
    assert rel_l2(ref, loop) < 1e-12  # the two references agree
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert rel_l2(out, ref) <= 1e-5
    if shape.sq > min(shape.lens):  # a query row with no key is 0
        b = shape.lens.index(min(shape.lens))
        assert torch.equal(out[b, : shape.sq - shape.lens[b]], torch.zeros_like(out[b, :1]))


@pytest.mark.parametrize("shape", BF16, ids=lambda s: s.id)
@pytest.mark.parametrize("name", DECODE)
def test_bfloat16_within_twice_naive(name: str, shape: Shape) -> None:
    q, cache = _inputs(shape, torch.bfloat16)
    out = _run(name, q, cache, shape)
    ref = attend_cache(q, cache, compute_dtype=torch.float64, softmax_scale=shape.scale)
    naive = attend_cache(q, cache, compute_dtype=torch.bfloat16, softmax_scale=shape.scale)
    assert out.dtype == torch.bfloat16
    assert rel_l2(out, ref) <= 2 * rel_l2(naive, ref) + 1e-4


@pytest.mark.parametrize("num_splits", [1, 3, 7, 100])
@pytest.mark.parametrize("shape", F32 + [Shape((CACHE, 37, 3), 2, sq=4, page=32)],
                         ids=lambda s: s.id)  # fmt: skip
def test_split_kv_any_number_of_splits(shape: Shape, num_splits: int) -> None:
    q, cache = _inputs(shape, torch.float32, seed=3)
    out = decode_split_kv(q, cache, softmax_scale=shape.scale, num_splits=num_splits)
    ref = attend_cache(q, cache, compute_dtype=torch.float64, softmax_scale=shape.scale)
    assert rel_l2(out, ref) <= 1e-5


def test_split_kv_float64_and_shared_pages() -> None:
    shape = Shape((CACHE, 37), 2, sq=4, page=32)
    q, cache = _inputs(shape, torch.float64)
    ref = attend_cache(q, cache, compute_dtype=torch.float64)
    assert rel_l2(decode_split_kv(q, cache), ref) < 1e-12
    # prefix sharing: sequence 1 reuses sequence 0's first page (its keys change accordingly)
    table = cache.block_table.clone()
    table[1, 0] = table[0, 0]
    shared = KVCache(k=cache.k, v=cache.v, seqlens=cache.seqlens, block_table=table,
                     page_size=cache.page_size)  # fmt: skip
    ref = attend_cache(q, shared, compute_dtype=torch.float64)
    assert rel_l2(decode_split_kv(q, shared), ref) < 1e-12


def test_split_rule() -> None:
    # chunks divide the cache, stay in [512, 4096] unless the cache is shorter, and give enough
    # splits for 4 items per worker
    assert split_tokens(32768, 1, 1, 2) == 4096
    assert split_tokens(32768, 8, 1, 2) == 4096
    assert split_tokens(8192, 1, 1, 2) == 1024
    assert split_tokens(32768, 1, 1, 132) == 512
    assert split_tokens(100, 2, 2, 2) == 100
    assert split_tokens(100, 2, 2, 2, num_splits=7) == 20
    assert split_tokens(97, 1, 1, 2, num_splits=4) in (1, 97)  # a prime: only itself or 1
    assert 32768 % split_tokens(32768, 3, 1, 16) == 0


def test_block_table_outside_pool_is_a_clear_error() -> None:
    shape = Shape((CACHE, 37), 2, page=16)
    q, cache = _inputs(shape, torch.float32)
    table = cache.block_table.clone()
    table[1, 1] = cache.k.shape[0] + 5
    bad = KVCache(k=cache.k, v=cache.v, seqlens=cache.seqlens, block_table=table,
                  page_size=cache.page_size)  # fmt: skip
    with pytest.raises(ValueError, match=r"block_table\[1\]\[1\] = 19 points outside"):
        bad.check()
    with pytest.raises(ValueError, match="points outside the page pool"):
        decode_split_kv(q, bad)
    small = KVCache(k=cache.k[:5], v=cache.v[:5], seqlens=cache.seqlens,
                    block_table=cache.block_table, page_size=16)  # fmt: skip
    with pytest.raises(ValueError, match="points outside the page pool"):
        decode_split_kv(q, small)


TIMING = {"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0}
ACCURACY = {"ref_max_rows": 1024, "ref_chunk_rows": 64, "grad_ref_max_seq": 2048}


@pytest.mark.parametrize("page_size", [None, 16])
@pytest.mark.parametrize("name", DECODE)
def test_worker_rows(name: str, page_size: int | None) -> None:
    case = Case(workload="decode", batch=3, seqlen_q=2, seqlen_k=CACHE, num_heads=HEADS,
                num_kv_heads=2, head_dim=DIM, page_size=page_size,
                cache_dist="ragged")  # fmt: skip
    row = execute(Task(case=case, impl=name, phase="fwd", device="cpu", seed=0, timing=TIMING,
                       accuracy=ACCURACY))  # fmt: skip
    impl = REGISTRY.get(name)
    if not impl.available("cpu").ok or declared_reasons(impl, case) + impl.unsupported(case, "cpu"):
        assert row["status"] in ("skipped", "unsupported"), row
        assert row["reason"]
        return
    assert row["status"] == "ok", row
    assert row["err_rel_l2"] <= 1e-5
