"""FLOPs and bytes moved (the conventions of the harness's sources and FlashAttention papers).

Attention forward: 2·B·H·pairs·D for q·kᵀ plus 2·B·H·pairs·D_v for p·v, where `pairs` is the
number of attended (query, key) pairs of the case's mask (`harness.masks.MaskSpec.attended_pairs`;
Sq·Sk for a full mask, exactly S·(S+1)/2 for square causal — the headline convention of the
FlashAttention papers halves instead; the difference is one diagonal). With D_v = D that is the
usual 4·B·H·Sq·Sk·D over attended pairs. GQA does not change FLOPs (every query head attends).
Backward = 2.5 × forward; fwd_bwd = 3.5 × forward (attention recomputes its probabilities).
Layers add the dense matmuls, 2 FLOPs per weight per token forward and twice that backward (input
and weight gradients), so their backward factor is 2, not 2.5; LayerNorm, GELU and residuals are
not counted (elementwise).

Bytes moved: the compulsory traffic of an IO-aware kernel (FlashAttention, arXiv 2205.14135):
each tensor read or written once. Forward reads Q, K, V and writes O; backward reads Q, K, V, O,
dO (and the per-row lse, negligible) and writes dQ, dK, dV; fwd_bwd is their sum. K and V count
num_kv_heads (the saving of GQA); no mask changes them (a kernel still streams every unmasked
block). Bytes of the input dtype.
"""

from __future__ import annotations

from harness.case import Case

PHASE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
DENSE_PHASE_FACTOR = {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}
_ELEMENT_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def attended_pairs(seq_len: int, causal: bool) -> int:
    """Pairs of a square full or causal mask (the layer workload's)."""
    return seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len


def case_pairs(case: Case) -> int:
    """Attended (query, key) pairs of one head, summed over the batch for decode (its sequences
    differ in length), of one (batch, head) otherwise."""
    if case.workload == "layer":
        return attended_pairs(case.seq_len, case.causal)
    if case.workload == "decode":
        return sum(_decode_pairs(case.sq, n) for n in _seqlens(case))
    return case.mask.attended_pairs(case.sq, case.sk)


def _seqlens(case: Case) -> list[int]:
    from harness.workloads.decode import decode_seqlens

    return decode_seqlens(case)


def _decode_pairs(sq: int, n: int) -> int:
    """Query i (at position n - sq + i) sees min(n - sq + i + 1, n) keys, none below 0."""
    return sum(max(0, min(n - sq + i + 1, n)) for i in range(sq))


def mask_density(case: Case) -> float:
    """The attended fraction of the Sq·Sk pairs."""
    if case.workload == "decode":
        return case_pairs(case) / (case.batch * case.sq * case.sk)
    return case_pairs(case) / (case.sq * case.sk)


def attention_fwd_flops(case: Case) -> float:
    batch = 1 if case.workload == "decode" else case.batch  # decode pairs span the batch
    return 2.0 * batch * case.num_heads * case_pairs(case) * (case.head_dim + case.dim_v)


def decode_bytes(case: Case) -> float:
    """A decode step's compulsory traffic: every sequence's K and V cache read once (its real
    length, num_kv_heads), q read and the output written."""
    e = _ELEMENT_BYTES[case.dtype]
    cache = sum(_seqlens(case)) * case.kv_heads * (case.head_dim + case.dim_v)
    io = case.batch * case.sq * case.num_heads * (case.head_dim + case.dim_v)
    return float(e * (cache + io))


def kv_cache_bytes(case: Case) -> float:
    """The decoder-only notes' M_kv = 2·p·B·S·D·L/T for one layer (L = 1) and no tensor
    parallelism (T = 1), with D the kv width num_kv_heads·head_dim (head_dim_v for V) and
    S each sequence's capacity: seqlen_k tokens (a paged pool rounds up to whole pages)."""
    e = _ELEMENT_BYTES[case.dtype]
    tokens = case.sk if case.page_size is None else -(-case.sk // case.page_size) * case.page_size
    return float(e * case.batch * tokens * case.kv_heads * (case.head_dim + case.dim_v))


def attention_bytes(case: Case, phase: str) -> float:
    """Compulsory bytes moved by an attention phase (see the module docstring)."""
    e = _ELEMENT_BYTES[case.dtype]
    q = case.batch * case.sq * case.num_heads * case.head_dim
    k = case.batch * case.sk * case.kv_heads * case.head_dim
    v = case.batch * case.sk * case.kv_heads * case.dim_v
    o = case.batch * case.sq * case.num_heads * case.dim_v
    fwd = q + k + v + o
    bwd = (q + k + v + o + o) + (q + k + v)  # read q, k, v, o, dO; write dQ, dK, dV
    return float(e * {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[phase])


def layer_dense_fwd_flops(case: Case) -> float:
    """The dense matmuls of a pre-LN layer: QKV + output projection (4h² weights), FFN (2·E·h²)."""
    assert case.hidden is not None
    tokens = case.batch * case.seq_len
    return 2.0 * tokens * (4 * case.hidden**2 + 2 * case.ffn_expansion * case.hidden**2)


def layer_fwd_flops(case: Case) -> float:
    """Attention core (head_dim = hidden // num_heads) plus the dense matmuls."""
    return layer_dense_fwd_flops(case) + attention_fwd_flops(case)


def case_bytes(case: Case, phase: str) -> float | None:
    """Compulsory bytes moved by a row, None for workloads that do not count them (layers)."""
    if case.workload == "decode":
        return decode_bytes(case)
    if case.workload == "attention":
        return attention_bytes(case, phase)
    return None


def case_flops(case: Case, phase: str) -> float:
    if case.workload == "layer":
        return (layer_dense_fwd_flops(case) * DENSE_PHASE_FACTOR[phase]
                + attention_fwd_flops(case) * PHASE_FACTOR[phase])  # fmt: skip
    return attention_fwd_flops(case) * PHASE_FACTOR[phase]
