"""A report a person can read at a glance: fixed colours, readable log ticks, FLOP/s units that
fit the data, and the summary of winners at the top."""

from __future__ import annotations

import math
import re

import pytest

from harness.case import Case
from harness.report import memory, throughput, write_report
from harness.report.common import IMPL_COLOR, FigureSpec, impl_colors, log_axis, tick_label
from harness.report.data import load_report_data
from harness.report.summary import summary_html, summary_lines
from tests.helpers.synthetic_report import write_triples
from tests.helpers.synthetic_runs import make_run, ok_row


def _rows(impls, lens=(1024, 2048), phases=("fwd",), tflops=None):
    """ok rows of `impls` on full-mask float32 cases at `lens`: impl i takes (i+1)·S/1024 ms and
    (len(impls)-i) MiB, so the first is slowest and the last leanest."""
    out = []
    for s in lens:
        case = Case(seq_len=s, dtype="float32")
        for i, impl in enumerate(impls):
            t = (i + 1) * s / 1024
            row = ok_row(case=case.name, impl=impl, phase=phases[0], time_ms=[t] * 5,
                         peak_mem_bytes=(len(impls) - i) << 20) | case.to_dict()  # fmt: skip
            row |= {"time_ms_p20": t, "time_ms_p80": t, "tokens_per_s": s / t * 1e3,
                    "tflops": (tflops if tflops is not None else 1e-3 * s) / (i + 1)}  # fmt: skip
            out.append(row)
    return out


def _line_colors(fig):
    return {t["name"]: t["line"]["color"] for t in fig["data"] if t["meta"]["role"] == "line"}


# --- 1. colours fixed per implementation -----------------------------------------------------


def test_an_implementation_keeps_its_colour_across_reports(tmp_path):
    one = load_report_data([make_run(tmp_path / "a", _rows(["flex", "naive", "zz_plugin"]))])
    others = ["bpt", "flex", "sdpa_flash", "zz_plugin", "aa_other"]
    two = load_report_data([make_run(tmp_path / "b", _rows(others))])
    c1, c2 = (_line_colors(throughput.throughput_figure(d.rows)) for d in (one, two))
    assert c1["flex"] == c2["flex"] == IMPL_COLOR["flex"]
    assert c1["zz_plugin"] == c2["zz_plugin"]  # an unknown name: hashed, the same everywhere
    m1, m2 = (_line_colors(memory.memory_figure(d.rows)) for d in (one, two))
    assert m1["flex"] == m2["flex"] == c1["flex"]
    assert impl_colors(["flex"])["flex"] == impl_colors(["naive", "flex", "x"])["flex"]


def test_the_fixed_colours_never_collide():
    assert len(set(IMPL_COLOR.values())) == len(IMPL_COLOR)


# --- 2. log axes with readable ticks ---------------------------------------------------------


def test_four_decades_get_a_tick_per_decade():
    props = log_axis([0.01, 0.5, 3.0, 100.0])
    assert props["dtick"] == 1
    assert props["tickformat"] == "~g"  # 0.01, not 10m
    assert log_axis([2e3, 5e7])["tickformat"] == "~s"  # 1k, 10M


def test_half_a_decade_is_labelled_in_full():
    props = log_axis([0.012, 0.02, 0.038])  # 0.5 decade
    assert props.get("dtick") not in ("D1", "D2") and "dtick" not in props
    vals, text = props["tickvals"], props["ticktext"]
    inside = [v for v in vals if 0.012 <= v <= 0.038]
    assert len(inside) >= 2
    for v, label in zip(vals, text, strict=True):  # every label is the value, never a bare digit
        assert float(label) == pytest.approx(v)
    assert "0.02" in text and "2" not in text
    narrow = log_axis([2.5, 4.5])  # 1-2-5 leaves none inside: every digit
    assert {3.0, 4.0} <= set(narrow["tickvals"]) and "3" in narrow["ticktext"]
    assert log_axis([100.0, 101.0]) == {"tickformat": "~g"}  # plotly's linear ticks, in full
    assert log_axis([math.nan, -1.0, None]) == {}


def test_tick_labels_are_si_from_a_thousand():
    assert [tick_label(v) for v in (0.01, 0.5, 200, 2000, 1e7, 5e9)] == [
        "0.01", "0.5", "200", "2k", "10M", "5G"]  # fmt: skip


def test_figures_set_readable_ticks_on_their_log_axes(tmp_path):
    lens = (256, 1024, 4096, 16384, 65536)
    data = load_report_data([make_run(tmp_path / "r", _rows(["naive", "flex"], lens=lens))])
    fig = memory.memory_figure(data.rows)  # 1..2 MiB: under a decade
    y = fig["layout"]["yaxis"]
    assert y["type"] == "log" and y.get("dtick") not in ("D1", "D2")
    assert "ticktext" in y or "tickformat" in y
    fig = throughput.throughput_figure(data.rows)  # FLOP/s ∝ S: 2.7 decades; tokens/s flat
    spans = {o["value"]: o["relayout"]["yaxis"] for o in fig["controls"][-1]["options"]}
    assert spans["tflops"]["dtick"] == 1 and fig["layout"]["yaxis"]["dtick"] == 1
    assert "dtick" not in spans["tokens_per_s"]  # each metric its own ticks on the shared axes
    assert spans["tokens_per_s"]["domain"] == fig["layout"]["yaxis"]["domain"]
    assert spans["tokens_per_s"]["title"]["text"] == "tokens/s"
    spec = FigureSpec("t", 300)
    spec.grid([[""]])
    spec.add({"x": [1, 10], "y": [1e-3, 10.0]})
    assert spec.to_dict()["layout"]["yaxis"]["dtick"] == 1  # 4 decades


def test_a_builders_own_ticks_are_kept():
    spec = FigureSpec("t", 300)
    spec.grid([[""]])
    spec.update_axes("y", tickformat=".1e")
    spec.add({"x": [1, 10], "y": [1e-3, 10.0]})
    assert "dtick" not in spec.to_dict()["layout"]["yaxis"]


# --- 3. FLOP/s units from the data -----------------------------------------------------------


def test_throughput_reads_gflops_when_tflops_would_be_tiny(tmp_path):
    slow = load_report_data([make_run(tmp_path / "slow", _rows(["naive", "flex"], tflops=0.05))])
    fig = throughput.throughput_figure(slow.rows)
    assert "GFLOP/s" in fig["layout"]["title"]["text"]
    assert fig["layout"]["yaxis"]["title"]["text"] == "GFLOP/s"
    flex = [t for t in fig["data"] if t["meta"]["role"] == "line" and t["name"] == "flex"
            and t["meta"]["controls"]["metric"] == "tflops"]  # fmt: skip
    assert flex[0]["y"] == pytest.approx([25.0, 25.0])  # 0.05 / 2 TFLOP/s = 25 GFLOP/s
    assert "GFLOP/s: %{y" in flex[0]["hovertemplate"]
    option = next(o for o in fig["controls"][-1]["options"] if o["value"] == "tflops")
    assert option["label"] == "GFLOP/s"
    fast = load_report_data([make_run(tmp_path / "fast", _rows(["naive", "flex"], tflops=50.0))])
    fig = throughput.throughput_figure(fast.rows)
    assert "TFLOP/s" in fig["layout"]["title"]["text"]
    assert fig["layout"]["yaxis"]["title"]["text"] == "TFLOP/s"
    assert throughput.flop_unit([0.5, 0.9, 2.0]) == ("GFLOP/s", 1e3)
    assert throughput.flop_unit([0.5, 1.0, 2.0]) == ("TFLOP/s", 1.0)


# --- 4. the summary at the top ---------------------------------------------------------------


def test_summary_names_the_fastest_and_leanest_with_the_runner_up(tmp_path):
    rows = _rows(["naive", "chunked", "flex"], phases=("fwd",))
    data = load_report_data([make_run(tmp_path / "r", rows)])
    lines = summary_lines(data.rows)
    assert [(s.phase, s.length) for s in lines] == [("fwd", 1024), ("fwd", 2048)]
    for s in lines:
        assert (s.fastest.impl, s.fastest.runner_up) == ("naive", "chunked")
        assert s.fastest.ratio == pytest.approx(2.0)
        assert (s.leanest.impl, s.leanest.runner_up) == ("flex", "chunked")
        assert s.leanest.ratio == pytest.approx(2.0)
    text = summary_html(data.rows)
    assert text.count('data-impl="naive"') == 2 and "2.00× vs chunked" in text


def test_summary_on_a_synthetic_run_sits_above_the_figures(tmp_path):
    triples = [(Case(seq_len=s, dtype="bfloat16", causal=c), impl, phase)
               for s in (512, 1024) for c in (False, True) for phase in ("fwd", "bwd")
               for impl in ("naive", "chunked", "sdpa_flash", "<b>evil</b>")]  # fmt: skip
    run = write_triples(tmp_path, "syn", [t for t in triples if t[1] != "<b>evil</b>"])
    data = load_report_data([run])
    lines = summary_lines(data.rows)
    assert len(lines) == 2 * 2 * 2  # length × mask × phase
    assert {s.fastest.impl for s in lines} == {"sdpa_flash"}  # the synthetic speeds: flash wins
    assert {s.case for s in lines} == {"full", "causal"}
    assert lines[0].phase == "fwd" and lines[-1].phase == "bwd"
    page = write_report([run], tmp_path / "report.html").read_text()
    assert page.index('id="summary"') < page.index('id="sec-throughput"')


def test_summary_escapes_names_and_skips_lone_implementations(tmp_path):
    evil = "<script>x()</script>"
    rows = _rows(["naive", evil])
    data = load_report_data([make_run(tmp_path / "r", rows)])
    text = summary_html(data.rows)
    assert evil not in text and "&lt;script&gt;" in text
    lone = load_report_data([make_run(tmp_path / "lone", _rows(["naive"]))])
    assert summary_html(lone.rows) == ""
    assert not re.search(r"<(?!/?(section|h2|p|div|table|thead|tbody|tr|th|td|b|span)\b)", text)
