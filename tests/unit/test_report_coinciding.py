"""Lines that coincide stay distinguishable: fixed symbols and dashes per implementation, and
staggered marker sizes where points overlap (issue 14; the browser test checks the drawn page)."""

from __future__ import annotations

from harness.case import Case
from harness.report import memory
from harness.report.common import IMPL_STYLE, impl_dash, impl_symbol, stagger_coinciding
from harness.report.data import load_report_data
from tests.helpers.synthetic_runs import make_run, ok_row, samples


def _line(name: str, ys: list[float], controls: dict | None = None) -> dict:
    return {"x": [1, 2, 3], "y": ys, "mode": "lines+markers", "xaxis": "x", "yaxis": "y",
            "marker": {"size": 7}, "line": {"width": 2}, "name": name,
            "meta": {"role": "line", "controls": controls or {}}}  # fmt: skip


def test_styles_are_fixed_and_differ_for_kernels_that_often_coincide():
    assert impl_symbol("bpt") != impl_symbol("sdpa_flash") and impl_dash("bpt") != "solid"
    assert impl_symbol("naive") != impl_symbol("sdpa_math")
    attention = [k for k in IMPL_STYLE if not k.startswith(("decode_", "xformers"))
                 and not k.endswith("_layer")]  # fmt: skip
    assert len({IMPL_STYLE[k] for k in attention}) == len(attention)
    assert impl_symbol("my_kernel") == impl_symbol("my_kernel")  # hashed, stable
    assert all(s not in ("x", "diamond", "circle-x") for s, _ in IMPL_STYLE.values())


def test_stagger_rings_the_lower_trace_only_where_points_coincide():
    a = _line("a", [10.0, 20.0, 30.0])
    b = _line("b", [10.0, 20.1, 99.0])  # same at x=1, within 2% at x=2, apart at x=3
    c = _line("c", [10.0, 20.0, 30.0], controls={"phase": "bwd"})  # another control: not drawn
    assert stagger_coinciding([a, b, c]) == 1
    assert a["marker"]["size"] == [11, 11, 7] and a["line"]["width"] > 2
    assert b["marker"] == {"size": 7} and c["marker"] == {"size": 7}


def test_memory_figure_two_kernels_with_equal_memory_stay_apart(tmp_path):
    case = Case(seq_len=1024)
    rows = [ok_row(case=case.name, impl=impl, time_ms=samples(t, 0.01, seed=1),
                   peak_mem_bytes=64 << 20) | case.to_dict()
            for impl, t in (("bpt", 9.0), ("sdpa_flash", 4.0))]  # fmt: skip
    data = load_report_data([make_run(tmp_path / "r", rows)])
    fig = memory.memory_figure(data.rows)
    lines = {t["name"]: t for t in fig["data"] if t["meta"]["role"] == "line"}
    assert lines["bpt"]["y"] == lines["sdpa_flash"]["y"]
    assert lines["bpt"]["marker"]["symbol"] != lines["sdpa_flash"]["marker"]["symbol"]
    assert lines["bpt"]["line"]["dash"] != lines["sdpa_flash"]["line"]["dash"]
    first, second = sorted(lines.values(), key=fig["data"].index)
    assert first["marker"]["size"][0] > second["marker"].get("size", 7)
