"""Sections built from plotly figures made elsewhere: the nightly history and the ring model.

Those modules return `plotly.graph_objects.Figure`s; this turns them into the page's figure dicts,
escaping every string that came from results (trace names, hover text) and turning NaN (a skipped
row) into null, since the page's JSON allows no NaN. A log axis whose figure left its ticks to
plotly gets the report's readable ones (`common.log_ticks`), as the page's own figures do.
"""

from __future__ import annotations

import json
import math
from typing import Any

from harness.report.common import esc, log_ticks
from harness.report.data import ReportData
from harness.report.sections import Section

_KEEP_TAGS = ("<br>", "<extra>", "</extra>")


def _plain(value: Any) -> Any:
    """Arrays as lists and timestamps as text: plain JSON the page and its tests can read."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _lists(value: Any) -> Any:
    """Plotly ≥ 6 packs numeric arrays as {dtype, bdata}; unpack them into plain lists."""
    if isinstance(value, dict):
        if set(value) >= {"dtype", "bdata"}:
            import base64

            import numpy as np

            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
            if "shape" in value:
                array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
            return array.tolist()
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lists(v) for v in value]
    return value


def _finite(value: Any) -> Any:
    """NaN and ±inf (a skipped row's time) as None: JSON has no such numbers, plotly draws a gap."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _escape_template(template: str) -> str:
    text = esc(template)
    for tag in _KEEP_TAGS:
        text = text.replace(esc(tag), tag)
    return text


def adopt(fig: Any) -> dict[str, Any]:
    """A plotly Figure as the page's figure dict (JSON-safe, strings escaped, no controls)."""
    spec = _finite(_lists(json.loads(json.dumps(fig.to_dict(), default=_plain, allow_nan=True))))
    for trace in spec.get("data", []):
        for key in ("name", "legendgroup"):
            if key in trace:
                trace[key] = esc(trace[key])
        if "hovertemplate" in trace:
            trace["hovertemplate"] = _escape_template(trace["hovertemplate"])
        if isinstance(trace.get("text"), list):
            trace["text"] = [_escape_template(str(t)) for t in trace["text"]]
        trace["meta"] = {"role": "line" if "lines" in trace.get("mode", "lines") else "flag"}
    title = spec.get("layout", {}).get("title")
    if isinstance(title, dict) and "text" in title:
        title["text"] = esc(title["text"])
    spec.setdefault("layout", {})["template"] = "plotly_white"
    log_ticks(spec["layout"], spec.get("data", []))
    spec["controls"] = []
    return spec


def history_section(data: ReportData) -> Section | None:
    """The nightly history (`harness report --history RESULTS_ROOT`)."""
    frame = data.extra.get("history")
    if frame is None or len(frame) == 0:
        return None
    from harness.report.history_figure import history_figure

    return Section("history", "History", [adopt(history_figure(frame))],
                   "Median time per night for every series. Triangles mark change points "
                   "(ruptures PELT, kept when compare's rule finds the nights before and after "
                   "differ), labelled with the new level's time ratio: red up a slowdown, green "
                   "down a speedup. Red crosses mark nights flagged as a regression: a slowdown "
                   "that held for consecutive nights.")  # fmt: skip


def ring_model_section(data: ReportData) -> Section | None:
    """The calibrated ring model's max context vs devices, shown when the run has ring rows."""
    rows = data.rows
    if rows.empty or not (rows["world_size"] > 1).any():
        return None
    from harness.model.ring import ring_model_figure

    return Section("ring_model", "Ring Attention model", [adopt(ring_model_figure())],
                   "Analytic model (harness/model/ring.py, `harness model ring`): maximum context "
                   "vs number of devices per device profile; per-device memory is independent "
                   "of the total length, so the context grows linearly with P.")  # fmt: skip
