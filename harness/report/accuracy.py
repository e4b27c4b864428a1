"""Numerical error vs the float64 reference: relative L2 per implementation × dtype × length.

A strip plot, faceted by dtype × causal; every case of an implementation is a point (other axes
that vary simply add points). The dashed line is the tolerance of flash-attention's tests:
twice the error of naive attention computed in the same low precision.
Points above their own case's tolerance are ringed in red. A NaN or infinite error is no point
(the table and the header show it).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.report.common import (
    FigureSpec,
    case_text,
    facet_titles,
    facet_values,
    finite,
    floats,
    grouped,
    impl_colors,
    length_ticks,
    template,
)  # fmt: skip
from harness.report.sections import figure_section

ERR = "err_rel_l2"
NAIVE = "err_naive_same_dtype_rel_l2"
TOLERANCE_FACTOR = 2.0
FACET_COLS = ("dtype", "causal")
FLOOR = 1e-12  # errors of exactly 0 (fp64 runs) still need a place on a log axis


def error_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, case, impl): the output error is the same for every phase; prefer fwd."""
    sel = rows[(rows["status"] == "ok") & finite(rows[ERR]) & (rows["world_size"] == 1)]
    sel = sel.assign(_later=sel["phase"] != "fwd").sort_values("_later", kind="stable")
    sel = sel.drop_duplicates(["run_id", "case", "impl"]).drop(columns="_later")
    return sel.assign(err_plot=sel[ERR].clip(lower=FLOOR))


def over_tolerance(frame: pd.DataFrame) -> pd.Series:
    limit = TOLERANCE_FACTOR * frame[NAIVE] + FLOOR
    return frame[NAIVE].notna() & (frame[ERR] > limit)


def accuracy_figure(rows: pd.DataFrame) -> dict[str, Any] | None:
    sel = error_rows(rows)
    if sel.empty:
        return None
    colors = impl_colors(rows["impl"].tolist())
    impls = sorted(sel["impl"].unique().tolist())
    # A small horizontal offset per implementation keeps coincident points apart on a log axis.
    offset = {name: 1.0 + 0.035 * (i - (len(impls) - 1) / 2) for i, name in enumerate(impls)}
    sel = sel.sort_values("seq_len", kind="stable")
    sel = sel.assign(x_plot=sel["seq_len"] * sel["impl"].map(offset), over=over_tolerance(sel),
                     text=case_text(sel))  # fmt: skip
    row_vals, col_vals = facet_values(sel, None, FACET_COLS)
    col_of = {cv: j for j, cv in enumerate(col_vals, start=1)}
    spec = FigureSpec("Error vs float64 reference", 440)
    spec.grid(
        facet_titles(row_vals, col_vals, None, FACET_COLS),
        xtitle="sequence length",
        ytitle="relative L2 error",
    )
    columns = ["x_plot", "err_plot", "text", "over", "seq_len", NAIVE, ERR]
    for (dtype, causal, impl), g in grouped(sel, ["dtype", "causal", "impl"], columns):
        spec.add({
            "x": floats(g["x_plot"]), "y": floats(g["err_plot"]), "mode": "markers",
            "name": impl, "legendgroup": impl,
            "marker": {"color": colors[impl], "size": 8, "opacity": 0.85},
            "text": g["text"].tolist(), "customdata": floats(g[NAIVE]),
            "hovertemplate": template(f"{impl} · {dtype}", [
                ("rel L2 error", "%{y:.3g}"), ("naive, same dtype", "%{customdata:.3g}")]),
            "meta": {"series": impl},
        }, 1, col_of[(dtype, causal)], legend_key=impl)  # fmt: skip
    for (dtype, causal), g in grouped(sel, ["dtype", "causal"], columns):
        c = col_of[(dtype, causal)]
        naive = pd.Series(g[NAIVE].astype(float), index=g["seq_len"]).dropna()
        limit = naive.groupby(level=0).median().sort_index()
        if not limit.empty:
            spec.add(
                {
                    "x": limit.index.tolist(),
                    "y": floats((TOLERANCE_FACTOR * limit).clip(lower=FLOOR)),
                    "mode": "lines",
                    "name": "2× naive (same dtype)",
                    "legendgroup": "tolerance",
                    "line": {"color": "#444", "dash": "dash"},
                    "hovertemplate": "2× naive: %{y:.3g}<extra></extra>",
                },
                1,
                c,
                role="threshold",
                legend_key="tolerance",
            )
        bad = g["over"].astype(bool)
        if bad.any():
            spec.add(
                {
                    "x": floats(g["x_plot"][bad]),
                    "y": floats(g["err_plot"][bad]),
                    "mode": "markers",
                    "name": "over tolerance",
                    "legendgroup": "over",
                    "marker": {
                        "symbol": "circle-open",
                        "size": 16,
                        "color": "#d62728",
                        "line": {"width": 2},
                    },
                    "text": g["text"][bad].tolist(),
                    "hovertemplate": template("over 2× naive", [("rel L2 error", "%{y:.3g}")]),
                },
                1,
                c,
                role="flag",
                legend_key="over",
            )
    spec.update_axes("y", dtick=None, tickformat=".1e", nticks=8)
    spec.update_axes("x", **length_ticks(sel["seq_len"]))
    return spec.to_dict()


build = figure_section(
    "accuracy",
    "Numerical error",
    accuracy_figure,
    "Relative L2 error of the output against a float64 reference (lower is better). "
    "Dashed: the tolerance, 2× the error of naive attention in the same dtype; "
    "ringed points exceed their own case's tolerance.",
)
