"""The table of every row: compact JSON that the page turns into a sortable, filterable table.

Cells are set with `textContent` in the browser, so a reason like `<script>` is shown as text.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

TABLE_COLUMNS = (
    "case", "impl", "phase", "status", "reason", "seq_len", "dtype", "causal", "block_size",
    "world_size", "time_ms_median", "tflops", "tokens_per_s", "peak_mem_bytes", "err_rel_l2",
)  # fmt: skip
NUMERIC = {"seq_len", "block_size", "world_size", "time_ms_median", "tflops", "tokens_per_s",
           "peak_mem_bytes", "err_rel_l2"}  # fmt: skip


def _cell(value: Any) -> Any:
    if value is None or (not isinstance(value, (list, tuple, str)) and pd.isna(value)):
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.4g}")
    if hasattr(value, "item"):
        return _cell(value.item())
    if isinstance(value, (bool, int, str)):
        return value
    return str(value)


def table_payload(rows: pd.DataFrame) -> dict[str, Any]:
    """{"columns": [...], "numeric": [...], "rows": [[...], ...]} in run, case order."""
    columns = [c for c in TABLE_COLUMNS if c in rows]
    if rows["run_id"].nunique() > 1:
        columns = ["run_id", *columns]
    records = [[_cell(v) for v in rec] for rec in rows[columns].itertuples(index=False)]
    return {"columns": columns, "numeric": [c in NUMERIC for c in columns], "rows": records}
