"""Roofline: achieved TFLOP/s against arithmetic intensity (FLOP per byte moved), log-log, one
marker series per implementation, for the attention and decode workloads alike, under the device's
two ceilings.

The ceilings come from each run's `provenance.device_peaks` (harness/measure/peaks.py): the memory
roof y = AI × bandwidth (GB/s × FLOP/B = GFLOP/s; drawn in TFLOP/s) up to the ridge point, and the
compute roof y = peak TFLOP/s beyond it, the float32 roof for float32 rows and the fp16/bf16 roof
for low-precision ones (both, labelled, when a run has both). Their source (datasheet or measured)
is in the section's note. A run without device_peaks (older runs, dry runs) has its points plotted
and no roofs; the note says which.

Single-device rows only: a P > 1 row's TFLOP/s is that of several devices, above one device's
roof. Markers: colour by implementation, symbol by dtype; the phase and the workload are
selectors, and any other axis that varies but is not a length becomes a slice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from harness.measure.peaks import peak_tflops
from harness.report.common import (
    FigureSpec,
    axes_title,
    case_text,
    esc,
    finite,
    floats,
    grouped,
    impl_colors,
    phase_options,
    template,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.data import ReportData
from harness.report.sections import Section

KEY, TITLE = "roofline", "Roofline"
WORKLOADS = ("attention", "decode")
LOW = ("float16", "bfloat16")
# the lengths (and their shorthands) move a point along the roofline; dtype picks its roof
PLOTTED = ("seq_len", "q_len", "k_len", "dtype", "phase", "workload")
SYMBOLS = {"float32": "circle", "float64": "circle-open", "float16": "diamond",
           "bfloat16": "square"}  # fmt: skip
ROOF_COLOR = "#555"
ROOF_DASH = {"memory": "solid", "fp32": "dash", "low": "dot", "fp32+low": "dash"}
ROOF_LABEL = {"fp32": "float32", "low": "fp16/bf16", "fp32+low": "float32 = fp16/bf16"}
SPAN = 3.0  # roofs reach this factor beyond the outermost point (and the ridge) each side
NOTE = (
    "Each point is one single-device row: its FLOPs (harness/measure/flops.py) over the "
    "compulsory bytes it moves (Q, K, V, O once; the whole KV cache for decode) on x, its "
    "achieved TFLOP/s on y; marker colour is the implementation, the symbol the dtype (● float32, "
    "◆ float16, ■ bfloat16). Grey lines are the device's ceilings: left of the ridge a kernel can "
    "at best reach AI × bandwidth (memory-bound), right of it the peak TFLOP/s of its dtype "
    "(compute-bound). The gap between a point and the roof above it is what the kernel leaves."
)


def device_peaks(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The run's recorded ceilings, or None (an older run, a dry run, a device without probes)."""
    prov = meta.get("provenance") if isinstance(meta, dict) else None
    peaks = prov.get("device_peaks") if isinstance(prov, dict) else None
    return peaks if isinstance(peaks, dict) and peaks else None


def peaks_by_run(data: ReportData) -> dict[str, dict[str, Any] | None]:
    """run_id -> its device peaks (None: not recorded), for every run the report reads."""
    out = {str(m["run_id"]): device_peaks(m) for m in data.metas if m.get("run_id") is not None}
    ids = data.rows["run_id"].dropna().astype(str).unique().tolist() if len(data.rows) else []
    if len(ids) == 1 and len(data.metas) == 1 and ids[0] not in out:  # a run.json without run_id
        out[ids[0]] = device_peaks(data.metas[0])
    return out


def bandwidth(peaks: dict[str, Any] | None) -> float | None:
    value = (peaks or {}).get("mem_gbytes_per_s")
    return float(value) if _positive(value) else None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < np.inf


def compute_roofs(peaks: dict[str, Any] | None, dtypes: set[str]) -> list[tuple[str, float]]:
    """The compute roofs (kind, TFLOP/s) a set of dtypes needs: "fp32", "low", or one
    "fp32+low" where both are asked for and the device's two peaks are the same number."""
    if not peaks:
        return []
    wanted = {"low" if d in LOW else "fp32" for d in dtypes}
    roofs = {kind: peak_tflops(peaks, "bfloat16" if kind == "low" else "float32")
             for kind in sorted(wanted)}  # fmt: skip
    roofs = {kind: v for kind, v in roofs.items() if v is not None and _positive(v)}
    if len(roofs) == 2 and roofs["fp32"] == roofs["low"]:
        return [("fp32+low", roofs["fp32"])]
    return sorted(roofs.items())


def roofline_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """ok single-device attention and decode rows with a finite, positive AI and TFLOP/s (AI from
    flops / bytes_moved where a row lacks arith_intensity)."""
    sel = rows[(rows["status"] == "ok") & (rows["world_size"] == 1)
               & rows["workload"].fillna("attention").isin(WORKLOADS)]  # fmt: skip
    if sel.empty:
        return sel
    flops = pd.to_numeric(sel["flops"], errors="coerce")
    moved = pd.to_numeric(sel["bytes_moved"], errors="coerce")
    ai = sel["arith_intensity"].where(finite(sel["arith_intensity"]), flops / moved)
    sel = sel.assign(arith_intensity=ai, workload=sel["workload"].fillna("attention"))
    keep = finite(sel["arith_intensity"]) & finite(sel["tflops"])
    sel = sel[keep]
    return sel[(sel["arith_intensity"] > 0) & (sel["tflops"] > 0)]


def _slices(sel: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Series and slices per workload: an axis that only tells the workloads apart (a decode
    run's page size against an attention run) is the workload control's, not a slice."""
    parts, axes = [], []
    for _, part in sel.groupby("workload", sort=True):
        part, part_axes = with_lines_and_slices(part, PLOTTED)
        parts.append(part)
        axes += [a for a in part_axes if a not in axes]
    out = pd.concat(parts)
    # one code per label across the workloads (the page's selector lists each label once)
    code = {label: str(i) for i, label in enumerate(sorted(out["slice_label"].unique()))}
    return out.assign(slice=out["slice_label"].map(code)), axes


def _slice_options(sel: pd.DataFrame, first_workload: str) -> list[dict[str, Any]]:
    """Slice options, those of the workload shown first leading (so the first view has points)."""
    pairs = sorted(set(zip(sel["slice_label"], sel["slice"], sel["workload"], strict=True)),
                   key=lambda t: (t[2] != first_workload, t[0]))  # fmt: skip
    out, seen = [], set()
    for label, code, _ in pairs:
        if code not in seen:
            seen.add(code)
            out.append({"value": code, "label": label or "all"})
    return out


def _flops_fraction(sel: pd.DataFrame, peaks: dict[str, dict[str, Any] | None]) -> pd.Series:
    """The row's flops_fraction, or its TFLOP/s over its run's roof where the row lacks one."""
    tops = [peak_tflops(peaks.get(str(run)) or {}, str(dtype))
            for run, dtype in zip(sel["run_id"], sel["dtype"], strict=True)]  # fmt: skip
    derived = sel["tflops"] / pd.Series([t or np.nan for t in tops], index=sel.index, dtype=float)
    return sel["flops_fraction"].where(finite(sel["flops_fraction"]), derived)


def _run_prefix(run: str, several: bool) -> str:
    return f"{run}: " if several else ""


def _add_roofs(spec: FigureSpec, view: pd.DataFrame, peaks: dict[str, dict[str, Any] | None],
               controls: dict[str, str], several: bool) -> None:  # fmt: skip
    """The memory and compute roofs of every run with points in this view, over its x range."""
    lo, hi = float(view["arith_intensity"].min()), float(view["arith_intensity"].max())
    for run, g in view.groupby("run_id", sort=True):
        run_peaks = peaks.get(str(run))
        bw = bandwidth(run_peaks)
        roofs = compute_roofs(run_peaks, set(g["dtype"].astype(str)))
        if bw is None and not roofs:
            continue
        source = esc((run_peaks or {}).get("source") or "source not recorded")
        prefix = _run_prefix(str(run), several)
        ridges = [top * 1e3 / bw for _, top in roofs] if bw else []
        x0 = min([lo, *ridges]) / SPAN
        x1 = max([hi, *ridges]) * SPAN
        if bw is not None:
            end = max(ridges) if ridges else x1
            xs = [x0, end]
            spec.add({
                "x": floats(xs), "y": floats(x * bw / 1e3 for x in xs), "mode": "lines",
                "name": f"{prefix}memory roof {bw:.4g} GB/s",
                "line": {"color": ROOF_COLOR, "dash": ROOF_DASH["memory"], "width": 1.5},
                "hovertemplate": f"{esc(prefix)}memory roof: AI × {bw:.4g} GB/s<br>%{{y:.4g}} "
                f"TFLOP/s at %{{x:.3g}} FLOP/B<br>{source}<extra></extra>",
                "meta": {"roof": "memory", "run_id": str(run), "value": bw},
            }, role="roof", controls=controls, legend_key=f"roof-memory-{run}")  # fmt: skip
        for i, (kind, top) in enumerate(roofs):
            xs = [ridges[i] if bw else x0, x1]  # from its ridge point, where the memory roof ends
            spec.add({
                "x": floats(xs), "y": floats([top, top]), "mode": "lines",
                "name": f"{prefix}{ROOF_LABEL[kind]} roof {top:.4g} TFLOP/s",
                "line": {"color": ROOF_COLOR, "dash": ROOF_DASH[kind], "width": 1.5},
                "hovertemplate": f"{esc(prefix)}{ROOF_LABEL[kind]} compute roof: {top:.4g} "
                f"TFLOP/s<br>{source}<extra></extra>",
                "meta": {"roof": "compute", "kind": kind, "run_id": str(run), "value": top},
            }, role="roof", controls=controls, legend_key=f"roof-{kind}-{run}")  # fmt: skip


def roofline_figure(rows: pd.DataFrame,
                    peaks: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:  # fmt: skip
    """The figure of `rows` under the ceilings `peaks` (run_id -> device_peaks or None)."""
    sel = roofline_rows(rows)
    if sel.empty:
        return None
    sel, slice_axes = _slices(sel.sort_values("arith_intensity", kind="stable"))
    sel = sel.assign(text=case_text(sel), fraction=_flops_fraction(sel, peaks))
    colors = impl_colors(rows["impl"].tolist())
    several = sel["run_id"].nunique() > 1
    spec = FigureSpec("Roofline: achieved TFLOP/s vs arithmetic intensity", 520)
    spec.grid([[""]], xtitle="arithmetic intensity (FLOP/byte)", ytitle="TFLOP/s")
    keys = ["phase", "workload", "slice"]
    for (phase, workload, slice_), view in sel.groupby(keys, sort=True):
        controls = {"phase": phase, "workload": workload, "slice": slice_}
        _add_roofs(spec, view, peaks, controls, several)
    columns = ["arith_intensity", "tflops", "gbytes_per_s", "fraction", "dtype", "text", "impl"]
    for (phase, workload, slice_, name), g in grouped(sel, [*keys, "series"], columns):
        impl = str(g["impl"][0])
        controls = {"phase": phase, "workload": workload, "slice": slice_}
        custom = [list(t) for t in zip(floats(g["gbytes_per_s"]), floats(g["fraction"]),
                                       strict=True)]  # fmt: skip
        spec.add({
            "x": floats(g["arith_intensity"]), "y": floats(g["tflops"]), "mode": "markers",
            "name": name, "legendgroup": name,
            "marker": {"size": 9, "color": colors.get(impl, "#333"), "opacity": 0.85,
                       "symbol": [SYMBOLS.get(str(d), "circle") for d in g["dtype"]],
                       "line": {"width": 0.5, "color": "#fff"}},
            "text": list(g["text"]), "customdata": custom,
            "hovertemplate": template(f"{name} · {phase} · {workload}", [
                ("AI (FLOP/B)", "%{x:.3g}"), ("TFLOP/s", "%{y:.4g}"),
                ("GB/s", "%{customdata[0]:.4g}"),
                *([("of compute roof", "%{customdata[1]:.1%}")] if finite(g["fraction"]).any()
                  else [])]),
            "meta": {"series": name},
        }, controls=controls, legend_key=name)  # fmt: skip
    spec.control("phase", "phase", phase_options(sel))
    workloads = sorted(sel["workload"].unique().tolist())
    spec.control("workload", "workload", [{"value": w, "label": w} for w in workloads])
    spec.control("slice", axes_title(slice_axes), _slice_options(sel, workloads[0]))
    return spec.to_dict()


def ceilings_note(intro: str, runs: list[str], describe: Callable[[str, str], str | None],
                  missing: Callable[[str], str]) -> str:  # fmt: skip
    """`intro`, then a sentence per run (`describe(run, prefix)`, None for a run without
    ceilings; `prefix` names the run when the view has several), then `missing(which)` once for
    the runs without."""
    several = len(runs) > 1
    parts, without = [intro], []
    for run in runs:
        sentence = describe(run, f"Run {run} " if several else "")
        if sentence is None:
            without.append(run)
        else:
            parts.append(sentence)
    if without:
        parts.append(missing(", ".join(without) if several else "this run"))
    return " ".join(parts)


def roofline_note(rows: pd.DataFrame, peaks: dict[str, dict[str, Any] | None]) -> str:
    """The fixed explanation, each plotted run's ceilings and their source, and the runs without."""

    def describe(run: str, prefix: str) -> str | None:
        run_peaks = peaks.get(run)
        if not run_peaks:
            return None
        bw = bandwidth(run_peaks)
        tops = ", ".join(f"{ROOF_LABEL[k]} {v:.4g} TFLOP/s"
                         for k, v in compute_roofs(run_peaks, {"float32", "bfloat16"}))  # fmt: skip
        values = ", ".join(x for x in (f"{bw:.4g} GB/s" if bw else "", tops) if x)
        source = run_peaks.get("source") or "source not recorded"
        return f"{prefix + 'c' if prefix else 'C'}eilings: {values} ({source})."

    runs = sorted(roofline_rows(rows)["run_id"].astype(str).unique().tolist())
    return ceilings_note(NOTE, runs, describe, lambda which: (
        f"No device ceilings recorded for {which} (a run from before the peaks were measured, "
        "or a dry run): its points are plotted without roofs."))  # fmt: skip


def build(data: ReportData) -> Section | None:
    peaks = peaks_by_run(data)
    fig = roofline_figure(data.rows, peaks)
    if fig is None:
        return None
    return Section(KEY, TITLE, [fig], roofline_note(data.rows, peaks))
