"""Plotly figures for the report: a history view and a comparison view (no browser needed)."""

from __future__ import annotations

from typing import Any

from harness.regress.history import SERIES


def history_figure(frame: Any, *, title: str = "history: median time per night") -> Any:
    """One line per series (case / impl / phase) over time; flagged nights drawn as red crosses.

    `frame` is `load_history(...)`, optionally through `normalize` and `flag_history`.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    flagged = "regressed" in frame.columns
    for key, group in frame.groupby(SERIES, sort=True, dropna=False):
        case, impl, phase = key[3], key[4], key[5]
        name = f"{impl} {phase} {case}"
        text = [
            f"{r}<br>{c or ''}<br>{st}"
            for r, c, st in zip(group["run_id"], group["git_commit"], group["status"], strict=True)
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


_COLORS = {
    "regression": "crimson",
    "missing": "crimson",
    "improvement": "seagreen",
    "unchanged": "steelblue",
    "changed": "orange",
}


def comparison_figure(comparison: Any) -> Any:
    """Median-time ratio candidate / baseline per row with its bootstrap CI, worst first."""
    import plotly.graph_objects as go

    rows = [r for r in comparison.rows if (r.norm_time or r.time) is not None]
    labels = [f"{r.impl} {r.phase} {r.case}" for r in rows]
    stats = [r.norm_time or r.time for r in rows]
    ratio = [t.ratio for t in stats]
    hi = [(t.ci_high - t.ratio) if t.ci_high is not None else 0 for t in stats]
    lo = [(t.ratio - t.ci_low) if t.ci_low is not None else 0 for t in stats]
    fig = go.Figure(
        go.Scatter(
            x=ratio,
            y=labels,
            mode="markers",
            error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
            marker={"color": [_COLORS.get(r.verdict, "gray") for r in rows], "size": 9},
            text=[r.verdict for r in rows],
            hovertemplate="%{y}: %{x:.3f} (%{text})<extra></extra>",
        )
    )
    tol = comparison.settings.time_tol
    fig.add_vline(x=1.0, line_dash="dot")
    fig.add_vline(x=1 + tol, line_dash="dash", line_color="crimson")
    ref = comparison.settings.normalize_to
    what = f"time ratio vs {ref}" if ref else "median time ratio"
    fig.update_layout(
        title=f"{comparison.candidate.run_id} vs {comparison.baseline.run_id}",
        xaxis_title=f"{what} (candidate / baseline)",
        yaxis={"autorange": "reversed"},
        height=200 + 22 * len(rows),
    )
    return fig
