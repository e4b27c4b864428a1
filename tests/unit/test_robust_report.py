"""Reports that survive NaN and infinity, repeated run directories and a missing kaleido.

Before issue 12 one inf or NaN in any row made `harness report` fail ("Out of range float values
are not JSON compliant"), `harness report RUN RUN` doubled every row and `--static png` without
kaleido failed after the HTML was written.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.case import Case
from harness.cli import app
from harness.errors import HarnessError
from harness.report import write_report
from harness.report.page import figure_json
from tests.helpers.synthetic_runs import make_run, ok_row

LENGTHS = (256, 512, 1024, 2048)
# (impl, seq_len, field) -> the value a broken kernel or measurement wrote
BROKEN = {
    ("naive", 512, "err_rel_l2"): math.nan,
    ("naive", 1024, "tflops"): math.inf,
    ("chunked", 512, "time_ms_median"): math.inf,
    ("chunked", 1024, "peak_mem_bytes"): math.nan,
    ("chunked", 2048, "err_rel_l2"): math.inf,
    ("ring_demo", 512, "time_ms_median"): math.nan,
    ("ring_demo", 1024, "peak_mem_bytes"): -math.inf,
}


def _row(case: Case, impl: str) -> dict[str, Any]:
    s = case.seq_len
    t = 1e-5 * s * s / case.world_size
    row = ok_row(case=case.name, impl=impl, time_ms=[t * (1 + 0.01 * i) for i in range(6)],
                 peak_mem_bytes=s * 4096 * (case.block_size or 1))  # fmt: skip
    row |= case.to_dict() | {"time_ms_p20": t * 0.99, "time_ms_p80": t * 1.02, "tflops": s / t,
                             "tokens_per_s": s / t * 1e3, "input_bytes": s * 1024}  # fmt: skip
    for field in (f for (i, n, f) in BROKEN if i == impl and n == s):
        row[field] = BROKEN[(impl, s, field)]
    return row


def _broken_rows() -> list[dict[str, Any]]:
    """naive and chunked (two block sizes: a block-size figure) on one device, ring_demo on 1-4
    devices (a scaling figure); the BROKEN fields hold NaN or infinity."""
    rows = []
    for s, bs in itertools.product(LENGTHS, (64, 128)):
        rows.append(_row(Case(seq_len=s, block_size=bs), "chunked"))
        if bs == 64:
            rows.append(_row(Case(seq_len=s, block_size=bs), "naive"))
    for s, p in itertools.product(LENGTHS, (1, 2, 4)):
        rows.append(_row(Case(seq_len=s, world_size=p), "ring_demo"))
    return rows


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "broken", _broken_rows())


def _blocks(page: str) -> dict[str, Any]:
    """Every JSON block of the page, parsed strictly (NaN / Infinity are not JSON)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in the page's JSON")

    found = re.findall(r'<script type="application/json" id="([\w-]+)">(.*?)</script>', page, re.S)
    return {name: json.loads(text, parse_constant=refuse) for name, text in found}


def _numbers(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


@pytest.fixture(scope="module")
def page(broken, tmp_path_factory) -> tuple[str, Any]:
    out = tmp_path_factory.mktemp("report") / "r.html"
    res = CliRunner().invoke(app, ["report", str(broken), "-o", str(out), "--baseline",
                                   str(broken)])  # fmt: skip
    assert res.exit_code == 0, res.output
    text = out.read_text()
    return text, _blocks(text)


def test_a_run_with_nan_and_inf_renders_every_section(page):
    text, blocks = page
    figures = {f["id"].rsplit("-", 1)[0] for f in blocks["figures-data"]}
    assert figures >= {"fig-throughput", "fig-memory", "fig-accuracy", "fig-block_size",
                       "fig-scaling", "fig-comparison"}  # fmt: skip
    assert all(math.isfinite(x) for x in _numbers(blocks["figures-data"]))


def _text(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _non_finite_cells() -> dict[tuple[str, str, str], str]:
    """(case, impl, field) -> how the table must show it, for every BROKEN row."""
    return {(r["case"], r["impl"], f): _text(r[f]) for r in _broken_rows()
            for f in ("err_rel_l2", "tflops", "time_ms_median", "peak_mem_bytes")
            if not math.isfinite(r[f])}  # fmt: skip


def test_the_table_shows_nan_and_inf_as_such(page):
    table = page[1]["table-data"]
    cols = table["columns"]
    cells = {(r[cols.index("case")], r[cols.index("impl")]): r for r in table["rows"]}
    expected = _non_finite_cells()
    assert {"nan", "inf", "-inf"} == set(expected.values())
    for (case, impl, field), text in expected.items():
        assert cells[(case, impl)][cols.index(field)] == text, (case, impl, field)
    finite = [v for r in table["rows"] for c, v in zip(cols, r, strict=True)
              if c == "time_ms_median" and v not in ("nan", "inf")]  # fmt: skip
    assert finite and all(isinstance(v, float) for v in finite)


def test_a_missing_value_is_blank_and_a_held_nan_is_nan(tmp_path):
    from harness.report.data import load_report_data
    from harness.report.table import table_payload

    rows = [ok_row(impl="naive") | {"err_rel_l2": math.nan},
            {k: v for k, v in ok_row(impl="chunked").items() if k != "err_rel_l2"}]  # fmt: skip
    payload = table_payload(load_report_data([make_run(tmp_path / "r", rows)]).rows)
    err = payload["columns"].index("err_rel_l2")
    impl = payload["columns"].index("impl")
    assert {r[impl]: r[err] for r in payload["rows"]} == {"naive": "nan", "chunked": None}


def test_the_header_names_the_fields_that_are_not_finite(page):
    match = re.search(r'<div class="nonfinite" data-rows="(\d+)">([^<]*)</div>', page[0])
    assert match and int(match.group(1)) == len({k[:2] for k in _non_finite_cells()})
    assert "err_rel_l2, peak_mem_bytes, tflops, time_ms_median" in match.group(2)


def test_non_finite_points_are_left_out_of_the_figures(page):
    figs = {f["id"]: f["fig"] for f in page[1]["figures-data"]}

    def xs(fig_id: str, impl: str, **meta: str) -> list[Any]:
        return sorted({x for t in figs[fig_id]["data"] if t["meta"].get("role") == "line"
                       and t["name"].startswith(impl)
                       and all(t["meta"].get(k) == v for k, v in meta.items())
                       for x, y in zip(t["x"], t["y"], strict=True) if y is not None})  # fmt: skip

    assert 512 not in xs("fig-accuracy-0", "naive") and 256 in xs("fig-accuracy-0", "naive")
    tflops = [t for t in figs["fig-throughput-0"]["data"] if t["meta"]["role"] == "line"
              and t["meta"]["controls"]["metric"] == "tflops" and t["name"] == "naive"]  # fmt: skip
    assert tflops and all(1024 not in t["x"] for t in tflops)

    def lines(fig_id: str, metric: str) -> set[str]:
        traces = figs[fig_id]["data"]
        return {t["name"] for t in traces if t["meta"].get("metric") == metric}

    # ring_demo's time is NaN at S=512 on every P, its per-rank peak -inf at S=1024
    assert lines("fig-scaling-0", "time_ms_median") == {"ring_demo S=256", "ring_demo S=1024",
                                                         "ring_demo S=2048"}  # fmt: skip
    assert "ring_demo S=1024" not in lines("fig-scaling-0", "rank_mem_bytes")
    # chunked: time inf at S=512, peak NaN at S=1024 (both block sizes)
    assert "chunked S=512" not in lines("fig-block_size-0", "time_ms_median")
    assert "chunked S=512" in lines("fig-block_size-0", "peak_mem_bytes")
    assert "chunked S=1024" not in lines("fig-block_size-0", "peak_mem_bytes")


def test_compares_verdicts_on_a_non_finite_baseline_are_drawn_as_not_gated(page):
    fig = next(f["fig"] for f in page[1]["figures-data"] if f["id"] == "fig-comparison-0")
    rings = {t["meta"]["flag"]: len(t["x"]) for t in fig["data"] if t["meta"]["role"] == "flag"}
    assert rings == {"ungated": len({k[:2] for k in _non_finite_cells()})}
    assert "orange: not gated" in page[0]


def test_figure_json_turns_any_left_over_non_finite_value_into_null():
    fig = {"data": [{"y": [1.0, math.nan, math.inf, -math.inf]}], "layout": {"x": math.nan}}
    assert json.loads(figure_json(fig)) == {"data": [{"y": [1.0, None, None, None]}],
                                           "layout": {"x": None}}  # fmt: skip


# --- the same run twice ----------------------------------------------------------------------


def _table_rows(html: Path) -> int:
    return len(_blocks(html.read_text())["table-data"]["rows"])


def test_the_same_run_directory_under_any_spelling_is_read_once(tmp_path):
    run = make_run(tmp_path / "run", [ok_row(impl="naive"), ok_row(impl="chunked")])
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    out = tmp_path / "r.html"
    spellings = [str(run), f"{run}/", str(tmp_path / "." / "run"), str(tmp_path / "link")]
    res = CliRunner().invoke(app, ["report", *spellings, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert _table_rows(out) == 2
    assert res.output.count("read once") == 3
    assert write_report([run, tmp_path / "link"], tmp_path / "lib.html")  # the library too
    assert _table_rows(tmp_path / "lib.html") == 2


def test_two_copies_of_one_run_are_refused_in_one_line(tmp_path):
    run = make_run(tmp_path / "run", [ok_row()])
    shutil.copytree(run, tmp_path / "copy")
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(run), str(tmp_path / "copy"), "-o", str(out)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "hold the same run 'run'" in res.output
    assert not out.exists()


# --- --static without kaleido -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_static_without_kaleido_fails_before_anything_is_written(tmp_path, monkeypatch, fmt):
    monkeypatch.setitem(sys.modules, "kaleido", None)  # `import kaleido` raises ImportError
    run = make_run(tmp_path / "run", [ok_row()])
    out = tmp_path / "out" / "r.html"
    res = CliRunner().invoke(app, ["report", str(run), "-o", str(out), "--static", fmt])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and f"--static {fmt} needs the kaleido package" in line
    assert "pip install '.[static]'" in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(HarnessError, match="kaleido"):
        write_report([run], out, static=fmt)
    assert not (tmp_path / "out").exists()
