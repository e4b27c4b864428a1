"""Every figure draws an implementation in its one fixed style (colour, marker, dash: IMPL_STYLE)
with readable log ticks, the figures made outside the facet grid (analytic model, history) too;
the throughput figure draws the rows of runs on P > 1 devices instead of dropping them."""

from __future__ import annotations

import pytest

from harness.case import Case
from harness.regress.history import flag_history, load_history
from harness.report import models, throughput
from harness.report.adopted import adopt
from harness.report.common import hollow, impl_color, impl_dash, impl_symbol
from harness.report.data import load_report_data
from harness.report.history_figure import history_figure
from tests.helpers.synthetic_runs import make_run, ok_row, samples


def _style(trace):
    symbol = trace["marker"]["symbol"]
    return trace["marker"]["color"], symbol, trace.get("line", {}).get("dash")


def _readable(axis):
    """A log axis that plotly will not label with bare digits ("5, 2, 0.01, 5, 2")."""
    assert axis["type"] == "log"
    assert axis.get("dtick") not in ("D1", "D2")
    if "ticktext" in axis:
        for value, label in zip(axis["tickvals"], axis["ticktext"], strict=True):
            assert label.endswith(("k", "M", "G", "T")) or float(label) == pytest.approx(value)
    else:
        assert axis.get("dtick") == 1 or "tickformat" in axis


# --- 1. the analytic model's figures ----------------------------------------------------------


def _record(impl, phase, seq_len, measured, calibrated=False):
    return {"impl": impl, "phase": phase, "seq_len": seq_len, "case": f"attn-s{seq_len}",
            "measured_mem_bytes": measured, "predicted_mem_bytes": measured * 1.05,
            "mem_ratio": 1.05, "calibrated": calibrated}  # fmt: skip


def test_model_scatter_draws_each_implementation_in_its_fixed_style():
    impls = (
        "naive",
        "chunked",
        "bpt",
        "sdpa_math",
        "sdpa_flash",
        "sdpa_efficient",
        "xformers",
        "flex",
        "ring",
        "flash_attn2",
        "flash_attn3",
        "xformers_cutlass",
    )  # more than a colour cycle, all with fixed colours
    records = [_record(impl, phase, s, (i + 1) * s * 1e3, calibrated=s == 512)
               for i, impl in enumerate(impls) for phase in ("fwd", "fwd_bwd")
               for s in (512, 1024, 2048)]  # fmt: skip
    fig = models.predicted_vs_measured_figure(records)
    points = [t for t in fig["data"] if t["meta"]["role"] == "line"]
    assert len(points) == 2 * len(impls)
    for t in points:
        impl = t["meta"]["series"]
        assert t["name"] == impl and t["marker"]["color"] == impl_color(impl)
        symbol = impl_symbol(impl)
        assert t["marker"]["symbol"] == [hollow(symbol), symbol, symbol]  # calibrated: hollow
    fwd = [t for t in points if t["meta"]["controls"] == {"phase": "fwd"}]
    assert len({t["marker"]["color"] for t in fwd}) == len(impls)  # no recycled colour
    assert [o["value"] for o in fig["controls"][0]["options"]] == ["fwd", "fwd_bwd"]
    _readable(fig["layout"]["xaxis"]), _readable(fig["layout"]["yaxis"])
    assert models.predicted_vs_measured_figure([]) is None


def test_projection_draws_each_model_implementation_in_its_fixed_style():
    fig = models.projection_figure(max_p=64)
    lines = [t for t in fig["data"] if t["meta"]["role"] == "line"]
    devices = [o["value"] for o in fig["controls"][0]["options"]]
    assert fig["controls"][0]["name"] == "device" and len(devices) > 1
    assert len(lines) == len(devices) * len(models.MODEL_IMPL_STYLE)
    styles = {}
    for t in lines:
        style = models.MODEL_IMPL_STYLE[t["name"]]
        expected = (impl_color(style), impl_symbol(style), impl_dash(style))
        assert (t["line"]["color"], t["marker"]["symbol"], t["line"]["dash"]) == expected
        styles.setdefault(t["name"], set()).add(expected)
    assert all(len(s) == 1 for s in styles.values())  # one style per implementation on any device
    assert len({s.pop()[0] for s in styles.values()}) == len(models.MODEL_IMPL_STYLE)
    assert fig["layout"]["xaxis"]["ticktext"][:3] == ["1", "2", "4"]
    _readable(fig["layout"]["yaxis"])
    paper = [t for t in fig["data"] if t["meta"]["role"] == "paper"]
    assert len(paper) == 1 and paper[0]["meta"]["controls"] == {"device": models.PAPER_DEVICE}
    assert paper[0]["mode"] == "markers" and paper[0]["marker"]["color"] == impl_color("ring")


# --- 2. the history figure --------------------------------------------------------------------


def _nights(root, n=5):
    for i in range(n):
        rows = [
            ok_row(case="attn-a", impl="chunked", time_ms=samples(10 + i, 0.01, seed=i)),
            ok_row(case="attn-b", impl="chunked", time_ms=samples(30, 0.01, seed=i)),
            ok_row(case="attn-a", impl="sdpa_flash", time_ms=samples(15, 0.01, seed=i)),
        ]
        make_run(root / f"night{i}", rows, utc_time=f"2026-01-0{i + 1}T03:00:00+00:00",
                 commit=f"c{i}")  # fmt: skip


def test_history_lines_take_the_fixed_styles_and_the_time_axis_readable_ticks(tmp_path):
    _nights(tmp_path)
    fig = history_figure(flag_history(load_history(tmp_path))).to_dict()
    lines = {t["name"]: t for t in fig["data"] if t["mode"] == "lines+markers"}
    assert set(lines) == {"chunked fwd attn-a", "chunked fwd attn-b", "sdpa_flash fwd attn-a"}
    for name, t in lines.items():
        impl = name.split()[0]
        assert t["line"]["color"] == t["marker"]["color"] == impl_color(impl)
        assert t["marker"]["symbol"] == impl_symbol(impl)
    assert lines["chunked fwd attn-a"]["line"]["dash"] == impl_dash("chunked")
    assert lines["sdpa_flash fwd attn-a"]["line"]["dash"] == impl_dash("sdpa_flash")
    assert lines["chunked fwd attn-b"]["line"]["dash"] != impl_dash("chunked")  # its next dash
    y = fig["layout"]["yaxis"]  # 10..30 ms: half a decade, labelled in full
    _readable(y)
    assert "ticktext" in y and {"10", "20"} <= set(y["ticktext"])
    adopted = adopt(history_figure(flag_history(load_history(tmp_path))))
    assert adopted["layout"]["yaxis"]["ticktext"] == y["ticktext"]  # the report section's too


def test_adopted_figures_get_readable_log_ticks():
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[1, 2, 4], y=[0.012, 0.02, 0.038]))
    fig.update_layout(xaxis={"type": "log"}, yaxis={"type": "log"})
    spec = adopt(fig)
    _readable(spec["layout"]["yaxis"])
    assert "0.02" in spec["layout"]["yaxis"]["ticktext"]
    assert "ticktext" in spec["layout"]["xaxis"]
    fig.update_layout(yaxis={"tickformat": ".1e"})  # a figure's own ticks are kept
    assert "ticktext" not in adopt(fig)["layout"]["yaxis"]


# --- 3. throughput on several devices ---------------------------------------------------------


def _rows(runs, lens=(1024, 2048, 4096)):
    """ok rows of (impl, world_size) on full-mask float32 cases at `lens`."""
    out = []
    for s in lens:
        for impl, ws in runs:
            case = Case(seq_len=s, world_size=ws)
            t = s / 1024 / ws
            row = ok_row(case=case.name, impl=impl, time_ms=[t] * 5) | case.to_dict()
            row |= {"time_ms_p20": t * 0.95, "time_ms_p80": t * 1.05, "tflops": 1e-3 * s * ws,
                    "tokens_per_s": s / t * 1e3}  # fmt: skip
            out.append(row)
    return out


def _drawn(fig, metric="tflops"):
    return [t for t in fig["data"] if t["meta"]["role"] in ("line", "multi_device")
            and t["meta"]["controls"]["metric"] == metric]  # fmt: skip


def test_throughput_draws_ring_on_two_devices_as_its_own_line(tmp_path):
    runs = [("bpt", 1), ("ring", 1), ("ring", 2)]
    rows = _rows(runs)
    data = load_report_data([make_run(tmp_path / "r", rows)])
    fig = throughput.throughput_figure(data.rows)
    drawn = {t["name"]: t for t in _drawn(fig)}
    assert set(drawn) == {"bpt", "ring", "ring P=2"}
    assert sum(len(t["x"]) for t in drawn.values()) == len(rows)  # no row dropped
    two = drawn["ring P=2"]
    assert two["meta"]["role"] == "multi_device" and two["x"] == [1024, 2048, 4096]
    assert two["y"] == pytest.approx([2.048, 4.096, 8.192])  # TFLOP/s: 1e-3·S·P
    assert two["line"]["color"] == drawn["ring"]["line"]["color"] == impl_color("ring")
    assert two["line"]["dash"] != drawn["ring"]["line"]["dash"] == impl_dash("ring")
    assert {t["meta"]["role"] for t in _drawn(fig, "tokens_per_s")} == {"line", "multi_device"}
    bands = [t for t in fig["data"] if t["meta"]["role"] == "multi_device_band"]
    assert len(bands) == 2  # one per metric
    note = throughput.build(data).note
    assert "ring P=2" in note and "P devices" in note


def test_a_run_only_on_two_devices_still_gets_a_throughput_figure(tmp_path):
    data = load_report_data([make_run(tmp_path / "r", _rows([("ring", 2)]))])
    fig = throughput.throughput_figure(data.rows)
    assert fig is not None and {t["name"] for t in _drawn(fig)} == {"ring P=2"}
