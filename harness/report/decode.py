"""Decode: achieved memory bandwidth against the KV-cache length, and its fraction of the device's
peak bandwidth.

Decode reads the whole KV cache to produce a few tokens, so its yardstick is bandwidth, not FLOPs:
`gbytes_per_s` is the row's compulsory bytes (every sequence's K and V at its real length, q and
the output; harness/measure/flops.py) over its median time. One line per implementation × cache
layout (contiguous, or paged with its page size) against seqlen_k; the run's peak bandwidth
(`provenance.device_peaks.mem_gbytes_per_s`, harness/measure/peaks.py) is the dashed line, and the
second panel is the row's `bw_fraction` (achieved ÷ peak; derived from the run's peak where a row
lacks it). Decode is forward only; batch, new tokens, kv heads, the cache distribution and any
other axis that varies are slices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.report.common import (
    FigureSpec,
    axes_title,
    case_text,
    esc,
    finite,
    floats,
    grouped,
    impl_colors,
    length_ticks,
    line_styles,
    phase_options,
    slice_options,
    template,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.data import CONTIGUOUS, ReportData
from harness.report.roofline import bandwidth, ceilings_note, peaks_by_run
from harness.report.sections import Section

KEY, TITLE = "decode", "Decode bandwidth"
# seq_len is the cache length of a decode case (k_len is "="); the page size names a line
PLOTTED = ("seq_len", "k_len", "page_size", "phase", "workload")
PANELS = (("gbytes_per_s", "achieved bandwidth (GB/s)"), ("fraction", "fraction of peak bandwidth"))
PEAK_COLOR = "#555"
NOTE = (
    "Higher is better. Bandwidth is the compulsory traffic of a decode step (each sequence's K "
    "and V cache at its real length, plus q and the output) over the median time; a kernel that "
    "reads the cache once at full speed sits on the dashed peak line (fraction 1). One line per "
    "implementation and cache layout (contiguous, or paged with its page size)."
)


def cache_label(page_size: Any) -> str:
    return "contiguous" if str(page_size) == CONTIGUOUS else f"paged {page_size}"


def decode_rows(rows: pd.DataFrame, peaks: dict[str, dict[str, Any] | None]) -> pd.DataFrame:
    """ok decode rows with a finite, positive bandwidth and cache length, with `fraction`: the
    row's bw_fraction, or its GB/s over its run's peak where the row lacks one (else NaN)."""
    sel = rows[(rows["status"] == "ok") & (rows["workload"] == "decode")]
    sel = sel[finite(sel["gbytes_per_s"]) & finite(sel["seqlen_k"])]
    sel = sel[sel["gbytes_per_s"] > 0]
    if sel.empty:
        return sel.assign(fraction=pd.Series(dtype=float))
    peak = pd.Series([bandwidth(peaks.get(str(r))) or np.nan for r in sel["run_id"]],
                     index=sel.index, dtype=float)  # fmt: skip
    frac = sel["bw_fraction"].where(finite(sel["bw_fraction"]), sel["gbytes_per_s"] / peak)
    return sel.assign(fraction=frac, seqlen_k=pd.to_numeric(sel["seqlen_k"]))


def decode_figure(rows: pd.DataFrame,
                  peaks: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:  # fmt: skip
    """The figure of the decode rows of `rows` (None without any); `peaks`: run_id -> ceilings."""
    sel = decode_rows(rows, peaks)
    if sel.empty:
        return None
    sel, slice_axes = with_lines_and_slices(sel.sort_values("seqlen_k", kind="stable"), PLOTTED)
    sel = sel.assign(series=sel["series"] + " · " + sel["page_size"].map(cache_label),
                     text=case_text(sel))  # fmt: skip
    styles = line_styles(sel, impl_colors(rows["impl"].tolist()))
    several = sel["run_id"].nunique() > 1
    spec = FigureSpec("Decode: achieved bandwidth vs KV-cache length", 460)
    spec.grid([[label for _, label in PANELS]], xtitle="cache length (seqlen_k)", hgap=0.08)
    spec.layout["yaxis2"].update(type="linear", rangemode="tozero", tickformat=".0%")
    for (phase, slice_), view in sel.groupby(["phase", "slice"], sort=True):
        _add_peaks(spec, view, peaks, {"phase": phase, "slice": slice_}, several)
    columns = ["seqlen_k", "gbytes_per_s", "fraction", "time_ms_median", "text"]
    for (phase, slice_, name), g in grouped(sel, ["phase", "slice", "series"], columns):
        style = styles[name]
        for col, (metric, label) in enumerate(PANELS, start=1):
            has = finite(g[metric])
            if not has.any():
                continue
            shown = "%{y:.1%}" if metric == "fraction" else "%{y:.4g}"
            spec.add({
                "x": g["seqlen_k"][has].tolist(), "y": floats(g[metric][has]),
                "mode": "lines+markers", "name": name, "legendgroup": name, "marker": {"size": 7},
                "line": {"color": style["color"], "dash": style["dash"], "width": 2},
                "text": g["text"][has].tolist(), "customdata": floats(g["time_ms_median"][has]),
                "hovertemplate": template(f"{name} · {phase}", [
                    (label, shown), ("time (ms)", "%{customdata:.4g}")]),
                "meta": {"series": name, "metric": metric},
            }, 1, col, controls={"phase": phase, "slice": slice_}, legend_key=name)  # fmt: skip
    spec.control("phase", "phase", phase_options(sel))
    spec.control("slice", axes_title(slice_axes), slice_options(sel))
    spec.update_axes("x", **length_ticks(sel["seqlen_k"]))
    return spec.to_dict()


def _add_peaks(spec: FigureSpec, view: pd.DataFrame, peaks: dict[str, dict[str, Any] | None],
               controls: dict[str, str], several: bool) -> None:  # fmt: skip
    """Per run in the view: its peak bandwidth (left) and fraction 1 (right), dashed, across the
    view's cache lengths."""
    xs = [float(view["seqlen_k"].min()), float(view["seqlen_k"].max())]
    if xs[0] == xs[1]:  # one cache length: a short visible segment around it (log axis)
        xs = [xs[0] / 1.5, xs[1] * 1.5]
    for run in sorted(view["run_id"].astype(str).unique()):
        bw = bandwidth(peaks.get(run))
        if bw is None:
            continue
        prefix = f"{run}: " if several else ""
        source = esc((peaks.get(run) or {}).get("source") or "source not recorded")
        name = f"{prefix}peak {bw:.4g} GB/s"
        for col, y in ((1, bw), (2, 1.0)):
            trace = {
                "x": xs, "y": [y, y], "mode": "lines", "name": name, "legendgroup": f"peak-{run}",
                "line": {"color": PEAK_COLOR, "dash": "dash", "width": 1.5},
                "hovertemplate": f"{esc(name)}<br>{source}<extra></extra>",
                "meta": {"run_id": run, "value": y},
            }  # fmt: skip
            if col == 1:
                spec.add(trace, 1, col, role="peak", controls=controls, legend_key=f"peak-{run}")
            else:  # the same line in the fraction panel: one legend entry for both
                spec.add(trace | {"showlegend": False}, 1, col, role="peak", controls=controls)


def decode_note(sel: pd.DataFrame, peaks: dict[str, dict[str, Any] | None]) -> str:
    def describe(run: str, prefix: str) -> str | None:
        bw = bandwidth(peaks.get(run))
        if bw is None:
            return None
        source = (peaks.get(run) or {}).get("source") or "source not recorded"
        return f"{prefix + 'p' if prefix else 'P'}eak bandwidth {bw:.4g} GB/s ({source})."

    runs = sorted(sel["run_id"].astype(str).unique().tolist())
    return ceilings_note(NOTE, runs, describe, lambda which: (
        f"No peak bandwidth recorded for {which}: no dashed line, and a fraction only where the "
        "rows carry bw_fraction."))  # fmt: skip


def build(data: ReportData) -> Section | None:
    peaks = peaks_by_run(data)
    fig = decode_figure(data.rows, peaks)
    if fig is None:
        return None
    return Section(KEY, TITLE, [fig], decode_note(decode_rows(data.rows, peaks), peaks))
