"""Sparse patterns: time relative to dense causal attention against the density of the mask.

For every implementation, phase and case shape, each mask's median time is divided by that of the
dense causal mask of the same shape (full attention where no causal row exists), and its density
(attended fraction of the Sq·Sk pairs, `mask_density`) likewise. A kernel whose cost is in
proportion to the pairs it attends lies on the dashed diagonal (the density-proportional ideal);
above it, the mask costs more than its density says (masks evaluated per element, partial
blocks); a kernel that ignores the mask's sparsity stays near 1.
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
    phase_options,
    slice_options,
    template,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.data import DENSE
from harness.report.sections import figure_section

PLOTTED = ("mask_label", "causal", "phase")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x")


def relative_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """ok single-device rows with `rel_time` and `rel_density` against their reference mask."""
    sel = rows[(rows["status"] == "ok") & (rows["world_size"] == 1)]
    sel = sel[finite(sel["time_ms_median"]) & finite(sel["mask_density"])]
    # a run of full and causal attention only is the throughput figure's, not a mask study
    if sel.empty or not (sel["mask_label"] != DENSE).any() \
            or sel[["mask_label", "causal"]].drop_duplicates().shape[0] < 2:  # fmt: skip
        return sel.iloc[0:0]
    others = [c for c in ("impl", "phase", "run_id", "workload", "batch", "seqlen_q", "seqlen_k",
                          "num_heads", "num_kv_heads", "head_dim", "head_dim_v", "dtype",
                          "block_size", "softmax_scale", "input_scale", "input_layout")
              if c in sel.columns]  # fmt: skip
    # str() of each value: pandas' astype(str) keeps missing values missing (pandas 3)
    keys = pd.Series(["|".join(map(str, t)) for t in sel[others].itertuples(index=False)],
                     index=sel.index)  # fmt: skip
    out = []
    for _, g in sel.groupby(keys, sort=False):
        dense = g["mask_label"] == DENSE
        ref = g[dense & g["causal"]]
        ref = ref if not ref.empty else g[dense & ~g["causal"]]
        if ref.empty or len(g) < 2:
            continue
        base = ref.iloc[0]
        out.append(g.assign(rel_time=g["time_ms_median"] / base["time_ms_median"],
                            rel_density=g["mask_density"] / base["mask_density"],
                            ref_mask="causal" if base["causal"] else "full"))  # fmt: skip
    return pd.concat(out) if out else sel.iloc[0:0]


def patterns_figure(rows: pd.DataFrame) -> dict[str, Any] | None:
    rel = relative_rows(rows)
    if rel.empty:
        return None
    rel, slice_axes = with_lines_and_slices(rel, (*PLOTTED, "seq_len", "q_len", "k_len"))
    shown = rel["mask_label"].where(rel["mask_label"] != DENSE,
                                    rel["causal"].map({True: "causal", False: "full"}))  # fmt: skip
    rel = rel.assign(text=case_text(rel) + "<br>mask: " + shown.astype(str))
    colors = impl_colors(rows["impl"].tolist())
    spec = FigureSpec("Masks: time vs density, relative to dense causal", 460)
    spec.grid([["time ÷ dense-causal time"]], xlog=False, ylog=False,
              xtitle="density ÷ dense-causal density")  # fmt: skip
    for (phase, slice_), g in grouped(rel, ["phase", "slice"], ["rel_density"]):
        # the ideal spans this view's densities only: autorange then frames its points
        top = float(max(g["rel_density"].max(), 1.0)) * 1.05
        spec.add({"x": [0, top], "y": [0, top], "mode": "lines", "name": "ideal (∝ density)",
                  "line": {"color": "#999", "dash": "dash", "width": 1}, "hoverinfo": "skip"},
                 role="ideal", controls={"phase": phase, "slice": slice_},
                 legend_key="ideal")  # fmt: skip
    columns = ["rel_density", "rel_time", "text", "time_ms_median", "mask_density"]
    lengths = sorted(rel["seq_len"].unique().tolist())
    for (phase, slice_, impl, seq), g in grouped(rel, ["phase", "slice", "impl", "seq_len"],
                                                 columns):  # fmt: skip
        name = f"{impl} S={int(seq)}" if len(lengths) > 1 else impl
        symbol = SYMBOLS[lengths.index(seq) % len(SYMBOLS)]  # lengths of one kernel: one colour
        spec.add({
            "x": floats(g["rel_density"]), "y": floats(g["rel_time"]), "mode": "markers",
            "name": name,
            "marker": {"size": 9, "color": colors.get(impl, "#333"), "symbol": symbol},
            "text": list(g["text"]), "customdata": floats(g["time_ms_median"]),
            "hovertemplate": template(f"{name} · {phase}", [
                ("time ÷ causal", "%{y:.3g}"), ("density ÷ causal", "%{x:.3g}"),
                ("time (ms)", "%{customdata:.4g}")]),
        }, controls={"phase": phase, "slice": slice_}, legend_key=name)  # fmt: skip
    spec.control("phase", "phase", phase_options(rel))
    spec.control("slice", axes_title(slice_axes), slice_options(rel))
    return spec.to_dict()


build = figure_section(
    "patterns",
    "Masks and sparse patterns",
    patterns_figure,
    "Each point is one mask: its time and density divided by those of dense causal attention "
    "of the same shape (full attention where the run has no causal row). On the dashed line a "
    "kernel's cost is proportional to the pairs it attends; hover for the mask's parameters.",
)
