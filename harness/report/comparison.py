"""Comparison mode: candidate runs against a baseline run, as time and memory ratios per case.

A time regression needs both a ratio above 1 + `THRESHOLD` and non-overlapping p20–p80 ranges
(candidate p20 above baseline p80), so one noisy sample does not light the page up. The deeper
statistics of the compare/history issue can replace this section through `register_section`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.report.common import FigureSpec, case_text, floats, impl_colors, template
from harness.report.data import ReportData
from harness.report.sections import Section

KEYS = ["case", "impl", "phase"]
THRESHOLD = 0.05
PANELS = (("time_ratio", "time ratio (candidate / baseline)"), ("mem_ratio", "peak memory ratio"))


def compare_rows(candidate: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Rows ok in both runs, with time/memory ratios and regression/improvement flags."""
    cols = ["time_ms_median", "time_ms_p20", "time_ms_p80", "peak_mem_bytes"]
    cand = candidate[candidate["status"] == "ok"]
    base = baseline[baseline["status"] == "ok"][KEYS + cols]
    both = cand.merge(base, on=KEYS, suffixes=("", "_base"))
    both["time_ratio"] = both["time_ms_median"] / both["time_ms_median_base"]
    both["mem_ratio"] = both["peak_mem_bytes"] / both["peak_mem_bytes_base"]
    both["regression"] = (both["time_ratio"] > 1 + THRESHOLD) & (
        both["time_ms_p20"] > both["time_ms_p80_base"]
    )
    both["improvement"] = (both["time_ratio"] < 1 - THRESHOLD) & (
        both["time_ms_p80"] < both["time_ms_p20_base"]
    )
    both["label_x"] = both["case"] + " · " + both["phase"]
    return both.sort_values(["seq_len", "case", "phase", "impl"], kind="stable")


def comparison_figure(candidate: pd.DataFrame, baseline: pd.DataFrame) -> dict[str, Any] | None:
    both = compare_rows(candidate, baseline)
    if both.empty:
        return None
    colors = impl_colors(candidate["impl"].tolist())
    many_runs = both["run_id"].nunique() > 1
    spec = FigureSpec("Candidate vs baseline", 600)
    spec.grid([[PANELS[0][1]], [PANELS[1][1]]], xlog=False, vgap=0.1)
    for row, (metric, _) in enumerate(PANELS, start=1):
        for (impl, run_id), g in both[both[metric].notna()].groupby(["impl", "run_id"]):
            name = f"{impl} {run_id}" if many_runs else impl
            spec.add({
                "x": g["label_x"].tolist(), "y": floats(g[metric]), "mode": "markers",
                "name": name, "legendgroup": name,
                "marker": {"color": colors.get(impl, "#333"), "size": 8},
                "text": (case_text(g) + " · " + g["phase"]).tolist(),
                "customdata": floats(g["time_ms_median_base"]),
                "hovertemplate": template(name, [("ratio", "%{y:.3f}"),
                                                 ("baseline time (ms)", "%{customdata:.4g}")]),
                "meta": {"metric": metric},
            }, row, 1, legend_key=name)  # fmt: skip
    for flag, color in (("regression", "#d62728"), ("improvement", "#2ca02c")):
        g = both[both[flag]]
        if not g.empty:
            spec.add({
                "x": g["label_x"].tolist(), "y": floats(g["time_ratio"]), "mode": "markers",
                "name": f"{flag}s", "legendgroup": flag,
                "marker": {"symbol": "circle-open", "size": 16, "color": color,
                           "line": {"width": 2}},
                "text": case_text(g).tolist(),
                "hovertemplate": template(flag, [("time ratio", "%{y:.3f}")]),
                "meta": {"flag": flag},
            }, 1, 1, role="flag", legend_key=flag)  # fmt: skip
    spec.update_axes("x", type="category", showticklabels=False)
    spec.layout["xaxis2"]["matches"] = "x"
    spec.layout["shapes"] = [
        {"type": "line", "xref": f"x{s} domain", "yref": f"y{s}", "x0": 0, "x1": 1, "y0": 1,
         "y1": 1, "line": {"color": "#888", "dash": "dot", "width": 1}}
        for s in ("", "2")
    ]  # fmt: skip
    return spec.to_dict()


def build(data: ReportData) -> Section | None:
    if data.baseline is None:
        return None
    fig = comparison_figure(data.rows, data.baseline)
    base_id = (data.baseline_meta or {}).get("run_id", "baseline")
    if fig is None:
        return Section(
            "comparison",
            "Comparison",
            [],
            f"No case is ok in both these runs and the baseline {base_id}.",
        )
    return Section("comparison", "Comparison", [fig],
                   f"Ratios against baseline {base_id}; below 1 is better. Ringed red: a time "
                   f"regression (ratio > {1 + THRESHOLD:.2f} and p20–p80 ranges apart); ringed "
                   "green: an improvement.")  # fmt: skip
