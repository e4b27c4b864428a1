"""`harness table`: Markdown pivots of a run; failed cells named, skipped backends listed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import HarnessError
from harness.report.tables import pivot_markdown
from harness.results import load_rows
from tests.helpers.synthetic_runs import failed_row, make_run, ok_row


def _row(impl: str, seq_len: int, causal: bool, *, status: str = "ok", reason: str = "",
         **metrics) -> dict:  # fmt: skip
    """A fwd row of this impl and length; ok rows reach 100 TFLOP/s at 4k, 200 at 8k."""
    case = f"attn-s{seq_len}-{'causal' if causal else 'full'}"
    if status == "ok":
        row = ok_row(case, impl, "fwd", **metrics) | {"tflops": 100.0 * seq_len / 4096}
    else:
        row = failed_row(case, impl, "fwd", status=status, reason=reason)
    return row | {"seq_len": seq_len, "causal": causal, "dtype": "bfloat16", "head_dim": 128}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    rows = [
        _row("sdpa_flash", 8192, False, peak_mem_bytes=3 << 20),
        _row("sdpa_flash", 4096, False, peak_mem_bytes=2 << 20),
        _row("naive", 4096, False, err=1.5e-3),
        _row("naive", 8192, False, status="oom", reason="CUDA out of memory"),
        _row("sdpa_flash", 4096, True),
        _row("naive", 4096, True),
        _row("flash_attn2", 4096, False, status="skipped", reason="flash-attn is not installed"),
        _row("flash_attn2", 4096, True, status="skipped", reason="flash-attn is not installed"),
    ]
    return make_run(tmp_path / "run", rows)


def _table(text: str, title: str) -> list[list[str]]:
    """The rows (as cell lists) of the first table after `title`."""
    block = text.split(title, 1)[1].strip().split("\n\n")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()]


def test_cells_hold_the_metric_or_the_rows_status(run):
    text = pivot_markdown(load_rows(run), ["tflops", "peak", "err"])
    rows = _table(text.split("### TFLOP/s", 1)[1], "**full**")
    assert rows[0] == ["impl", "S=4096", "S=8192"]  # sequence lengths ascending
    assert rows[2] == ["sdpa_flash", "100", "200"]  # impls in the run's order
    assert rows[3] == ["naive", "100", "oom"]
    peak = _table(text.split("### peak device memory, MiB", 1)[1], "**full**")
    assert peak[2] == ["sdpa_flash", "2", "3"]
    err = _table(text.split("### relative L2 error vs float64", 1)[1], "**full**")
    assert err[3] == ["naive", "1.5e-03", "oom"]


def test_varying_axes_split_tables_and_fixed_ones_are_stated_once(run):
    text = pivot_markdown(load_rows(run), ["tflops"])
    assert text.startswith("All tables: fwd, bfloat16, head_dim=128.")
    assert "**full**" in text and "**causal**" in text
    assert _table(text, "**causal**")[2:] == [["sdpa_flash", "100"], ["naive", "100"]]


def test_backends_skipped_everywhere_are_listed_with_their_reason_not_tabled(run):
    text = pivot_markdown(load_rows(run), ["tflops"])
    assert "| flash_attn2 |" not in text
    assert text.rstrip().endswith("### Not run here\n\n- flash_attn2: flash-attn is not installed")


def test_unknown_metric_is_a_one_line_error(run):
    with pytest.raises(HarnessError, match="unknown metric 'flops'; allowed: tflops, time, peak"):
        pivot_markdown(load_rows(run), ["flops"])
    result = CliRunner().invoke(app, ["table", str(run), "--metric", "flops"])
    assert result.exit_code == 2 and "allowed: tflops" in result.output


def test_cli_writes_the_markdown_file(run, tmp_path):
    target = tmp_path / "table.md"
    result = CliRunner().invoke(app, ["table", str(run), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == pivot_markdown(load_rows(run), ["tflops", "peak", "err"])


def test_a_varying_layout_splits_tables_instead_of_hiding_rows(tmp_path):
    rows = [_row("ring", 4096, False) | {"seq_layout": layout, "case": f"ring-{layout}"}
            for layout in ("contiguous", "zigzag")]  # fmt: skip
    text = pivot_markdown(load_rows(make_run(tmp_path / "ring", rows)), ["tflops"])
    assert "**contiguous**" not in text  # layout values are named as seq_layout=...
    assert "**seq_layout=contiguous**" in text and "**seq_layout=zigzag**" in text


def test_rows_no_axis_tells_apart_are_an_error_not_a_silent_pick(tmp_path):
    rows = [_row("naive", 4096, False) | {"case": f"c{i}", "tflops": float(i)} for i in (1, 2)]
    with pytest.raises(HarnessError, match="share impl 'naive' and seq_len 4096"):
        pivot_markdown(load_rows(make_run(tmp_path / "dup", rows)), ["tflops"])
