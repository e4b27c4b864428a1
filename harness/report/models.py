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
    "Analytic model (harness/model/, `harness model predict` / `project`). Left: each ok row's "
    "peak memory above its inputs, predicted (the sources' formulas with the tensor counts of "
    "the code, plus a fixed overhead calibrated on the shortest row of each series, hollow "
    "markers) against measured; the band is ±15%. Right: the longest context whose training "
    "step fits one device, per implementation, for a 7B model on P devices (FSDP states; ring "
    "splits the sequence), against the Ring Attention paper's 8×A100 and 32×A100 points."
)


def predicted_vs_measured_figure(records: list[dict[str, Any]]):
    """Log-log scatter of predicted vs measured memory (bytes), one trace per implementation and
    phase, with y = x and the ±15% band; `records` from harness.model.predict.predict_rows."""
    import plotly.graph_objects as go

    pts = [r for r in records if r.get("mem_ratio") and r.get("measured_mem_bytes")]
    fig = go.Figure()
    if not pts:
        return fig
    lo = min(min(r["measured_mem_bytes"], r["predicted_mem_bytes"]) for r in pts) / 1.5
    hi = max(max(r["measured_mem_bytes"], r["predicted_mem_bytes"]) for r in pts) * 1.5
    for scale, name in ((1.0, "predicted = measured"), (1.15, "±15%"), (1 / 1.15, None)):
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo * scale, hi * scale], mode="lines",
                                 name=name, showlegend=name is not None,
                                 line={"dash": "solid" if scale == 1.0 else "dot",
                                       "color": "gray"}))  # fmt: skip
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in pts:
        groups.setdefault((str(r["impl"]), str(r["phase"])), []).append(r)
    for (impl, phase), rs in sorted(groups.items()):
        fig.add_trace(go.Scatter(
            x=[r["measured_mem_bytes"] for r in rs], y=[r["predicted_mem_bytes"] for r in rs],
            mode="markers", name=f"{impl} {phase}",
            marker={"symbol": ["circle-open" if r["calibrated"] else "circle" for r in rs]},
            text=[f"S={r['seq_len']} ratio {r['mem_ratio']:.3f}" for r in rs]))  # fmt: skip
    fig.update_layout(title="Peak memory above inputs: model vs measured",
                      xaxis={"title": "measured (bytes)", "type": "log"},
                      yaxis={"title": "predicted (bytes)", "type": "log"})  # fmt: skip
    return fig


# Ring Attention (arXiv 2310.01889) Table 3: 7B max context on A100 80GB (tokens)
PAPER_7B_A100 = {8: 256_000, 32: 4_096_000}


def projection_figure(model: str = "7b", impls: tuple[str, ...] | None = None,
                      max_p: int = 4096):  # fmt: skip
    """Max context (tokens) vs devices P = 1, 2, 4, ... max_p, log-log: one line per (named device,
    implementation), and the paper's 7B A100 points."""
    import plotly.graph_objects as go

    from harness.model.devices import DEVICES
    from harness.model.projection import IMPLS, max_context, workload
    from harness.model.ring import world_sizes

    w = workload(model)
    ps = world_sizes(max_p)
    fig = go.Figure()
    for dev in DEVICES.values():
        for impl in impls or IMPLS:
            ys = [max_context(impl, w, dev, p) or None for p in ps]  # 0 does not fit: no log
            fig.add_trace(
                go.Scatter(
                    x=ps,
                    y=ys,
                    mode="lines",
                    name=f"{dev.name} {impl}",
                    line={"dash": "solid" if impl == "ring" else "dot"},
                )
            )
    if model == "7b":
        fig.add_trace(go.Scatter(x=list(PAPER_7B_A100), y=list(PAPER_7B_A100.values()),
                                 mode="markers", marker={"symbol": "x", "size": 10},
                                 name="paper: 7B, A100 (ring)"))  # fmt: skip
    fig.update_layout(title=f"Projection: max context of a {model} training step vs devices",
                      xaxis={"title": "devices P", "type": "log"},
                      yaxis={"title": "max context (tokens)", "type": "log"})  # fmt: skip
    return fig


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
    from harness.report.adopted import adopt
    from harness.report.sections import Section

    if data.rows.empty or "peak_mem_above_inputs_bytes" not in data.rows.columns:
        return None
    records = [r for r in model_records(data.rows) if r.get("mem_ratio")]
    if not records:
        return None
    return Section("model", "Analytic model", [adopt(predicted_vs_measured_figure(records)),
                                               copy.deepcopy(_projection_spec())],
                   MODEL_NOTE)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _projection_spec() -> dict[str, Any]:
    """The projection figure depends on no run: drawn once per process (each page gets a copy)."""
    from harness.report.adopted import adopt

    return adopt(projection_figure())
