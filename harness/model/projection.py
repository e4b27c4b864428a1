"""Projection: the longest context that fits, and its step time, per implementation and device.

Per device, for a training step (fwd_bwd) of a model of `MODELS` (3B/7B/13B: OpenLLaMA 3B and
LLaMA 7B/13B shapes, arXiv 2302.13971 Table 2, the models of Ring Attention's Table 3) on P
devices with FSDP-sharded states (16 bytes a parameter, ZeRO arXiv 1910.02054):
  states / P + L · saved · b · s · h   (each layer's output kept for backward; saved = 16 bytes a
                                        token a hidden unit reproduces the paper's BPT-alone max
                                        contexts, see harness/model/ring.py)
  + one layer's working set, the BPT paper's per-layer activation (memory.paper_layer_activation):
    vanilla 2bns² + 8bsh, memeff 2bsh + 4bch + 8bsh, bpt 2bsh;
  ring: the sequence is split over P devices (s = S/P a device) and the working set is 6bch
  (Ring Attention arXiv 2310.01889 Table 1), i.e. harness/model/ring.py's `memory_bytes`.
Max context: the largest S with memory(S) <= device memory, by bisection (memory grows with S).
Step time: model FLOPs of the step (flops_time.training_step_flops) over the FLOP/s at work (P
devices for ring, one for the others, each running its own sequence), plus ring communication
that the block does not hide (block below c* = p·F/(2·B), ring.overlap_block_tokens).
`predict_max_seqlen` answers the same question for one measured-row-like case on one device from
memory.holds (what the code holds), for `harness frontier`.
"""

from __future__ import annotations

from typing import Any

from harness.model.devices import Device
from harness.model.flops_time import training_step_flops
from harness.model.memory import DTYPE_BYTES, holds, paper_layer_activation_bytes
from harness.model.ring import MODELS, ModelError, Workload, memory_bytes, overlap_block_tokens

IMPLS = ("vanilla", "memeff", "bpt", "ring")
DEFAULT_BLOCK = 2048  # query/key block tokens of the memory-efficient kernels (c)
MAX_TOKENS = 2**40


def workload(model: str, phase: str = "fwd_bwd") -> Workload:
    if model not in MODELS:
        raise ModelError(f"params: unknown value {model!r}; allowed: {', '.join(MODELS)}")
    return Workload(**MODELS[model], phase=phase)  # type: ignore[arg-type]


def memory_per_device(impl: str, w: Workload, devices: int, seq_len: int,
                      block: int = DEFAULT_BLOCK) -> float:  # fmt: skip
    """Bytes one device holds for a training step of `seq_len` tokens (module docstring)."""
    if impl == "ring":
        return sum(memory_bytes(w, devices, seq_len).values())
    if impl not in IMPLS:
        raise ModelError(f"impl: unknown value {impl!r}; allowed: {', '.join(IMPLS)}")
    states = w.num_params * w.state_bytes_per_param / devices
    saved = w.num_layers * w.saved_per_token_hidden * w.batch * seq_len * w.hidden
    work = paper_layer_activation_bytes(impl, w.batch, seq_len, w.hidden, w.num_heads,
                                        min(block, seq_len))  # fmt: skip
    return states + saved + work


def _largest(fits: Any, granule: int) -> int:
    """The largest multiple of `granule` (up to MAX_TOKENS) with fits(S), 0 if none."""
    if not fits(granule):
        return 0
    lo, hi = 1, 2
    while hi * granule <= MAX_TOKENS and fits(hi * granule):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * granule) else (lo, mid)
    return lo * granule


def max_context(impl: str, w: Workload, device: Device, devices: int) -> int:
    """The longest context (tokens) whose training step fits each device's memory."""
    granule = 2 * devices if impl == "ring" else 1
    return _largest(lambda s: memory_per_device(impl, w, devices, s) <= device.memory_bytes,
                    granule)  # fmt: skip


def step_time_s(impl: str, w: Workload, device: Device, devices: int, seq_len: int) -> float:
    """Seconds of one training step of `seq_len` tokens (module docstring)."""
    flops = training_step_flops(w.batch, seq_len, w.hidden, w.num_layers)
    if impl != "ring":
        return flops / device.flops
    n = seq_len / devices
    t = flops / (devices * device.flops)
    if devices > 1:
        # per layer and ring step: K/V (and dK/dV) bytes over the link vs that step's attention
        fwd = 4.0 * w.batch * n * n * w.hidden / device.flops
        kv = 2.0 * w.batch * n * w.hidden * w.dtype_bytes / device.link_bytes_per_s
        dkv = 2.0 * w.batch * n * w.hidden * w.grad_bytes / device.link_bytes_per_s
        exposed = max(0.0, kv - fwd) + max(0.0, kv + dkv - 2.5 * fwd)
        t += w.num_layers * devices * exposed
    return t


def project(device: Device, model: str, devices: list[int], impls: tuple[str, ...] = IMPLS,
            seq_len: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One record per (impl, P): max context, and the step time and tokens/s at `seq_len` (default:
    the max context; None where `seq_len` does not fit), and ring's c*."""
    w = workload(model)
    c_star = overlap_block_tokens(device.ring_profile(), w, "fwd_bwd")
    out = []
    for impl in impls:
        for p in devices:
            longest = max_context(impl, w, device, p)
            s = longest if seq_len is None else (seq_len if seq_len <= longest else 0)
            t = step_time_s(impl, w, device, p, s) if s else None
            out.append({"impl": impl, "devices": p, "device": device.name, "model": model,
                        "max_context_tokens": longest, "seq_len": s or None, "step_time_s": t,
                        "tokens_per_s": (s * (p if impl != "ring" else 1) / t) if t else None,
                        "overlap_block_tokens": c_star if impl == "ring" else None})  # fmt: skip
    return out


def _inputs_bytes(row: dict[str, Any]) -> float:
    """Bytes of the inputs a case allocates (q, k, v; or x and the layer weights)."""
    p = DTYPE_BYTES[str(row["dtype"])]
    b, s, n = int(row["batch"]), int(row["seq_len"]), int(row["num_heads"])
    if row.get("workload") == "layer":
        h, e = int(row["hidden"]), int(row.get("ffn_expansion") or 4)
        return float(p * (b * s * h + (4 + 2 * e) * h * h))
    d = int(row["head_dim"])
    kvh = int(row.get("num_kv_heads") or n)
    return float(p * b * s * d * (n + 2 * kvh))


def predict_max_seqlen(impl: str, workload: str, phase: str, budget_bytes: float,
                       case_params: dict[str, Any], granule: int = 128) -> int:  # fmt: skip
    """The longest seq_len (a multiple of `granule`) whose predicted peak (inputs included,
    memory.holds for the rest) fits `budget_bytes` on one device. `case_params` holds the other
    case fields (batch, num_heads, head_dim or hidden, dtype, block_size, ...). ModelError for
    an implementation or workload the model cannot price. Square cases (seqlen_q = seqlen_k)."""
    if phase not in ("fwd", "bwd", "fwd_bwd"):
        raise ModelError(f"phase: unknown value {phase!r}; allowed: fwd, bwd, fwd_bwd")
    base = {k: v for k, v in case_params.items() if k not in ("seqlen_q", "seqlen_k")}
    base |= {"impl": impl, "workload": workload, "phase": phase}

    def fits(s: int) -> bool:
        row = base | {"seq_len": s}
        return sum(holds(row).values()) + _inputs_bytes(row) <= budget_bytes

    return _largest(fits, granule)
