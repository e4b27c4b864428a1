"""Comparison mode: what `harness compare BASELINE RUN` decides, drawn per row.

The report has no regression rule of its own: `data.judge_runs` runs compare (the project's one
judge, harness/regress/compare.py) on each run against the baseline, and this section rings exactly
the rows compare calls a regression (red) or an improvement (green), with the verdict and compare's
reasons in the hover text. The points are compare's ratios for rows ok in both runs: the median-time
ratio (normalized to the reference implementation when the suite's `compare:` asks for it) and the
peak-memory ratio. Rows compare could not gate (`ungated`: a NaN or infinity in the baseline) are
ringed too (orange). A ratio that is not finite is no point; its ring sits at 1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.report.common import FigureSpec, esc, finite, floats, impl_colors, template
from harness.report.data import ReportData
from harness.report.sections import Section

if TYPE_CHECKING:
    from harness.regress.compare import Comparison, RowResult

KEYS = ["run_id", "case", "impl", "phase"]
# compare's verdicts that are ringed
RINGS = {"regression": "#d62728", "ungated": "#ff7f0e", "improvement": "#2ca02c"}
PANELS = (("time_ratio", "time ratio (candidate / baseline)"), ("mem_ratio", "peak memory ratio"))
COLUMNS = (*KEYS, "verdict", "time_ratio", "ci_low", "ci_high", "p_slower", "mem_ratio",
           "base_time_ms", "why", "seq_len")  # fmt: skip
_WHY_CHARS = 400  # hover text stays readable; the full reasons are in `harness compare`


def _record(run_id: str, r: RowResult) -> dict[str, Any]:
    t = r.norm_time or r.time  # the ratio compare gated on
    return {
        "run_id": run_id, "case": r.case, "impl": r.impl, "phase": r.phase,
        "verdict": r.verdict, "time_ratio": t.ratio if t else math.nan,
        "ci_low": t.ci_low if t else None, "ci_high": t.ci_high if t else None,
        "p_slower": t.p_slower if t else None, "mem_ratio": r.mem_ratio,
        "base_time_ms": r.base_time_ms, "why": "; ".join(r.reasons + r.notes),
    }  # fmt: skip


def verdict_frame(comparisons: list[Comparison], rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (run, case, impl, phase) compare judged: its verdict, ratios and reasons.

    `rows` (the report's rows) adds `seq_len`, so the figure orders cases by length.
    """
    records = [_record(c.candidate.run_id, r) for c in comparisons for r in c.rows]
    frame = pd.DataFrame.from_records(records, columns=[c for c in COLUMNS if c != "seq_len"])
    if rows is not None and not frame.empty:
        lengths = rows[KEYS + ["seq_len"]].drop_duplicates(KEYS)
        frame = frame.merge(lengths, on=KEYS, how="left")
    else:
        frame["seq_len"] = math.nan
    for col in ("time_ratio", "mem_ratio", "base_time_ms", "seq_len"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["label_x"] = frame["case"] + " · " + frame["phase"]
    return frame.sort_values(["seq_len", "case", "phase", "impl"], kind="stable")


def ringed(frame: pd.DataFrame) -> dict[str, set[tuple[str, str, str, str]]]:
    """The (run, case, impl, phase) keys ringed per verdict: exactly compare's."""
    return {v: set(frame.loc[frame["verdict"] == v, KEYS].itertuples(index=False, name=None))
            for v in RINGS}  # fmt: skip


def _hover_text(g: pd.DataFrame) -> list[str]:
    return (g["case"].map(esc) + " · " + g["impl"].map(esc) + " · " + g["phase"].map(esc)).tolist()


def _why(g: pd.DataFrame) -> list[str]:
    return [esc(w if len(w) <= _WHY_CHARS else w[: _WHY_CHARS - 1] + "…") or "–" for w in g["why"]]


def comparison_figure(frame: pd.DataFrame, *, time_label: str = PANELS[0][1]) -> dict | None:
    """Ratios per row and rings on compare's regressions and improvements (`verdict_frame`)."""
    if frame.empty:
        return None
    has_ratio = frame["time_ratio"].notna() | frame["mem_ratio"].notna()
    if not (has_ratio | frame["verdict"].isin(list(RINGS))).any():
        return None
    colors = impl_colors(frame["impl"].tolist())
    many_runs = frame["run_id"].nunique() > 1
    spec = FigureSpec("Candidate vs baseline (compare's verdicts)", 600)
    spec.grid([[esc(time_label)], [PANELS[1][1]]], xlog=False, vgap=0.1)
    for row, (metric, _) in enumerate(PANELS, start=1):
        for (impl, run_id), g in frame[finite(frame[metric])].groupby(["impl", "run_id"]):
            name = f"{impl} {run_id}" if many_runs else impl
            spec.add({
                "x": g["label_x"].map(esc).tolist(), "y": floats(g[metric]), "mode": "markers",
                "name": name, "legendgroup": name,
                "marker": {"color": colors.get(impl, "#333"), "size": 8},
                "text": _hover_text(g),
                "customdata": [[v, b] for v, b in zip(g["verdict"].map(esc),
                                                      floats(g["base_time_ms"]), strict=True)],
                "hovertemplate": template(name, [("ratio", "%{y:.3f}"),
                                                 ("baseline time (ms)", "%{customdata[1]:.4g}"),
                                                 ("verdict", "%{customdata[0]}")]),
                "meta": {"metric": metric},
            }, row, 1, legend_key=name)  # fmt: skip
    for verdict, color in RINGS.items():
        g = frame[frame["verdict"] == verdict]
        if g.empty:
            continue
        # a row without a finite time ratio (a status change, a memory-only verdict, NaN) sits at 1
        y = floats(g["time_ratio"].where(finite(g["time_ratio"]), 1.0))
        spec.add({
            "x": g["label_x"].map(esc).tolist(), "y": y, "mode": "markers",
            "name": f"{verdict}s (compare)", "legendgroup": verdict,
            "marker": {"symbol": "circle-open", "size": 16, "color": color, "line": {"width": 2}},
            "text": _hover_text(g), "customdata": _why(g),
            "hovertemplate": template(f"compare: {verdict}", [("time ratio", "%{y:.3f}"),
                                                              ("why", "%{customdata}")]),
            "meta": {"flag": verdict},
        }, 1, 1, role="flag", legend_key=verdict)  # fmt: skip
    spec.update_axes("x", type="category", showticklabels=False)
    spec.layout["xaxis2"]["matches"] = "x"
    spec.layout["shapes"] = [
        {"type": "line", "xref": f"x{s} domain", "yref": f"y{s}", "x0": 0, "x1": 1, "y0": 1,
         "y1": 1, "line": {"color": "#888", "dash": "dot", "width": 1}}
        for s in ("", "2")
    ]  # fmt: skip
    return spec.to_dict()


def _time_label(comparisons: list[Comparison]) -> str:
    refs = {c.settings.normalize_to for c in comparisons} - {None}
    if len(refs) == 1:
        return f"time ratio vs {next(iter(refs))} (candidate / baseline)"
    return PANELS[0][1]


def _counts(comparisons: list[Comparison]) -> str:
    parts = []
    for c in comparisons:
        counts = ", ".join(f"{n} {v}" for v, n in c.counts().items()) or "no rows"
        moved = [f"{r.impl} {r.verdict} (all its rows together: {r.reason})"
                 for r in c.implementations if r.verdict != "unchanged"]  # fmt: skip
        if moved:  # an implementation's verdict fails compare too; no ring can show it
            counts += "; implementations: " + "; ".join(moved)
        parts.append(f"{c.candidate.run_id}: {counts}")
    return "; ".join(parts)


def build(data: ReportData) -> Section | None:
    if data.baseline is None:
        return None
    base_id = (data.baseline_meta or {}).get("run_id", "baseline")
    notes = " ".join(data.comparison_notes)
    frame = verdict_frame(data.comparisons, data.rows)
    fig = comparison_figure(frame, time_label=_time_label(data.comparisons))
    if fig is None:
        why = notes or f"No case is ok in both these runs and the baseline {base_id}."
        return Section("comparison", "Comparison", [], why)
    return Section("comparison", "Comparison", [fig],
                   f"Ratios against baseline {base_id}; below 1 is better. Rings are the verdicts "
                   f"of `harness compare {base_id} RUN` (red: regression, orange: not gated, "
                   f"a NaN or inf baseline value; green: improvement; hover for compare's "
                   f"reasons): {_counts(data.comparisons)}. {notes}".rstrip()
                   )  # fmt: skip
