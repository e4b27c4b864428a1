"""Shared figure vocabulary: figure specs on a facet grid, line names, colours, hover text.

Figures are plain plotly JSON dicts (`{"data", "layout", "controls"}`), built without
graph_objects validation so a 5,000-row run takes a second, not minutes. `controls` are the page's
selectors (a metric switch, a slice of the axes that vary but are not plotted): every trace names
its value for each control in `meta.controls`, and the page plots only the matching traces.

Text handed to plotly is pseudo-HTML (plotly.js reads tags such as <b> and <br> in names and hover
text), so every string that comes from results goes through `esc` first. A NaN or an infinity is no
point on a plot: builders draw only `finite` values, and `floats` turns any other into a gap.
"""

from __future__ import annotations

import hashlib
import html
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.report.data import AXES

PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#ad494a",
)  # fmt: skip
DASHES = ("solid", "dot", "dash", "longdash", "dashdot", "longdashdot")
FAIL_SYMBOL = {"oom": "x", "timeout": "diamond", "error": "circle-x"}
FAIL_COLOR = {"oom": "#d62728", "timeout": "#ff7f0e", "error": "#7f7f7f"}
AXIS_SHORT = {"batch": "b", "num_heads": "h", "head_dim": "d", "block_size": "bs", "hidden": "hid",
              "world_size": "P", "seq_len": "S", "run_id": "run", "seqlen_q": "Sq",
              "seqlen_k": "Sk", "num_kv_heads": "kv", "head_dim_v": "dv", "mask_label": "mask",
              "q_len": "Sq", "k_len": "Sk", "kv_heads": "kv", "dim_v": "dv", "page_size": "page",
              "cache_dist": "cache",
              "softmax_scale": "scale", "input_scale": "x", "input_layout": "in"}  # fmt: skip
LINE_AXES = ("run_id",)  # told apart by separate lines; other unplotted axes become a slice control


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# A fixed colour per common implementation, so a kernel reads the same in every report and the
# kernels that share a figure (attention, decode, layers) never share a colour. Other names are
# hashed into PALETTE: a function of the name alone, whatever else the run holds.
IMPL_COLOR = {
    # attention
    "naive": "#7f7f7f", "chunked": "#bcbd22", "bpt": "#d62728", "ring": "#ff7f0e",
    "sdpa_math": "#8c564b", "sdpa_flash": "#1f77b4", "sdpa_efficient": "#17becf",
    "sdpa_cudnn": "#393b79", "flex": "#2ca02c", "flash_attn2": "#9467bd",
    "flash_attn3": "#e377c2", "flash_attn4": "#7b4173", "xformers": "#637939",
    "xformers_cutlass": "#8c6d31", "xformers_flash": "#ad494a", "xformers_flash3": "#ce6dbd",
    "xformers_ck": "#5254a3",
    # sequence parallel: ours and ring's peers
    "ulysses": "#1b9e77", "usp": "#9edae5", "ring_attention_pytorch": "#c49c94",
    "ring_flash_attn": "#f7b6d2", "ring_flash_attn_llama3": "#dbdb8d", "yunchang_usp": "#c5b0d5",
    "torch_context_parallel": "#98df8a",
    # decode
    "decode_naive": "#525252", "decode_sdpa_math": "#a55194", "decode_sdpa_flash": "#3182bd",
    "decode_flash_attn2": "#756bb1", "decode_flash_attn3": "#de9ed7", "decode_flex": "#31a354",
    "decode_flashinfer": "#e6550d", "decode_flashinfer_prefill": "#fdae6b",
    "decode_split_kv": "#843c39", "decode_xformers": "#6b6ecf",
    # layers
    "vanilla_layer": "#636363", "bpt_layer": "#e41a1c", "memeff_layer": "#377eb8",
}  # fmt: skip


def impl_color(name: str) -> str:
    """The colour of implementation `name`: fixed for the common ones, else a stable hash of the
    name (never Python's `hash`, which changes between processes)."""
    if name in IMPL_COLOR:
        return IMPL_COLOR[name]
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return PALETTE[int.from_bytes(digest[:4], "big") % len(PALETTE)]


# Colour alone does not tell two lines apart when they coincide (bpt's peak memory is
# sdpa_flash's): each implementation also has a fixed marker symbol and dash, so the one drawn
# underneath still shows through. Symbols leave out the failure markers' (FAIL_SYMBOL); dashes
# leave out "dash", the memory figure's model guide.
SYMBOLS = ("circle", "square", "triangle-up", "star", "hexagon", "triangle-down", "pentagon",
           "cross", "star-triangle-up", "hourglass", "triangle-left", "star-square")  # fmt: skip
IMPL_DASHES = ("solid", "dot", "dashdot", "longdash", "longdashdot")
IMPL_STYLE = {  # (symbol, dash); coinciding pairs (naive / sdpa_math, bpt / sdpa_flash) differ
    "naive": ("circle", "solid"), "sdpa_math": ("square", "dot"),
    "chunked": ("triangle-up", "dashdot"), "bpt": ("star", "dot"),
    "sdpa_flash": ("hexagon", "solid"), "sdpa_efficient": ("triangle-down", "longdash"),
    "sdpa_cudnn": ("pentagon", "longdashdot"), "flex": ("cross", "dashdot"),
    "ring": ("star-triangle-up", "longdash"), "flash_attn2": ("hourglass", "solid"),
    "flash_attn3": ("triangle-left", "dot"), "flash_attn4": ("star-square", "dashdot"),
    "xformers": ("square", "longdash"), "xformers_cutlass": ("circle", "dot"),
    "xformers_flash": ("triangle-up", "longdashdot"), "xformers_flash3": ("hexagon", "dot"),
    "xformers_ck": ("pentagon", "dashdot"),
    "ulysses": ("star-diamond", "solid"), "usp": ("diamond-wide", "dash"),
    "ring_attention_pytorch": ("hexagram", "dot"), "ring_flash_attn": ("bowtie", "longdashdot"),
    "ring_flash_attn_llama3": ("triangle-right", "dash"), "yunchang_usp": ("asterisk", "dot"),
    "torch_context_parallel": ("y-up", "longdash"),
    "decode_naive": ("circle", "solid"), "decode_sdpa_math": ("square", "dot"),
    "decode_sdpa_flash": ("triangle-up", "solid"), "decode_flash_attn2": ("star", "dashdot"),
    "decode_flash_attn3": ("hexagon", "dot"), "decode_flex": ("triangle-down", "longdash"),
    "decode_flashinfer": ("pentagon", "dashdot"), "decode_flashinfer_prefill": ("cross", "dot"),
    "decode_split_kv": ("star-square", "longdashdot"), "decode_xformers": ("hourglass", "dot"),
    "vanilla_layer": ("circle", "solid"), "bpt_layer": ("star", "dot"),
    "memeff_layer": ("square", "dashdot"),
}  # fmt: skip


def _digest(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:4], "big")


def impl_symbol(name: str) -> str:
    """The marker symbol of implementation `name`: fixed for the common ones, else hashed."""
    if name in IMPL_STYLE:
        return IMPL_STYLE[name][0]
    return SYMBOLS[_digest(name) // 7 % len(SYMBOLS)]


def impl_dash(name: str) -> str:
    """The line dash of implementation `name`: fixed for the common ones, else hashed."""
    if name in IMPL_STYLE:
        return IMPL_STYLE[name][1]
    return IMPL_DASHES[_digest(name) // 91 % len(IMPL_DASHES)]


def impl_style(name: str) -> dict[str, str]:
    """Colour, marker symbol and dash of implementation `name`: the one style every figure draws
    its first line in (figures made outside the facet grid, such as the history and the analytic
    model's, use it directly)."""
    return {"color": impl_color(name), "symbol": impl_symbol(name), "dash": impl_dash(name)}


def impl_colors(impls: list[str]) -> dict[str, str]:
    """A colour per implementation, a function of its name alone: the same in every report."""
    return {name: impl_color(str(name)) for name in sorted(set(impls), key=str)}


def varying(frame: pd.DataFrame, candidates: tuple[str, ...]) -> list[str]:
    return [c for c in candidates if c in frame and frame[c].astype(str).nunique(dropna=False) > 1]


def _axis_label(axis: str, values: pd.Series) -> pd.Series:
    if axis == "causal":
        return values.map(lambda v: "causal" if bool(v) else "full")
    text = values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    return AXIS_SHORT.get(axis, axis) + "=" + text if axis not in ("dtype", "phase") else text


def labels(frame: pd.DataFrame, axes: list[str]) -> pd.Series:
    """' · '-joined readable values of `axes` per row ('' when there are none)."""
    out = pd.Series("", index=frame.index, dtype=object)
    for i, axis in enumerate(axes):
        out = out + (" · " if i else "") + _axis_label(axis, frame[axis])
    return out


def with_lines_and_slices(
    frame: pd.DataFrame, plotted: tuple[str, ...], line_axes: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, list[str]]:
    """Add `series` (impl plus varying line axes) and `slice` (a code for the combination of the
    other varying axes; `slice_label` says it in words) columns.

    Returns the frame and the slice axes (empty: no slice control needed).
    """
    rest = tuple(a for a in (*AXES, "phase", "run_id") if a not in plotted)
    vary = varying(frame, rest)
    line = [a for a in vary if a in (*LINE_AXES, *line_axes)]
    slices = [a for a in vary if a not in line]
    series = frame["impl"].astype(str)
    if line:
        series = series + " " + labels(frame, line)
    slice_labels = labels(frame, slices)
    code = {label: str(i) for i, label in enumerate(sorted(slice_labels.unique()))}
    # Traces name their slice by a short code (there are thousands of traces); the page's
    # selector shows the label.
    return frame.assign(
        series=series, slice=slice_labels.map(code), slice_label=slice_labels
    ), slices


def case_text(frame: pd.DataFrame) -> pd.Series:
    """Per-point hover text: the case name, exactly (the join key), plus why a row failed.

    Values come from the trace's `hovertemplate` (`template`), so the page stores each case name
    once per point and nothing more.
    """
    text = frame["case"].map(esc).astype(object)
    failed = frame["status"] != "ok"
    if failed.any():
        why = "<br>" + frame["status"].map(esc) + ": " + frame["reason"].map(_short_reason)
        text = text + why.astype(object).where(failed, "")
    return text


def _short_reason(reason: Any) -> str:
    return esc(str(reason)[:160])


NOISY_SYMBOL = "circle-open"  # a noisy row's point: hollow (derived.noise_fields); others filled


def hollow(symbol: str) -> str:
    """The open (hollow) form of a plotly marker symbol: how a noisy row's point is drawn."""
    return symbol if symbol.endswith("-open") else f"{symbol}-open"


def noisy_text(frame: pd.DataFrame, text: pd.Series) -> pd.Series:
    """`text` (hover text per row) with a noisy row's `noise_note` added on a line of its own."""
    noisy = frame["noisy"].to_numpy(dtype=bool)
    if not noisy.any():
        return text
    note = "<br>noisy: " + frame["noise_note"].map(esc)
    return text + note.astype(object).where(noisy, "")


def point_marker(noisy: Any, size: int = 6, symbol: str = "circle") -> dict[str, Any]:
    """A line's marker in its implementation's `symbol`: a per-point symbol array (noisy points
    hollow) only when one is noisy, so the many lines with none stay as small as before."""
    flags = [bool(n) for n in noisy]
    if not any(flags):
        return {"size": size, "symbol": symbol}
    symbols = [hollow(symbol) if n else symbol for n in flags]
    return {"size": size, "symbol": symbols, "line": {"width": 2}}


def template(first_line: str, values: list[tuple[str, str]]) -> str:
    """A hovertemplate: the point's text, a line about the trace, then `label: %{field}` lines."""
    body = "".join(f"<br>{esc(label)}: {field}" for label, field in values)
    return "<b>%{text}</b><br>" + esc(first_line) + body + "<extra></extra>"


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return esc(value)


def floats(values: Any) -> list[float | None]:
    """A JSON-ready list at 6 significant digits (plenty for a plot); NaN and +-inf become None
    (a gap: JSON has no such numbers)."""
    out: list[float | None] = []
    for v in list(values):
        v = None if v is None else float(v)
        out.append(None if v is None or not math.isfinite(v) else float(f"{v:.6g}"))
    return out


def finite(values: Any) -> np.ndarray:
    """Per value: a number that is neither NaN nor infinite (None and text are not)."""
    return np.isfinite(pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float))


def line_styles(frame: pd.DataFrame, colors: dict[str, str]) -> dict[str, dict[str, str]]:
    """Colour, marker symbol and dash by implementation (fixed per name, `IMPL_STYLE`), so lines
    that coincide stay apart; a kernel's further line variants (other runs) take the next dashes,
    so lines of one kernel read as a family."""
    styles: dict[str, dict[str, str]] = {}
    seen: dict[str, int] = {}
    for name, impl in sorted(set(zip(frame["series"], frame["impl"], strict=True))):
        k = seen.get(impl, 0)
        seen[impl] = k + 1
        first = IMPL_DASHES.index(impl_dash(str(impl)))
        styles[name] = {"color": colors.get(impl, "#333"), "symbol": impl_symbol(str(impl)),
                        "dash": IMPL_DASHES[(first + k) % len(IMPL_DASHES)]}  # fmt: skip
    return styles


def stagger_coinciding(data: list[dict[str, Any]], *, base_size: int = 7, step: int = 4,
                       decades: float = 0.01) -> int:  # fmt: skip
    """Keep lines that coincide visible: where line traces of one panel and control choice share
    a point (same x, y within `decades` on a log axis, ~2%), a trace drawn earlier (lower in the
    page's stacking) gets a marker `step` px larger per trace drawn over it, so it shows as a ring
    around the later ones, and a wider line. Changes `data` in place; returns how many traces.

    With the implementations' distinct symbols and dashes (`IMPL_STYLE`), two kernels with equal
    memory (bpt and sdpa_flash) read as two lines rather than one.
    """
    groups: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    for ti, t in enumerate(data):
        if t.get("meta", {}).get("role") != "line" or "markers" not in t.get("mode", ""):
            continue
        ctl = tuple(sorted(t["meta"].get("controls", {}).items()))
        for pi, (x, y) in enumerate(zip(t["x"], t["y"], strict=True)):
            if y is None or not y > 0:
                continue
            key = (t.get("xaxis"), t.get("yaxis"), ctl, x, round(math.log10(y) / decades))
            groups.setdefault(key, []).append((ti, pi))
    above: dict[int, dict[int, int]] = {}
    for members in groups.values():
        for rank, (ti, pi) in enumerate(members):  # data order: a later trace is drawn on top
            if rank < len(members) - 1:
                above.setdefault(ti, {})[pi] = len(members) - 1 - rank
    for ti, points in above.items():
        t = data[ti]
        t["marker"] = {
            **t.get("marker", {}),
            "size": [base_size + step * points.get(i, 0) for i in range(len(t["x"]))],
        }
        # a wider line only where most of it lies under another: one shared point is a marker's
        shared = [n for n in points.values() if n]
        if len(shared) >= max(2, len(t["x"]) / 2):
            t["line"] = {**t.get("line", {}), "width": 2 + 1.5 * max(shared)}
    return len(above)


@dataclass
class FigureSpec:
    """A plotly figure as JSON-ready dicts, with an optional facet grid and page controls."""

    title: str
    height: int
    data: list[dict[str, Any]] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)
    controls: list[dict[str, Any]] = field(default_factory=list)
    _legend: set[tuple[str, ...]] = field(default_factory=set)

    def grid(self, titles: list[list[str]], *, xlog: bool = True, ylog: bool = True,
             xtitle: str = "", ytitle: str = "", hgap: float = 0.05,
             vgap: float = 0.13) -> None:  # fmt: skip
        """Lay out len(titles) × len(titles[0]) panels; titles are already escaped."""
        nrows, ncols = len(titles), len(titles[0])
        width = (1 - hgap * (ncols - 1)) / ncols
        height = (1 - vgap * (nrows - 1)) / nrows
        notes = []
        for r in range(nrows):
            for c in range(ncols):
                k = r * ncols + c + 1
                x0 = c * (width + hgap)
                y1 = 1 - r * (height + vgap)
                suffix = "" if k == 1 else str(k)
                self.layout[f"xaxis{suffix}"] = {
                    "domain": [x0, x0 + width], "anchor": f"y{suffix}",
                    "type": "log" if xlog else "linear",
                    "title": {"text": xtitle if r == nrows - 1 else "", "standoff": 4},
                }  # fmt: skip
                self.layout[f"yaxis{suffix}"] = {
                    "domain": [y1 - height, y1], "anchor": f"x{suffix}",
                    "type": "log" if ylog else "linear",
                    "title": {"text": ytitle if c == 0 else ""},
                }  # fmt: skip
                notes.append({"text": titles[r][c], "showarrow": False, "xref": "paper",
                              "yref": "paper", "x": x0 + width / 2, "y": y1, "yanchor": "bottom",
                              "xanchor": "center", "font": {"size": 12}})  # fmt: skip
        self.layout["annotations"] = notes
        self.layout["_ncols"] = ncols

    def axes(self, row: int, col: int) -> tuple[str, str]:
        k = (row - 1) * self.layout.get("_ncols", 1) + col
        suffix = "" if k == 1 else str(k)
        return f"x{suffix}", f"y{suffix}"

    def update_axes(self, axis: str, **props: Any) -> None:
        """Set props on every x or y axis ('x' / 'y') of the grid."""
        for key, value in self.layout.items():
            if key.startswith(f"{axis}axis") and isinstance(value, dict):
                value.update(props)

    def add(self, trace: dict[str, Any], row: int = 1, col: int = 1, *, role: str = "line",
            controls: dict[str, str] | None = None,
            legend_key: str | None = None) -> None:  # fmt: skip
        """Add a trace to a panel; the legend shows `legend_key` once per control combination."""
        controls = controls or {}
        x, y = self.axes(row, col)
        trace = {"type": "scatter", "xaxis": x, "yaxis": y, **trace}
        trace["meta"] = {"role": role, "controls": controls, **trace.get("meta", {})}
        if "name" in trace:  # legend entries are pseudo-HTML too
            trace["name"] = esc(trace["name"])
        if legend_key is not None:
            key = (legend_key, *sorted(controls.items()))  # type: ignore[arg-type]
            trace["showlegend"] = key not in self._legend
            self._legend.add(key)  # type: ignore[arg-type]
        self.data.append(trace)

    def control(self, name: str, label: str, options: list[dict[str, Any]]) -> None:
        if len(options) > 1:
            self.controls.append({"name": name, "label": label, "options": options})

    def to_dict(self) -> dict[str, Any]:
        log_ticks(self.layout, self.data)
        layout = {k: v for k, v in self.layout.items() if not k.startswith("_")}
        layout.update({
            "title": {"text": esc(self.title), "x": 0.01, "font": {"size": 16}},
            "template": "plotly_white", "height": self.height,
            "margin": {"l": 80, "r": 20, "t": 80, "b": 60},
            "legend": {"orientation": "h", "y": -0.1, "x": 0, "yanchor": "top",
                       "font": {"size": 11}, "itemsizing": "constant"},
            "hoverlabel": {"font": {"size": 11}},
            "font": {"family": "system-ui, sans-serif", "size": 12},
        })  # fmt: skip
        return {"data": self.data, "layout": layout, "controls": self.controls}


_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_MANTISSAS = ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9))


def tick_label(value: float) -> str:
    """A tick's full label: SI at 1000 and above (2k, 10M, 1G), plain below (0.01, 0.5, 200)."""
    for scale, prefix in _SI:
        if value >= scale:
            return f"{value / scale:g}{prefix}"
    return f"{value:g}"


def log_axis(values: Any) -> dict[str, Any]:
    """Props for a log axis that shows `values` with labels a person can read.

    Spanning 2 decades or more: a tick per decade only (`dtick` 1), SI labels from 1 up (1k,
    10M) and plain ones below it (0.01). Narrower: ticks at 1, 2 and 5 × 10^k (every digit when
    that leaves fewer than two inside the range), each labelled with its full value, never the
    bare digit of plotly's "D1"/"D2" minor labels. Too narrow for either (under ~5%): plotly's own
    linear ticks, which it labels in full. No positive finite value: nothing to set.
    """
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return {}
    lo, hi = float(v.min()), float(v.max())
    if math.log10(hi / lo) >= 2:
        return {"dtick": 1, "tickformat": "~s" if lo >= 1 else "~g",
                "minor": {"showgrid": True, "gridcolor": "#f3f3f3"}}  # fmt: skip
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in _MANTISSAS:
        ticks = [float(f"{m * 10.0**k:.6g}") for k in range(first - 1, last + 1) for m in mantissas]
        if sum(lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9) for t in ticks) >= 2:
            return {"tickmode": "array", "tickvals": ticks,
                    "ticktext": [tick_label(t) for t in ticks]}  # fmt: skip
    return {"tickformat": "~g"}


# tick settings a builder may set itself (`log_ticks` leaves such an axis alone)
TICK_KEYS = ("dtick", "tickvals", "ticktext", "tickformat", "tickmode", "minor")


def log_ticks(layout: dict[str, Any], data: list[dict[str, Any]]) -> None:
    """Give every log axis of `layout` that its builder left to the defaults `log_axis` of the
    values its traces draw on it (all controls' traces: the figure keeps one axis for them)."""
    for key, axis in layout.items():
        if not (isinstance(axis, dict) and axis.get("type") == "log"):
            continue
        if key[:5] not in ("xaxis", "yaxis") or any(k in axis for k in TICK_KEYS):
            continue
        letter, ref = key[0], key[0] + key[5:]
        values = [v for t in data if t.get(f"{letter}axis", letter) == ref
                  for v in t.get(letter, [])]  # fmt: skip
        axis.update(log_axis(values))


def length_ticks(values: Any) -> dict[str, Any]:
    """Axis ticks at the sequence lengths of the run (1k = 1024), when there are few enough."""
    values = list(values)
    lens = sorted({int(v) for v, ok in zip(values, finite(values), strict=True) if ok})
    if not lens or len(lens) > 12:
        return {}
    text = [f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s) for s in lens]
    return {"tickvals": lens, "ticktext": text}


def facet_titles(row_vals: list[Any], col_vals: list[tuple[Any, ...]], row_axis: str | None,
                 col_axes: tuple[str, ...]) -> list[list[str]]:  # fmt: skip
    out = []
    for rv in row_vals:
        line = []
        for cv in col_vals:
            parts = [
                _axis_label(a, pd.Series([v])).iloc[0] for a, v in zip(col_axes, cv, strict=True)
            ]
            if row_axis:
                parts.append(_axis_label(row_axis, pd.Series([rv])).iloc[0])
            line.append(esc(" · ".join(parts)))
        out.append(line)
    return out


def facet_values(frame: pd.DataFrame, row_axis: str | None,
                 col_axes: tuple[str, ...]) -> tuple[list[Any], list[tuple[Any, ...]]]:  # fmt: skip
    """The facet rows (values of `row_axis`) and columns (combinations of `col_axes`) with data."""
    row_vals = sorted(frame[row_axis].dropna().unique().tolist(), key=str) if row_axis else [None]
    col_vals = sorted({tuple(t) for t in frame[list(col_axes)].itertuples(index=False)}, key=str)
    return row_vals, col_vals


def grouped(frame: pd.DataFrame, keys: list[str],
            columns: list[str]) -> list[tuple[tuple[Any, ...], dict[str, np.ndarray]]]:  # fmt: skip
    """Groups of `frame` by `keys`, sorted, each as {column: array} in the frame's row order.

    Plain numpy slices instead of per-group pandas frames: thousands of small groups stay fast.
    """
    arrays = {c: frame[c].to_numpy() for c in columns}
    out = []
    for key, idx in frame.groupby(keys, sort=False, dropna=False).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        out.append((key, {c: a[idx] for c, a in arrays.items()}))
    return sorted(out, key=lambda kv: tuple(str(k) for k in kv[0]))


PHASE_ORDER = {"fwd": 0, "bwd": 1, "fwd_bwd": 2}


def phase_options(frame: pd.DataFrame) -> list[dict[str, Any]]:
    phases = sorted(frame["phase"].unique().tolist(), key=lambda p: (PHASE_ORDER.get(p, 9), p))
    return [{"value": p, "label": p} for p in phases]


AXIS_TITLE = {"q_len": "seqlen_q", "k_len": "seqlen_k", "kv_heads": "kv heads",
              "dim_v": "head_dim_v", "mask_label": "mask", "input_scale": "input scale",
              "input_layout": "input layout", "softmax_scale": "softmax scale",
              "page_size": "page size", "cache_dist": "cache lengths"}  # fmt: skip


def axes_title(axes: list[str]) -> str:
    """A slice selector's label: the varying axes in words."""
    return " · ".join(AXIS_TITLE.get(a, a) for a in axes)


def slice_options(frame: pd.DataFrame) -> list[dict[str, Any]]:
    pairs = sorted(set(zip(frame["slice_label"], frame["slice"], strict=True)))
    return [{"value": code, "label": label} for label, code in pairs]


def metric_panels(
    rows: Any, sel: Any, *, x: str, title: str, xtitle: str,
    panels: tuple[tuple[str, str], ...], hgap: float,
) -> tuple[FigureSpec, Any]:  # fmt: skip
    """One panel per (metric, label), one line per series against `x`; returns the spec and the
    sorted selection (for the caller's axes and controls)."""

    styles = line_styles(sel, impl_colors(rows["impl"].tolist()))
    spec = FigureSpec(title, 440)
    spec.grid([[label for _, label in panels]], xtitle=xtitle, hgap=hgap)
    sel = sel.sort_values(x, kind="stable")
    sel = sel.assign(text=case_text(sel))
    columns = [x, "phase", "text", *(m for m, _ in panels)]
    for (name, slice_), g in grouped(sel, ["series", "slice"], columns):
        style = styles[name]
        for col, (metric, label) in enumerate(panels, start=1):
            has = finite(g[metric])
            if not has.any():
                continue
            spec.add({
                "x": g[x][has].tolist(), "y": floats(g[metric][has]),
                "mode": "lines+markers", "name": name, "legendgroup": name, "marker": {"size": 7},
                "line": {"color": style["color"], "dash": style["dash"], "width": 2},
                "text": g["text"][has].tolist(),
                "hovertemplate": template(f"{name} · {g['phase'][0]}", [(label, "%{y:.4g}")]),
                "meta": {"series": name, "metric": metric},
            }, 1, col, controls={"slice": slice_}, legend_key=name)  # fmt: skip
    return spec, sel
