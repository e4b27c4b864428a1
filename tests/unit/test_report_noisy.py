"""Noisy rows (derived.noise_fields) are drawn as such: hollow points, the note in the hover."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.case import Case
from harness.measure.derived import time_fields
from harness.report import memory, throughput
from harness.report.common import hollow, impl_symbol
from harness.report.data import load_report_data, normalize
from tests.helpers.synthetic_runs import make_run, ok_row, samples

LENGTHS = (512, 1024, 2048, 4096)
NOISY_AT = 2048


def _row(seq_len: int, noisy: bool, *, with_flag: bool = True) -> dict:
    case = Case(seq_len=seq_len)
    t = samples(1.0 * seq_len, 0.6 if noisy else 0.002, n=12, seed=seq_len)
    row = ok_row(case=case.name, impl="bpt", time_ms=t, peak_mem_bytes=seq_len << 12)
    row |= case.to_dict() | time_fields(case, "fwd", t)
    if not with_flag:
        row.pop("noisy"), row.pop("noise_note", None)
    return row


@pytest.fixture
def rows(tmp_path):
    run = make_run(tmp_path / "run", [_row(s, s == NOISY_AT) for s in LENGTHS])
    return load_report_data([run]).rows


def _points(fig):
    """(x, symbol, hover text) of every point of the figure's line traces."""
    out = []
    for t in fig["data"]:
        if t["meta"]["role"] != "line":
            continue
        symbol = t["marker"].get("symbol", "circle")
        symbols = symbol if isinstance(symbol, list) else [symbol] * len(t["x"])
        out += zip(t["x"], symbols, t["text"], strict=True)
    return out


def test_rows_carry_the_flag(rows):
    by_len = dict(zip(rows["seq_len"], rows["noisy"], strict=True))
    assert by_len == {s: s == NOISY_AT for s in LENGTHS}
    note = rows.loc[rows["seq_len"] == NOISY_AT, "noise_note"].iloc[0]
    assert "IQR" in note
    assert set(rows.loc[rows["seq_len"] != NOISY_AT, "noise_note"]) == {""}


@pytest.mark.parametrize("build", [throughput.throughput_figure, memory.memory_figure])
def test_noisy_points_are_hollow_with_the_note(rows, build):
    fig = build(rows)
    points = _points(fig)
    assert {x for x, _, _ in points} == set(LENGTHS)
    note = rows.loc[rows["seq_len"] == NOISY_AT, "noise_note"].iloc[0]
    for x, symbol, text in points:
        if x == NOISY_AT:
            assert symbol == hollow(impl_symbol("bpt")) == "star-open"
            assert "noisy: " in text and note.split(" (")[0] in text
        else:
            assert symbol == impl_symbol("bpt"), "a point of a steady row is filled"
            assert "noisy" not in text


@pytest.mark.parametrize("build", [throughput.throughput_figure, memory.memory_figure])
def test_rows_without_the_flag_are_filled(tmp_path, build):
    run = make_run(tmp_path / "old", [_row(s, s == NOISY_AT, with_flag=False) for s in LENGTHS])
    rows = load_report_data([run]).rows
    assert not rows["noisy"].any() and set(rows["noise_note"]) == {""}
    fig = build(rows)
    for t in fig["data"]:
        if t["meta"]["role"] == "line":
            # one symbol for the line (the implementation's), no per-point list
            assert t["marker"]["symbol"] == impl_symbol("bpt"), "no per-point symbols"


def test_normalize_fills_missing_flag():
    frame = normalize(pd.DataFrame([{"noisy": None}, {"noisy": True, "noise_note": "x"}, {}]))
    assert frame["noisy"].tolist() == [False, True, False]
    assert frame["noise_note"].tolist() == ["", "x", ""]
