"""The result row: its schema version, its statuses and its fields, owned here and nowhere else.

One row per (case, implementation, phase). Every module that builds or reads rows imports this
module; it imports neither torch nor any other part of the harness, so read-only commands stay
fast.

Schema history (`schema_version` on every record of a run directory):
    1  the first rows; the sequence sharding of distributed cases was called `layout`.
    2  `layout` renamed `seq_layout` (the tensor layout bshd/bhsd is the implementation's `layout`);
       rows may carry `mem_budget_bytes`, `grad_bytes` and the implementation's declared facts.
    3  shapes and masks: seqlen_q, seqlen_k, num_kv_heads, head_dim_v, softmax_scale, mask (the
       kind) and mask_params, input_scale, input_layout; mask_density, bytes_moved, gbytes_per_s,
       arith_intensity, bw_fraction, flops_fraction; the decode workload's page_size,
       cache_dist, cache_bytes and cache_bytes_formula. Later v3 rows add optional fields, which
       older v3 rows lack (readers treat a missing one as "not recorded"): num_threads, noisy
       and noise_note; injected_slowdown (tests and benchmarks only, harness/run/inject.py).
       timing_mode (perf_counter, cuda_events[+l2_flush], cuda_graph[+l2_flush]); with
       timing.processes > 1: processes, worker_pids and time_ms_median_per_process.
       other_cpu_cores, steal_cpu_cores, contended and contention_note (CPU time other
       processes and the hypervisor took while the row was timed, measure/contention.py).
Version-1 and -2 records are upgraded on read (`upgrade`: the new case fields take the values the
old case meant); newer versions are refused.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypedDict, get_args

SCHEMA_VERSION = 3
READABLE_VERSIONS: tuple[int, ...] = (1, 2, 3)

Status = Literal["ok", "skipped", "unsupported", "oom", "timeout", "error"]
STATUSES: tuple[str, ...] = get_args(Status)
# The statuses that mean "this ran and failed" (as opposed to "did not run here").
FAILED: tuple[str, ...] = ("oom", "timeout", "error")

# The fields the memory pass of a CPU task contributes (see harness/run/sweep.py).
MEMORY_FIELDS: tuple[str, ...] = (
    "peak_mem_above_inputs_bytes",
    "peak_mem_bytes",
    "mem_method",
    "cuda_reserved_bytes",
    "device_used_bytes",
    "mem_budget_bytes",
    "mem_below_resolution",
    "peak_mem_above_inputs_bytes_per_rank",
    "peak_mem_above_inputs_bytes_per_node",
)


class Row(TypedDict, total=False):
    """One result row. Units are in the names; `None` means "not measured", with a reason.

    Identity and case (from `Case.to_dict`): schema_version, run_id, case, impl, label, phase,
    device, workload, batch, seq_len, num_heads, head_dim, block_size, dtype, causal, world_size,
    seq_layout, hidden, ffn_expansion, seqlen_q, seqlen_k, num_kv_heads, head_dim_v,
    softmax_scale (None: 1/sqrt(head_dim)), mask (kind, harness/masks.py), mask_params,
    input_scale, input_layout; mask_density (attended fraction of the Sq·Sk pairs).
    Outcome: status, reason (one line; for `error` also `traceback`), elapsed_s.
    Time: time_ms_median, time_ms_p20, time_ms_p80 (of `num_samples` samples; the raw samples go to
    samples.jsonl), noisy and noise_note (the samples' spread or drift, or with 3+ processes their
    disagreement, harness/measure/derived.py;
    or other processes' CPU use while timed: other_cpu_cores, steal_cpu_cores, contended,
    contention_note, harness/measure/contention.py),
    num_threads (torch's intra-op threads the samples ran on: the suite's `threads`, else the
    physical cores, harness/run/threads.py; 1 on the ranks of a distributed case), flops
    (forward 4·B·H·Sq·Sk·D over attended pairs; backward 2.5×), tflops, tokens_per_s.
    Memory: peak_mem_above_inputs_bytes (above what was live before the timed call, the saved graph
    of `bwd` included), peak_mem_bytes (that plus input_bytes), grad_bytes (the gradients a
    backward phase produces), mem_method, mem_budget_bytes, cuda_reserved_bytes,
    device_used_bytes.
    Error vs float64: err_rel_l2, err_max_abs, err_d{q,k,v,...}_rel_l2 / _max_abs,
    err_naive_same_dtype_rel_l2, err_naive_same_dtype_grad_rel_l2, ref_rows_sampled, ref_note.
    Implementation facts (from its `Impl`): memory_exponent, uses_block_size.
    Distributed extras (from the implementation's hooks): *_per_rank lists, comm fields.
    Placement of the ranks (harness/run/ranks.py `placement_fields`): rank_hosts,
    rank_node_ranks (torchrun's GROUP_RANK; 0 when the harness starts the ranks), rank_nodes
    (node index 0..num_nodes-1 of each rank), num_nodes, ring_links ("intra"/"inter" for rank r →
    r+1 mod P), bytes_sent_inter_node, bytes_sent_per_node, exposed_comm_ms_per_node,
    peak_mem_above_inputs_bytes_per_node (sum of the node's ranks' peaks); launcher ("torchrun"
    when the launched world ran the case).
    """

    schema_version: int
    run_id: str | None
    case: str
    impl: str
    label: str
    phase: str
    device: str
    workload: str
    batch: int
    seq_len: int
    num_heads: int
    head_dim: int
    block_size: int | None
    dtype: str
    causal: bool
    world_size: int
    seq_layout: str
    hidden: int | None
    ffn_expansion: int
    seqlen_q: int
    seqlen_k: int
    num_kv_heads: int
    head_dim_v: int
    softmax_scale: float | None
    mask: str
    mask_params: dict[str, Any]
    input_scale: float
    input_layout: str
    mask_density: float
    status: Status
    reason: str
    traceback: str
    elapsed_s: float
    time_ms_median: float
    time_ms_p20: float
    time_ms_p80: float
    num_samples: int
    time_samples_ms: list[float]
    noisy: bool
    noise_note: str
    num_threads: int
    injected_slowdown: float
    other_cpu_cores: float
    steal_cpu_cores: float
    contended: bool
    contention_note: str
    timing_mode: str
    processes: int
    worker_pids: list[int]
    time_ms_median_per_process: list[float]
    flops: float
    tflops: float
    tokens_per_s: float
    bytes_moved: float
    gbytes_per_s: float
    arith_intensity: float
    bw_fraction: float
    flops_fraction: float
    page_size: int | None
    cache_dist: str
    cache_bytes: int
    cache_bytes_formula: float
    input_bytes: int
    grad_bytes: int
    peak_mem_above_inputs_bytes: int | None
    peak_mem_bytes: int | None
    mem_method: str
    mem_budget_bytes: int | None
    mem_below_resolution: bool
    cuda_reserved_bytes: int | None
    device_used_bytes: int | None
    err_rel_l2: float
    err_max_abs: float
    err_naive_same_dtype_rel_l2: float | None
    err_naive_same_dtype_grad_rel_l2: float | None
    ref_rows_sampled: int | None
    ref_note: str
    memory_exponent: int | None
    uses_block_size: bool


Key = tuple[str, str, str]


def is_finite_number(value: Any) -> bool:
    """A row value that is a real number, neither NaN nor infinite (bools and None are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def row_key(row: dict[str, Any]) -> Key:
    """The join key of results, reports and comparisons: (case, impl, phase)."""
    return (row["case"], row["impl"], row["phase"])


def new_row(case: dict[str, Any], *, case_name: str, impl: str, phase: str, device: str) -> Row:
    """The fields every row has before anything ran: identity and the case's axes."""
    row: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "case": case_name, "impl": impl,
                           "phase": phase, "device": device}  # fmt: skip
    row.update(case)
    return row  # type: ignore[return-value]


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A record of any readable schema version, in the current one (a new dict)."""
    version = record.get("schema_version")
    out = dict(record)
    if version == 1 and "layout" in out and "seq_layout" not in out:
        out["seq_layout"] = out.pop("layout")
    if version in (1, 2):
        # Before shapes and masks: square, equal heads, default scale, full or causal.
        for new, old in (("seqlen_q", "seq_len"), ("seqlen_k", "seq_len"),
                         ("num_kv_heads", "num_heads"), ("head_dim_v", "head_dim")):  # fmt: skip
            if old in out:
                out.setdefault(new, out[old])
        if "causal" in out:
            out.setdefault("mask", "causal" if out["causal"] else "none")
            out.setdefault("mask_params", {"causal": False})
        out.setdefault("softmax_scale", None)
        out.setdefault("input_scale", 1.0)
        out.setdefault("input_layout", "contiguous")
        out.setdefault("page_size", None)
        out.setdefault("cache_dist", "fixed")
        out["schema_version"] = SCHEMA_VERSION
    return out


def validate_row(record: Any) -> list[str]:
    """Why `record` is not a readable row (empty when it is): a JSON object of a readable schema
    version whose identity (case, impl, phase) are non-empty strings and whose status is one of
    STATUSES. Readers skip such a record with these reasons (harness/results.py)."""
    if not isinstance(record, dict):
        return [f"a JSON {_json_kind(record)}, not a row object"]
    problems = []
    version = record.get("schema_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        what = "no schema_version" if version is None else f"schema_version {version!r}"
        problems.append(f"{what}; this harness reads {', '.join(map(str, READABLE_VERSIONS))}")
    for field in ("case", "impl", "phase"):
        value = record.get(field)
        if field not in record:
            problems.append(f"no {field}")
        elif not isinstance(value, str) or not value:
            problems.append(f"{field} {value!r} is not a name")
    status = record.get("status")
    if "status" not in record:
        problems.append("no status")
    elif not isinstance(status, str) or status not in STATUSES:
        problems.append(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return problems


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")
