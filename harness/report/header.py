"""The provenance header: for each run, where and with what it ran, its row counts by status and
the fields that hold NaN or infinity (the table shows them; figures leave them out); then the
summary (`summary.py`: fastest and leanest implementation per case), above the figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.report.common import esc
from harness.report.data import NAN_FIELDS, ReportData
from harness.report.summary import summary_html
from harness.rows import STATUSES


def status_counts(rows: pd.DataFrame) -> dict[str, int]:
    counts = rows["status"].value_counts().to_dict() if not rows.empty else {}
    ordered = {s: int(counts.pop(s, 0)) for s in STATUSES}
    return ordered | {str(k): int(v) for k, v in counts.items()}


def non_finite_fields(rows: pd.DataFrame) -> tuple[int, list[str]]:
    """How many rows hold a NaN or an infinity, and in which fields (a missing value is neither)."""
    bad = pd.Series(False, index=rows.index)
    fields: set[str] = set()
    if NAN_FIELDS in rows:
        nans = rows[NAN_FIELDS].map(lambda f: tuple(f) if isinstance(f, (list, tuple)) else ())
        bad |= nans.map(bool)
        fields.update(f for fs in nans for f in fs)
    for col in rows.select_dtypes(include="number").columns:
        inf = np.isinf(rows[col].to_numpy(dtype=float))
        if inf.any():
            bad |= inf
            fields.add(str(col))
    return int(bad.sum()), sorted(fields)


def _non_finite_html(rows: pd.DataFrame) -> str:
    count, fields = non_finite_fields(rows)
    if not count:
        return ""
    return (f'<div class="nonfinite" data-rows="{count}">{count} rows hold NaN or inf '
            f"({esc(', '.join(fields))}): shown as nan / inf in the table, left out of the "
            "figures</div>")  # fmt: skip


def _commit(prov: dict[str, Any]) -> str:
    commit = prov.get("git_commit") or "unknown"
    return commit[:12] + (" (dirty)" if prov.get("git_dirty") else "")


def run_facts(meta: dict[str, Any]) -> list[tuple[str, str]]:
    prov = meta.get("provenance") or {}
    device = prov.get("device_name") or prov.get("device") or "?"
    if prov.get("device"):
        device = f"{device} ({prov['device']})"
    return [
        ("device", device),
        ("torch", str(prov.get("torch_version", "?"))),
        ("CUDA", str(prov.get("cuda_version") or "none")),
        ("commit", _commit(prov)),
        ("suite", str(meta.get("suite_name", "?"))),
        ("date (UTC)", str(prov.get("utc_time", "?"))),
        ("host", str(prov.get("hostname", "?"))),
    ]


def _counts_html(counts: dict[str, int]) -> str:
    chips = [f'<span class="chip st-{esc(s)}" data-status="{esc(s)}">{esc(s)} '
             f"<b>{n}</b></span>" for s, n in counts.items()]  # fmt: skip
    return "".join(chips)


def header_html(data: ReportData) -> str:
    blocks = []
    for meta in data.metas:
        run_id = str(meta.get("run_id", "?"))
        rows = data.rows[data.rows["run_id"] == run_id]
        facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in run_facts(meta))
        blocks.append(f'<div class="run"><h2>run <code>{esc(run_id)}</code></h2>'
                      f'<dl>{facts}</dl><div class="counts">{esc(len(rows))} rows: '
                      f"{_counts_html(status_counts(rows))}</div>{_non_finite_html(rows)}"
                      "</div>")  # fmt: skip
    if data.baseline_meta is not None:
        facts = "".join(
            f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in run_facts(data.baseline_meta)
        )
        run_id = str(data.baseline_meta.get("run_id", "?"))
        blocks.append(f'<div class="run baseline"><h2>baseline <code>{esc(run_id)}</code></h2>'
                      f"<dl>{facts}</dl></div>")  # fmt: skip
    provenance = '<section id="provenance" class="runs">' + "".join(blocks) + "</section>"
    return provenance + summary_html(data.rows)  # the summary sits above the figures
