"""Throughput vs sequence length: TFLOP/s or tokens/s, log-log, one line per implementation,
faceted by dtype × causal, with p20–p80 bands; the phase, the metric and any other axis that
varies are selectors above the figure.

Throughput is inversely proportional to time, so the band of a point is its value scaled by
median/p80 (slow end) and median/p20 (fast end). A NaN or infinite time or throughput is no point
(the table shows it); a band is drawn only where every edge is finite.

Rows on P > 1 devices (`world_size`: ring and its peers) are their own lines, named "ring P=2":
their FLOPs and tokens are the whole sequence's over the slowest rank's time, the throughput of
all P devices together, so they share the axes honestly once the name says P. They take the
`multi_device` role (bands `multi_device_band`); `line` stays the single-device lines.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.report.common import (
    TICK_KEYS,
    FigureSpec,
    axes_title,
    case_text,
    facet_titles,
    facet_values,
    finite,
    floats,
    grouped,
    impl_colors,
    length_ticks,
    line_styles,
    log_axis,
    noisy_text,
    phase_options,
    point_marker,
    slice_options,
    stagger_coinciding,
    template,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.sections import figure_section

METRICS = {"tflops": "TFLOP/s", "tokens_per_s": "tokens/s"}
# the FLOP/s unit of a figure: TFLOP/s when its median row reaches 1 TFLOP/s, else GFLOP/s (a CPU
# run reads 50 GFLOP/s, not 0.05 TFLOP/s); the metric's control value stays "tflops"
FLOP_UNITS = (("TFLOP/s", 1.0), ("GFLOP/s", 1e3))
PLOTTED = ("seq_len", "dtype", "causal", "phase", "world_size")  # P: part of the line's name
FACET_COLS = ("dtype", "causal")
KEYS = ["phase", "dtype", "causal", "slice", "series"]


def plotted_ok(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows the figure draws: every device count, each with a finite length and time."""
    sel = rows[rows["status"] == "ok"]
    return sel[finite(sel["seq_len"]) & finite(sel["time_ms_median"]) & finite(sel["world_size"])]


def _devices_suffix(world_size: pd.Series) -> pd.Series:
    """' P=2' for a row on P > 1 devices, '' for one device."""
    p = world_size.astype(int)
    return (" P=" + p.astype(str)).where(p > 1, "")


def _title(label: str) -> str:
    return f"Throughput ({label}) vs sequence length"


def flop_unit(tflops: Any) -> tuple[str, float]:
    """(label, factor from TFLOP/s) for a figure of these TFLOP/s values, picked by their median."""
    values = pd.to_numeric(pd.Series(list(tflops), dtype=object), errors="coerce")
    median = values[finite(values)].median()
    return FLOP_UNITS[0] if not median < 1 else FLOP_UNITS[1]


def _y_axes(spec: FigureSpec, ok: pd.DataFrame, metric: str,
            label: str) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every y axis of the grid as it reads for `metric`: its unit as the title, log ticks for the
    metric's values and bands (tokens/s and FLOP/s share the axes, so each option sets them)."""
    values = pd.concat([ok[metric], ok[f"lo_{metric}"], ok[f"hi_{metric}"]])
    ticks = log_axis(values)
    out = {}
    for key, axis in spec.layout.items():
        if key.startswith("yaxis") and isinstance(axis, dict):
            base = {k: v for k, v in axis.items() if k not in ("title", *TICK_KEYS)}
            title = {"text": label if axis.get("title", {}).get("text") else ""}
            out[key] = {**base, "title": title, **ticks}
    return out


def throughput_figure(rows: pd.DataFrame) -> dict[str, Any] | None:
    ok = plotted_ok(rows)
    if ok.empty:
        return None
    flop_label, factor = flop_unit(ok["tflops"])
    labels = {**METRICS, "tflops": flop_label}
    ok = ok.assign(tflops=ok["tflops"] * factor)
    ok, slice_axes = with_lines_and_slices(ok.sort_values("seq_len", kind="stable"), PLOTTED)
    multi = ok["world_size"].astype(int) > 1
    ok = ok.assign(series=ok["series"] + _devices_suffix(ok["world_size"]))
    extra: dict[str, pd.Series] = {"text": noisy_text(ok, case_text(ok)), "noisy": ok["noisy"],
                                   "multi": multi}  # fmt: skip
    for metric in METRICS:
        extra[f"lo_{metric}"] = ok[metric] * ok["time_ms_median"] / ok["time_ms_p80"]
        extra[f"hi_{metric}"] = ok[metric] * ok["time_ms_median"] / ok["time_ms_p20"]
    ok = ok.assign(**extra)
    styles = line_styles(ok, impl_colors(rows["impl"].tolist()))
    _, col_vals = facet_values(ok, None, FACET_COLS)
    col_of = {cv: j for j, cv in enumerate(col_vals, start=1)}
    spec = FigureSpec(_title(flop_label), 470)
    spec.grid(facet_titles([None], col_vals, None, FACET_COLS), xtitle="sequence length",
              ytitle=flop_label)  # fmt: skip
    columns = ["seq_len", "time_ms_median", *METRICS, *extra]
    for (phase, dtype, causal, slice_, name), g in grouped(ok, KEYS, columns):
        c = col_of[(dtype, causal)]
        style = styles[name]
        role = "multi_device" if g["multi"][0] else "line"
        for metric, label in labels.items():
            has = finite(g[metric])
            if not has.any():
                continue
            controls = {"phase": phase, "metric": metric, "slice": slice_}
            xs = g["seq_len"][has].tolist()
            lo, hi = g[f"lo_{metric}"][has], g[f"hi_{metric}"][has]
            if finite(lo).all() and finite(hi).all():
                spec.add({
                    "x": xs + xs[::-1], "y": floats(hi) + floats(lo)[::-1], "fill": "toself",
                    "fillcolor": style["color"], "opacity": 0.15, "line": {"width": 0},
                    "hoverinfo": "skip", "showlegend": False, "legendgroup": name, "mode": "lines",
                }, 1, c, role="band" if role == "line" else f"{role}_band",
                   controls=controls)  # fmt: skip
            marker = point_marker(g["noisy"][has], 7, style["symbol"])
            spec.add({
                "x": xs, "y": floats(g[metric][has]), "mode": "lines+markers", "name": name,
                "legendgroup": name, "marker": marker,
                "line": {"color": style["color"], "dash": style["dash"], "width": 2},
                "text": g["text"][has].tolist(), "customdata": floats(g["time_ms_median"][has]),
                "hovertemplate": template(f"{name} · {phase}", [
                    (label, "%{y:.4g}"), ("time (ms)", "%{customdata:.4g}")]),
                "meta": {"series": name},
            }, 1, c, role=role, controls=controls, legend_key=name)  # fmt: skip
    stagger_coinciding(spec.data)
    spec.control("phase", "phase", phase_options(ok))
    y_axes = {m: _y_axes(spec, ok, m, label) for m, label in labels.items()}
    spec.layout.update(y_axes["tflops"])
    spec.control("metric", "metric", [
        {"value": m, "label": label, "relayout": {"title.text": _title(label), **y_axes[m]}}
        for m, label in labels.items()
    ])  # fmt: skip
    spec.control("slice", axes_title(slice_axes), slice_options(ok))
    spec.update_axes("x", **length_ticks(ok["seq_len"]))
    return spec.to_dict()


build = figure_section(
    "throughput",
    "Throughput",
    throughput_figure,
    "Higher is better. Shaded bands span the p20–p80 of the timing samples. FLOPs "
    "follow harness/measure/flops.py: 4·B·H·Sq·Sk·D forward over the pairs the mask attends "
    "(2·B·H·pairs·(D + D_v) when head_dim_v differs); backward 2.5×, forward+backward 3.5×. "
    "A hollow point is a noisy row: its samples spread or drift, its processes disagree, or it "
    "shared CPU cores (the hover says how). A line "
    'named like "ring P=2" is a run on P devices (world_size P): the whole sequence\'s FLOPs '
    "and tokens over the slowest rank's time, i.e. the throughput of all P devices together.",
)
