"""FLOP counts (ANCHORS.md conventions).

Attention forward: 4·B·H·Sq·Sk·D for full attention (two matmuls of 2·Sq·Sk·D each). Causal counts
the exact number of attended (query, key) pairs, S·(S+1)/2 per head for Sq == Sk (the headline
convention of FlashAttention papers halves instead; the difference is one diagonal).
Backward = 2.5 × forward; fwd_bwd = 3.5 × forward (attention recomputes its probabilities).
Layers add the dense matmuls, 2 FLOPs per weight per token forward and twice that backward (input
and weight gradients), so their backward factor is 2, not 2.5; LayerNorm, GELU and residuals are
not counted (elementwise).
"""

from __future__ import annotations

from harness.case import Case

PHASE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
DENSE_PHASE_FACTOR = {"fwd": 1.0, "bwd": 2.0, "fwd_bwd": 3.0}


def attended_pairs(seq_len: int, causal: bool) -> int:
    return seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len


def attention_fwd_flops(case: Case) -> float:
    return (
        4.0
        * case.batch
        * case.num_heads
        * attended_pairs(case.seq_len, case.causal)
        * (case.head_dim)
    )


def layer_dense_fwd_flops(case: Case) -> float:
    """The dense matmuls of a pre-LN layer: QKV + output projection (4h² weights), FFN (2·E·h²)."""
    assert case.hidden is not None
    tokens = case.batch * case.seq_len
    return 2.0 * tokens * (4 * case.hidden**2 + 2 * case.ffn_expansion * case.hidden**2)


def layer_fwd_flops(case: Case) -> float:
    """Attention core (head_dim = hidden // num_heads) plus the dense matmuls."""
    return layer_dense_fwd_flops(case) + attention_fwd_flops(case)


def case_flops(case: Case, phase: str) -> float:
    if case.workload == "layer":
        return (layer_dense_fwd_flops(case) * DENSE_PHASE_FACTOR[phase]
                + attention_fwd_flops(case) * PHASE_FACTOR[phase])  # fmt: skip
    return attention_fwd_flops(case) * PHASE_FACTOR[phase]
