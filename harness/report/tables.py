"""Markdown pivot tables of one run: implementations down, sequence lengths across.

This is the shape results are quoted in (a closing note, a README, an issue comment): one table
per combination of the axes that vary besides the sequence length (phase, dtype, causal, ...).
A cell holds the metric of an `ok` row, or the row's status (`oom`, `unsupported`, ...) so a
missing number is never mistaken for a slow or absent one. Implementations skipped on every row
(not installed, no GPU) leave the tables and are listed once at the end with their reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.errors import HarnessError

# Axes that split tables when they take more than one value in the run (seq_len is the columns).
SPLIT_AXES = (
    "workload", "phase", "dtype", "causal", "mask_label", "q_len", "k_len", "head_dim",
    "dim_v", "num_heads", "kv_heads", "softmax_scale", "input_scale", "input_layout",
    "page_size", "cache_dist", "batch", "block_size", "world_size", "seq_layout", "hidden",
    "ffn_expansion", "device",
)  # fmt: skip


# Axes not worth a word in the header when a run keeps them at their default (the shape axes
# read "S", "h", "d" where they equal seq_len, num_heads, head_dim: harness/report/data.py).
_DEFAULTS = {"mask_label": "dense", "softmax_scale": "default", "input_scale": 1.0,
             "input_layout": "contiguous", "page_size": "contig", "cache_dist": "fixed",
             "world_size": 1, "q_len": "S", "k_len": "S", "kv_heads": "h",
             "dim_v": "d"}  # fmt: skip


def _is_default(rows: pd.DataFrame, axis: str) -> bool:
    return axis in _DEFAULTS and bool((rows[axis] == _DEFAULTS[axis]).all())


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    scale: float
    fmt: str


METRICS = {
    "tflops": Metric("tflops", "TFLOP/s", 1.0, "{:.3g}"),
    "time": Metric("time_ms_median", "median time, ms", 1.0, "{:.3g}"),
    "peak": Metric("peak_mem_bytes", "peak device memory, MiB", 1 / 2**20, "{:.4g}"),
    "err": Metric("err_rel_l2", "relative L2 error vs float64", 1.0, "{:.1e}"),
    "gbps": Metric("gbytes_per_s", "achieved bandwidth, GB/s (bytes moved ÷ time)", 1.0,
                   "{:.3g}"),
    "bw": Metric("bw_fraction", "fraction of the device's peak bandwidth", 1.0, "{:.2f}"),
}  # fmt: skip


def _cell(row: pd.Series, metric: Metric) -> str:
    if row["status"] != "ok":
        return str(row["status"])
    value = row.get(metric.column)
    if value is None or pd.isna(value):
        return "-"
    return metric.fmt.format(float(value) * metric.scale)


def _describe(keys: dict[str, object]) -> str:
    parts = []
    for axis, value in keys.items():
        if value is None or (isinstance(value, float) and pd.isna(value)):
            continue
        if axis == "causal":
            parts.append("causal" if bool(value) else "full")
        elif axis in ("phase", "dtype", "workload", "device"):
            parts.append(str(value))
        else:
            parts.append(f"{axis}={value}")
    return ", ".join(parts)


def _markdown(frame: pd.DataFrame) -> str:
    header = ["impl", *(f"S={c}" for c in frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for impl, cells in frame.iterrows():
        lines.append("| " + " | ".join([str(impl), *cells.astype(str)]) + " |")
    return "\n".join(lines)


def pivot_markdown(rows: pd.DataFrame, metric_names: list[str]) -> str:
    """One Markdown section per metric, each with one table per combination of varying axes."""
    unknown = [m for m in metric_names if m not in METRICS]
    if unknown:
        raise HarnessError(f"unknown metric {unknown[0]!r}; allowed: {', '.join(METRICS)}")
    if rows.empty:
        raise HarnessError("the run has no rows")
    axes = [a for a in SPLIT_AXES if a in rows.columns and rows[a].nunique(dropna=False) > 1]
    fixed = {a: rows[a].iloc[0] for a in SPLIT_AXES
             if a in rows.columns and a not in axes and pd.notna(rows[a].iloc[0])
             and not _is_default(rows, a)}  # fmt: skip
    all_skipped = rows.groupby("impl", sort=False)["status"].agg(lambda s: set(s) == {"skipped"})
    skipped = [impl for impl, flag in all_skipped.items() if flag]
    if "hidden" not in fixed and "hidden" not in axes:  # an FFN setting without a layer workload
        fixed.pop("ffn_expansion", None)
    impl_order = [i for i in dict.fromkeys(rows["impl"]) if i not in skipped]
    out = [f"All tables: {_describe(fixed)}." if fixed else ""]
    for name in metric_names:
        metric = METRICS[name]
        out.append(f"### {metric.title}")
        groups = rows.groupby(axes, sort=False, dropna=False) if axes else [((), rows)]
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            clash = group.duplicated(["impl", "seq_len"])
            if clash.any():  # an axis this module does not split on varies: say so, drop nothing
                first = group[clash].iloc[0]
                raise HarnessError(f"rows {first['case']!r} and others share impl {first['impl']!r}"
                                   f" and seq_len {first['seq_len']}; harness table splits only "
                                   f"on {', '.join(SPLIT_AXES)}")  # fmt: skip
            cells = group.assign(cell=group.apply(_cell, axis=1, metric=metric))
            table = cells.pivot_table(index="impl", columns="seq_len", values="cell",
                                      aggfunc="first", fill_value="")  # fmt: skip
            table = table.reindex([i for i in impl_order if i in table.index])
            if table.empty:
                continue
            if axes:
                out.append(f"**{_describe(dict(zip(axes, key, strict=True)))}**")
            out.append(_markdown(table))
    if skipped:
        out.append("### Not run here")
        reasons = rows[rows["impl"].isin(skipped)].groupby("impl", sort=False)["reason"]
        out.append("\n".join(f"- {impl}: {'; '.join(dict.fromkeys(r))}" for impl, r in reasons))
    return "\n\n".join(part for part in out if part) + "\n"
