"""The nightly history as a plotly figure (`harness history --html`, the report's history section).

The comparison of two runs is drawn once, by the report's comparison section
(harness/report/comparison.py), from compare's verdicts.
"""

from __future__ import annotations

from typing import Any

from harness.regress.history import SERIES


def _change_points(group: Any) -> Any:
    """The nights of one series where a judged change point opens a new level."""
    if "change" not in group.columns:
        return group.iloc[0:0]
    return group[group["change"].isin(["regression", "improvement"])]


def history_figure(frame: Any, *, title: str = "history: median time per night") -> Any:
    """One line per series (case / impl / phase) over time; flagged nights drawn as red crosses,
    change points as triangles (red up: regression, green down: improvement) labelled with the
    ratio of the new level's median time to the old one's (×1.20), and a dotted vertical line.

    Nights without a time (skipped, failed) are gaps; the hover names compare's reasons for a
    night the judge found worse. Each line takes its implementation's fixed colour, marker and
    dash (`common.line_styles`: an implementation's further series take its next dashes), and the
    log time axis the report's readable ticks (`common.log_axis`: full labels, never a bare digit).

    `frame` is `load_history(...)`, optionally through `normalize` and `flag_history`.
    """
    import math

    import pandas as pd
    import plotly.graph_objects as go

    from harness.report.common import impl_colors, line_styles, log_axis

    fig = go.Figure()
    flagged = "regressed" in frame.columns
    groups = list(frame.groupby(SERIES, sort=True, dropna=False))
    names = [f"{key[4]} {key[5]} {key[3]}" for key, _ in groups]
    impls = [str(key[4]) for key, _ in groups]
    styles = line_styles(pd.DataFrame({"series": names, "impl": impls}), impl_colors(impls))
    for (key, group), name in zip(groups, names, strict=True):
        impl = key[4]
        style = styles[name]
        color = style["color"]
        why = group["worse"] if "worse" in group.columns else [None] * len(group)
        text = [
            f"{r}<br>{c or ''}<br>{st}" + (f"<br>worse: {w}" if isinstance(w, str) else "")
            for r, c, st, w in zip(
                group["run_id"], group["git_commit"], group["status"], why, strict=True
            )
        ]
        fig.add_trace(
            go.Scatter(
                x=group["utc_time"],
                y=group["time_ms_median"],
                name=name,
                mode="lines+markers",
                legendgroup=impl,
                line={"color": color, "dash": style["dash"], "width": 2},
                marker={"color": color, "symbol": style["symbol"], "size": 7},
                text=text,
                hovertemplate="%{y:.4g}<br>%{text}<extra>" + name + "</extra>",
            )
        )
        if flagged:
            bad = group[group["regressed"].astype(bool)]
            if not bad.empty:
                fig.add_trace(
                    go.Scatter(
                        x=bad["utc_time"],
                        y=bad["time_ms_median"],
                        mode="markers",
                        name=f"regressed: {name}",
                        legendgroup=impl,
                        showlegend=False,
                        marker={"symbol": "x", "size": 12, "color": "red"},
                    )
                )
        changes = _change_points(group)
        if changes.empty:
            continue
        up = (changes["change"] == "regression").tolist()
        ratios = [float(r) for r in changes["change_ratio"]]
        labels = [f"×{r:.2f}" if math.isfinite(r) else "status" for r in ratios]
        fig.add_trace(
            go.Scatter(
                x=changes["utc_time"],
                y=changes["time_ms_median"],
                mode="markers+text",
                name=f"change point: {name}",
                legendgroup=impl,
                showlegend=False,
                text=labels,
                textposition=["top center" if u else "bottom center" for u in up],
                textfont={"color": [_UP if u else _DOWN for u in up], "size": 11},
                marker={
                    "symbol": ["triangle-up" if u else "triangle-down" for u in up],
                    "size": 13,
                    "color": [_UP if u else _DOWN for u in up],
                    "line": {"color": "white", "width": 1},
                },
                customdata=changes["change"].tolist(),
                hovertemplate="change point: %{customdata} %{text}<extra>" + name + "</extra>",
                meta={"role": "change_point"},
            )
        )
        for when in changes["utc_time"]:
            fig.add_vline(x=when, line={"color": color, "dash": "dot", "width": 1}, opacity=0.6)
    fig.update_layout(
        title=title,
        xaxis_title="run time (UTC)",
        yaxis={"title": "median time (ms)", "type": "log", **log_axis(frame["time_ms_median"])},
        hovermode="closest",
    )
    return fig


_UP, _DOWN = "#d62728", "#2ca02c"  # a slowdown red, a speedup green, as compare's table colours
