"""Device-count scaling (rows with world_size > 1): time, per-rank peak memory and efficiency vs P.

Efficiency is strong scaling against the smallest P of the same line: t(P0)·P0 / (t(P)·P), 1.0 is
perfect. Per-rank memory is the largest entry of `peak_mem_bytes_per_rank` when the row has it.
Rows whose time is NaN or infinite are left out (the table shows them); other such values are gaps.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.report.common import (
    axes_title,
    finite,
    metric_panels,
    slice_options,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.sections import figure_section

PANELS = (("time_ms_median", "time (ms)"), ("rank_mem_bytes", "peak memory per rank"),
          ("efficiency", "scaling efficiency"))  # fmt: skip


def _max_rank(value: Any) -> float:
    """The largest finite per-rank peak (NaN when the row has none)."""
    if isinstance(value, (list, tuple)) and value:
        ranks = [float(v) for v, ok in zip(value, finite(value), strict=True) if ok]
        return max(ranks) if ranks else float("nan")
    return float("nan")


def scaling_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Ok rows of every line that reaches world_size > 1, with per-rank memory and efficiency."""
    ok = rows[(rows["status"] == "ok") & finite(rows["time_ms_median"])]
    if ok.empty or not (ok["world_size"] > 1).any():
        return ok.iloc[0:0], []
    ok, slice_axes = with_lines_and_slices(ok, ("world_size",), line_axes=("seq_len",))
    key = ok["series"] + "|" + ok["slice"]
    ok = ok[key.map(ok.groupby(key)["world_size"].max()) > 1].copy()
    key = ok["series"] + "|" + ok["slice"]
    ok["rank_mem_bytes"] = ok["peak_mem_bytes_per_rank"].map(_max_rank).fillna(ok["peak_mem_bytes"])
    first = ok.assign(key=key).sort_values("world_size").groupby("key").head(1).set_index("key")
    p0, t0 = key.map(first["world_size"]), key.map(first["time_ms_median"])
    ok["efficiency"] = (t0 * p0) / (ok["time_ms_median"] * ok["world_size"])
    return ok, slice_axes


def scaling_figure(rows: pd.DataFrame) -> dict[str, Any] | None:
    sel, slice_axes = scaling_rows(rows)
    if sel.empty:
        return None
    spec, sel = metric_panels(
        rows,
        sel,
        x="world_size",
        title="Scaling with the number of devices",
        xtitle="devices (P)",
        panels=PANELS,
        hgap=0.07,
    )
    sizes = sorted(sel["world_size"].unique().tolist())
    spec.add(
        {
            "x": [sizes[0], sizes[-1]],
            "y": [1.0, 1.0],
            "mode": "lines",
            "name": "ideal",
            "line": {"color": "#888", "dash": "dot", "width": 1},
            "hoverinfo": "skip",
        },
        1,
        3,
        role="threshold",
        legend_key="ideal",
    )
    spec.update_axes("x", tickvals=sizes, ticktext=[str(s) for s in sizes])
    spec.layout["yaxis2"].update(title={"text": "bytes"})  # log ticks: SI labels (common)
    spec.layout["yaxis3"].update(type="linear", rangemode="tozero")
    spec.control("slice", axes_title(slice_axes), slice_options(sel))
    return spec.to_dict()


build = figure_section(
    "scaling",
    "Device-count scaling",
    scaling_figure,
    "Strong scaling: efficiency = t(P0)·P0 / (t(P)·P) against the smallest P of "
    "each line; the time of a distributed row is the slowest rank's.",
)
