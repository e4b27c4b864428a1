"""The frontier figure: the max context each implementation fits in the memory budget.

One bar per implementation (grouped by phase, one panel per workload) on a log length axis, its
ratio to the shortest bar of the same workload and phase written on it, the first failing
length and its status in the hover. Input: the records of `harness frontier --json`
(harness/frontier/records.py). `harness frontier ... --report FILE.html` writes it as one
self-contained page (plotly.js inlined, no network).
"""

from __future__ import annotations

import json
from typing import Any

from harness.report.common import esc, impl_color

PHASE_PATTERN = {"fwd": "", "bwd": "/", "fwd_bwd": "x"}


def _mib(value: Any) -> str:
    return "—" if value is None else f"{value / 2**20:.1f} MiB"


def frontier_figure(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A plotly figure dict (no validation, as the other report figures), or None without a
    record that has a max length."""
    shown = [r for r in records if r.get("max_len")]
    if not shown:
        return None
    workloads = list(dict.fromkeys(r["workload"] for r in shown))
    data, layout = [], {"barmode": "group", "height": 420, "showlegend": True,
                        "title": {"text": "Max context within the memory budget"}}  # fmt: skip
    width = 1.0 / len(workloads)
    for w_i, workload in enumerate(workloads):
        axis = "" if w_i == 0 else str(w_i + 1)
        domain = [w_i * width + 0.02, (w_i + 1) * width - 0.02]
        layout[f"xaxis{axis}"] = {"domain": domain, "anchor": f"y{axis}",
                                  "title": {"text": esc(workload)}}  # fmt: skip
        layout[f"yaxis{axis}"] = {
            "type": "log",
            "anchor": f"x{axis}",
            "title": {"text": "max length (tokens)" if w_i == 0 else ""},
        }
        rows = [r for r in shown if r["workload"] == workload]
        for phase in dict.fromkeys(r["phase"] for r in rows):
            group = [r for r in rows if r["phase"] == phase]
            shortest = min(r["max_len"] for r in group)
            data.append({
                "type": "bar", "name": esc(f"{workload} {phase}"),
                "x": [esc(r["impl"]) for r in group], "y": [r["max_len"] for r in group],
                "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                "marker": {"color": [impl_color(r["impl"]) for r in group],
                           "pattern": {"shape": PHASE_PATTERN.get(phase, "")}},
                "text": [f"{'≥' if r['capped'] else ''}{r['max_len'] / shortest:.1f}×"
                         for r in group],
                "textposition": "outside",
                "hovertext": [_hover(r, phase) for r in group], "hoverinfo": "text",
            })  # fmt: skip
    return {"data": data, "layout": layout}


def _hover(rec: dict[str, Any], phase: str) -> str:
    fail = ("none up to the cap" if rec.get("capped") else
            f"{rec.get('first_fail_len')} ({esc(rec.get('first_fail_status'))})")  # fmt: skip
    return "<br>".join([
        f"<b>{esc(rec['impl'])}</b> {esc(phase)}", f"max {rec['axis']}: {rec['max_len']}",
        f"peak at max: {_mib(rec.get('peak_mem_bytes'))}",
        f"budget: {_mib(rec.get('budget_bytes'))}", f"first failure: {fail}",
        f"probes: {len(rec.get('probes') or [])}",
    ])  # fmt: skip


def frontier_html(records: list[dict[str, Any]]) -> str:
    """A self-contained HTML page with the figure (or a line saying there is nothing to draw)."""
    from harness.report.page import plotly_js, safe_json

    fig = frontier_figure(records)
    if fig is None:
        body = "<p>No implementation passed its first probe: nothing to draw.</p>"
    else:
        spec = safe_json(json.dumps(fig))
        body = (
            '<div id="frontier"></div><script>var f = '
            + spec
            + '; Plotly.newPlot("frontier", f.data, f.layout, {responsive: true});</script>'
        )
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>harness frontier</title>"
            f"<script>{plotly_js()}</script></head><body>{body}</body></html>")  # fmt: skip
