"""Other projects' sequence-parallel attention, as registry entries beside our `ring` and `ulysses`.

Every peer takes the same inputs as ours: this rank's sequence shard (batch, S/P, heads, head_dim)
cut by the case's `seq_layout` (`ring.seq_layouts.shard_sequence`), and its output is gathered the
same way, so its error against float64 is the same measure as ours. Imports are lazy (optional
extra `ring-peers`); a peer that cannot run says why (`harness list`).

- `ring_attention_pytorch` (lucidrains, PyPI ring-attention-pytorch 0.5.x):
  `ring_flash_attn(q, k, v, mask, causal, bucket_size, ring_reduce_col, striped_ring_attn,
  max_lookback_seq_len, ring_size, softclamp_qk_sim, softclamp_value)`, pure torch (CPU and CUDA),
  one local shard per rank in (b, n, h, d); rank r's shard is the r-th contiguous one, or with
  `striped_ring_attn` positions r, r+P, ... (Brandon et al., arXiv 2311.09431) when
  bucket_size = n (its striped causal mask compares bucket indices). No zigzag layout; GQA by
  repeating kv heads interleaved (query head i reads kv head i % Hkv; the adapter reorders q's
  heads so the pairs are ours, i // G); softmax scale fixed at 1/sqrt(head_dim). Its K/V travel
  by blocking isend/irecv plus a barrier per step (ring.py), not observed by the harness (no comm
  fields).
  Found here (0.5.20, P >= 2, `ring_reduce_col=True`): its backward returns dK = dK + dV and
  dV = the next block's dK + dV. `dk, dv = ring_pass(...)` unpacks the (received, sent) pair of
  stacked (dK, dV) tensors, and autograd's sum_to folds the stacked dim away; output and dQ are
  right (tests/test_ring_peers.py checks exactly this). Its fwd_bwd rows show that error as is.
  It caches `get_rank()` / `get_world_size()` per process (functools.lru_cache): a worker forked
  before the process group existed would keep world size 1, so the caches are cleared per call.
- `ring_flash_attn` (zhuzilin, PyPI ring-flash-attn 0.1.x; CUDA + flash-attn): seq_layout picks
  `ring_flash_attn_func` (contiguous), `zigzag_ring_flash_attn_func` (zigzag: chunks r and 2P-1-r,
  as ours) or `stripe_flash_attn_func` (striped; causal only, non-causal cases use the plain ring,
  where the order of keys does not matter), each `(q, k, v, dropout_p, softmax_scale, causal,
  window_size, alibi_slopes, deterministic, return_attn_probs, group)`.
- `ring_flash_attn_llama3`: `llama3_flash_attn_varlen_func` (all-gathers K/V in `heads_k_stride`
  head slices, Llama 3's context parallelism, arXiv 2407.21783 §3.3.2) on the contiguous layout,
  the batch of one sequence as varlen (cu_seqlens [0, S]; `llama3_flash_attn_prepare_cu_seqlens`).
- `yunchang_usp` (PyPI yunchang 0.6.x; CUDA + flash-attn): USP (Fang & Zhao, arXiv 2405.07719),
  `LongContextAttention` = Ulysses over `ulysses_degree` ranks × ring over `ring_degree`, after
  `set_seq_parallel_pg(ulysses_degree, ring_degree, rank, world_size)`. Degrees here: the largest
  divisor of P that divides num_heads and num_kv_heads is the Ulysses degree (row field).

At world_size 1 (one GPU) the CUDA peers get a one-rank process group (a HashStore, no network),
since both call `dist.get_rank(group)`. torch's own context parallel: `TORCH_CP_CPU` (tried),
`TORCH_CP_CUDA`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist

from harness.hooks import DistributedHooks
from harness.registry import Availability, Impl, register
from implementations._optional import cuda_reason, import_optional, low_precision_reasons
from implementations.ring.seq_layouts import gather_sequence, shard_sequence, unsupported_reason
from implementations.usp import usp_degrees  # the same rule as our USP: as much Ulysses as fits

EXTRA = "pip install 'attention-harness[ring-peers]'"
# What trying `torch.distributed.tensor.experimental.context_parallel` showed (torch 2.13.0 CPU,
# gloo, 2 ranks, SDPA is_causal under `context_parallel(mesh, buffers=[q, k, v], ...)`).
TORCH_CP_CPU = (
    "torch context_parallel does not run on CPU: NotImplementedError: Operator "
    "aten._scaled_dot_product_flash_attention_for_cpu.default does not have a sharding "
    "strategy registered (torch 2.13.0; its ring covers the CUDA SDPA kernels only)"
)
TORCH_CP_CUDA = (
    "torch context_parallel is not adapted: it shards whole buffers in place with "
    "its own load-balanced layout, so it cannot take the harness's shards without an "
    "extra all-gather that would distort its time"
)


def _torch_cp_available(device: str) -> Availability:
    return Availability.no(TORCH_CP_CUDA if device == "cuda" else TORCH_CP_CPU)


def _torch_cp_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Never called: `_torch_cp_available` says why on every device."""
    raise NotImplementedError(TORCH_CP_CUDA)


def _shard(x: torch.Tensor, case: Any, rank: int, world_size: int) -> torch.Tensor:
    return shard_sequence(x, seq_layout=case.seq_layout, rank=rank, world_size=world_size, dim=1)


def _gather(parts: list[torch.Tensor], case: Any) -> torch.Tensor:
    return gather_sequence(parts, seq_layout=case.seq_layout, dim=1)


def _no_replay(sent: list[int], device: str) -> Callable[[], None]:
    return lambda: None


def _layout_kwargs(case: Any) -> dict[str, Any]:
    return {"seq_layout": case.seq_layout}


def _hooks(row_fields: Callable[[Any, int], dict[str, Any]] | None = None) -> DistributedHooks:
    """Same sharding as our ring; the peers' own exchanges are not observed (no comm fields)."""
    extra = {} if row_fields is None else {"row_fields": row_fields}
    return DistributedHooks(shard=_shard, gather=_gather, observe=lambda observer: nullcontext(),
                            replay=_no_replay, forward_kwargs=_layout_kwargs, **extra)  # fmt: skip


def _world() -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


# --- lucidrains' ring-attention-pytorch (CPU and CUDA) ---


def _rap_available(device: str) -> Availability:
    _, why = import_optional("ring_attention_pytorch",
                             f"ring-attention-pytorch is not installed ({EXTRA})")  # fmt: skip
    return Availability.no(why) if why else Availability.yes()


def _rap_unsupported(case: Any, device: str) -> list[str]:
    reasons = []
    if case.seq_layout == "zigzag" and case.world_size > 1:
        reasons.append("ring-attention-pytorch has no zigzag layout (contiguous and striped only)")
    reason = unsupported_reason(case.seq_len, case.seq_layout, case.world_size)
    return reasons + ([reason] if reason else [])


def rap_bucket_size(local_len: int, seq_layout: str, block_size: int | None) -> int:
    """The peer's bucket_size: the whole shard for striped (its mask compares bucket indices),
    else block_size (default 1024) when it divides the shard, else the shard."""
    if seq_layout == "striped":
        return local_len
    want = 1024 if block_size is None else block_size
    return want if want <= local_len and local_len % want == 0 else local_len


def _rap_forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                 causal: bool, block_size: int | None = None,
                 seq_layout: str = "contiguous") -> torch.Tensor:  # fmt: skip
    """(b, S/P, h, d) shards in → this rank's (b, S/P, h, d) output (see the module docstring)."""
    from ring_attention_pytorch import distributed as rap_dist
    from ring_attention_pytorch import ring_flash_attn

    rap_dist.get_rank.cache_clear()  # its per-process caches may predate the process group
    rap_dist.get_world_size.cache_clear()
    _, world = _world()
    striped = seq_layout == "striped" and world > 1
    bucket = rap_bucket_size(q_bshd.shape[1], seq_layout, block_size)
    # GQA: it repeats kv heads as '... h d -> ... (g h) d' (query head i reads kv head i % Hkv),
    # flash-attn's and ours group them (i reads i // G): reorder q's heads in, and out's back
    groups, kv_heads = q_bshd.shape[2] // k_bshd.shape[2], k_bshd.shape[2]
    if groups > 1:
        q_bshd = q_bshd.unflatten(2, (kv_heads, groups)).transpose(2, 3).flatten(2, 3)
    # ring_reduce_col=False at P = 1: its backward would pass dK/dV around a ring of one
    out = ring_flash_attn(q_bshd, k_bshd, v_bshd, None, causal, bucket, world > 1, striped)
    if groups > 1:
        out = out.unflatten(2, (groups, kv_heads)).transpose(2, 3).flatten(2, 3)
    return out


RING_ATTENTION_PYTORCH = register(Impl(
    name="ring_attention_pytorch", label="Ring attention (lucidrains)", forward=_rap_forward,
    layout="bshd", needs_process_group=True, available=_rap_available,
    unsupported=_rap_unsupported, tags=("distributed", "peer"), memory_exponent=1,
    uses_block_size=True, distributed=_hooks(), features=frozenset({"gqa"}),
))  # fmt: skip


# --- zhuzilin's ring-flash-attn and yunchang (CUDA + flash-attn) ---


def _cuda_peer_available(device: str, module: str, package: str) -> Availability:
    if device != "cuda":
        return Availability.no(f"needs CUDA and flash-attn: {package} runs flash-attn kernels "
                               "only")  # fmt: skip
    why = cuda_reason(device, min_cc=(8, 0), what=f"{package} (flash-attn kernels)")
    if not why:
        _, why = import_optional("flash_attn", f"flash-attn is not installed ({package} needs it)")
    if not why:
        _, why = import_optional(module, f"{package} is not installed ({EXTRA})")
    return Availability.no(why) if why else Availability.yes()


def _flash_limits(case: Any, what: str) -> list[str]:
    return low_precision_reasons(case.dtype, case.head_dim, max_head_dim=256, what=what)


def _ensure_group(device: str) -> None:
    """A one-rank process group when none exists (world_size 1): the CUDA peers need one."""
    if dist.is_initialized():
        return
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _rfa_available(device: str) -> Availability:
    return _cuda_peer_available(device, "ring_flash_attn", "ring-flash-attn")


def _rfa_unsupported(case: Any, device: str) -> list[str]:
    reason = unsupported_reason(case.seq_len, case.seq_layout, case.world_size)
    return _flash_limits(case, "ring-flash-attn") + ([reason] if reason else [])


RFA_FUNCS = {"contiguous": "ring_flash_attn_func", "zigzag": "zigzag_ring_flash_attn_func",
             "striped": "stripe_flash_attn_func"}  # fmt: skip


def _rfa_forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                 causal: bool, block_size: int | None = None, seq_layout: str = "contiguous",
                 softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    import ring_flash_attn

    _ensure_group(q_bshd.device.type)
    # without the causal mask the order of keys is irrelevant: any layout runs the plain ring
    # (the stripe variant asserts causal)
    fn = getattr(ring_flash_attn, RFA_FUNCS[seq_layout if causal else "contiguous"])
    return fn(q_bshd, k_bshd, v_bshd, softmax_scale=softmax_scale, causal=causal)


RING_FLASH_ATTN = register(Impl(
    name="ring_flash_attn", label="ring-flash-attn (zhuzilin)", forward=_rfa_forward,
    layout="bshd", needs_process_group=True, available=_rfa_available,
    unsupported=_rfa_unsupported, tags=("distributed", "peer"), memory_exponent=1,
    distributed=_hooks(), features=frozenset({"gqa", "softmax_scale"}),
))  # fmt: skip


def _llama3_unsupported(case: Any, device: str) -> list[str]:
    reasons = _flash_limits(case, "ring-flash-attn")
    if case.world_size > 1 and case.seq_layout != "contiguous":
        reasons.append(f"the llama3 variant shards contiguously; got seq_layout "
                       f"{case.seq_layout!r}")  # fmt: skip
    if case.batch != 1:
        reasons.append(f"the llama3 variant shards one packed varlen sequence; batch must be 1, "
                       f"got {case.batch}")  # fmt: skip
    reason = unsupported_reason(case.seq_len, "contiguous", case.world_size)
    return reasons + ([reason] if reason else [])


def _llama3_forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                    causal: bool, block_size: int | None = None, seq_layout: str = "contiguous",
                    softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    import ring_flash_attn

    _ensure_group(q_bshd.device.type)
    rank, world = _world()
    n, kv_heads = q_bshd.shape[1], k_bshd.shape[2]
    cu_seqlens = torch.tensor([0, n * world], dtype=torch.int32, device=q_bshd.device)
    cu_q, cu_k, max_q, max_k, local_k_slice = ring_flash_attn.llama3_flash_attn_prepare_cu_seqlens(
        cu_seqlens, causal=causal, rank=rank, world_size=world)  # fmt: skip
    out = ring_flash_attn.llama3_flash_attn_varlen_func(
        q_bshd[0], k_bshd[0], v_bshd[0], cu_q, cu_k, max_q, max_k,
        heads_k_stride=math.gcd(kv_heads, 4), local_k_slice=local_k_slice,
        softmax_scale=softmax_scale, causal=causal,
    )  # fmt: skip
    return out.unsqueeze(0)


RING_FLASH_ATTN_LLAMA3 = register(Impl(
    name="ring_flash_attn_llama3", label="ring-flash-attn llama3 (all-gather)",
    forward=_llama3_forward, layout="bshd", needs_process_group=True, available=_rfa_available,
    unsupported=_llama3_unsupported, tags=("distributed", "peer"), memory_exponent=1,
    distributed=_hooks(), features=frozenset({"gqa", "softmax_scale"}),
))  # fmt: skip


_usp_groups: dict[tuple[int, int, int], None] = {}


def _usp_unsupported(case: Any, device: str) -> list[str]:
    reasons = _flash_limits(case, "yunchang")
    u, r = usp_degrees(case.world_size, case.num_heads, case.kv_heads)
    if case.world_size > 1 and case.seq_layout == "striped":
        reasons.append("yunchang_usp runs seq_layout contiguous (basic ring) or zigzag (pure "
                       "ring); got striped")  # fmt: skip
    if case.world_size > 1 and case.seq_layout == "zigzag" and u > 1:
        reasons.append(f"yunchang's zigzag sharding matches ours only without Ulysses; here "
                       f"ulysses_degree is {u}")  # fmt: skip
    reason = unsupported_reason(case.seq_len, case.seq_layout, case.world_size)
    return reasons + ([reason] if reason else [])


def _usp_forward(q_bshd: torch.Tensor, k_bshd: torch.Tensor, v_bshd: torch.Tensor, *,
                 causal: bool, block_size: int | None = None, seq_layout: str = "contiguous",
                 softmax_scale: float | None = None) -> torch.Tensor:  # fmt: skip
    import yunchang
    from yunchang.kernels import AttnType

    _ensure_group(q_bshd.device.type)
    rank, world = _world()
    u, r = usp_degrees(world, q_bshd.shape[2], k_bshd.shape[2])
    if (u, r, world) not in _usp_groups:  # new_group is collective: the same calls on every rank
        yunchang.set_seq_parallel_pg(u, r, rank, world)
        _usp_groups.clear()
        _usp_groups[(u, r, world)] = None
    ring_impl = "zigzag" if seq_layout == "zigzag" and causal else "basic"
    attn = yunchang.LongContextAttention(ring_impl_type=ring_impl, attn_type=AttnType.FA)
    return attn(q_bshd, k_bshd, v_bshd, softmax_scale=softmax_scale, causal=causal)


def _usp_fields(case: Any, world_size: int) -> dict[str, Any]:
    u, r = usp_degrees(world_size, case.num_heads, case.kv_heads)
    return {"ulysses_degree": u, "ring_degree": r}


YUNCHANG_USP = register(Impl(
    name="yunchang_usp", label="USP Ulysses×ring (yunchang)", forward=_usp_forward,
    layout="bshd", needs_process_group=True,
    available=lambda device: _cuda_peer_available(device, "yunchang", "yunchang"),
    unsupported=_usp_unsupported, tags=("distributed", "peer"), memory_exponent=1,
    distributed=_hooks(_usp_fields), features=frozenset({"softmax_scale"}),
))  # fmt: skip


TORCH_CONTEXT_PARALLEL = register(Impl(
    name="torch_context_parallel", label="torch context_parallel", forward=_torch_cp_forward,
    layout="bshd", needs_process_group=True, available=_torch_cp_available,
    tags=("distributed", "peer"), memory_exponent=1, distributed=_hooks(),
))  # fmt: skip
