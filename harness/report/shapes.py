"""Shapes: time and peak memory per attention shape (GQA ratio, seqlen_q vs seqlen_k, head dims).

Shown when the run varies a shape axis beyond the sequence length (seqlen_q, seqlen_k,
num_kv_heads, head_dim, head_dim_v); one bar per implementation per shape, the phase and any
other varying axis as selectors. Bars rather than lines: shapes are categories, not a scale.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.report.common import (
    FigureSpec,
    axes_title,
    case_text,
    finite,
    floats,
    grouped,
    impl_colors,
    labels,
    phase_options,
    slice_options,
    template,
    varying,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.sections import figure_section

SHAPE_AXES = ("seqlen_q", "seqlen_k", "num_kv_heads", "head_dim", "head_dim_v")
PANELS = (("time_ms_median", "time (ms)"), ("peak_mem_bytes", "peak memory (bytes)"))


def shapes_figure(rows: pd.DataFrame) -> dict[str, Any] | None:
    sel = rows[(rows["status"] == "ok") & (rows["world_size"] == 1)
               & (rows["workload"].fillna("attention") == "attention")]  # fmt: skip
    sel = sel[finite(sel["time_ms_median"])]
    axes = varying(sel, SHAPE_AXES) if not sel.empty else []
    # a plain length sweep (Sq = Sk = seq_len) is the throughput figure's, not this one's
    unequal = (sel["seqlen_q"] != sel["seqlen_k"]).any() if not sel.empty else False
    if not (set(axes) - {"seqlen_q", "seqlen_k"} or unequal):
        return None
    sel = sel.assign(shape=labels(sel, list(axes)))
    plotted = (*axes, "seq_len", "phase", "q_len", "k_len", "kv_heads", "dim_v")
    sel, slice_axes = with_lines_and_slices(sel, plotted)
    sel = sel.assign(text=case_text(sel))
    order = sorted(sel["shape"].unique().tolist())
    colors = impl_colors(rows["impl"].tolist())
    spec = FigureSpec("Shapes: time and memory per shape", 460)
    spec.grid([[label for _, label in PANELS]], xlog=False, ylog=True, hgap=0.08)
    spec.update_axes("x", type="category", categoryorder="array", categoryarray=order)
    spec.layout["barmode"] = "group"
    columns = ["shape", "text", *(m for m, _ in PANELS)]
    for (phase, slice_, impl), g in grouped(sel, ["phase", "slice", "impl"], columns):
        for col, (metric, label) in enumerate(PANELS, start=1):
            spec.add({
                "type": "bar", "x": list(g["shape"]), "y": floats(g[metric]), "name": impl,
                "marker": {"color": colors.get(impl, "#333")}, "text": list(g["text"]),
                "textposition": "none",
                "hovertemplate": template(f"{impl} · {phase}", [(label, "%{y:.4g}")]),
            }, 1, col, controls={"phase": phase, "slice": slice_}, legend_key=impl)  # fmt: skip
    spec.control("phase", "phase", phase_options(sel))
    spec.control("slice", axes_title(slice_axes), slice_options(sel))
    return spec.to_dict()


build = figure_section(
    "shapes",
    "Shapes",
    shapes_figure,
    "Time and peak memory per shape (Sq = seqlen_q, Sk = seqlen_k, kv = num_kv_heads, "
    "d / dv = head_dim / head_dim_v), one bar per implementation. GQA shrinks K and V (and "
    "their bytes moved) but not the FLOPs.",
)
