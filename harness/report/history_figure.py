"""The nightly history as a plotly figure (`harness history --html`, the report's history section).

The comparison of two runs is drawn once, by the report's comparison section
(harness/report/comparison.py), from compare's verdicts.
"""

from __future__ import annotations

from typing import Any

from harness.regress.history import SERIES


def history_figure(frame: Any, *, title: str = "history: median time per night") -> Any:
    """One line per series (case / impl / phase) over time; flagged nights drawn as red crosses.

    Nights without a time (skipped, failed) are gaps; the hover names compare's reasons for a
    night the judge found worse.

    `frame` is `load_history(...)`, optionally through `normalize` and `flag_history`.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    flagged = "regressed" in frame.columns
    for key, group in frame.groupby(SERIES, sort=True, dropna=False):
        case, impl, phase = key[3], key[4], key[5]
        name = f"{impl} {phase} {case}"
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
    fig.update_layout(
        title=title,
        xaxis_title="run time (UTC)",
        yaxis_title="median time (ms)",
        yaxis_type="log",
        hovermode="closest",
    )
    return fig
