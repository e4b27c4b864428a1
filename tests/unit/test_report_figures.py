"""Report figures are pure functions of the rows: checked on synthetic runs, no browser."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from harness.case import Case
from harness.report import accuracy, blocks, comparison, memory, scaling, throughput
from harness.report.data import load_report_data, normalize
from harness.report.page import default_traces, figure_json
from harness.suite import load_suite
from tests.helpers.synthetic_report import write_synthetic_run
from tests.helpers.synthetic_runs import IMPL_FACTS, impl_facts, make_run, ok_row

SUITES = Path(__file__).resolve().parents[2] / "suites"


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


def _cases(**axes) -> list[Case]:
    keys = list(axes)
    return [Case(**dict(zip(keys, values, strict=True)))
            for values in itertools.product(*axes.values())]  # fmt: skip


def _sweep_rows(cases: list[Case], phases: list[str], impl: str) -> list[dict]:
    """ok rows of `impl` on every case × phase, with the case's axes and `impl`'s facts."""
    return [ok_row(case=c.name, impl=impl, phase=phase, peak_mem_bytes=(c.block_size or 1) << 10)
            | c.to_dict() for c in cases for phase in phases]  # fmt: skip


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


def _line(impl: str, **facts) -> dict:
    """One memory line of `impl` (two lengths) as `memory.guide` gets it, with the given facts."""
    base = {"status": "ok", "input_bytes": 100.0, "model_peak_mem_bytes": None,
            "memory_exponent": None} | facts  # fmt: skip
    line = pd.DataFrame([base | {"impl": impl, "seq_len": s, "peak_mem_bytes": 100.0 + w}
                         for s, w in ((1000, 50.0), (2000, 1.0))])  # fmt: skip
    return {c: line[c].to_numpy() for c in line}


def test_memory_guide_exponent_comes_from_the_rows():
    lens, expected = memory.guide(_line("naive", **impl_facts("naive")))
    assert lens == [1000, 2000]
    assert expected == pytest.approx([150.0, 200.0 + 50.0 * 4])  # S²
    assert memory.guide(_line("bpt", **impl_facts("bpt")))[1] == pytest.approx(
        [150.0, 200.0 + 50.0 * 2]  # linear
    )
    # The name means nothing: a plugin's kernel declaring 2 gets S², naive declaring none none.
    assert memory.guide(_line("plugin_kernel", memory_exponent=2))[1][1] == pytest.approx(400.0)
    assert memory.guide(_line("naive")) is None  # a row written before the facts existed
    assert memory.guide(_line("naive", memory_exponent=float("nan"))) is None


def test_memory_figure_draws_guides_only_for_lines_with_declared_facts(tmp_path):
    rows = [
        ok_row(case=c.name, impl=impl, peak_mem_bytes=(c.seq_len // 1024) ** 2 << 20) | c.to_dict()
        for c in _cases(seq_len=(1024, 2048))
        for impl in ("naive", "bpt")
    ]
    rows += [{k: v for k, v in r.items() if k not in IMPL_FACTS["naive"]} | {"impl": "old"}
             for r in rows if r["impl"] == "naive"]  # fmt: skip
    data = load_report_data([make_run(tmp_path / "run", rows)])
    fig = memory.memory_figure(data.rows)
    guides = {t["name"]: t["y"] for t in fig["data"] if t["meta"]["role"] == "model"}
    assert set(guides) == {"naive (model)", "bpt (model)"}
    mib = 1 << 20
    assert guides["naive (model)"][1] == pytest.approx(4 * mib)  # 1 MiB at S, ×4 at 2S
    assert guides["bpt (model)"][1] == pytest.approx(2 * mib)  # ×2


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


def test_a_bpt_only_block_size_sweep_gets_a_block_figure(tmp_path):
    suite = load_suite(SUITES / "bpt_blocks.yaml")
    assert suite.implementations == ["bpt"]
    rows = _sweep_rows(suite.cases(), list(suite.sweep.phase), "bpt")
    data = load_report_data([make_run(tmp_path / "run", rows)])
    fig = blocks.block_figure(data.rows)
    assert fig is not None
    assert {t["meta"]["series"] for t in lines(fig)} == {"bpt"}
    sizes = sorted({c.block_size for c in suite.cases()})
    assert all(sorted(t["x"]) == sizes for t in lines(fig))


def test_no_block_figure_without_the_declared_fact(tmp_path):
    """Rows of an older harness carry no `uses_block_size`; nor do kernels that ignore blocks."""
    cases = _cases(seq_len=(1024,), block_size=(128, 256, 512))
    old = [{k: v for k, v in r.items() if k not in IMPL_FACTS["bpt"]}
           for r in _sweep_rows(cases, ["fwd"], "bpt")]  # fmt: skip
    ignores = _sweep_rows(cases, ["fwd"], "sdpa_flash")
    assert "uses_block_size" not in old[0] and ignores[0]["uses_block_size"] is False
    data = load_report_data([make_run(tmp_path / "run", old + ignores)])
    assert blocks.block_figure(data.rows) is None


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


def test_comparison_flags_a_clear_regression_only(tmp_path):
    # The ring is compare's verdict, which reads raw samples: slow one row's samples 2x.
    from harness.regress.compare import compare_paths

    t = [10.0 + 0.01 * i for i in range(10)]
    impls = ("naive", "chunked", "sdpa_math")
    base = make_run(tmp_path / "b", [ok_row(impl=i, time_ms=t) for i in impls])
    slow = [ok_row(impl=i, time_ms=[x * (2 if i == "chunked" else 1) for x in t]) for i in impls]
    frame = comparison.verdict_frame([compare_paths(base, make_run(tmp_path / "c", slow))])
    rings = comparison.ringed(frame)
    assert rings["regression"] == {("c", ok_row()["case"], "chunked", "fwd")}
    assert rings["improvement"] == set()
    fig = comparison.comparison_figure(frame)
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
