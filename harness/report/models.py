"""What the report knows about each implementation's memory behaviour: only what its rows say.

Every row carries its implementation's declared facts (`Impl.memory_exponent`,
`Impl.uses_block_size`, copied in by the worker), so the report never imports the registry (or
torch) and a plugin's kernel is drawn like a built-in. `memory_exponent` is the power of the
sequence length that the attention working memory grows with (2 for kernels that materialize the
S×S scores, 1 for blockwise ones; BPT arXiv 2305.19370 and Rabe & Staats arXiv 2112.05682 give the
models); the memory figure draws it as a dashed guide anchored at each line's shortest ok length.
`uses_block_size` marks the implementations the block-size section plots. Rows written before the
facts existed have neither: no guide, no block-size figure. A row column `model_peak_mem_bytes`,
when present, takes precedence over the guide.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from harness.report.common import (
    PHASE_ORDER,
    FigureSpec,
    esc,
    floats,
    hollow,
    impl_color,
    impl_style,
    stagger_coinciding,
    template,
)  # fmt: skip

MODEL_MEM_COLUMN = "model_peak_mem_bytes"
EXPONENT_COLUMN = "memory_exponent"
BLOCK_SIZE_COLUMN = "uses_block_size"


def memory_exponent(values: Iterable[Any]) -> int | None:
    """The exponent the rows of one line declare (their first declared value), or None."""
    for value in values:
        try:
            k = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(k):  # not NaN, not inf (int(inf) raises)
            return int(k)
    return None


def uses_block_size(rows: pd.DataFrame) -> pd.Series:
    """Per row: does its implementation declare that `block_size` changes its work?"""
    if BLOCK_SIZE_COLUMN not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows[BLOCK_SIZE_COLUMN].eq(True)


# --- the analytic model (harness/model/): predicted vs measured, and the projection ---------------

MODEL_NOTE = (
    "Analytic model (harness/model/, `harness model predict` / `project`). First figure: each ok "
    "row's peak memory above its inputs, predicted (the sources' formulas with the tensor counts "
    "of the code, plus a fixed overhead calibrated on the shortest row of each series, hollow "
    "markers) against measured, for the phase selected; the band is ±15%. Second: the longest "
    "context whose training step fits one device, per implementation, for a 7B model on P "
    "devices of the selected kind (FSDP states; ring splits the sequence), against the Ring "
    "Attention paper's 8×A100 and 32×A100 points (crosses). Colours, markers and dashes are each "
    "implementation's fixed style; the model's vanilla, memeff and bpt layers take the style of "
    "the harness's vanilla_layer, memeff_layer and bpt_layer."
)

# The projection's implementations (harness/model/projection.IMPLS: whole-layer models, the BPT
# paper's kinds) drawn in the fixed style of the harness implementation each one models.
MODEL_IMPL_STYLE = {"vanilla": "vanilla_layer", "memeff": "memeff_layer", "bpt": "bpt_layer",
                    "ring": "ring"}  # fmt: skip


def predicted_vs_measured_figure(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Log-log scatter of predicted vs measured memory (bytes), one trace per implementation and
    phase (a phase selector; each implementation in its fixed colour and marker), with y = x and
    the ±15% band; `records` from harness.model.predict.predict_rows. None without a point."""
    pts = [r for r in records if r.get("mem_ratio") and r.get("measured_mem_bytes")]
    if not pts:
        return None
    spec = FigureSpec("Peak memory above inputs: model vs measured", 480)
    spec.grid([[""]], xtitle="measured (bytes)", ytitle="predicted (bytes)")
    lo = min(min(r["measured_mem_bytes"], r["predicted_mem_bytes"]) for r in pts) / 1.5
    hi = max(max(r["measured_mem_bytes"], r["predicted_mem_bytes"]) for r in pts) * 1.5
    for scale, name in ((1.0, "predicted = measured"), (1.15, "±15%"), (1 / 1.15, "±15%")):
        spec.add({"x": [lo, hi], "y": [lo * scale, hi * scale], "mode": "lines", "name": name,
                  "legendgroup": name, "hoverinfo": "skip",
                  "line": {"dash": "solid" if scale == 1.0 else "dot", "color": "gray",
                           "width": 1}}, role="threshold", legend_key=name)  # fmt: skip
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in pts:
        groups.setdefault((str(r["phase"]), str(r["impl"])), []).append(r)
    for (phase, impl), rs in sorted(groups.items()):
        style = impl_style(impl)
        symbols = [hollow(style["symbol"]) if r.get("calibrated") else style["symbol"] for r in rs]
        spec.add({
            "x": floats(r["measured_mem_bytes"] for r in rs),
            "y": floats(r["predicted_mem_bytes"] for r in rs), "mode": "markers", "name": impl,
            "legendgroup": impl, "customdata": floats(r["mem_ratio"] for r in rs),
            "marker": {"color": style["color"], "symbol": symbols, "size": 9,
                       "line": {"width": 1.5, "color": style["color"]}},
            "text": [esc(r.get("case") or f"S={r.get('seq_len')}")
                     + ("<br>calibrated here" if r.get("calibrated") else "") for r in rs],
            "hovertemplate": template(f"{impl} · {phase}", [
                ("measured", "%{x:.4s}B"), ("predicted", "%{y:.4s}B"),
                ("predicted / measured", "%{customdata:.3f}")]),
            "meta": {"series": impl},
        }, controls={"phase": phase}, legend_key=impl)  # fmt: skip
    phases = sorted({phase for phase, _ in groups}, key=lambda p: (PHASE_ORDER.get(p, 9), p))
    spec.control("phase", "phase", [{"value": p, "label": p} for p in phases])
    return spec.to_dict()


# Ring Attention (arXiv 2310.01889) Table 3: 7B max context on A100 80GB (tokens)
PAPER_7B_A100 = {8: 256_000, 32: 4_096_000}
PAPER_DEVICE = "A100-80GB"


def projection_figure(model: str = "7b", impls: tuple[str, ...] | None = None,
                      max_p: int = 4096) -> dict[str, Any]:  # fmt: skip
    """Max context (tokens) vs devices P = 1, 2, 4, ... max_p, log-log: one line per
    implementation in its fixed style (`MODEL_IMPL_STYLE`), a selector for the named device, and
    the paper's 7B A100 points (on the A100's lines)."""
    from harness.model.devices import DEVICES
    from harness.model.projection import IMPLS, max_context, workload
    from harness.model.ring import world_sizes

    w = workload(model)
    ps = world_sizes(max_p)
    title = f"Projection: max context of a {model} training step vs devices"
    spec = FigureSpec(f"{title} ({next(iter(DEVICES))})", 480)
    spec.grid([[""]], xtitle="devices P", ytitle="max context (tokens)")
    for dev in DEVICES.values():
        controls = {"device": dev.name}
        for impl in impls or IMPLS:
            style = impl_style(MODEL_IMPL_STYLE.get(impl, impl))
            ys = [max_context(impl, w, dev, p) or None for p in ps]  # 0 does not fit: no log
            spec.add({
                "x": list(ps), "y": floats(ys), "mode": "lines+markers", "name": impl,
                "legendgroup": impl, "line": {"color": style["color"], "dash": style["dash"],
                                              "width": 2},
                "marker": {"color": style["color"], "symbol": style["symbol"], "size": 6},
                "text": [esc(f"{impl} · {p} × {dev.name}") for p in ps],
                "hovertemplate": template(f"projected, {model}", [("max context", "%{y:.4s}")]),
                "meta": {"series": impl},
            }, controls=controls, legend_key=impl)  # fmt: skip
        if model == "7b" and dev.name == PAPER_DEVICE:
            name = f"paper: 7B, {PAPER_DEVICE} (ring)"
            spec.add({
                "x": list(PAPER_7B_A100), "y": floats(PAPER_7B_A100.values()), "mode": "markers",
                "name": name, "legendgroup": name,
                "marker": {"symbol": "x", "size": 11, "color": impl_color("ring"),
                           "line": {"width": 1, "color": "#333"}},
                "text": [esc(f"paper · ring · {p} × A100 80GB") for p in PAPER_7B_A100],
                "hovertemplate": template("reported (arXiv 2310.01889 Table 3)",
                                          [("max context", "%{y:.4s}")]),
            }, role="paper", controls=controls, legend_key=name)  # fmt: skip
    stagger_coinciding(spec.data, base_size=6, decades=0.02)  # memeff and bpt: within ~2%
    spec.update_axes("x", tickvals=list(ps), ticktext=[str(p) for p in ps])
    spec.control("device", "device", [
        {"value": name, "label": name, "relayout": {"title.text": esc(f"{title} ({name})")}}
        for name in DEVICES
    ])  # fmt: skip
    return spec.to_dict()


def model_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """harness.model.predict.predict_rows over a report's rows (NaN cells read as missing)."""
    from harness.model.predict import predict_rows

    plain = [{k: (None if _missing(v) else v) for k, v in r.items()}
             for r in rows.to_dict("records")]  # fmt: skip
    return predict_rows(plain, None)


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, dicts
        return False


def model_section(data: Any):
    """The report's analytic-model section: predicted vs measured memory, and the projection.
    None when no row has a measured peak the model can price."""
    from harness.report.sections import Section

    if data.rows.empty or "peak_mem_above_inputs_bytes" not in data.rows.columns:
        return None
    records = [r for r in model_records(data.rows) if r.get("mem_ratio")]
    figure = predicted_vs_measured_figure(records)
    if figure is None:
        return None
    return Section("model", "Analytic model", [figure, copy.deepcopy(_projection_spec())],
                   MODEL_NOTE)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _projection_spec() -> dict[str, Any]:
    """The projection figure depends on no run: drawn once per process (each page gets a copy)."""
    return projection_figure()
