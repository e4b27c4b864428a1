"""The table of every row: compact JSON that the page turns into a sortable, filterable table.

Cells are set with `textContent` in the browser, so a reason like `<script>` is shown as text.
A value that is not finite is shown as such: `nan` (a NaN the row held; a missing value is a blank
cell) and `inf` / `-inf`, as strings, since JSON has no such numbers; the page sorts them as
numbers (`nan` last, like a blank).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.report.data import NAN_FIELDS

TABLE_COLUMNS = (
    "case", "impl", "phase", "status", "reason", "seq_len", "dtype", "causal", "block_size",
    "world_size", "time_ms_median", "tflops", "tokens_per_s", "peak_mem_bytes", "err_rel_l2",
)  # fmt: skip
NUMERIC = {"seq_len", "block_size", "world_size", "time_ms_median", "tflops", "tokens_per_s",
           "peak_mem_bytes", "err_rel_l2"}  # fmt: skip
# Header text with units (the field name stays the key and the header's tooltip); seq_len keeps
# its field-standard name.
LABELS = {"run_id": "run", "block_size": "block size", "world_size": "world size",
          "time_ms_median": "median time (ms)", "tflops": "TFLOP/s", "tokens_per_s": "tokens/s",
          "peak_mem_bytes": "peak memory (MiB)", "err_rel_l2": "rel. L2 error"}  # fmt: skip
# Shown only after "more columns": the case name already says dtype and masking; block size,
# world size and tokens/s matter to few readers. Fewer columns fit 1280 px without scrolling.
EXTRA = {"dtype", "causal", "block_size", "world_size", "tokens_per_s"}
# Cells shown scaled (the data, sorting and filtering keep the raw value): bytes as MiB.
SCALE = {"peak_mem_bytes": 1 / 2**20}


def non_finite(value: float) -> str:
    """NaN and infinities as the page shows them: "nan", "inf", "-inf"."""
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _cell(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, tuple, str)):
        value = value.item()  # numpy scalars
    if isinstance(value, float):
        if math.isinf(value):
            return non_finite(value)
        return None if math.isnan(value) else float(f"{value:.4g}")
    if value is None or (not isinstance(value, (list, tuple, str)) and pd.isna(value)):
        return None
    if isinstance(value, (bool, int, str)):
        return value
    return str(value)


def table_payload(rows: pd.DataFrame) -> dict[str, Any]:
    """{"columns", "numeric", "rows", "labels", "extra", "scale"}: rows in run, case order.

    Per column: `labels` is its header (units included), `extra` hides it until the reader asks
    for more columns, `scale` (or None) multiplies a number for display only (bytes -> MiB).

    A NaN is `nan` where the row held it (`NAN_FIELDS`) and blank where the row lacks the field.
    """
    columns = [c for c in TABLE_COLUMNS if c in rows]
    if rows["run_id"].nunique() > 1:
        columns = ["run_id", *columns]
    nan_fields = rows[NAN_FIELDS] if NAN_FIELDS in rows else pd.Series([()] * len(rows))
    records = []
    for rec, nans in zip(rows[columns].itertuples(index=False), nan_fields, strict=True):
        cells = [_cell(v) for v in rec]
        for i in (i for i, c in enumerate(columns) if nans and c in nans):
            cells[i] = "nan"
        records.append(cells)
    return {"columns": columns, "numeric": [c in NUMERIC for c in columns], "rows": records,
            "labels": [LABELS.get(c, c) for c in columns],
            "extra": [c in EXTRA for c in columns],
            "scale": [SCALE.get(c) for c in columns]}  # fmt: skip
