"""Human-readable views of a Comparison: a rich terminal table and a Markdown summary for CI.

Reasons quote rows verbatim (`status ok -> error: [/__w/.../pair.cc:537] Read error`), so the
terminal table is built of rich `Text` (never markup) and Markdown escapes only what would end a
cell. Rows compare could not gate (`ungated`: too few samples, or a NaN or infinity in the
baseline) are always listed. Every provenance difference between the two runs comes first, under
the headline (the command line prints it first, as its first note).
"""

from __future__ import annotations

from typing import Any

from harness.regress.compare import Comparison, RowResult, TimeStats, provenance_line
from harness.regress.implementations import ImplResult

_SHOWN = ("regression", "missing", "changed", "ungated", "vanished", "new", "improvement")


def _ratio(t: TimeStats | None) -> str:
    if t is None:
        return ""
    text = f"{t.ratio:.3f}"
    if t.ci_low is not None and t.ci_high is not None:
        text += f" [{t.ci_low:.2f}, {t.ci_high:.2f}]"
    return text


def _p(t: TimeStats | None) -> str:
    return "" if t is None or t.p_slower is None else f"{t.p_slower:.3g}"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _status(r: RowResult) -> str:
    if r.base_status == r.cand_status:
        return r.cand_status or ""
    return f"{r.base_status or '-'} -> {r.cand_status or '-'}"


def cells(r: RowResult) -> list[str]:
    """One row's cells as plain strings, in HEADERS order."""
    return [r.verdict, r.case, r.impl, r.phase, _status(r), _ratio(r.time), _p(r.time),
            _ratio(r.norm_time), _num(r.mem_ratio), _num(r.err_ratio),
            "; ".join(r.reasons + r.notes)]  # fmt: skip


HEADERS = ["verdict", "case", "impl", "phase", "status", "time ratio [CI]", "p (slower)",
           "norm. time ratio [CI]", "mem ratio", "err ratio", "why"]  # fmt: skip


def _visible(cmp: Comparison, show_all: bool) -> list[RowResult]:
    return cmp.rows if show_all else [r for r in cmp.rows if r.verdict in _SHOWN]


def headline(cmp: Comparison) -> str:
    """The verdict in one line: regression or not, the two runs, the counts by verdict."""
    counts = ", ".join(f"{n} {v}" for v, n in cmp.counts().items())
    word = "REGRESSION" if cmp.failed else "no regression"
    if moved := [f"{r.impl} {r.verdict}" for r in cmp.implementations if r.verdict != "unchanged"]:
        word += f" (implementations: {', '.join(moved)})"
    if ungated := len(cmp.by_verdict("ungated")):
        word += f" ({ungated} rows not gated: too few samples, NaN or inf, or shared CPU cores)"
    return (f"{word}: {cmp.candidate.run_id} vs baseline {cmp.baseline.run_id} ({counts}; "
            f"{len(cmp.rows)} rows)")  # fmt: skip


def thresholds(cmp: Comparison) -> str:
    """The rule the rows were judged by, in words."""
    s = cmp.settings
    norm = f", normalized to {s.normalize_to}" if s.normalize_to else ""
    impls = ""
    if cmp.implementations:  # judged only with per-process tests (harness/regress/implementations)
        impls = (f"an implementation's rows together > +{s.impl_tol:.1%} with Stouffer p < "
                 f"{s.alpha:g} (BH across implementations); ")  # fmt: skip
    return (
        f"time > +{s.time_tol:.0%} with Mann-Whitney p < {s.alpha:g} (Benjamini-Hochberg "
        f"adjusted across rows, >= {s.min_samples} samples) and a CI excluding 1{norm}; "
        f"{impls}"
        f"memory > +{s.mem_tol:.0%} (and > {s.mem_floor_bytes} B); "  # fmt: skip
        f"error > {s.err_factor:g}x baseline or above the naive-low-precision rule"
    )


IMPL_HEADERS = ["verdict", "impl", "rows", "median ratio", "Stouffer Z (slower)",
                "BH-adjusted p", "why"]  # fmt: skip


def impl_cells(r: ImplResult) -> list[str]:
    return [r.verdict, r.impl, str(r.num_rows), f"{r.ratio:.3f}", f"{r.z_slower:+.2f}",
            f"{r.p_adjusted:.3g}", r.reason]  # fmt: skip


def impl_table(cmp: Comparison) -> Any:
    """A rich Table of the implementation verdicts, or None when there are none."""
    if not cmp.implementations:
        return None
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text("implementations (all rows of each, judged together)"))
    for h in IMPL_HEADERS:
        t.add_column(Text(h), overflow="fold")
    styles = {"regression": "bold red", "improvement": "green"}
    for r in cmp.implementations:
        t.add_row(*(Text(c) for c in impl_cells(r)), style=styles.get(r.verdict))
    return t


def table(cmp: Comparison, *, show_all: bool = False) -> Any:
    """A rich Table of the rows that matter (every row with `show_all`); every cell is Text."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(headline(cmp)), caption=Text(thresholds(cmp)), caption_justify="left")
    for h in HEADERS:
        t.add_column(Text(h), overflow="fold")
    styles = {"regression": "bold red", "missing": "bold red", "ungated": "yellow",
              "improvement": "green"}  # fmt: skip
    for r in _visible(cmp, show_all):
        t.add_row(*(Text(c) for c in cells(r)), style=styles.get(r.verdict))
    return t


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows)]  # fmt: skip


def markdown(cmp: Comparison, *, show_all: bool = False, max_rows: int = 200) -> str:
    """A summary for a CI comment: verdict, warnings, thresholds and the rows that matter."""
    icon = "❌" if cmp.failed else ("⚠️" if cmp.by_verdict("ungated") else "✅")
    lines = [f"### {icon} {_md_escape(headline(cmp))}", ""]
    if cmp.provenance:
        diffs = "; ".join(_md_escape(str(c)) for c in cmp.provenance)
        lines += [f"**Provenance differs:** {diffs}", ""]
    prov = provenance_line(cmp.provenance)
    rest = [w for w in cmp.warnings if w != prov]
    lines += [f"> **Warning:** {_md_escape(w)}" for w in rest if "devices" in w]
    other = [w for w in rest if "devices" not in w]
    if other:
        lines += ["", "Notes: " + "; ".join(_md_escape(w) for w in other)]
    lines += ["", f"Thresholds: {thresholds(cmp)}.", ""]
    if cmp.implementations:
        lines += ["Implementations (all rows of each, judged together):", ""]
        lines += _md_table(IMPL_HEADERS, [impl_cells(r) for r in cmp.implementations])
        lines.append("")
    rows = _visible(cmp, show_all)
    if not rows:
        lines.append("Every row is unchanged within the thresholds"
                     + (" (see the implementations above)." if cmp.impls_by_verdict("regression")
                        or cmp.impls_by_verdict("improvement") else "."))  # fmt: skip
        return "\n".join(lines) + "\n"
    lines += _md_table(HEADERS, [cells(r) for r in rows[:max_rows]])
    if len(rows) > max_rows:
        lines.append(f"\n({len(rows) - max_rows} more rows in the JSON summary)")
    return "\n".join(lines) + "\n"
