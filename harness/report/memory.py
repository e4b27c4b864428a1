"""Peak memory vs sequence length, with a marker where a line stops (OOM, timeout, error) and the
analytic expectation as a dashed line: inputs (linear) plus working memory growing as S^k, k the
`memory_exponent` the rows declare (see `models`), anchored at the line's shortest ok length; or
the row's own `model_peak_mem_bytes` when an analytic model filled it in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.report import models
from harness.report.common import (
    FAIL_COLOR,
    FAIL_SYMBOL,
    FigureSpec,
    axes_title,
    case_text,
    esc,
    facet_titles,
    facet_values,
    finite,
    floats,
    grouped,
    impl_colors,
    length_ticks,
    line_styles,
    noisy_text,
    phase_options,
    point_marker,
    slice_options,
    stagger_coinciding,
    template,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.sections import figure_section
from harness.rows import FAILED

MEM = "peak_mem_bytes"
PLOTTED = ("seq_len", "dtype", "causal", "phase")
FACET_COLS = ("dtype", "causal")
KEYS = ["phase", "dtype", "causal", "slice", "series"]
COLUMNS = [
    "seq_len",
    "status",
    "impl",
    MEM,
    "input_bytes",
    models.MODEL_MEM_COLUMN,
    models.EXPONENT_COLUMN,
    "text",
    "peak_mem_above_inputs_bytes",
    "noisy",
]


def guide(line: dict[str, np.ndarray]) -> tuple[list[float], list[float]] | None:
    """The expected peak memory of one line (its group arrays, sorted by length), or None."""
    ok = line["status"] == "ok"
    if not ok.any():
        return None
    lens = sorted(set(line["seq_len"].tolist()))
    model = line[models.MODEL_MEM_COLUMN][ok]
    if not pd.isna(model).any():
        by_len = dict(zip(line["seq_len"][ok].tolist(), model.tolist(), strict=True))
        return lens, [by_len.get(s, float("nan")) for s in lens]
    k = models.memory_exponent(line[models.EXPONENT_COLUMN])
    if k is None:
        return None
    first = int(np.flatnonzero(ok)[0])
    s0 = float(line["seq_len"][first])
    inputs0 = line["input_bytes"][first]
    inputs0 = 0.0 if pd.isna(inputs0) else float(inputs0)
    work0 = max(float(line[MEM][first]) - inputs0, 0.0)
    return lens, [inputs0 * s / s0 + work0 * (s / s0) ** k for s in lens]


def fail_y(line: dict[str, np.ndarray], seq_len: float) -> float | None:
    """Where a failure marker sits: on the line's last ok point before it (where the line stops)."""
    ok = (line["status"] == "ok") & ~pd.isna(line[MEM])
    if not ok.any():
        return None
    before = ok & (line["seq_len"] < seq_len)
    mem = line[MEM].astype(float)
    return float(mem[np.flatnonzero(before)[-1]]) if before.any() else float(mem[ok].max())


def memory_figure(rows: pd.DataFrame) -> dict[str, Any] | None:
    sel = rows[(rows["world_size"] == 1) & rows["seq_len"].notna()]
    sel = sel[
        ((sel["status"] == "ok") & finite(sel[MEM]) & (sel[MEM] > 0)) | sel["status"].isin(FAILED)
    ]
    if not (sel["status"] == "ok").any():
        return None
    sel, slice_axes = with_lines_and_slices(sel.sort_values("seq_len", kind="stable"), PLOTTED)
    sel = sel.assign(text=noisy_text(sel, case_text(sel)))
    styles = line_styles(sel, impl_colors(rows["impl"].tolist()))
    _, col_vals = facet_values(sel, None, FACET_COLS)
    col_of = {cv: j for j, cv in enumerate(col_vals, start=1)}
    spec = FigureSpec("Peak memory vs sequence length", 470)
    spec.grid(
        facet_titles([None], col_vals, None, FACET_COLS), xtitle="sequence length", ytitle="bytes"
    )
    fails: dict[tuple[int, str, str, str], list[tuple[float, float, str]]] = {}
    for (phase, dtype, causal, slice_, name), g in grouped(sel, KEYS, COLUMNS):
        c = col_of[(dtype, causal)]
        controls = {"phase": phase, "slice": slice_}
        style = styles[name]
        ok = g["status"] == "ok"
        if ok.any():
            marker = point_marker(g["noisy"][ok], 7, style["symbol"])
            spec.add({
                "x": g["seq_len"][ok].tolist(), "y": floats(g[MEM][ok]), "mode": "lines+markers",
                "name": name, "legendgroup": name, "marker": marker,
                "line": {"color": style["color"], "dash": style["dash"], "width": 2},
                "text": g["text"][ok].tolist(),
                "customdata": floats(g["peak_mem_above_inputs_bytes"][ok]),
                "hovertemplate": template(f"{name} · {phase}", [
                    ("peak", "%{y:.4s}B"), ("above inputs", "%{customdata:.4s}B")]),
                "meta": {"series": name},
            }, 1, c, controls=controls, legend_key=name)  # fmt: skip
        expected = guide(g)
        if expected is not None:
            spec.add({
                "x": expected[0], "y": floats(expected[1]), "mode": "lines",
                "name": f"{name} (model)", "legendgroup": name, "showlegend": False,
                "line": {"color": style["color"], "dash": "dash", "width": 1}, "opacity": 0.6,
                "hovertemplate": f"{esc(name)} model: %{{y:.3s}}B<extra></extra>",
            }, 1, c, role="model", controls=controls)  # fmt: skip
        for status, s, text in zip(g["status"], g["seq_len"], g["text"], strict=True):
            if status in FAILED and (y := fail_y(g, s)) is not None:
                fails.setdefault((c, phase, slice_, status), []).append((s, y, text))
    for (c, phase, slice_, status), points in sorted(fails.items()):
        spec.add(
            {
                "x": [p[0] for p in points],
                "y": floats(p[1] for p in points),
                "mode": "markers",
                "name": status.upper() if status == "oom" else status,
                "legendgroup": f"fail-{status}",
                "marker": {
                    "symbol": FAIL_SYMBOL[status],
                    "size": 13,
                    "color": FAIL_COLOR[status],
                    "line": {"width": 2, "color": FAIL_COLOR[status]},
                },
                "text": [p[2] for p in points],
                "hovertemplate": "%{text}<extra></extra>",
                "meta": {"status": status},
            },
            1,
            c,
            role="fail",
            controls={"phase": phase, "slice": slice_},
            legend_key=f"fail-{status}",
        )
    stagger_coinciding(spec.data)
    spec.control("phase", "phase", phase_options(sel))
    spec.control("slice", axes_title(slice_axes), slice_options(sel))
    spec.update_axes("x", **length_ticks(sel["seq_len"]))
    return spec.to_dict()


build = figure_section(
    "memory",
    "Peak memory",
    memory_figure,
    "Lower is better. Dashed: the analytic expectation (inputs plus S² working "
    "memory for kernels that materialize the scores, linear for blockwise ones) "
    "anchored at the shortest length. A marker at the end of a line shows why it "
    "stops (OOM ×, timeout ◆, error ⊗); the table gives the reason. A hollow point is "
    "a row whose timing samples were noisy (the hover says how).",
)
