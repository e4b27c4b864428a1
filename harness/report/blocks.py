"""Block-size trade-off of blockwise implementations: time and peak memory vs block size.

Small blocks bound memory; large blocks feed the matmul units better. Plotted: the rows whose
implementation declares `uses_block_size` (a fact every row carries; see `models`), one line per
implementation × sequence length; the other axes that vary become a slice selector.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.report import models
from harness.report.common import (
    axes_title,
    metric_panels,
    slice_options,
    with_lines_and_slices,
)  # fmt: skip
from harness.report.sections import figure_section

PANELS = (("time_ms_median", "time (ms)"), ("peak_mem_bytes", "peak memory"))


def block_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    sel = rows[(rows["status"] == "ok") & (rows["world_size"] == 1) & rows["block_size"].notna()]
    sel = sel[models.uses_block_size(sel)]
    if sel.empty:
        return sel, []
    sel, slice_axes = with_lines_and_slices(sel, ("block_size",), line_axes=("seq_len",))
    counts = sel.groupby(["series", "slice"])["block_size"].transform("nunique")
    return sel[counts >= 2], slice_axes


def block_figure(rows: pd.DataFrame) -> dict[str, Any] | None:
    sel, slice_axes = block_rows(rows)
    if sel.empty:
        return None
    spec, sel = metric_panels(
        rows,
        sel,
        x="block_size",
        title="Block-size trade-off",
        xtitle="block size",
        panels=PANELS,
        hgap=0.08,
    )
    sizes = sorted(sel["block_size"].unique().tolist())
    spec.update_axes("x", tickvals=sizes, ticktext=[str(int(s)) for s in sizes])
    spec.layout["yaxis2"].update(tickformat=".2s", title={"text": "bytes"})
    spec.control("slice", axes_title(slice_axes), slice_options(sel))
    return spec.to_dict()


build = figure_section(
    "block_size",
    "Block size",
    block_figure,
    "Time and peak memory of the blockwise implementations as the block size varies.",
)
