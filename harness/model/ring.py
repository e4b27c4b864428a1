"""An analytic model of Ring Attention (Liu, Zaharia & Abbeel, arXiv 2310.01889) past one machine.

Given a device profile (FLOP/s, link bandwidth and latency, memory) and a workload, it predicts per
ring step: compute time, communication time, and their overlap; the total time of `fwd` and
`fwd_bwd`; per-device memory; and the longest context that fits on P devices.

Time. A ring of P ranks runs P steps forward; at steps 0..P-2 each rank sends its K/V block
(2·b·H·n·D·p bytes, n = S/P local tokens, p bytes per element) while it computes its queries against
the block in hand, so a step costs max(compute, comm) and the last step costs compute alone.
Backward runs P steps again; K/V travel at steps 0..P-2 and the dK/dV partial sums (accumulator
dtype, `grad_bytes`) at steps 1..P-1, plus one final unoverlapped hop home, as in
implementations/ring/ring_attention.py. comm = bytes / bandwidth + latency per exchange. Causal
work per step is the slowest rank's attended pairs from `seq_layouts.plan` (the ring is lock-step).

Overlap (the paper's §3 condition, written with bytes): forward compute of one step is
4·b·H·D·c²/F (F = achieved FLOP/s, c = block tokens), K/V bytes are 2·b·H·D·c·p, so communication is
hidden when c >= c* = p·F / (2·B) tokens; with bf16 (p = 2) this is the paper's c >= F/B. fwd_bwd
(compute 3.5× forward, bytes (2p + 2·grad_bytes)/step at most) gives c* = (2p + 2·g)·F / (14·B).
Causal layouts do about half the pairs per step, so they need twice the block.

Memory per device (bytes), for S tokens on P devices (n = S/P):
  model states / P (FSDP-sharded weights, grads, Adam: 16 bytes a parameter, ZeRO arXiv 1910.02054)
  + layers · saved_per_token_hidden · b·n·h (activations kept for backward; 2 = only the layer input
    in bf16, full rematerialization)
  + Ring Attention's per-layer working set 6·b·c·h (arXiv 2310.01889, Table 1; bf16 bytes)
  + the attention inputs and K/V buffers: q, k, v, out (and dout, dq, dk, dv for fwd_bwd) of the
    local shard, and the receive buffers of implementations/ring/ring_attention.py (`_Ring2`): a
    K/V pair at P = 2 and two alternating pairs at P >= 3 (the first step sends the caller's own
    k, v), and for fwd_bwd as many dK/dV pairs in the accumulator dtype (`grad_bytes`).
The longest context is then linear in P at fixed per-device memory, less the sharded states.
"""

from __future__ import annotations

import functools
import math
import reprlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from harness.errors import HarnessError
from harness.yaml_safe import YamlInputError, one_line, read_yaml

Phase = Literal["fwd", "fwd_bwd"]
PHASE_COMPUTE = {
    "fwd": 1.0,
    "bwd": 2.5,
}  # backward = 2.5 × forward: 2 matmuls forward, 5 back (FlashAttention-2, arXiv 2307.08691)


class ModelError(HarnessError):
    """A bad profile name or file, or a workload the model cannot price."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceProfile(_Strict):
    """One device and the link to its ring neighbour; `source` says where the numbers come from."""

    name: str
    peak_flops: PositiveFloat = Field(description="dense FLOP/s at the workload's dtype")
    achieved_fraction: float = Field(default=1.0, gt=0, le=1)
    link_bytes_per_s: PositiveFloat = Field(description="one-way bandwidth to the next rank")
    link_latency_s: float = Field(default=0.0, ge=0)
    memory_bytes: PositiveFloat
    compute_slots: PositiveFloat | None = Field(
        default=None, description="ranks that compute at full speed at once (CPU cores); None: one "
        "device per rank")  # fmt: skip
    source: str = ""

    @property
    def flops(self) -> float:
        return self.peak_flops * self.achieved_fraction


GB = 1e9
PROFILES: dict[str, DeviceProfile] = {p.name: p for p in [
    DeviceProfile(
        name="a100-nvlink", peak_flops=312e12, link_bytes_per_s=300 * GB, link_latency_s=5e-6,
        memory_bytes=80 * GB,
        source="A100 80GB: 312 TFLOP/s bf16 dense, NVLink 300 GB/s one way: the assumptions of "
               "Ring Attention (arXiv 2310.01889) Table 2; latency: a typical NVLink P2P figure"),
    DeviceProfile(
        name="a100-infiniband", peak_flops=312e12, link_bytes_per_s=12.5 * GB,
        link_latency_s=5e-6, memory_bytes=80 * GB,
        source="A100 80GB over 100 Gb/s InfiniBand (12.5 GB/s), arXiv 2310.01889 Table 2"),
    DeviceProfile(
        name="h100-sxm", peak_flops=989e12, link_bytes_per_s=450 * GB, link_latency_s=5e-6,
        memory_bytes=80 * GB,
        source="H100 SXM 80GB: 989 TFLOP/s dense bf16, NVLink 900 GB/s both directions "
               "(450 one way); NVIDIA datasheet"),
    DeviceProfile(
        name="cpu-gloo", peak_flops=157e9, achieved_fraction=0.33, link_bytes_per_s=0.86 * GB,
        link_latency_s=2.5e-3, memory_bytes=24 * 2**30, compute_slots=2,
        source="this 2-core VM (~157 GFLOP/s fp32 peak, measured); one thread per rank, gloo over "
               "loopback; 51 GFLOP/s a rank, 0.86 GB/s and 2.5 ms fitted by `harness model ring "
               "--calibrate` on a ring_model_validation run (shared, loaded machine); see "
               "--fit-slots for its effective concurrency"),
]}  # fmt: skip


class Workload(_Strict):
    """What runs on the ring: attention shape, and the model whose memory bounds the context."""

    batch: PositiveInt = 1
    num_heads: PositiveInt = 32
    head_dim: PositiveInt = 128
    dtype_bytes: PositiveInt = 2
    grad_bytes: PositiveInt = Field(default=4, description="dK/dV accumulators on the ring")
    causal: bool = False
    seq_layout: Literal["contiguous", "striped", "zigzag"] = "zigzag"
    phase: Phase = "fwd_bwd"
    hidden: PositiveInt = 4096
    num_layers: PositiveInt = 32
    num_params: float = Field(default=7e9, ge=0)
    state_bytes_per_param: float = Field(default=16.0, ge=0)
    # activation bytes kept per token per hidden unit per layer: 16 reproduces the paper's
    # BPT-alone max contexts on 8×A100 (64k/32k/16k for 3B/7B/13B); 2 is full rematerialization
    saved_per_token_hidden: float = Field(default=16.0, ge=0)

    @property
    def kv_block_bytes_per_token(self) -> float:
        """K and V of one token (all heads): the paper's 2·d·p with d = heads × head_dim."""
        return 2.0 * self.batch * self.num_heads * self.head_dim * self.dtype_bytes


# OpenLLaMA / LLaMA shapes of the paper's 3B, 7B and 13B models (hidden, layers, heads, params)
MODELS: dict[str, dict[str, Any]] = {
    "3b": {"hidden": 3200, "num_layers": 26, "num_heads": 32, "head_dim": 100, "num_params": 3.4e9},
    "7b": {"hidden": 4096, "num_layers": 32, "num_heads": 32, "head_dim": 128, "num_params": 6.7e9},
    "13b": {"hidden": 5120, "num_layers": 40, "num_heads": 40, "head_dim": 128,
            "num_params": 13.0e9},
}  # fmt: skip


def load_profile(name_or_file: str) -> DeviceProfile:
    """A built-in profile by exact name, or a YAML file holding one profile's fields (read with
    bounded work by `harness.yaml_safe`: an alias bomb or a binary file is one line too)."""
    if name_or_file in PROFILES:
        return PROFILES[name_or_file]
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        where = one_line(str(path))
        try:
            return DeviceProfile.model_validate(read_yaml(path))
        except YamlInputError as exc:
            raise ModelError(f"{where}: {exc}") from None
        except ValidationError as exc:  # the first problem: its key, message and value
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or "profile"
            got = reprlib.repr(first.get("input"))
            raise ModelError(one_line(f"{where}: not a device profile: {key}: {first['msg']}; "
                                      f"got {got}")) from None  # fmt: skip
    raise ModelError(f"unknown device profile {name_or_file!r}; allowed: "
                     f"{', '.join(PROFILES)} or a .yaml file")  # fmt: skip


# --- compute per step -------------------------------------------------------------------------


class BlockTimes(_Strict):
    """Measured time of one rank's local kernel on an n×n block at P = 1 (seconds)."""

    local_len: PositiveInt
    fwd_full_s: PositiveFloat
    bwd_full_s: PositiveFloat | None = None
    fwd_causal_s: PositiveFloat | None = None
    bwd_causal_s: PositiveFloat | None = None


def _step_pairs(w: Workload, world: int, n: int) -> list[tuple[int, int]]:
    """Per ring step, the slowest rank's (full-masked pairs, causal-diagonal pairs)."""
    return list(_slowest_per_step(w.seq_layout, w.causal, world, n))


def rank_pairs(seq_layout: str, causal: bool, world: int, n: int, rank: int,
               step: int) -> tuple[int, int]:  # fmt: skip
    """(full, causal-diagonal) pairs `rank` computes at ring `step`, by the ring implementation's
    own schedule (`Impl.distributed.schedule`, from the registry)."""
    from harness.registry import REGISTRY

    plan = REGISTRY.get("ring").distributed.schedule
    pieces = plan(seq_layout, rank=rank, source=(rank - step) % world, world_size=world,
                  local_len=n, causal=causal)  # fmt: skip
    full = sum(p.pairs(n) for p in pieces if p.mask == "full")
    return full, sum(p.pairs(n) for p in pieces if p.mask != "full")


@functools.lru_cache(maxsize=1024)
def _slowest_per_step(seq_layout: str, causal: bool, world: int,
                      n: int) -> tuple[tuple[int, int], ...]:  # fmt: skip
    """The slowest rank's pairs at each step, in O(P) schedule calls instead of O(P²).

    At step s rank r holds the K/V block of rank (r - s) mod P: at s = 0 its own, at s >= 1 a
    later rank's for r < s and an earlier rank's for r >= s. Every layout's work depends on the
    pair (rank, source) only through that order (and on the local length), so a step has at most
    two kinds of rank, and ranks 0 and s stand for them: the ones a scan of every rank in order,
    keeping the first strictly larger, would pick. tests/unit/test_ring_model.py holds this
    equal to that scan for every layout, mask and P <= 16.
    """
    steps = []
    for step in range(world):
        worst = (0, 0)
        for rank in (0,) if step == 0 else (0, step):
            pairs = rank_pairs(seq_layout, causal, world, n, rank, step)
            if sum(pairs) > sum(worst):
                worst = pairs
        steps.append(worst)
    return tuple(steps)


def _slowdown(profile: DeviceProfile, world: int) -> float:
    """Ranks beyond the compute slots share them (P one-thread ranks on a 2-core CPU)."""
    return max(1.0, world / profile.compute_slots) if profile.compute_slots else 1.0


def step_compute_s(profile: DeviceProfile, w: Workload, world: int, n: int, kind: str,
                   blocks: BlockTimes | None = None) -> list[float]:  # fmt: skip
    """Compute time of each ring step for `kind` in fwd/bwd: measured blocks or FLOPs / F."""
    out = []
    for full, diag in _step_pairs(w, world, n):
        if blocks is not None:
            t_full = blocks.fwd_full_s if kind == "fwd" else blocks.bwd_full_s
            t_diag = blocks.fwd_causal_s if kind == "fwd" else blocks.bwd_causal_s
            if t_full is None:
                raise ModelError(f"no measured {kind} block time at local length {n}")
            per_pair = t_full / (blocks.local_len**2)
            diag_s = (t_diag / (n * (n + 1) / 2) * diag) if t_diag else per_pair * diag
            out.append(per_pair * full + diag_s)
        else:
            flops = 4.0 * w.batch * w.num_heads * w.head_dim * (full + diag) * PHASE_COMPUTE[kind]
            out.append(flops / profile.flops)
    return [t * _slowdown(profile, world) for t in out]


def comm_s(profile: DeviceProfile, nbytes: float) -> float:
    return nbytes / profile.link_bytes_per_s + profile.link_latency_s


# --- one prediction -------------------------------------------------------------------------


class Prediction(_Strict):
    world_size: int
    seq_len: int
    local_len: int
    phase: Phase
    step_compute_s: float  # the slowest step's compute (forward step for fwd, fwd+bwd else)
    step_comm_s: float
    step_s: float
    exposed_comm_s: float
    comm_total_s: float  # every exchange back to back, as the harness's replayed `comm_ms`
    total_s: float
    comm_bytes_per_step: float
    overlap: bool
    overlap_block_tokens: float
    mem_bytes: dict[str, float]
    mem_total_bytes: float


def _ring_time(compute: list[float], comm: list[float | None], tail: float = 0.0) -> float:
    """Σ over steps of max(compute, comm) (a step without an exchange costs its compute)."""
    return sum(max(c, m or 0.0) for c, m in zip(compute, comm, strict=True)) + tail


def overlap_block_tokens(profile: DeviceProfile, w: Workload, phase: Phase) -> float:
    """c*: the block (local tokens) from which a step's compute hides its communication."""
    per_token = w.kv_block_bytes_per_token / w.batch / (w.num_heads * w.head_dim)  # 2p
    factor = 1.0
    if phase == "fwd_bwd":
        per_token += 2.0 * w.grad_bytes
        factor = 1.0 + PHASE_COMPUTE["bwd"]
    c = per_token * profile.flops / (4.0 * factor * profile.link_bytes_per_s)
    return 2.0 * c if w.causal else c


def _ring_buffers(world: int) -> int:
    """K/V receive buffers a rank holds: none alone, one at P = 2, two alternating from P = 3."""
    return min(world - 1, 2)


def memory_bytes(w: Workload, world: int, seq_len: int) -> dict[str, float]:
    """Per-device memory parts (see the module docstring)."""
    n = seq_len / world
    tok = w.batch * w.num_heads * w.head_dim
    grads = w.phase == "fwd_bwd"
    dkv = w.grad_bytes if grads else 0  # dK/dV travel in the accumulator dtype
    return {
        "states": w.num_params * w.state_bytes_per_param / world,
        "activations": w.num_layers * w.saved_per_token_hidden * w.batch * n * w.hidden
        + 6.0 * w.batch * n * w.hidden * w.dtype_bytes / 2.0,
        "attn_inputs": (8 if grads else 4) * tok * n * w.dtype_bytes,
        "kv_in_flight": _ring_buffers(world) * 2 * tok * n * (w.dtype_bytes + dkv),
    }


def predict(profile: DeviceProfile, w: Workload, world: int, seq_len: int,
            blocks: BlockTimes | None = None) -> Prediction:  # fmt: skip
    """Time, overlap and memory of one (P, S) point."""
    if seq_len % world:
        raise ModelError(f"seq_len {seq_len} is not a multiple of world_size {world}")
    n = seq_len // world
    kv = w.kv_block_bytes_per_token * n
    dkv = kv / w.dtype_bytes * w.grad_bytes
    fwd = step_compute_s(profile, w, world, n, "fwd", blocks)
    kv_comm = [comm_s(profile, kv) if s < world - 1 else None for s in range(world)]
    total = _ring_time(fwd, kv_comm)
    step_compute, step_comm, nbytes = max(fwd), comm_s(profile, kv), kv
    exposed = sum(max(0.0, (m or 0.0) - c) for c, m in zip(fwd, kv_comm, strict=True))
    comm_total = sum(m or 0.0 for m in kv_comm)
    if w.phase == "fwd_bwd":
        bwd = step_compute_s(profile, w, world, n, "bwd", blocks)
        bwd_comm = [
            None if world == 1 else comm_s(profile, (kv if s < world - 1 else 0)
                                           + (dkv if s > 0 else 0))
            for s in range(world)
        ]  # fmt: skip
        tail = comm_s(profile, dkv) if world > 1 else 0.0
        comm_total += tail + sum(m or 0.0 for m in bwd_comm)
        total += _ring_time(bwd, bwd_comm, tail)
        exposed += tail + sum(max(0.0, (m or 0.0) - c) for c, m in zip(bwd, bwd_comm, strict=True))
        step_compute += max(bwd)
        nbytes = kv + dkv if world > 2 else kv
        step_comm += comm_s(profile, nbytes) if world > 1 else 0.0
    if world == 1:
        step_comm, nbytes = 0.0, 0.0
    c_star = overlap_block_tokens(profile, w, w.phase)
    mem = memory_bytes(w, world, seq_len)
    return Prediction(
        world_size=world, seq_len=seq_len, local_len=n, phase=w.phase,
        step_compute_s=step_compute, step_comm_s=step_comm,
        step_s=max(step_compute, step_comm), exposed_comm_s=exposed, comm_total_s=comm_total,
        total_s=total,
        comm_bytes_per_step=nbytes, overlap=world == 1 or n >= c_star,
        overlap_block_tokens=c_star, mem_bytes=mem, mem_total_bytes=sum(mem.values()),
    )  # fmt: skip


def max_context(profile: DeviceProfile, w: Workload, world: int) -> int:
    """The longest sequence (a multiple of the layout's divisor) whose memory fits one device."""
    fixed = memory_bytes(w, world, 0)["states"]
    per_token = sum(memory_bytes(w, world, world).values()) - fixed  # one local token
    room = profile.memory_bytes - fixed
    if room <= 0:
        return 0
    d = 2 * world if (w.seq_layout == "zigzag" and world > 1) else world
    return int(math.floor(room / per_token) * world) // d * d


def world_sizes(max_p: int) -> list[int]:
    """1, 2, 4, ... up to max_p (and max_p itself)."""
    ps, p = [], 1
    while p < max_p:
        ps.append(p)
        p *= 2
    return [*ps, max_p]


def table(profile: DeviceProfile, w: Workload, max_p: int = 4096,
          seq_len: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One row per P: timing at `seq_len` (default: the max context at P) and the max context."""
    rows = []
    for p in world_sizes(max_p):
        longest = max_context(profile, w, p)
        s = seq_len if seq_len is not None else longest
        s = s // (2 * p) * (2 * p) if s >= 2 * p else 2 * p
        pred = predict(profile, w, p, s)
        rows.append({**pred.model_dump(), "max_context_tokens": longest,
                     "profile": profile.name})  # fmt: skip
    return rows


def ring_model_figure(profiles: list[DeviceProfile] | None = None, workload: Workload | None = None,
                      max_p: int = 4096):  # fmt: skip
    """Max context vs number of devices, log-log, one line per device profile (plotly)."""
    import plotly.graph_objects as go

    w = workload or Workload()
    fig = go.Figure()
    for prof in profiles or list(PROFILES.values()):
        ps = world_sizes(max_p)
        ys = [max_context(prof, w, p) or None for p in ps]  # 0 (does not fit) has no log
        fig.add_trace(go.Scatter(x=ps, y=ys,
                                 mode="lines+markers", name=prof.name))  # fmt: skip
    fig.update_layout(
        title=f"Ring Attention: max context vs devices ({w.num_params / 1e9:.3g}B params, "
              f"{w.num_layers} layers, hidden {w.hidden}, {w.phase})",
        xaxis={"title": "devices P", "type": "log"},
        yaxis={"title": "max context (tokens)", "type": "log"},
    )  # fmt: skip
    return fig
