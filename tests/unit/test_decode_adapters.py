"""The decode adapters (flash-attn kvcache, xformers split-K, FlashInfer paged wrappers) on CPU.

The real packages are CUDA-only; each is simulated by fake modules written to a temporary folder
whose functions and classes copy the upstream signatures exactly (a keyword upstream lacks is a
TypeError here too) and compute attention in float64 from what the *library* documents: flash-
attn's cache_seqlens / block_table / page_table with its bottom-right causal mask, xformers'
padded and paged block-diagonal biases, FlashInfer's CSR page table (indptr, indices,
last_page_len). Those never read the harness's KVCache, so matching the harness's float64
reference (`attend_cache`, through `KVCache.gather`) checks each adapter's plumbing end to end on
contiguous, paged-shuffled, ragged, GQA, Sq 1 and Sq 4 caches. CUDA is simulated by
monkeypatching torch.cuda.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.case import Case
from harness.registry import REGISTRY, declared_reasons
from harness.workloads.decode import DecodeWorkload, attend_cache, cache_of
from tests.helpers import fake_backends

PREFIXES = ("flash_attn", "flash_attn_interface", "flash_attn_3", "xformers", "flashinfer")
DECODE = ("decode_flash_attn2", "decode_flash_attn3", "decode_xformers", "decode_flashinfer",
          "decode_flashinfer_prefill")  # fmt: skip

# ---- fakes -----------------------------------------------------------------------------------
_SEQ_REFERENCE = """
import math as _math
import torch as _torch


def attend_seq(q, k, v, scale, offset):
    # q (Sq, H, D), k (n, Hkv, D), v (n, Hkv, Dv) -> (Sq, H, Dv) in float64, cast to q's dtype;
    # query i sees keys j <= i + offset (offset None: every key); head h reads kv head
    # h // (H // Hkv); a row with no key gives 0
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.double().repeat_interleave(heads // kv_heads, dim=1)
    v = v.double().repeat_interleave(heads // kv_heads, dim=1)
    scale = 1 / _math.sqrt(q.shape[-1]) if scale is None else scale
    s = _torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if offset is not None:
        i = _torch.arange(q.shape[0])[:, None]
        j = _torch.arange(k.shape[0])[None, :]
        s = s.masked_fill(~(j <= i + offset), float("-inf"))
    p = _torch.softmax(s, dim=-1).nan_to_num(0.0)
    return _torch.einsum("hqk,khd->qhd", p, v).to(q.dtype)
"""

# flash-attn: the documented kvcache semantics (flash_attn_interface.py docstrings): sequence b
# reads k_cache[b, :cache_seqlens[b]], or the pages block_table[b] of the pool in order; causal is
# aligned to the bottom right of (seqlen_q, cache_seqlens[b]).
_KVCACHE_REFERENCE = """

def kvcache(q, k_cache, v_cache, cache_seqlens, table, softmax_scale, causal):
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    assert cache_seqlens.dtype == _torch.int32 and cache_seqlens.shape == (q.shape[0],)
    out = []
    for b, n in enumerate(cache_seqlens.tolist()):
        if table is None:
            k, v = k_cache[b, :n], v_cache[b, :n]
        else:
            assert table.dtype == _torch.int32
            pages = table[b].long()
            k = k_cache[pages].flatten(0, 1)[:n]
            v = v_cache[pages].flatten(0, 1)[:n]
        out.append(attend_seq(q[b], k, v, softmax_scale, n - q.shape[1] if causal else None))
    return _torch.stack(out)
"""

FA2 = {
    "flash_attn/__init__.py": _SEQ_REFERENCE
    + _KVCACHE_REFERENCE
    + """
__version__ = "2.8.3"
CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    raise AssertionError("the decode adapter calls flash_attn_with_kvcache")


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    CALLS.append({"causal": causal, "softmax_scale": softmax_scale, "k": k, "v": v,
                  "block_table": block_table, "cache_seqlens": cache_seqlens})
    if block_table is not None and k_cache.shape[1] % 256:  # csrc/flash_attn/flash_api.cpp
        raise RuntimeError("Paged KV cache block size must be divisible by 256")
    assert v_cache.shape[-1] == q.shape[-1]  # CHECK_SHAPE(vcache, ..., head_size_og)
    return kvcache(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, causal)
""",
}

FA3 = {  # hopper/flash_attn_interface.py
    "flash_attn_interface.py": _SEQ_REFERENCE
    + _KVCACHE_REFERENCE
    + """
CALLS = []


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **kwargs):
    raise AssertionError("the decode adapter calls flash_attn_with_kvcache")


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    qv=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    page_table=None,
    cu_seqlens_q=None,
    cu_seqlens_k_new=None,
    max_seqlen_q=None,
    rotary_seqlens=None,
    q_descale=None,
    k_descale=None,
    v_descale=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    attention_chunk=0,
    softcap=0.0,
    rotary_interleaved=True,
    scheduler_metadata=None,
    num_splits=0,
    pack_gqa=None,
    sm_margin=0,
    return_softmax_lse=False,
):
    CALLS.append({"causal": causal, "softmax_scale": softmax_scale, "page_table": page_table})
    return kvcache(q, k_cache, v_cache, cache_seqlens, page_table, softmax_scale, causal)
""",
}

# xformers 0.0.35: the two biases the adapter builds (attn_bias.py: from_seqlens signatures and
# what materialize() masks), memory_efficient_attention_forward's signature and its 5-D shape
# rule (validate_inputs: no broadcasting), triton_splitk.FwOp's name and page/query limits.
XFORMERS = {
    "xformers/__init__.py": "",
    "xformers/_cpp_lib.py": "_cpp_library_load_exception = None\n_built_with_cuda = True\n",
    "xformers/ops/__init__.py": "",
    "xformers/ops/fmha/attn_bias.py": """
import torch


class AttentionBias:
    pass


class BlockDiagonalPaddedKeysMask(AttentionBias):
    pass


class BlockDiagonalCausalWithOffsetPaddedKeysMask(BlockDiagonalPaddedKeysMask):
    # block b: queries [b * Mq, (b + 1) * Mq) x keys [b * padding, b * padding + kv_seqlen[b]),
    # query i sees key j <= i + kv_seqlen[b] - q_seqlen[b] (LowerTriangularFromBottomRightMask)
    def __init__(self, q_seqlen, kv_seqlen, padding, device):
        self.q_seqlen, self.kv_seqlen, self.padding = list(q_seqlen), list(kv_seqlen), padding
        self.device = device

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_padding, kv_seqlen, causal_diagonal=None, *,
                     device=None):
        assert not isinstance(kv_seqlen, torch.Tensor)
        assert all(n <= kv_padding for n in kv_seqlen)
        return cls(q_seqlen, kv_seqlen, kv_padding, device)

    def key_rows(self, b, n):  # the key-dim rows of sequence b's first n keys
        return torch.arange(n) + b * self.padding

    def keep(self, mq, mk):
        keep = torch.zeros(mq, mk, dtype=torch.bool)
        start = 0
        for b, (nq, nk) in enumerate(zip(self.q_seqlen, self.kv_seqlen)):
            rows = self.key_rows(b, nk)
            i = torch.arange(nq)[:, None]
            j = torch.arange(nk)[None, :]
            keep[start:start + nq, rows] = j <= i + nk - nq
            start += nq
        assert start == mq
        return keep


class PagedBlockDiagonalPaddedKeysMask(AttentionBias):
    pass


class PagedBlockDiagonalCausalWithOffsetPaddedKeysMask(PagedBlockDiagonalPaddedKeysMask):
    # as above on logical rows b * (pages * page_size) + t, stored at physical row
    # block_tables[b, t // page_size] * page_size + t % page_size of K/V [1, pool rows, ...]
    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen, block_tables, page_size, *, device=None):
        self = cls()
        self.inner = BlockDiagonalCausalWithOffsetPaddedKeysMask(
            q_seqlen, kv_seqlen, block_tables.shape[1] * page_size, device)
        self.block_tables, self.page_size, self.device = block_tables, page_size, device
        self.q_seqlen = list(q_seqlen)
        self.inner.key_rows = self.key_rows
        return self

    def key_rows(self, b, n):
        t = torch.arange(n)
        return self.block_tables[b, t // self.page_size].long() * self.page_size \\
            + t % self.page_size

    def keep(self, mq, mk):
        return self.inner.keep(mq, mk)
""",
    "xformers/ops/fmha/triton_splitk.py": """
class FwOp:
    NAME = "triton_splitKF"
    BLOCK_N = 64

    @classmethod
    def is_available(cls):
        return True
""",
    "xformers/ops/fmha/__init__.py": _SEQ_REFERENCE
    + """
from xformers.ops.fmha import attn_bias as _bias, triton_splitk

CALLS = []


def memory_efficient_attention_forward(query, key, value, attn_bias=None, p=0.0, scale=None, *,
                                       op=None, output_dtype=None):
    CALLS.append({"op": op, "scale": scale, "attn_bias": attn_bias, "key": key})
    assert op is triton_splitk.FwOp
    B, Mq, G, H, K = query.shape  # validate_inputs: BMGHK with equal B, G, H
    Mkv = key.shape[1]
    assert key.shape == (B, Mkv, G, H, K) and value.shape[:4] == (B, Mkv, G, H), (query.shape,
                                                                                 key.shape)
    assert B == 1 and max(attn_bias.q_seqlen) <= 16  # causal biases: FwOp's query limit
    if isinstance(attn_bias, _bias.PagedBlockDiagonalPaddedKeysMask):
        assert Mkv % attn_bias.page_size == 0 and attn_bias.page_size % op.BLOCK_N == 0
    keep = attn_bias.keep(Mq, Mkv)
    q, k, v = (t[0].flatten(1, 2) for t in (query, key, value))  # (M, G * H, K)
    scale = 1 / _math.sqrt(K) if scale is None else scale
    s = _torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    s = s.masked_fill(~keep, float("-inf"))
    out = _torch.einsum("hqk,khd->qhd", _torch.softmax(s, -1).nan_to_num(0.0), v.double())
    return out.to(query.dtype).reshape(1, Mq, G, H, value.shape[-1])
""",
}

# FlashInfer (flashinfer-python 0.7.2.post1: flashinfer/decode.py, flashinfer/prefill.py): CSR
# page table; the wrapper keeps what plan() got and run() reads only that and the pool.
_FLASHINFER_TABLE = """

def _pages(indptr, indices, last_page_len, page_size, b):
    start, end = int(indptr[b]), int(indptr[b + 1])
    last = int(last_page_len[b])
    assert end > start and 1 <= last <= page_size
    return indices[start:end].long(), (end - start - 1) * page_size + last


def _kv(paged_kv_cache, pages, n):
    k_cache, v_cache = paged_kv_cache  # NHD: [max_num_pages, page_size, num_kv_heads, head_dim]
    return k_cache[pages].flatten(0, 1)[:n], v_cache[pages].flatten(0, 1)[:n]
"""

FLASHINFER = {
    "flashinfer/__init__.py": _SEQ_REFERENCE
    + _FLASHINFER_TABLE
    + """
__version__ = "0.7.2.post1"
PLANS = []
RUNS = []


def _int32(*tensors):
    assert all(t.dtype == _torch.int32 for t in tensors)


class BatchDecodeWithPagedKVCacheWrapper:
    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False,
                 use_tensor_cores=False, paged_kv_indptr_buffer=None,
                 paged_kv_indices_buffer=None, paged_kv_last_page_len_buffer=None,
                 backend="auto", jit_args=None):
        assert kv_layout == "NHD" and float_workspace_buffer.dtype == _torch.uint8
        self.workspace = float_workspace_buffer

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
             page_size, *deprecated_positional_args, **kwargs):
        assert not deprecated_positional_args, "pass the optional arguments by keyword"
        return self._plan_impl(indptr, indices, last_page_len, num_qo_heads, num_kv_heads,
                               head_dim, page_size, **kwargs)

    def _plan_impl(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                   page_size, *, pos_encoding_mode="NONE", window_left=-1, window_right=0,
                   logits_soft_cap=None, q_data_type="float16", kv_data_type=None,
                   o_data_type=None, data_type=None, sm_scale=None, rope_scale=None,
                   rope_theta=None, non_blocking=True, block_tables=None, seq_lens=None,
                   fixed_split_size=None, disable_split_kv=False, q_len_per_req=1,
                   is_causal=None):
        _int32(indptr, indices, last_page_len)
        PLANS.append({"wrapper": "decode", "sm_scale": sm_scale, "q_data_type": q_data_type,
                      "kv_data_type": kv_data_type})
        self.plan_args = (indptr.clone(), indices.clone(), last_page_len.clone(), num_qo_heads,
                          num_kv_heads, head_dim, page_size, q_data_type, sm_scale)

    def run(self, q, paged_kv_cache, *args, q_scale=None, k_scale=None, v_scale=None, out=None,
            lse=None, return_lse=False, enable_pdl=None, window_left=None, sinks=None,
            q_len_per_req=None, skip_softmax_threshold_scale_factor=None, kv_cache_sf=None):
        indptr, indices, last, hq, hkv, dim, page, q_type, scale = self.plan_args
        RUNS.append("decode")
        assert q.shape == (len(last), hq, dim) and q.dtype == q_type
        assert paged_kv_cache[0].shape[1:] == (page, hkv, dim)
        rows = []
        for b in range(len(last)):
            k, v = _kv(paged_kv_cache, *_pages(indptr, indices, last, page, b))
            rows.append(attend_seq(q[b:b + 1], k, v, scale, None)[0])
        return _torch.stack(rows)


class BatchPrefillWithPagedKVCacheWrapper:
    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False,
                 qo_indptr_buf=None, paged_kv_indptr_buf=None, paged_kv_indices_buf=None,
                 paged_kv_last_page_len_buf=None, custom_mask_buf=None, mask_indptr_buf=None,
                 backend="auto", jit_args=None, jit_kwargs=None, variant_owns_mask=False):
        assert kv_layout == "NHD" and float_workspace_buffer.dtype == _torch.uint8

    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
             num_qo_heads, num_kv_heads, head_dim_qk, page_size, head_dim_vo=None,
             custom_mask=None, packed_custom_mask=None, causal=False, pos_encoding_mode="NONE",
             use_fp16_qk_reduction=False, sm_scale=None, window_left=-1, logits_soft_cap=None,
             rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None,
             o_data_type=None, non_blocking=True, prefix_len_ptr=None,
             token_pos_in_items_ptr=None, token_pos_in_items_len=0, max_item_len_ptr=None,
             seq_lens=None, seq_lens_q=None, block_tables=None, max_token_per_sequence=None,
             max_sequence_kv=None, fixed_split_size=None, disable_split_kv=False,
             uniform_q_len=None):
        _int32(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len)
        PLANS.append({"wrapper": "prefill", "sm_scale": sm_scale, "causal": causal,
                      "q_data_type": q_data_type})
        self.plan_args = (qo_indptr.clone(), paged_kv_indptr.clone(), paged_kv_indices.clone(),
                          paged_kv_last_page_len.clone(), num_qo_heads, num_kv_heads,
                          head_dim_qk, page_size, causal, sm_scale)

    def run(self, q, paged_kv_cache, *args, q_scale=None, k_scale=None, v_scale=None, out=None,
            lse=None, return_lse=False, lse_base="log2", lse_layout="NH", enable_pdl=None,
            window_left=None, sinks=None, kv_cache_sf=None,
            skip_softmax_threshold_scale_factor=None, use_fp16_softmax=None,
            uses_spcompress=None):
        qo, indptr, indices, last, hq, hkv, dim, page, causal, scale = self.plan_args
        RUNS.append("prefill")
        assert q.shape == (int(qo[-1]), hq, dim)
        out = q.new_zeros(q.shape)
        for b in range(len(last)):
            pages, n = _pages(indptr, indices, last, page, b)
            k, v = _kv(paged_kv_cache, pages, n)
            a, e = int(qo[b]), int(qo[b + 1])
            # include/flashinfer/attention/prefill.cuh: masked if kv_idx + qo_len > kv_len + q_idx
            out[a:e] = attend_seq(q[a:e], k, v, scale, n - (e - a) if causal else None)
        return out
""",
}


# ---- helpers ---------------------------------------------------------------------------------
def _reset_adapters() -> None:
    from implementations import decode_flash, decode_flashinfer, decode_xformers, flash_attn

    decode_flash._kernel.cache_clear()
    flash_attn._kernel.cache_clear()
    decode_xformers._state.update(key=None, refs=None, bias=None)
    decode_flashinfer._state.update(key=None, refs=None, wrapper=None, workspace=None)


def _forget_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_backends.forget(monkeypatch, PREFIXES, _reset_adapters)


@pytest.fixture(autouse=True)
def _clean():
    with fake_backends.fakes_forgotten(PREFIXES):
        yield
    _reset_adapters()


def _install(monkeypatch: pytest.MonkeyPatch, root: Path, *fakes: dict[str, str]) -> None:
    _forget_backends(monkeypatch)
    fake_backends.install(monkeypatch, root, *fakes)


def _block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    _forget_backends(monkeypatch)
    fake_backends.block(monkeypatch, *names)


def _gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int] | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)


def _reason(name: str, device: str) -> str:
    av = REGISTRY.get(name).available(device)
    return "" if av.ok else av.reason


def _case(**over) -> Case:
    fields = {"workload": "decode", "batch": 3, "seqlen_q": 1, "seqlen_k": 256, "num_heads": 4,
              "num_kv_heads": 4, "head_dim": 16, "dtype": "float64"}  # fmt: skip
    return Case(**{**fields, **over})


def _run(name: str, case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the adapter's output, the harness's float64 reference) on the workload's own inputs."""
    inputs = DecodeWorkload().make_inputs(case, "cpu", seed)
    q, cache = inputs.tensors["q"], cache_of(inputs)
    options = {} if case.softmax_scale is None else {"softmax_scale": case.softmax_scale}
    out = REGISTRY.get(name).forward(q, cache, **options)
    ref = attend_cache(q, cache, compute_dtype=torch.float64, softmax_scale=case.softmax_scale)
    return out, ref


# Each adapter on the cache kinds it takes: page 256 for FA2 (its minimum), 64 for xformers (its
# key block), 16 for FA3 and FlashInfer (any page size); the prefill wrapper also at Sq 4.
LAYOUTS = [
    pytest.param({"page_size": None, "cache_dist": "fixed"}, id="contiguous-fixed"),
    pytest.param({"page_size": None, "cache_dist": "ragged"}, id="contiguous-ragged"),
    pytest.param({"page_size": "paged", "cache_dist": "fixed"}, id="paged-fixed"),
    pytest.param({"page_size": "paged", "cache_dist": "ragged"}, id="paged-ragged"),
]
PAGE = {"decode_flash_attn2": 256, "decode_flash_attn3": 16, "decode_xformers": 64,
        "decode_flashinfer": 16, "decode_flashinfer_prefill": 16}  # fmt: skip
FAKES = {"decode_flash_attn2": FA2, "decode_flash_attn3": FA3, "decode_xformers": XFORMERS,
         "decode_flashinfer": FLASHINFER, "decode_flashinfer_prefill": FLASHINFER}  # fmt: skip


def _matrix():
    """MHA and MQA at Sq 1, GQA at Sq 4 (at Sq 1 for the one-token decode wrapper)."""
    for name in DECODE:
        last = 1 if name == "decode_flashinfer" else 4
        for sq, kv_heads in ((1, 4), (1, 1), (last, 2)):
            yield pytest.param(name, sq, kv_heads, id=f"{name}-q{sq}-kv{kv_heads}")


# ---- the outputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("name", "seqlen_q", "kv_heads"), list(_matrix()))
def test_each_adapter_matches_the_float64_reference(monkeypatch, tmp_path, name, seqlen_q,
                                                    kv_heads, layout):  # fmt: skip
    _install(monkeypatch, tmp_path, FAKES[name])
    page = PAGE[name] if layout["page_size"] == "paged" else None
    seqlen_k = 512 if page == 256 else 256
    case = _case(seqlen_q=seqlen_q, seqlen_k=seqlen_k, num_kv_heads=kv_heads, page_size=page,
                 cache_dist=layout["cache_dist"])  # fmt: skip
    assert not declared_reasons(REGISTRY.get(name), case)
    out, ref = _run(name, case)
    assert out.shape == ref.shape == (3, seqlen_q, 4, 16)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", DECODE)
def test_softmax_scale_reaches_the_kernel(monkeypatch, tmp_path, name):
    _install(monkeypatch, tmp_path, FAKES[name])
    case = _case(softmax_scale=0.05, num_kv_heads=2, page_size=PAGE[name], seqlen_k=512,
                 cache_dist="ragged")  # fmt: skip
    out, ref = _run(name, case)
    torch.testing.assert_close(out, ref)
    unscaled = attend_cache(*_inputs(case), compute_dtype=torch.float64)
    assert not torch.allclose(out, unscaled)


def _inputs(case: Case):
    inputs = DecodeWorkload().make_inputs(case, "cpu", 0)
    return inputs.tensors["q"], cache_of(inputs)


def test_flash_attn_calls_read_the_cache_as_it_is(monkeypatch, tmp_path):
    """causal=True, cache_seqlens int32, no k/v append; FA2's table is block_table, FA3's
    page_table."""
    _install(monkeypatch, tmp_path, FA2, FA3)
    import flash_attn
    import flash_attn_interface

    q, cache = _inputs(_case(seqlen_q=4, page_size=256, seqlen_k=512, cache_dist="ragged"))
    REGISTRY.get("decode_flash_attn2").forward(q, cache)
    (call,) = flash_attn.CALLS
    assert call["causal"] is True and call["k"] is None and call["v"] is None
    assert call["block_table"] is cache.block_table and call["cache_seqlens"] is cache.seqlens
    assert call["softmax_scale"] is None
    q, cache = _inputs(_case(page_size=16))
    REGISTRY.get("decode_flash_attn3").forward(q, cache)
    (call,) = flash_attn_interface.CALLS
    assert call["causal"] is True and call["page_table"] is cache.block_table


@pytest.mark.parametrize("name", ["decode_flashinfer", "decode_flashinfer_prefill",
                                  "decode_xformers"])  # fmt: skip
def test_planning_happens_once_per_case_not_per_call(monkeypatch, tmp_path, name):
    _install(monkeypatch, tmp_path, FAKES[name])
    impl = REGISTRY.get(name)
    q, cache = _inputs(_case(page_size=64, cache_dist="ragged", num_kv_heads=2))
    first = impl.forward(q, cache)
    for _ in range(3):
        torch.testing.assert_close(impl.forward(q, cache), first)
    q2, cache2 = _inputs(_case(page_size=64, cache_dist="fixed", num_kv_heads=2))
    impl.forward(q2, cache2)  # another case: planned anew
    if name == "decode_xformers":
        import xformers.ops.fmha as fmha

        biases = [c["attn_bias"] for c in fmha.CALLS]
        assert biases[0] is biases[3] and biases[4] is not biases[0]
        assert fmha.CALLS[0]["key"].stride(3) == 0  # GQA: k expanded, not copied
        return
    import flashinfer

    wrapper = "prefill" if name.endswith("prefill") else "decode"
    assert [p["wrapper"] for p in flashinfer.PLANS] == [wrapper] * 2
    assert len(flashinfer.RUNS) == 5 and set(flashinfer.RUNS) == {wrapper}
    assert flashinfer.PLANS[0]["q_data_type"] == torch.float64


def test_flashinfer_page_table_is_csr_of_the_harness_cache():
    from implementations.decode_flashinfer import page_table

    q, cache = _inputs(_case(page_size=64, cache_dist="ragged"))  # lengths 76, 221, 115
    indptr, indices, last, page = page_table(cache)
    assert page == 64 and indptr.tolist() == [0, 2, 6, 8]
    assert last.tolist() == [76 - 64, 221 - 192, 115 - 64]
    table = cache.block_table.tolist()
    assert indices.tolist() == table[0][:2] + table[1][:4] + table[2][:2]
    q, cache = _inputs(_case(cache_dist="ragged"))  # contiguous: one page of max_len each
    indptr, indices, last, page = page_table(cache)
    assert page == 256 and indptr.tolist() == [0, 1, 2, 3] and indices.tolist() == [0, 1, 2]
    assert last.tolist() == cache.seqlens.tolist()
    assert all(t.dtype == torch.int32 for t in (indptr, indices, last))


def test_flashinfer_decode_refuses_a_call_with_several_new_tokens(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FLASHINFER)
    q, cache = _inputs(_case(seqlen_q=4))
    with pytest.raises(NotImplementedError, match="seqlen_q 1; got 4"):
        REGISTRY.get("decode_flashinfer").forward(q, cache)


# ---- reasons ---------------------------------------------------------------------------------
def _limits(name: str, device: str = "cuda", **over) -> list[str]:
    fields = {"dtype": "bfloat16", "head_dim": 128, "num_kv_heads": 2}
    return REGISTRY.get(name).unsupported(_case(**{**fields, **over}), device)


@pytest.mark.parametrize("name", DECODE)
def test_a_standard_decode_case_has_no_reasons(name):
    for dtype in ("float16", "bfloat16"):
        assert _limits(name, dtype=dtype) == []
    impl = REGISTRY.get(name)
    assert impl.workload == "decode" and impl.supports_backward is False
    assert impl.layout == "bshd" and impl.memory_exponent == 1
    assert {"gqa", "softmax_scale", "paged_kv"} <= impl.features


@pytest.mark.parametrize("name", DECODE)
def test_float32_is_refused(name):
    (reason,) = _limits(name, dtype="float32")
    assert "float16 and bfloat16; got float32" in reason


def test_fa2_page_size_must_be_a_multiple_of_256():
    assert _limits("decode_flash_attn2", page_size=512) == []
    (reason,) = _limits("decode_flash_attn2", page_size=16)
    assert reason.endswith("page_size to be a multiple of 256; got 16")
    assert _limits("decode_flash_attn3", page_size=16) == []  # any page size
    assert _limits("decode_flashinfer", page_size=1) == []


def test_head_dim_limits():
    assert "up to 256; got 512" in _limits("decode_flash_attn2", head_dim=512)[0]
    assert "multiple of 8 up to 256; got 100" in _limits("decode_flash_attn3", head_dim=100)[0]
    assert _limits("decode_flash_attn2", head_dim=100) == []  # FA2 pads to a multiple of 8
    assert _limits("decode_xformers", head_dim=512) == []
    assert "head_dim in {16, 32, 64, 128, 256, 512}; got 96" in \
        _limits("decode_xformers", head_dim=96)[0]  # fmt: skip
    assert "head_dim in {64, 128, 256}; got 96" in _limits("decode_flashinfer", head_dim=96)[0]


def test_head_dim_v_is_fa3s_alone():
    for name in ("decode_flash_attn2", "decode_xformers", "decode_flashinfer",
                 "decode_flashinfer_prefill"):  # fmt: skip
        case = _case(dtype="bfloat16", head_dim=128, head_dim_v=64)
        assert declared_reasons(REGISTRY.get(name), case) == ["no support for head_dim_v"]
        assert any("head_dim_v == head_dim" in r for r in REGISTRY.get(name).unsupported(
            case, "cuda"))  # fmt: skip
    fa3 = REGISTRY.get("decode_flash_attn3")
    good = _case(dtype="bfloat16", head_dim=192, head_dim_v=128)
    assert declared_reasons(fa3, good) == [] and fa3.unsupported(good, "cuda") == []
    (reason,) = fa3.unsupported(_case(dtype="bfloat16", head_dim=128, head_dim_v=64), "cuda")
    assert "head_dim in (128, 192]" in reason


def test_xformers_limits_query_length_and_page_size():
    assert _limits("decode_xformers", seqlen_q=16, seqlen_k=256) == []
    (reason,) = _limits("decode_xformers", seqlen_q=17, seqlen_k=256)
    assert "at most 16 new tokens" in reason and "got seqlen_q 17" in reason
    (reason,) = _limits("decode_xformers", page_size=16)
    assert "multiple of 64" in reason
    assert _limits("decode_xformers", page_size=128) == []


def test_flashinfer_decode_limits():
    (reason,) = _limits("decode_flashinfer", seqlen_q=4)
    assert "seqlen_q 1" in reason and "decode_flashinfer_prefill" in reason
    assert _limits("decode_flashinfer_prefill", seqlen_q=4) == []
    assert _limits("decode_flashinfer", num_heads=32, num_kv_heads=2) == []  # group 16
    (reason,) = _limits("decode_flashinfer", num_heads=20, num_kv_heads=4)
    assert "group sizes 1, 2, 3, 4, 6, 8, 16; got" in reason and "= 5" in reason
    assert _limits("decode_flashinfer_prefill", num_heads=20, num_kv_heads=4) == []


def test_declared_features_cover_gqa_scale_and_pages():
    case = _case(num_kv_heads=1, softmax_scale=0.1, page_size=256)
    for name in DECODE:
        assert declared_reasons(REGISTRY.get(name), case) == []


# ---- availability ----------------------------------------------------------------------------
def test_registering_the_decode_adapters_imports_no_backend_package():
    code = textwrap.dedent(f"""
        import sys
        seen = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                seen.append(name)
                return None
        sys.meta_path.insert(0, Spy())
        from harness.registry import REGISTRY
        assert set({DECODE!r}) <= set(REGISTRY.names("decode")), REGISTRY.names("decode")
        backends = [n for n in seen if n.split(".")[0] in {PREFIXES + ("triton",)!r}]
        assert not backends, backends
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("name", DECODE)
def test_availability_here_says_why_not(name):
    """On this CPU machine, with whatever is installed: never available, with a reason."""
    av = REGISTRY.get(name).available("cpu")
    assert not av.ok
    assert "needs CUDA" in av.reason or "not installed" in av.reason, av.reason


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_missing_packages_name_the_install_command(monkeypatch, device):
    _block(monkeypatch, *PREFIXES)
    assert _reason("decode_flash_attn2", device) == (
        "flash-attn is not installed: pip install '.[flash]'"
    )
    assert _reason("decode_flash_attn3", device).startswith(
        "FlashAttention-3 (flash_attn_interface) is not installed"
    )
    assert _reason("decode_xformers", device) == (
        "xformers is not installed: pip install '.[xformers]'"
    )
    for name in ("decode_flashinfer", "decode_flashinfer_prefill"):
        assert _reason(name, device) == "flashinfer is not installed: pip install '.[flashinfer]'"


@pytest.mark.parametrize("name", DECODE)
def test_installed_but_on_cpu_needs_cuda(monkeypatch, tmp_path, name):
    _install(monkeypatch, tmp_path, FAKES[name])
    reason = _reason(name, "cpu")
    assert reason.startswith("needs CUDA: "), reason
    assert "has no CPU version" in reason


@pytest.mark.parametrize(
    ("name", "capability", "expected"),
    [
        ("decode_flash_attn2", (8, 0), ""),
        ("decode_flash_attn2", (7, 5), "compute capability 8.0+ needed for FlashAttention-2 "
                                       "decode (kvcache); found 7.5"),
        ("decode_flash_attn3", (9, 0), ""),
        ("decode_flash_attn3", (8, 0), "compute capability 9.0+ needed for FlashAttention-3 "
                                       "decode (kvcache); found 8.0"),
        ("decode_xformers", (8, 0), ""),
        ("decode_xformers", (7, 5), "compute capability 8.0+ needed for xformers split-K "
                                    "decoder (triton_splitk); found 7.5"),
        ("decode_flashinfer", (7, 5), ""),
        ("decode_flashinfer_prefill", (7, 0), "compute capability 7.5+ needed for FlashInfer "
                                              "BatchPrefill (paged, causal); found 7.0"),
    ],
)  # fmt: skip
def test_capability(monkeypatch, tmp_path, name, capability, expected):
    _install(monkeypatch, tmp_path, FAKES[name])
    _gpu(monkeypatch, capability)
    assert _reason(name, "cuda") == expected


def test_a_flash_attn_without_kvcache_is_not_supported(monkeypatch, tmp_path):
    old = {"flash_attn/__init__.py": "__version__ = '2.0.0'\ndef flash_attn_func(*a, **k): pass\n"}
    _install(monkeypatch, tmp_path, old)
    _gpu(monkeypatch, (8, 0))
    assert _reason("decode_flash_attn2", "cuda") == (
        "flash_attn has no flash_attn_with_kvcache; its version is not supported"
    )


def test_flashinfer_bfloat16_needs_ampere(monkeypatch):
    _gpu(monkeypatch, (7, 5))
    (reason,) = _limits("decode_flashinfer", dtype="bfloat16")
    assert "8.0+ for bfloat16" in reason
    assert _limits("decode_flashinfer", dtype="float16") == []
