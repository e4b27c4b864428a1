"""`harness show`'s terminal view of a run: readable at 100 columns, strings never markup.

Rows are grouped under their case name (up to ~50 characters, too wide to be a column beside nine
others). Each number column has one unit, chosen to fit its values and named in a short header:
time in µs / ms / s (`time ms`), memory in KiB / MiB / GiB (`peak MiB`), throughput in GFLOP/s or
TFLOP/s, and for decode runs the achieved bandwidth (`GB/s`); errors in short scientific notation
(`2.8e-7`). Reasons are long and often repeated
(`needs CUDA ...` on every case of a CPU run), so each distinct one is numbered once below the
table and the row's status points to it (`skipped [1]`). A noisy row (`noisy`: its samples spread
or drift, harness/measure/derived.py) has `~` after its time, explained below the table. `--all`
shows every field of every row, one block per row. Everything is built as rich `Text`: a reason
like `[/x] [bold]` stays text.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from harness.rows import FAILED, STATUSES

# The fields the default view shows (and `--format json|csv|md` writes), in this order.
SHOWN: tuple[str, ...] = (
    "case", "impl", "phase", "status", "time_ms_median", "tflops", "peak_mem_bytes",
    "err_rel_l2", "err_naive_same_dtype_rel_l2", "reason",
)  # fmt: skip
_KIB, _MIB, _GIB = 2**10, 2**20, 2**30
_GAP = "  "


def fixed(x: float, digits: int = 3) -> str:
    """`digits` significant digits in fixed point: 0.123, 12.3; whole numbers from 10**digits
    (1234, never 1.23e+03). Only a value below a millionth of its unit falls back to `sci`."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if abs(x) >= 10**digits:
        return f"{x:.0f}"
    x = float(f"{x:.{digits}g}")  # round first: 9.996 is 10.0, not 10.00
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    return f"{x:.{max(decimals, 0)}f}" if decimals <= 6 else sci(x)


def sci(x: float) -> str:
    """Two significant digits, short exponent: 2.8e-7 (errors span many decades)."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def time_unit(top_ms: float) -> tuple[str, float]:
    """(unit, factor from ms) so that the column's largest time reads as 1 to 9999."""
    if top_ms >= 1e4:
        return "s", 1e-3
    return ("µs", 1e3) if top_ms < 1 else ("ms", 1.0)


def bytes_unit(top_bytes: float) -> tuple[str, float]:
    """(unit, factor from bytes): KiB below 1 MiB, GiB from 10 GiB, MiB between."""
    if top_bytes >= 10 * _GIB:
        return "GiB", 1 / _GIB
    return ("KiB", 1 / _KIB) if top_bytes < _MIB else ("MiB", 1 / _MIB)


def flops_unit(top_tflops: float) -> tuple[str, float]:
    """(unit, factor from TFLOP/s): GFLOP/s below 1 TFLOP/s (CPUs), TFLOP/s above."""
    return ("GFLOP/s", 1e3) if top_tflops < 1 else ("TFLOP/s", 1.0)


def human_bytes(n: float) -> str:
    """One byte count with its own unit (for the `--all` view): 96.0 KiB, 1.95 MiB."""
    unit, factor = bytes_unit(n) if n >= _KIB else ("B", 1.0)
    return f"{fixed(n * factor)} {unit}"


@dataclass(frozen=True)
class Column:
    """A number column: the row field, its header (with the unit), how a value reads, alignment."""

    key: str
    header: str
    text: Callable[[Any], str]
    right: bool


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _scaled(factor: float, show: Callable[[float], str]) -> Callable[[Any], str]:
    def text(value: Any) -> str:
        x = _number(value)
        return "" if x is None else show(x * factor)

    return text


def columns_for(rows: Sequence[dict[str, Any]]) -> list[Column]:
    """The number columns that have a value in some row, each with the unit that fits them."""
    cols: list[Column] = []
    # decode is memory-bound: its figure of merit is the bandwidth, shown beside FLOP/s
    decode = any(r.get("workload") == "decode" for r in rows)
    specs = [("time_ms_median", time_unit, "time {}"), ("tflops", flops_unit, "{}"),
             *([("gbytes_per_s", "plain", "GB/s")] if decode else []),
             ("peak_mem_bytes", bytes_unit, "peak {}"), ("err_rel_l2", None, "err rel"),
             ("err_naive_same_dtype_rel_l2", None, "naive err")]  # fmt: skip
    for key, kind, name in specs:
        values = [x for r in rows if (x := _number(r.get(key))) is not None]
        if not values:
            continue
        if kind == "plain":
            cols.append(Column(key, name, _scaled(1.0, fixed), True))
        elif kind is None:
            cols.append(Column(key, name, _scaled(1.0, sci), True))
        else:
            unit, factor = kind(max(abs(v) for v in values))
            cols.append(Column(key, name.format(unit), _scaled(factor, fixed), True))
    return cols


def _status_style(status: str) -> str:
    return "bold red" if status in FAILED else ("dim" if status != "ok" else "")


def _line(cells: Sequence[tuple[str, bool]], widths: Sequence[int], style: str = "") -> Text:
    parts = [
        c.rjust(w) if right else c.ljust(w) for (c, right), w in zip(cells, widths, strict=True)
    ]
    return Text(_GAP + _GAP.join(parts).rstrip(), style=style)


def _noise_mark(column: Column, row: dict[str, Any], any_noisy: bool) -> str:
    """`~` after a noisy row's time; a space after the others' keeps the digits aligned."""
    if column.key != "time_ms_median" or not any_noisy:
        return ""
    return "~" if row.get("noisy") is True and column.text(row.get(column.key)) else " "


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """`48 rows: 32 ok, 16 skipped` (statuses in the schema's order)."""
    counts = {s: n for s in STATUSES if (n := sum(r.get("status") == s for r in rows))}
    return f"{len(rows)} rows: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def _note(n: int, reason: str, width: int) -> list[Text]:
    """`  [n] reason`, wrapped under itself (a hanging indent) to at most `width` columns."""
    prefix = f"{_GAP}[{n}] "
    lines = textwrap.wrap(reason, max(width - len(prefix), 20), break_on_hyphens=False) or [""]
    return [Text((prefix if i == 0 else " " * len(prefix)) + line) for i, line in enumerate(lines)]


def render(rows: Sequence[dict[str, Any]], *, title: str, width: int) -> list[RenderableType]:
    """The default view: a title, then per case its rows, then the numbered reasons (wrapped to
    `width`; the rows themselves need about 90 columns)."""
    numbers = columns_for(rows)
    # One group per case, in order of first appearance (a resumed run appends its rows at the end).
    first = {case: i for i, case in reversed(list(enumerate(str(r.get("case", "")) for r in rows)))}
    rows = sorted(rows, key=lambda r: first[str(r.get("case", ""))])
    notes: dict[str, int] = {}
    any_noisy = any(r.get("noisy") is True for r in rows)
    body: list[tuple[str, list[tuple[str, bool]], str]] = []  # (case, cells, status)
    for r in rows:
        status, reason = str(r.get("status", "")), str(r.get("reason") or "")
        # The same reason keeps its number: one note for a backend missing on every case.
        note = f" [{notes.setdefault(reason, len(notes) + 1)}]" if reason else ""
        status_text = status + note
        cells = [(str(r.get(k, "")), False) for k in ("impl", "phase")] + [(status_text, False)]
        cells += [(c.text(r.get(c.key)) + _noise_mark(c, r, any_noisy), True) for c in numbers]
        body.append((str(r.get("case", "")), cells, status))
    header = [("impl", False), ("phase", False), ("status", False)]
    header += [(c.header, True) for c in numbers]
    widths = [max(len(h), *(len(cells[i][0]) for _, cells, _ in body)) for i, (h, _) in
              enumerate(header)]  # fmt: skip
    out: list[RenderableType] = [Text(f"{title}  ({summary(rows)})", style="bold"),
                                 _line(header, widths, style="bold underline")]  # fmt: skip
    case = None
    for row_case, cells, status in body:
        if row_case != case:
            case = row_case
            out.append(Text(row_case, style="bold"))
        line = _line(cells, widths)
        start = len(_GAP) + sum(widths[:2]) + 2 * len(_GAP)
        line.stylize(_status_style(status), start, start + widths[2])
        out.append(line)
    if any_noisy:
        out.append(
            Text(
                f"{_GAP}~ noisy: samples spread or drift, processes disagree, or shared "
                "cores (noise_note; see --all)"
            )
        )
    if notes:
        out.append(Text("reasons:", style="bold"))
        for reason, n in notes.items():
            out += _note(n, reason, width)
    return out


def _value_text(key: str, value: Any) -> str:
    if key.endswith(("_bytes", "_bytes_formula")) and _number(value) is not None:
        return human_bytes(float(value))
    if isinstance(value, float):
        return fixed(value, 4) if 1e-3 <= abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def render_records(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, title: str, width: int
) -> list[RenderableType]:
    """`--all`: per row a heading (case, impl, phase, status), then its `key=value` fields packed
    into lines of at most `width` characters; fields without a value are left out."""
    out: list[RenderableType] = [Text(f"{title}  ({summary(rows)})", style="bold")]
    heading = ("case", "impl", "phase", "status")
    for r in rows:
        status = str(r.get("status", ""))
        line = Text("  ".join(str(r.get(k, "")) for k in heading), style="bold")
        line.stylize(_status_style(status), len(line) - len(status))
        out.append(line)
        fields = [f"{k}={_value_text(k, r[k])}" for k in columns
                  if k not in heading and r.get(k) not in (None, "", [])]  # fmt: skip
        current = ""
        for field in fields:
            if current and len(current) + len(_GAP) + len(field) > width:
                out.append(Text(current))
                current = ""
            current = f"{current}{_GAP}{field}" if current else f"{_GAP}{field}"
        if current:
            out.append(Text(current))
    return out
