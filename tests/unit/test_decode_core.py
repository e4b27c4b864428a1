"""The decode workload's core: the KV cache (contiguous, paged with shuffled pages, ragged
lengths), its float64 reference, the cache-size formula against the allocation, decode FLOPs and
bytes by hand, and the suite's decode rules."""

from __future__ import annotations

import math

import pytest
import torch

from harness.case import Case
from harness.errors import SuiteError
from harness.measure.flops import case_flops, decode_bytes, kv_cache_bytes
from harness.suite import parse_suite
from harness.workloads.decode import DecodeWorkload, attend_cache, cache_of, decode_seqlens
from harness.workloads.kv_cache import KVCache, make_cache


def _kv(batch=3, length=100, heads=2, dim=8, dim_v=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, length, heads, dim, generator=gen),
            torch.randn(batch, length, heads, dim_v, generator=gen))  # fmt: skip


def test_paged_cache_shuffles_pages_and_reads_back_every_sequence() -> None:
    k, v = _kv()
    lens = torch.tensor([100, 37, 64])
    cache = make_cache(k, v, lens, page_size=16, seed=3)
    assert cache.paged and cache.k.shape == (3 * 7, 16, 2, 8) and cache.capacity == 112
    table = cache.block_table.flatten().tolist()
    assert sorted(table) == list(range(21)) and table != sorted(table)  # shuffled, each page once
    for b, n in enumerate(lens.tolist()):
        kb, vb = cache.gather(b)
        assert torch.equal(kb, k[b, :n]) and torch.equal(vb, v[b, :n])
    kc, vc = cache.contiguous()
    assert torch.equal(kc[0], k[0]) and torch.equal(kc[1, :37], k[1, :37])
    cache.check()


def test_a_bad_block_table_or_length_is_one_clear_error() -> None:
    k, v = _kv()
    cache = make_cache(k, v, torch.tensor([100, 37, 64]), page_size=16, seed=3)
    bad = KVCache(k=cache.k, v=cache.v, seqlens=cache.seqlens,
                  block_table=cache.block_table.clone(), page_size=16)  # fmt: skip
    bad.block_table[1, 2] = 21
    with pytest.raises(ValueError, match=r"block_table\[1\]\[2\] = 21 points outside the page "
                                         r"pool of 21 pages; allowed: 0 \.\. 20"):  # fmt: skip
        bad.check()
    # a page past the sequence's length is never read, so it may hold anything
    bad.block_table[1, 2], bad.block_table[1, 6] = cache.block_table[1, 2], -1
    bad.check()
    long = KVCache(k=k, v=v, seqlens=torch.tensor([100, 101, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cache seqlens\[1\] = 101; allowed: 1 \.\. 100"):
        long.check()


def _by_loop(q, cache: KVCache, scale: float) -> torch.Tensor:
    """One query at a time in float64, written from the workload's definition."""
    batch, sq, heads, _ = q.shape
    group = heads // cache.num_kv_heads
    out = torch.zeros(batch, sq, heads, cache.head_dim_v, dtype=torch.float64)
    for b in range(batch):
        kb, vb = (t.double() for t in cache.gather(b))
        n = kb.shape[0]
        for i in range(sq):
            keys = list(range(min(n - sq + i + 1, n)))
            if not keys:
                continue
            for h in range(heads):
                s = kb[keys, h // group] @ q[b, i, h].double() * scale
                out[b, i, h] = torch.softmax(s, 0) @ vb[keys, h // group]
    return out


@pytest.mark.parametrize("page_size", [None, 16])
@pytest.mark.parametrize("sq", [1, 4])
def test_reference_is_decode_attention_query_by_query(page_size, sq) -> None:
    k, v = _kv(heads=2, dim=8, dim_v=12)
    cache = make_cache(k, v, torch.tensor([100, 37, 5]), page_size=page_size, seed=1)
    q = torch.randn(3, sq, 8, 8, generator=torch.Generator().manual_seed(9))
    got = attend_cache(q, cache, compute_dtype=torch.float64, softmax_scale=0.3)
    torch.testing.assert_close(got, _by_loop(q, cache, 0.3), rtol=1e-12, atol=1e-12)


def test_decode_cases_inputs_and_formulas() -> None:
    case = Case(workload="decode", batch=4, seq_len=1000, seqlen_q=2, num_heads=8, num_kv_heads=2,
                head_dim=16, page_size=64, cache_dist="ragged")  # fmt: skip
    assert case.name == "decode-b4-q2-cache1000-h8-kv2-d16-float32-page64-ragged"
    lens = decode_seqlens(case)
    assert lens == decode_seqlens(case) and all(125 <= n <= 1000 for n in lens)
    inputs = DecodeWorkload().make_inputs(case, "cpu", seed=0)
    cache = cache_of(inputs)
    assert cache.seqlens.tolist() == lens and cache.page_size == 64
    # the formula's pool (whole pages) is the allocation
    storage = sum(inputs.tensors[n].untyped_storage().nbytes() for n in ("k", "v"))
    assert abs(storage - kv_cache_bytes(case)) <= 0.05 * storage
    pairs = sum(sum(min(n - 2 + i + 1, n) for i in range(2)) for n in lens)
    assert case_flops(case, "fwd") == 2 * 8 * pairs * (16 + 16)
    assert decode_bytes(case) == 4 * (sum(lens) * 2 * 32 + 4 * 2 * 8 * 32)
    contiguous = Case(workload="decode", batch=2, seq_len=4096, num_heads=8, num_kv_heads=1,
                      head_dim=128)  # fmt: skip
    assert kv_cache_bytes(contiguous) == 2 * 4 * 2 * 4096 * 1 * 128  # 2·p·B·S·D (L = T = 1)
    # arithmetic intensity of single-token GQA decode: 2·H·(D + Dv) / (Hkv·(D + Dv)·p) = 4 here
    assert contiguous.sq == 1
    assert math.isclose(case_flops(contiguous, "fwd") / decode_bytes(contiguous), 4.0, rel_tol=0.01)


def _suite(**sweep):
    return {"name": "d", "workload": "decode", "implementations": ["decode_naive"],
            "sweep": {"cache_len": [64], **sweep}}  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_suite(phase=["fwd_bwd"]), "the decode workload is forward only; allowed: fwd"),
        (_suite(seqlen_q=[128]), "128 new tokens do not fit a cache of 64"),
        (_suite(mask=["causal"]), "sweep.mask: the decode workload takes mask"),
        ({"name": "a", "implementations": ["naive"], "sweep": {"page_size": [16]}},
         "only the decode workload takes page_size"),
    ],
)  # fmt: skip
def test_decode_suite_rules(data, message) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(data)


def test_contiguous_view_of_a_paged_cache_checks_used_entries_and_ignores_the_rest() -> None:
    k, v = _kv(batch=2, length=8, heads=1, dim=4, dim_v=4)
    pool_k = torch.cat([k[0].view(2, 4, 1, 4), k[1, :4].view(1, 4, 1, 4)])
    pool_v = torch.cat([v[0].view(2, 4, 1, 4), v[1, :4].view(1, 4, 1, 4)])
    lens = torch.tensor([8, 4], dtype=torch.int32)
    ok = KVCache(k=pool_k, v=pool_v, seqlens=lens, page_size=4,
                 block_table=torch.tensor([[0, 1], [2, 99]], dtype=torch.int32))  # fmt: skip
    kc, _ = ok.contiguous()  # the 99 lies past sequence 1's only page: never read
    assert torch.equal(kc[1, :4], k[1, :4])
    bad = KVCache(k=pool_k, v=pool_v, seqlens=lens, page_size=4,
                  block_table=torch.tensor([[0, 1], [-1, 2]], dtype=torch.int32))  # fmt: skip
    with pytest.raises(ValueError, match=r"block_table\[1\]\[0\] = -1 points outside"):
        bad.contiguous()


def test_datasheet_peaks_only_for_the_parts_they_describe(monkeypatch) -> None:
    from harness.measure import peaks

    fake = {"mem_gbytes_per_s": 1.0, "tflops_fp32": 2.0, "source": "probe"}
    monkeypatch.setattr(peaks, "probe", lambda device: dict(fake))
    peaks.device_peaks.cache_clear()
    try:
        assert peaks.device_peaks("cuda", "NVIDIA H100 80GB HBM3")["mem_gbytes_per_s"] == 3350.0
        assert peaks.device_peaks("cuda", "NVIDIA H100 PCIe")["source"] == "probe"
        assert peaks.device_peaks("cuda", "NVIDIA A100-SXM4-40GB")["source"] == "probe"
    finally:
        peaks.device_peaks.cache_clear()
    assert peaks.peak_tflops({"tflops_fp32": 2.0, "tflops_low": 4.0}, "float64") is None
    assert peaks.fractions(
        {"dtype": "float64", "tflops": 1.0, "gbytes_per_s": 0.5},
        {"mem_gbytes_per_s": 1.0, "tflops_fp32": 2.0},
    ) == {"bw_fraction": 0.5}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"block_size": [64, 128]}, "takes block_size null only"),
        ({"input_scale": [100.0]}, "its inputs are not scaled"),
        ({"seqlen_k": [1024]}, "the cache length is cache_len"),
        ({"seq_len": [128]}, "give cache_len, not seq_len"),
    ],
)
def test_decode_suites_refuse_keys_decode_does_not_read(sweep, message) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(_suite(**sweep))


def test_a_query_that_does_not_fit_the_cache_is_one_clear_error() -> None:
    from harness.registry import REGISTRY

    k, v = _kv(batch=1, length=16, heads=1, dim=8, dim_v=8)
    cache = make_cache(k, v, torch.tensor([16]), page_size=None, seed=0)
    q = torch.randn(2, 1, 4, 8)  # batch 2 against a cache of batch 1
    for name in ("decode_naive", "decode_sdpa_math", "decode_split_kv"):
        with pytest.raises(ValueError, match="does not go with a cache of batch 1"):
            REGISTRY.get(name).forward(q, cache)


def test_show_has_a_bandwidth_column_for_decode_runs_only() -> None:
    from harness.cli.show_table import render

    def row(workload: str) -> dict:
        return {"case": "c", "impl": "x", "phase": "fwd", "status": "ok", "workload": workload,
                "time_ms_median": 2.0, "tflops": 0.01, "gbytes_per_s": 12.5,
                "peak_mem_bytes": 3 * 2**20, "err_rel_l2": 1e-7}  # fmt: skip

    decode = "\n".join(str(t) for t in render([row("decode")], title="r", width=100))
    attention = "\n".join(str(t) for t in render([row("attention")], title="r", width=100))
    assert "GB/s" in decode and "12.5" in decode
    assert "GB/s" not in attention
    assert max(len(line) for line in decode.splitlines()) <= 100
