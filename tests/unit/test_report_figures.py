"""Report figures are pure functions of the rows: checked on synthetic runs, no browser."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.report import accuracy, blocks, comparison, memory, scaling, throughput
from harness.report.data import load_report_data, normalize
from harness.report.page import default_traces, figure_json
from harness.report.synthetic import write_synthetic_run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """1,200 synthetic rows: 3 dtypes, both masks, 2 block sizes, 3 phases, 8 lengths, ring P>1."""
    root = tmp_path_factory.mktemp("runs")
    return load_report_data([write_synthetic_run(root, 1200)])


def lines(fig, **controls):
    """The `line` traces of a figure, optionally only those matching some control values."""
    return [t for t in fig["data"] if t["meta"]["role"] == "line"
            and all(t["meta"]["controls"].get(k) == v for k, v in controls.items())]  # fmt: skip


def npoints(traces):
    return sum(len(t["x"]) for t in traces)


def test_throughput_has_one_point_per_ok_single_device_row(data):
    rows = data.rows
    ok = rows[(rows["status"] == "ok") & (rows["world_size"] == 1)]
    fig = throughput.throughput_figure(rows)
    assert npoints(lines(fig, metric="tflops")) == len(ok)
    assert npoints(lines(fig, metric="tokens_per_s")) == len(ok)
    for t in lines(fig):
        assert t["x"] == sorted(t["x"]), "lines run left to right"
    names = {c["name"] for c in fig["controls"]}
    assert names == {"phase", "metric", "slice"}  # block_size varies in this run


def test_throughput_band_brackets_the_median(data):
    fig = throughput.throughput_figure(data.rows)
    bands = [t for t in fig["data"] if t["meta"]["role"] == "band"]
    assert bands
    for band, line in zip(bands, [t for t in fig["data"] if t["meta"]["role"] == "line"],
                          strict=True):  # fmt: skip
        n = len(line["x"])
        hi, lo = band["y"][:n], band["y"][n:][::-1]
        assert all(a >= y >= b for a, y, b in zip(hi, line["y"], lo, strict=True))


def test_memory_marks_where_a_line_stops(data):
    rows = data.rows
    fig = memory.memory_figure(rows)
    fails = [t for t in fig["data"] if t["meta"]["role"] == "fail"]
    oom_rows = rows[(rows["status"] == "oom") & (rows["world_size"] == 1)]
    assert sum(len(t["x"]) for t in fails if t["meta"]["status"] == "oom") == len(oom_rows)
    timeouts = rows[(rows["status"] == "timeout") & (rows["world_size"] == 1)]
    assert sum(len(t["x"]) for t in fails if t["meta"]["status"] == "timeout") == len(timeouts)
    # An OOM marker sits at the height of the last ok point before it on the same line.
    naive = [t for t in lines(fig) if t["meta"]["series"] == "naive"][0]
    ctl = naive["meta"]["controls"]
    marker = [t for t in fails if t["meta"]["status"] == "oom" and t["meta"]["controls"] == ctl
              and t["xaxis"] == naive["xaxis"]][0]  # fmt: skip
    assert min(marker["x"]) > max(naive["x"])
    assert naive["y"][-1] in marker["y"]


def test_memory_guide_is_quadratic_for_naive_and_linear_for_blockwise():
    base = {"status": "ok", "input_bytes": 100.0, "model_peak_mem_bytes": None}
    line = pd.DataFrame([base | {"impl": "naive", "seq_len": s, "peak_mem_bytes": 100.0 + w}
                         for s, w in ((1000, 50.0), (2000, 1.0))])  # fmt: skip
    arrays = {c: line[c].to_numpy() for c in line}
    lens, expected = memory.guide(arrays)
    assert lens == [1000, 2000]
    assert expected == pytest.approx([150.0, 200.0 + 50.0 * 4])
    arrays["impl"] = arrays["impl"].copy()
    arrays["impl"][:] = "chunked"
    assert memory.guide(arrays)[1] == pytest.approx([150.0, 200.0 + 50.0 * 2])
    arrays["impl"][:] = "someone_elses_kernel"
    assert memory.guide(arrays) is None


def test_accuracy_flags_errors_above_twice_naive(data):
    fig = accuracy.accuracy_figure(data.rows)
    flagged = [t for t in fig["data"] if t["meta"]["role"] == "flag"]
    ok = accuracy.error_rows(data.rows)
    over = accuracy.over_tolerance(ok)
    assert over.any() and not over.all()
    assert set(ok[over]["impl"]) == {"sdpa_math"}  # the synthetic run makes it 2.6× naive
    assert sum(len(t["x"]) for t in flagged) == int(over.sum())
    assert npoints(lines(fig)) == len(ok)
    threshold = [t for t in fig["data"] if t["meta"]["role"] == "threshold"]
    assert threshold and all(y > 0 for t in threshold for y in t["y"])


def test_block_section_only_for_blockwise_implementations(data):
    fig = blocks.block_figure(data.rows)
    assert fig is not None
    assert {t["meta"]["series"].split()[0] for t in lines(fig)} == {"chunked"}
    assert all(len(set(t["x"])) >= 2 for t in lines(fig))


def test_scaling_appears_only_with_several_devices(data):
    fig = scaling.scaling_figure(data.rows)
    assert fig is not None
    eff = [t for t in lines(fig) if t["meta"]["metric"] == "efficiency"]
    assert eff and all(t["x"][0] == 1 and t["y"][0] == pytest.approx(1.0) for t in eff)
    # synthetic ring time is t1 / (0.8 P) ± 5 %: strong-scaling efficiency ≈ 0.8
    assert all(y == pytest.approx(0.8, rel=0.12) for t in eff for y in t["y"][1:])
    mem = [t for t in lines(fig) if t["meta"]["metric"] == "rank_mem_bytes"]
    assert mem and all(mem_t["y"][-1] < mem_t["y"][0] for mem_t in mem)  # per-rank memory falls
    single = data.rows[data.rows["world_size"] == 1]
    assert scaling.scaling_figure(single) is None


def test_comparison_flags_a_clear_regression_only(data):
    cand = data.rows.copy()
    slow = cand.index[cand["status"] == "ok"][0]
    for col in ("time_ms_median", "time_ms_p20", "time_ms_p80"):
        cand.loc[slow, col] *= 2
    both = comparison.compare_rows(cand, data.rows)
    assert both["regression"].sum() == 1
    assert both.loc[both["regression"], "case"].iloc[0] == cand.loc[slow, "case"]
    assert not both["improvement"].any()
    fig = comparison.comparison_figure(cand, data.rows)
    assert [len(t["x"]) for t in fig["data"] if t["meta"]["role"] == "flag"] == [1]


def test_strings_from_results_are_escaped_in_figures(data):
    rows = data.rows.copy()
    rows.loc[rows.index[0], "impl"] = "<img src=x onerror=alert(1)>"
    figs = [throughput.throughput_figure(rows), memory.memory_figure(rows)]
    # What plotly renders as (pseudo-)HTML: trace names, hover text and templates, titles.
    shown = [str(t.get(k, "")) for f in figs for t in f["data"]
             for k in ("name", "text", "hovertemplate")]  # fmt: skip
    shown += [a["text"] for f in figs for a in f["layout"]["annotations"]]
    shown += [f["layout"]["title"]["text"] for f in figs]
    assert not [s for s in shown if "<img" in s]
    assert any("&lt;img src=x" in s for s in shown)
    fail_text = [str(t["text"]) for t in memory.memory_figure(data.rows)["data"]
                 if t["meta"]["role"] == "fail"]  # fmt: skip
    assert not [s for s in fail_text if "<script" in s]
    assert any("&lt;script&gt;window.__pwned" in s for s in fail_text)


def test_default_traces_follow_the_first_option_of_each_control(data):
    fig = throughput.throughput_figure(data.rows)
    shown = default_traces(fig)
    first = {c["name"]: c["options"][0]["value"] for c in fig["controls"]}
    assert shown and len(shown) < len(fig["data"])
    assert all(t["meta"]["controls"][k] == v for t in shown for k, v in first.items())


def test_a_run_with_only_failures_or_no_rows_builds_no_figures():
    row = {"case": "c", "impl": "naive", "phase": "fwd", "status": "error", "reason": "boom",
           "seq_len": 128}  # fmt: skip
    frame = normalize(pd.DataFrame([row]))
    for build in (throughput.throughput_figure, memory.memory_figure, accuracy.accuracy_figure,
                  blocks.block_figure, scaling.scaling_figure):  # fmt: skip
        assert build(frame) is None
        assert build(normalize(pd.DataFrame())) is None


def test_figures_are_plain_json(data):
    fig = memory.memory_figure(data.rows)
    assert json.loads(figure_json(fig))["layout"]["height"] == fig["layout"]["height"]
