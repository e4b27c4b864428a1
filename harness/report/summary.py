"""The summary at the top of the report: per workload, phase and length (the cache length for
decode), the fastest and the leanest implementation among the ok rows of each case, with how far
ahead of the runner-up each is.

Rows compete only within one case and phase (same shape, dtype, mask, devices: only the
implementation differs); the axes besides the length that vary in a workload's rows name the case.
A case with fewer than two implementations that report a metric has no winner for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.report.common import PHASE_ORDER, esc, finite, labels, varying
from harness.report.data import AXES

LENGTH = {"decode": "seqlen_k"}  # the length a workload's summary is read by (else seq_len)
MAX_LINES = 400  # a huge sweep's summary stops here and points to the table


@dataclass(frozen=True)
class Winner:
    impl: str
    value: float
    runner_up: str
    runner_value: float

    @property
    def ratio(self) -> float:
        return self.runner_value / self.value if self.value > 0 else math.inf


@dataclass(frozen=True)
class SummaryLine:
    workload: str
    phase: str
    case: str  # the other varying axes, in words ('' when none vary)
    length: float
    fastest: Winner | None
    leanest: Winner | None


def winner(impls: Any, values: Any) -> Winner | None:
    """The implementation with the smallest positive finite value and its runner-up (each
    implementation by its best row), or None with fewer than two such implementations."""
    frame = pd.DataFrame({"impl": list(impls), "v": pd.to_numeric(pd.Series(list(values)),
                                                                  errors="coerce")})  # fmt: skip
    frame = frame[finite(frame["v"]) & (frame["v"] > 0)]
    best = frame.groupby("impl")["v"].min().sort_values(kind="stable")
    if len(best) < 2:
        return None
    return Winner(str(best.index[0]), float(best.iloc[0]), str(best.index[1]), float(best.iloc[1]))


def summary_lines(rows: pd.DataFrame) -> list[SummaryLine]:
    ok = rows[rows["status"] == "ok"] if "status" in rows else rows.iloc[0:0]
    out: list[SummaryLine] = []
    for workload, w in ok.groupby(ok["workload"].astype(str), sort=True):
        length_col = LENGTH.get(workload, "seq_len")
        if length_col not in w:
            continue
        w = w[finite(w[length_col])]
        skip = ("workload", "seq_len", "k_len", "q_len", length_col)
        others = varying(w, tuple(a for a in (*AXES, "run_id") if a not in skip))
        w = w.assign(_what=labels(w, others), _len=pd.to_numeric(w[length_col]))
        for (_, _, phase), g in w.groupby(["run_id", "case", "phase"], sort=False, dropna=False):
            fastest = winner(g["impl"], g["time_ms_median"])
            leanest = winner(g["impl"], g["peak_mem_bytes"])
            if fastest is None and leanest is None:
                continue
            out.append(SummaryLine(str(workload), str(phase), str(g["_what"].iloc[0]),
                                   float(g["_len"].iloc[0]), fastest, leanest))  # fmt: skip
    return sorted(out, key=lambda s: (s.workload, PHASE_ORDER.get(s.phase, 9), s.phase, s.case,
                                      s.length))  # fmt: skip


def _length(value: float) -> str:
    s = int(value)
    return f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s)


def _cell(win: Winner | None, unit: str) -> str:
    if win is None:
        return '<td class="win">–</td><td class="ratio">–</td>'
    shown = f"{win.value:.3g} ms" if unit == "ms" else _mib(win.value)
    ahead = "tied with" if win.ratio < 1.005 else f"{win.ratio:.2f}× vs"
    return (
        f'<td class="win" data-impl="{esc(win.impl)}"><b>{esc(win.impl)}</b> '
        f'<span class="val">{esc(shown)}</span></td>'
        f'<td class="ratio" data-ratio="{win.ratio:.6g}">{ahead} {esc(win.runner_up)}</td>'
    )


def summary_html(rows: pd.DataFrame) -> str:
    """The summary section ('' when no case has two implementations to compare)."""
    lines = summary_lines(rows)
    if not lines:
        return ""
    body = []
    for s in lines[:MAX_LINES]:
        body.append(f'<tr><td>{esc(s.workload)}</td><td>{esc(s.phase)}</td>'
                    f'<td class="what">{esc(s.case)}</td><td class="num">{esc(_length(s.length))}'
                    f"</td>{_cell(s.fastest, 'ms')}{_cell(s.leanest, 'bytes')}</tr>")  # fmt: skip
    more = len(lines) - MAX_LINES
    tail = f'<p class="note">… and {more} more cases: see the table.</p>' if more > 0 else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in (
        "workload", "phase", "case", "length", "fastest (median time)", "ahead of runner-up",
        "leanest (peak memory)", "ahead of runner-up"))  # fmt: skip
    return ('<section id="summary" class="card"><h2>At a glance</h2><p class="note">Per case '
            "and phase, among ok rows: the fastest and the leanest implementation and how far "
            "ahead of the runner-up (runner-up ÷ winner; each implementation by its best row). "
            "Length is the sequence length (decode: the cache length).</p>"
            f'<div class="summarywrap"><table class="summary"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>{tail}</section>")  # fmt: skip


def _mib(nbytes: float) -> str:
    """Bytes as MiB or GiB, as the rest of the harness prints peak memory."""
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"
