"""Memory formulas: the sources' per-layer activation counts, and what each implementation holds.

Two kinds of formula live here, both in bytes.

The sources' formulas (cited each), used for projections:
- one attention score matrix: b·n·Sq·Sk·p (decoder-only notes, sources/004 §2.1.3, "the
  query-key dot products produce A·B·S² more");
- per-layer activation memory of the BPT paper's comparison (arXiv 2305.19370,
  restated in sources/000 §2 "Blockwise Parallel Transformers"; bf16 bytes): vanilla 2·b·n·s²
  (attention) + 8bsh (FFN); memory-efficient attention 2bsh + 4bch + FFN 8bsh; BPT 2bsh total;
  Ring Attention 6bch per device;
- the decoder-only notes' activation memory per layer (sources/004 §2.1.3, eq. 2.7 with L = 1):
  2·B·D·S·(p(E+4)+1) + A·B·S²·(2p+1);
- the KV cache (sources/004 §6, eq. 6.1): 2·p·B·S·D·L/T;
- model states for a training step (sources/004 §2.1.1-2.1.2, eqs. 2.1, 2.3, 2.4): 16 bytes a
  parameter in float32 (4 weights + 4 grads + 8 Adam), 18 in mixed precision (2 + 4 + 12).

What each implementation of this repository holds above its inputs during one timed call
(`peak_mem_above_inputs_bytes`, harness/run/measure_task.py), for predicting measured rows: the
same terms, with the tensor counts read off the code (see `holds`). A fixed overhead (allocator
slack, workspace) is what these leave out; harness/model/predict.py calibrates it per
implementation and phase on the shortest row of each shape series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.model.ring import ModelError, _ring_buffers

DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
PAPER_LAYER_KINDS = ("vanilla", "memeff", "bpt", "ring")


# --- the sources' formulas ----------------------------------------------------------------------


def attention_scores_bytes(batch: int, num_heads: int, seqlen_q: int, seqlen_k: int,
                           dtype_bytes: int) -> float:  # fmt: skip
    """One materialized score matrix: b·n·Sq·Sk·p bytes (sources/004 §2.1.3)."""
    return float(batch * num_heads * seqlen_q * seqlen_k * dtype_bytes)


def paper_layer_activation_bytes(kind: str, batch: int, seq_len: int, hidden: int,
                                 num_heads: int, block_size: int) -> float:  # fmt: skip
    """Per-layer activation bytes in the BPT paper's bf16 count (arXiv 2305.19370;
    sources/000 §2): vanilla 2bns² + 8bsh, memeff 2bsh + 4bch + 8bsh, bpt 2bsh, ring 6bch (per
    device, c = block tokens = the local shard). b batch, s tokens, h hidden, n heads."""
    b, s, h, n, c = batch, seq_len, hidden, num_heads, block_size
    forms = {
        "vanilla": 2.0 * b * n * s * s + 8.0 * b * s * h,
        "memeff": 2.0 * b * s * h + 4.0 * b * c * h + 8.0 * b * s * h,
        "bpt": 2.0 * b * s * h,
        "ring": 6.0 * b * c * h,
    }
    if kind not in forms:
        raise ModelError(f"kind: unknown value {kind!r}; allowed: {', '.join(forms)}")
    return forms[kind]


def decoder_activation_bytes(batch: int, seq_len: int, hidden: int, num_heads: int,
                             ffn_expansion: int, dtype_bytes: int) -> float:  # fmt: skip
    """Activation bytes of one decoder layer kept for backward (sources/004 §2.1.3, eq. 2.7,
    L = 1): 2·B·D·S·(p(E+4)+1) + A·B·S²·(2p+1), dropout masks (1 byte) included."""
    b, s, d, a, e, p = batch, seq_len, hidden, num_heads, ffn_expansion, dtype_bytes
    return 2.0 * b * d * s * (p * (e + 4) + 1) + a * b * s * s * (2 * p + 1)


def kv_cache_bytes(dtype_bytes: int, batch: int, seq_len: int, hidden: int, num_layers: int = 1,
                   tensor_parallel: int = 1) -> float:  # fmt: skip
    """KV cache bytes M = 2·p·B·S·D·L/T (sources/004 §6, eq. 6.1); D is the K (= V) width."""
    return 2.0 * dtype_bytes * batch * seq_len * hidden * num_layers / tensor_parallel


def model_state_bytes(num_params: float, mixed_precision: bool = True) -> float:
    """Weights + gradients + Adam states of a training step (sources/004 eqs. 2.1, 2.3, 2.4):
    2 + 4 + 12 = 18 bytes a parameter in mixed precision, 4 + 4 + 8 = 16 in float32."""
    return num_params * (18.0 if mixed_precision else 16.0)


# --- what this repository's implementations hold -------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The fields of a row (or case) the formulas read; sizes in elements, p in bytes."""

    workload: str
    impl: str
    phase: str
    batch: int
    seqlen_q: int
    seqlen_k: int
    num_heads: int
    kv_heads: int
    head_dim: int
    head_dim_v: int
    block_size: int | None
    hidden: int | None
    ffn_expansion: int
    p: int
    world_size: int = 1

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Shape:
        s = int(row["seq_len"])
        hidden = row.get("hidden")
        heads = int(row["num_heads"])
        head_dim = int(row.get("head_dim") or (hidden // heads if hidden else 0))
        return cls(workload=str(row.get("workload", "attention")), impl=str(row["impl"]),
                   phase=str(row["phase"]), batch=int(row["batch"]),
                   seqlen_q=int(row.get("seqlen_q") or s), seqlen_k=int(row.get("seqlen_k") or s),
                   num_heads=heads, kv_heads=int(row.get("num_kv_heads") or heads),
                   head_dim=head_dim, head_dim_v=int(row.get("head_dim_v") or head_dim),
                   block_size=row.get("block_size"), hidden=hidden,
                   ffn_expansion=int(row.get("ffn_expansion") or 4),
                   p=DTYPE_BYTES[str(row["dtype"])],
                   world_size=int(row.get("world_size") or 1))  # fmt: skip


def _acc(p: int) -> int:
    """Bytes of the float32 accumulators the blockwise kernels use (float64 stays float64)."""
    return max(p, 4)


def _ring_holds(x: Shape) -> dict[str, float]:
    """One ring rank (the row's peak is the largest rank's): the blockwise terms of its local
    shard n = S/P (one block of n tokens), plus the receive buffers of
    implementations/ring/ring_attention.py (`_Ring2`): K/V with num_kv_heads, one pair at P = 2
    and two alternating pairs at P >= 3, and as many dK/dV pairs in the accumulator dtype for
    training (harness/model/ring.py counts the same)."""
    world = max(1, x.world_size)
    n = -(-x.seqlen_q // world)
    # the ring kernel takes each visiting block whole: its block is the local shard
    local = Shape(**{**x.__dict__, "impl": "bpt", "seqlen_q": n, "seqlen_k": n, "block_size": n,
                     "world_size": 1})  # fmt: skip
    terms = _attention_holds(local)
    bufs = _ring_buffers(world)
    kv = float(x.batch * x.kv_heads * n * (x.head_dim + x.head_dim_v))
    if bufs:
        terms["kv_buffers"] = bufs * kv * x.p
        if x.phase != "fwd":
            terms["dkv_buffers"] = bufs * kv * _acc(x.p)
    return terms


def _attention_holds(x: Shape) -> dict[str, float]:
    """Bytes above the inputs q, k, v of one attention call, by term (see `holds`)."""
    if x.impl == "ring":
        return _ring_holds(x)
    b, n, sq, sk, p = x.batch, x.num_heads, x.seqlen_q, x.seqlen_k, x.p
    out = float(b * n * sq * x.head_dim_v * p)
    grads = float(b * (n * sq * x.head_dim + x.kv_heads * sk * (x.head_dim + x.head_dim_v)) * p)
    lse = float(b * n * sq * 4)
    train = x.phase != "fwd"
    scores = attention_scores_bytes(b, n, sq, sk, p)
    terms: dict[str, float] = {"out": out}
    if train:
        terms["grads"] = grads
    if x.impl in ("naive", "sdpa_math"):
        # forward: scores and probabilities; training also the saved probabilities' gradient pair
        terms["scores"] = (3.0 if train else 2.0) * scores
        if x.impl == "sdpa_math" and not train:
            # torch's math path softmaxes "safely": a bool (-inf) mask of the scores, 1 byte each
            terms["safe_softmax_mask"] = scores / p
    elif x.impl == "chunked":
        # three query-chunk × key-chunk tiles at once (scores, exponentials, their product path)
        cq = min(x.block_size or 1024, sq)
        ck = min(4 * (x.block_size or 1024), sk)
        terms["tiles"] = 3.0 * b * n * cq * ck * _acc(p)
        if train:
            terms["recompute"] = out  # the checkpointed chunk's output rebuilt in backward
    elif x.impl == "bpt":
        # fused per-block kernel (no tile), plus the block's partial output (and, backward, its
        # dq/dk/dv partials) in the accumulator dtype, and the lse
        c = min(x.block_size or 1024, sk)
        blk = b * n * c * x.head_dim_v * _acc(p)
        terms["block_partials"] = float(blk * (4 if train else 1))
        terms["lse"] = lse
    elif x.impl.startswith("sdpa") or x.impl.startswith("flash") or x.impl in ("xformers", "flex"):
        terms["lse"] = lse  # fused kernels: output and lse only (FlashAttention, arXiv 2205.14135)
        if train:
            terms["dout_copy"] = out  # backward takes a contiguous copy of the output gradient
    else:
        raise ModelError(f"impl: no memory model for {x.impl!r} (attention workload)")
    return terms


def _layer_holds(x: Shape) -> dict[str, float]:
    """Bytes above the inputs (x and the weights) of one pre-LN layer call, by term: the larger of
    the call's two peaks, as counted from implementations/layers.py and bpt_layer.py (see
    `holds`). u = b·s·h·p (one activation), E the FFN expansion, c the query block."""
    if not x.hidden:
        raise ModelError("hidden: missing for a layer row; allowed: a positive integer")
    b, s, h, n, e, p = x.batch, x.seqlen_q, x.hidden, x.num_heads, x.ffn_expansion, x.p
    u = float(b * s * h * p)
    train = x.phase != "fwd"
    grads_w = float((4 + 2 * e) * h * h * _acc(p)) if train else 0.0
    if x.impl == "bpt_layer":
        # implementations/bpt_layer.py: k, v of the whole sequence, q and the attention output a
        # query block (c rows) at a time, the FFN a chunk of FFN_CHUNK_ROWS (256) rows at a time
        c = min(x.block_size or 1024, s)
        block = float(2 * b * c * h * p)  # q and its attention output
        chunk = float((e + 4) * b * min(256, c) * h * p)  # LN2, FFN in, E-wide, out of a chunk
        if train:
            # backward: the caller's y, the saved out, recomputed k, v, their dk, dv and dx (the
            # module's own count, ≈7·b·s·h) + one block's d_attn, q, dq and its tiles' partials.
            # CPU runs (hidden 256, block 1024) grow by 7·b·s·h from S = 2048 to 4096 but by 10
            # from 1024 (one block) to 2048 (two): the 2048 row reads 0.89, the 4096 row 0.93
            return {"layer": 7.0 * u, "block": 2.0 * block, "chunk": 2.0 * chunk,
                    "grads_w": grads_w}  # fmt: skip
        return {"kv_and_y": 3.0 * u, "block": block, "chunk": chunk}
    attn_impl = {"vanilla_layer": "naive", "memeff_layer": "sdpa_flash"}.get(x.impl)
    if attn_impl is None:
        raise ModelError(f"impl: no memory model for {x.impl!r} (layer workload)")
    heads = Shape(**{**x.__dict__, "workload": "attention", "impl": attn_impl,
                     "head_dim": h // n, "head_dim_v": h // n, "kv_heads": n})  # fmt: skip
    attn = _attention_holds(heads)
    scores = attn.get("scores", 0.0)
    if not train:
        # q, k, v stay referenced through the layer: attention peak vs the FFN's (6 + 2E)·u
        at_attention = 3.0 * u + sum(attn.values())
        at_ffn = (6.0 + 2.0 * e) * u
        return (
            {"qkv": 3.0 * u, "attention": sum(attn.values())}
            if at_attention >= at_ffn
            else {"ffn_live": at_ffn}
        )
    # training: autograd keeps (8 + 2E)·u (LN1, QKV, attention out, its reshape, residual, LN2,
    # FFN in, E-wide pre- and post-GELU) and one probability matrix; the FFN's backward adds the
    # E-wide gradient while all of it is alive; attention's backward holds LN1 + QKV, d_attn +
    # dq, dk, dv and its own peak (3 score matrices, or dout's copy and out)
    ffn_backward = (8.0 + 3.0 * e) * u + scores / 3.0
    attn_backward = 8.0 * u + (scores if scores else 2.0 * attn["out"])
    if ffn_backward >= attn_backward:
        return {"saved": (8.0 + 2.0 * e) * u, "ffn_grad": e * u, "saved_probs": scores / 3.0,
                "grads_w": grads_w}  # fmt: skip
    return {"qkv_and_grads": 8.0 * u, "attn_backward": attn_backward - 8.0 * u, "grads_w": grads_w}


def _decode_holds(x: Shape, page_size: int | None) -> dict[str, float]:
    """A decode step over a cache that is an input (harness/workloads/kv_cache.py), by term: its
    output; the contiguous gather copy of K and V a paged cache costs the kernels that need one
    tensor (`KVCache.contiguous`: the notes' M_kv of the used tokens, sources/004 eq. 6.1); the
    key mask for seqlen_q > 1 (bool, B·Sq·L bytes; torch SDPA turns it into an additive mask in
    the input dtype, p more bytes an entry); the unfused kernels' scores and probabilities
    (2·B·H·Sq·L·p); SDPA math under GQA expands K and V to every query head (2·B·H·L·D·p), and
    the CPU runs show one more expanded-K-sized tensor at every length (inferred from measurement,
    consistent with a copy of the expanded K laid out for the batched matmul; not read off
    torch)."""
    b, n, sq, sk, p = x.batch, x.num_heads, x.seqlen_q, x.seqlen_k, x.p
    if x.impl == "decode_split_kv":
        raise ModelError("impl: no memory model for 'decode_split_kv' (its split count, hence its "
                         "partials, is chosen at run time)")  # fmt: skip
    sdpa = x.impl.startswith("decode_sdpa")
    terms = {"out": float(b * n * sq * x.head_dim_v * p)}
    if page_size:
        terms["gather"] = kv_cache_bytes(p, b, sk, x.kv_heads * (x.head_dim + x.head_dim_v) / 2)
    if sq > 1:
        terms["mask"] = float(b * sq * sk * (1 + (p if sdpa else 0)))
    if x.impl in ("decode_naive", "decode_sdpa_math"):
        terms["scores"] = 2.0 * attention_scores_bytes(b, n, sq, sk, p)
    elif x.impl not in ("decode_sdpa_flash", "decode_flash_attn2", "decode_flash_attn3",
                        "decode_xformers", "decode_flashinfer", "decode_flex"):  # fmt: skip
        raise ModelError(f"impl: no memory model for {x.impl!r} (decode workload)")
    if x.impl == "decode_sdpa_math" and x.kv_heads < n:
        terms["gqa_expand"] = float(b * n * sk * (x.head_dim + x.head_dim_v) * p)
        terms["gqa_k_copy"] = float(b * n * sk * x.head_dim * p)
    return terms


def holds(row: dict[str, Any]) -> dict[str, float]:
    """Predicted bytes above the inputs for one row, by term. ModelError for what it cannot price.

    Counts (counted from the code, p = bytes of the row's dtype, t = one q-sized tensor):
    attention: naive/sdpa_math fwd 2 score matrices (scores, probabilities) + out; training 3 +
    grads; chunked 3 query×key chunk tiles; bpt (and ring per rank) the fused block kernel's
    partial output (4 partials in backward) + lse; fused kernels out + lse (and, backward, a copy
    of dout); training adds the gradients of q, k, v. Ring adds its K/V (dK/dV) receive buffers.
    layer: the larger of two peaks (`_layer_holds`). decode: `_decode_holds`.
    """
    x = Shape.from_row(row)
    if x.workload == "attention":
        return _attention_holds(x)
    if x.workload == "layer":
        return _layer_holds(x)
    if x.workload == "decode":
        return _decode_holds(x, row.get("page_size"))
    raise ModelError(f"workload: unknown value {x.workload!r}; allowed: attention, layer, decode")
