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
