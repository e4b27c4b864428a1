"""The report's input: rows (and raw samples) of one or more run directories as pandas frames.

Every column the figures read is guaranteed to exist (missing ones are filled with NaN), so a
section builder never has to ask whether an older or partial run has a field. A NaN the row itself
held (a kernel that returned NaN) is not a missing value: `nan_fields` names those per row, so the
table shows them as `nan`. With a baseline, each run is also judged against it by `harness
compare`'s rule (`judge_runs`): the report draws those verdicts and has no regression rule of its
own. A run directory given twice (`RUN`, `RUN/`, a symlink) is read once (`unique_run_dirs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.errors import ResultsError
from harness.results import RunDir

if TYPE_CHECKING:
    from harness.regress.compare import Comparison

# Case axes in the order a reader thinks about them; the ones that vary name a line.
# q_len, k_len, kv_heads and dim_v say how a shape differs from its shorthand ("=" when it does
# not), so a plain length or head sweep does not split into one slice per value.
AXES: tuple[str, ...] = (
    "workload", "batch", "seq_len", "q_len", "k_len", "num_heads", "kv_heads", "head_dim",
    "dim_v", "hidden", "block_size", "dtype", "causal", "mask_label", "softmax_scale",
    "input_scale", "input_layout", "world_size", "seq_layout", "page_size", "cache_dist",
)  # fmt: skip
# (axis, value, its shorthand, what the axis reads when they agree: "Sq=S", "kv=h", "dv=d")
_RELATIVE = (
    ("q_len", "seqlen_q", "seq_len", "S"),
    ("k_len", "seqlen_k", "seq_len", "S"),
    ("kv_heads", "num_kv_heads", "num_heads", "h"),
    ("dim_v", "head_dim_v", "head_dim", "d"),
)

COLUMNS: tuple[str, ...] = (
    "run_id", "case", "impl", "label", "phase", "status", "reason", *AXES,
    "time_ms_median", "time_ms_p20", "time_ms_p80", "num_samples", "flops", "tflops",
    "tokens_per_s", "peak_mem_bytes", "peak_mem_above_inputs_bytes", "peak_mem_bytes_per_rank",
    "input_bytes", "model_peak_mem_bytes", "err_rel_l2", "err_max_abs",
    "err_naive_same_dtype_rel_l2", "memory_exponent", "uses_block_size", "mask", "mask_params",
    "mask_density", "bytes_moved", "gbytes_per_s", "arith_intensity", "bw_fraction",
    "flops_fraction", "cache_bytes", "cache_bytes_formula", "seqlen_q", "seqlen_k",
    "num_kv_heads", "head_dim_v", "noisy", "noise_note",
)  # fmt: skip
# Measured and derived numbers that may be missing (older rows, failed rows): NaN, never text.
NUMERIC_EXTRA = (
    "mask_density", "bytes_moved", "gbytes_per_s", "arith_intensity", "bw_fraction",
    "flops_fraction", "cache_bytes", "cache_bytes_formula",
)  # fmt: skip
CONTIGUOUS = "contig"  # the page_size axis of a contiguous KV cache (and of every non-decode row)
NAN_FIELDS = "nan_fields"  # per row: the fields the row itself held as NaN (not missing ones)
DENSE = "dense"  # the mask_label of full and causal attention


@dataclass
class ReportData:
    """Rows of the runs (concatenated, `run_id` tells them apart), their samples and run.json.

    With a baseline: its rows and run.json, `comparisons` (compare's verdicts, one Comparison per
    run that could be compared) and `comparison_notes` (why a run could not be, in words).
    """

    rows: pd.DataFrame
    samples: pd.DataFrame
    metas: list[dict[str, Any]]
    baseline: pd.DataFrame | None = None
    baseline_meta: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    comparison_notes: list[str] = field(default_factory=list)


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Add any missing column and give the axes the types the figures expect."""
    frame = frame.copy()
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    if NAN_FIELDS not in frame.columns:
        frame[NAN_FIELDS] = pd.Series([()] * len(frame), index=frame.index, dtype=object)
    frame["status"] = frame["status"].fillna("error").astype(str)
    frame["reason"] = frame["reason"].fillna("").astype(str)
    frame["impl"] = frame["impl"].fillna("?").astype(str)
    frame["phase"] = frame["phase"].fillna("fwd").astype(str)
    # Rows written by other tools may lack facet axes; give them a visible placeholder.
    frame["dtype"] = frame["dtype"].fillna("unknown").astype(str)
    frame["causal"] = frame["causal"].fillna(False).astype(bool)
    # the samples' spread or drift (harness/measure/derived.py); rows without the flag are not
    frame["noisy"] = [isinstance(v, bool | np.bool_) and bool(v) for v in frame["noisy"]]
    frame["noise_note"] = [v if isinstance(v, str) else "" for v in frame["noise_note"]]
    frame["world_size"] = pd.to_numeric(frame["world_size"], errors="coerce").fillna(1).astype(int)
    _shape_defaults(frame)
    numeric = [c for c in COLUMNS if c.startswith(("time_", "err_", "peak_mem_b", "tflops"))]
    for col in [*numeric, "tokens_per_s", "flops", "seq_len", "block_size", "num_samples",
                "peak_mem_above_inputs_bytes", "input_bytes", "model_peak_mem_bytes"]:  # fmt: skip
        if col != "peak_mem_bytes_per_rank":
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def mask_label(kind: Any, params: Any) -> str:
    """`dense` for full and causal attention (the `causal` axis tells them apart), else the kind
    with its parameters: `sliding_window(window=16,0)`, `document(num_docs=8) causal`."""
    if not isinstance(kind, str) or kind in ("", "none", "causal"):
        return DENSE
    params = params if isinstance(params, dict) else {}
    args = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in params.items() if k != "causal"]  # fmt: skip
    text = f"{kind}({', '.join(args)})" if args else kind
    return text + (" causal" if params.get("causal") else "")


def _int_text(value: Any) -> str:
    return str(int(value)) if isinstance(value, int | float) and value == value else str(value)


def _shape_defaults(frame: pd.DataFrame) -> None:
    """Rows of other tools (or empty frames) get the values the case meant: Sq = Sk = seq_len,
    kv heads = heads, head_dim_v = head_dim, the mask its causal flag says."""
    for new, old in (("seqlen_q", "seq_len"), ("seqlen_k", "seq_len"),
                     ("num_kv_heads", "num_heads"), ("head_dim_v", "head_dim")):  # fmt: skip
        frame[new] = frame[new].where(frame[new].notna(), frame[old])
    for axis, value, shorthand, agree in _RELATIVE:
        same = (frame[value] == frame[shorthand]) | frame[value].isna()
        text = [_int_text(v) for v in frame[value]]
        frame[axis] = pd.Series(text, index=frame.index, dtype=object).where(~same, agree)
    labels = [mask_label(k, p) for k, p in zip(frame["mask"], frame["mask_params"], strict=True)]
    frame["mask_label"] = pd.Series(labels, index=frame.index, dtype=object)
    frame["softmax_scale"] = frame["softmax_scale"].fillna("default")
    frame["input_scale"] = pd.to_numeric(frame["input_scale"], errors="coerce").fillna(1.0)
    frame["input_layout"] = frame["input_layout"].fillna("contiguous").astype(str)
    # decode axes: rows without them (attention, layers, older runs) hold one constant each, so
    # the axes vary, and split a figure, only where a decode run sweeps them
    frame["page_size"] = pd.Series([_page_text(v) for v in frame["page_size"]], index=frame.index,
                                   dtype=object)  # fmt: skip
    frame["cache_dist"] = frame["cache_dist"].fillna("fixed").astype(str)
    for col in NUMERIC_EXTRA:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")


def _page_text(value: Any) -> str:
    """A page size as text ("16"), `CONTIGUOUS` for none: one type, so the axis sorts and
    labels alike whether or not a run mixes paged and contiguous caches."""
    if isinstance(value, str):
        return value or CONTIGUOUS
    if value is None or pd.isna(value):
        return CONTIGUOUS
    return _int_text(value)


def _nan_fields(record: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k, v in record.items() if isinstance(v, float) and v != v)


def run_id_of(path: Path, meta: dict[str, Any]) -> str:
    return str(meta.get("run_id") or Path(path).name)


def unique_run_dirs(run_dirs: list[Path]) -> tuple[list[Path], list[str]]:
    """Each run directory once, and a note per repeat dropped.

    The same directory under another spelling (`RUN/`, `./RUN`, a symlink) is read once; two
    directories holding the same run (a copy: one run_id) are refused, since their rows could
    not be told apart.
    """
    kept: list[Path] = []
    notes: list[str] = []
    seen: dict[Path, Path] = {}
    ids: dict[str, Path] = {}
    for path in map(Path, run_dirs):
        real = path.resolve()
        if real in seen:
            first = seen[real]
            notes.append(f"{path} given more than once; read once" if str(path) == str(first)
                         else f"{path} is the same directory as {first}; read once")  # fmt: skip
            continue
        run_id = run_id_of(path, RunDir.open(path).meta())
        if run_id in ids:
            raise ResultsError(f"{path} and {ids[run_id]} hold the same run {run_id!r} (a copy?); "
                               "give one of them")  # fmt: skip
        seen[real], ids[run_id] = path, path
        kept.append(path)
    return kept, notes


def load_run(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    run = RunDir.open(path)
    meta = run.meta()
    records = run.rows()
    rows = pd.DataFrame.from_records(records)
    rows[NAN_FIELDS] = pd.Series([_nan_fields(r) for r in records], index=rows.index, dtype=object)
    rows = normalize(rows)
    rows["run_id"] = run_id_of(path, meta)
    rows = rows.drop_duplicates(["case", "impl", "phase"], keep="last").reset_index(drop=True)
    samples = pd.DataFrame.from_records(run.samples())
    if not samples.empty:
        samples["run_id"] = rows["run_id"].iloc[0] if len(rows) else meta.get("run_id")
    return rows, samples, meta


def judge_runs(baseline: Path, run_dirs: list[Path]) -> tuple[list[Comparison], list[str]]:
    """`harness compare BASELINE RUN` for every run, with the thresholds compare would use (the
    run's suite `compare:` section), so the page rings exactly the rows compare flags.

    Runs compare refuses (another suite or profile, no rows) are left out with the reason.
    """
    from harness.regress import compare as cmp

    base = cmp.load_run(baseline)
    comparisons, notes = [], []
    for path in run_dirs:
        cand = cmp.load_run(path)
        try:
            comparisons.append(cmp.compare(base, cand, cmp.settings_for(cand, {})))
        except cmp.CompareError as exc:
            notes.append(f"{cand.run_id} not compared: {exc}")
    return comparisons, notes


def load_report_data(run_dirs: list[Path], baseline: Path | None = None) -> ReportData:
    run_dirs, _ = unique_run_dirs(run_dirs)
    loaded = [load_run(Path(p)) for p in run_dirs]
    rows = (
        pd.concat([r for r, _, _ in loaded], ignore_index=True)
        if loaded
        else normalize(pd.DataFrame())
    )
    samples = pd.concat([s for _, s, _ in loaded], ignore_index=True) if loaded else pd.DataFrame()
    data = ReportData(rows=rows, samples=samples, metas=[m for _, _, m in loaded])
    if baseline is not None:
        base_rows, _, base_meta = load_run(Path(baseline))
        data.baseline, data.baseline_meta = base_rows, base_meta
        data.comparisons, data.comparison_notes = judge_runs(Path(baseline), run_dirs)
    return data
