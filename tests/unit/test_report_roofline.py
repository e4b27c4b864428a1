"""The roofline and decode figures: points from the rows, ceilings from the run's device peaks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.case import Case
from harness.measure.derived import time_fields
from harness.measure.peaks import fractions
from harness.report import SECTIONS, roofline, write_report
from harness.report import decode as decode_report
from harness.report.common import with_lines_and_slices
from harness.report.data import load_report_data, normalize
from harness.report.page import default_traces
from harness.results import RunDir
from harness.rows import SCHEMA_VERSION
from tests.helpers.synthetic_runs import failed_row, impl_facts

PEAKS = {"mem_gbytes_per_s": 2000.0, "tflops_fp32": 20.0, "tflops_low": 300.0,
         "source": "Test GPU datasheet"}  # fmt: skip
MEASURED = {"mem_gbytes_per_s": 25.0, "tflops_fp32": 0.8, "tflops_low": 0.8,
            "source": "measured: copy of 64 MiB"}  # fmt: skip
SPEED = {"naive": 1.0, "sdpa": 3.0}  # ms scale: the time of a row is bytes-and-flops based


def row(case: Case, impl: str, peaks: dict[str, Any] | None, phase: str = "fwd") -> dict[str, Any]:
    """An ok row as the worker writes it: the case's axes, time fields, bw/flops fractions."""
    # a plausible time: memory time at 30% of 2 TB/s plus compute time at 10% of 20 TFLOP/s
    from harness.measure.flops import case_bytes, case_flops

    seconds = case_bytes(case, phase) / 600e9 + case_flops(case, phase) / 2e12
    ms = seconds * 1e3 * SPEED[impl]
    fields = time_fields(case, phase, [ms * f for f in (0.98, 1.0, 1.01, 1.03)])
    fields.pop("time_samples_ms")
    out = {"schema_version": SCHEMA_VERSION, "case": case.name, "impl": impl, "phase": phase,
           "status": "ok", "reason": "", **case.to_dict(), **impl_facts(impl),
           **fields}  # fmt: skip
    return out | fractions(out, peaks)


def write_run(path: Path, rows: list[dict[str, Any]], peaks: dict[str, Any] | None) -> Path:
    provenance: dict[str, Any] = {"device": "cuda", "device_name": "Test GPU",
                                  "utc_time": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    if peaks is not None:
        provenance["device_peaks"] = peaks
    meta = {"run_id": path.name, "suite_name": "synth", "provenance": provenance}
    run = RunDir.create(path, meta, {"cases": [{"name": n} for n in {r["case"] for r in rows}]})
    for r in rows:
        run.append(dict(r, run_id=path.name))
    return path


def attention_rows(peaks: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for dtype in ("float32", "bfloat16"):
        for s in (256, 1024, 4096):
            case = Case(seq_len=s, dtype=dtype, num_heads=4, head_dim=64)
            rows += [row(case, impl, peaks) for impl in SPEED]
    oom = Case(seq_len=16384, dtype="float32", num_heads=4, head_dim=64)
    return [*rows, failed_row(case=oom.name, impl="naive") | oom.to_dict()]


def decode_cases() -> list[Case]:
    return [Case(workload="decode", batch=4, seq_len=k, seqlen_q=1, seqlen_k=k, num_heads=8,
                 num_kv_heads=2, head_dim=64, dtype="bfloat16", page_size=page)
            for k in (1024, 4096, 16384) for page in (None, 16)]  # fmt: skip


def decode_rows(peaks: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [row(case, impl, peaks) for case in decode_cases() for impl in SPEED]


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs") / "attn", attention_rows(PEAKS), PEAKS)


@pytest.fixture(scope="module")
def decode_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs") / "dec", decode_rows(PEAKS), PEAKS)


def traces(fig: dict[str, Any], role: str, **meta: Any) -> list[dict[str, Any]]:
    return [t for t in fig["data"] if t["meta"]["role"] == role
            and all(t["meta"].get(k) == v for k, v in meta.items())]  # fmt: skip


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=2e-5)  # figures keep 6 significant digits


def test_roofs_carry_the_device_ceilings(attention_run):
    section = roofline.build(load_report_data([attention_run]))
    fig = section.figures[0]
    memory = traces(fig, "roof", roof="memory")
    assert memory
    for t in memory:
        for x, y in zip(t["x"], t["y"], strict=True):
            assert close(y, x * PEAKS["mem_gbytes_per_s"] / 1e3)  # GB/s × FLOP/B, in TFLOP/s
    compute = {t["meta"]["kind"]: t for t in traces(fig, "roof", roof="compute")}
    assert set(compute) == {"fp32", "low"}  # float32 and bfloat16 rows: both roofs, labelled
    for kind, peak in (("fp32", PEAKS["tflops_fp32"]), ("low", PEAKS["tflops_low"])):
        t = compute[kind]
        assert t["y"] == [peak, peak]
        ridge = peak * 1e3 / PEAKS["mem_gbytes_per_s"]
        assert close(t["x"][0], ridge)  # the compute roof starts where the memory roof meets it
        assert f"{peak:g} TFLOP/s" in t["name"]
    assert "float32" in compute["fp32"]["name"] and "fp16/bf16" in compute["low"]["name"]
    assert close(max(max(t["x"]) for t in memory), PEAKS["tflops_low"] * 1e3 / 2000.0)
    assert "Test GPU datasheet" in section.note
    assert "No device ceilings" not in section.note


def test_one_point_per_ok_row_at_its_intensity_and_tflops(attention_run):
    data = load_report_data([attention_run])
    fig = roofline.build(data).figures[0]
    ok = data.rows[data.rows["status"] == "ok"]
    points = {(t["name"], x, y) for t in traces(fig, "line")
              for x, y in zip(t["x"], t["y"], strict=True)}  # fmt: skip
    assert sum(len(t["x"]) for t in traces(fig, "line")) == len(ok) == 12
    for r in ok.itertuples():
        assert any(name == r.impl and close(x, r.arith_intensity) and close(y, r.tflops)
                   for name, x, y in points), r.case  # fmt: skip
    symbols = {s for t in traces(fig, "line") for s in t["marker"]["symbol"]}
    assert symbols == {"circle", "square"}  # float32, bfloat16


def test_only_the_needed_compute_roof_per_dtype(tmp_path):
    rows = [r for r in attention_rows(PEAKS) if r["dtype"] == "float32"]
    fig = roofline.build(load_report_data([write_run(tmp_path / "f32", rows, PEAKS)])).figures[0]
    assert {t["meta"]["kind"] for t in traces(fig, "roof", roof="compute")} == {"fp32"}
    low = row(Case(seq_len=512, dtype="bfloat16", num_heads=4), "sdpa", MEASURED)
    cpu = write_run(tmp_path / "cpu", [*rows, low], MEASURED)
    fig = roofline.build(load_report_data([cpu])).figures[0]
    compute = traces(fig, "roof", roof="compute")  # a measured device: one number for both
    assert [t["meta"]["kind"] for t in compute] == ["fp32+low"]
    assert compute[0]["y"] == [0.8, 0.8]


def test_no_roofs_without_device_peaks(tmp_path):
    run = write_run(tmp_path / "old", attention_rows(None), None)
    section = roofline.build(load_report_data([run]))
    fig = section.figures[0]
    assert not traces(fig, "roof")
    assert sum(len(t["x"]) for t in traces(fig, "line")) == 12
    assert "No device ceilings recorded for this run" in section.note
    # the fraction in the hover is left blank, not made up
    assert all(c[1] is None for t in traces(fig, "line") for c in t["customdata"])


def test_roofline_of_two_runs_names_each_runs_ceilings(attention_run, tmp_path):
    old = write_run(tmp_path / "old", attention_rows(None), None)
    section = roofline.build(load_report_data([attention_run, old]))
    fig = section.figures[0]
    assert {t["meta"]["run_id"] for t in traces(fig, "roof")} == {"attn"}
    assert "Run attn ceilings" in section.note and "No device ceilings recorded for old" in (
        section.note
    )


def test_roofline_plots_decode_under_the_same_roofs(decode_run, attention_run):
    data = load_report_data([attention_run, decode_run])
    fig = roofline.build(data).figures[0]
    controls = {c["name"]: c for c in fig["controls"]}
    assert [o["value"] for o in controls["workload"]["options"]] == ["attention", "decode"]
    ok = data.rows[data.rows["status"] == "ok"]
    assert sum(len(t["x"]) for t in traces(fig, "line")) == len(ok)
    dec = traces(fig, "line")
    dec = [t for t in dec if t["meta"]["controls"]["workload"] == "decode"]
    assert sum(len(t["x"]) for t in dec) == len(decode_cases()) * len(SPEED)
    assert traces(fig, "roof", roof="memory", run_id="dec")
    # the page's first view (each control's first option) has points and roofs
    shown = default_traces(fig)
    assert any(t["meta"]["role"] == "line" for t in shown)
    assert any(t["meta"]["role"] == "roof" for t in shown)


def test_decode_figure_only_for_decode_rows(attention_run, decode_run):
    assert decode_report.build(load_report_data([attention_run])) is None
    section = decode_report.build(load_report_data([decode_run]))
    assert section is not None and section.key == "decode"
    assert "Test GPU datasheet" in section.note


def test_decode_bandwidth_lines_and_fraction_of_peak(decode_run):
    data = load_report_data([decode_run])
    fig = decode_report.build(data).figures[0]
    lines = traces(fig, "line")
    names = {t["name"] for t in lines}
    assert names == {f"{impl} · {cache}" for impl in SPEED for cache in ("contiguous", "paged 16")}
    assert not fig["controls"]  # fwd only, nothing else varies
    bw = {t["name"]: t for t in lines if t["meta"]["metric"] == "gbytes_per_s"}
    frac = {t["name"]: t for t in lines if t["meta"]["metric"] == "fraction"}
    assert set(bw) == set(frac) == names
    for name, t in bw.items():
        assert t["x"] == [1024, 4096, 16384]
        assert frac[name]["yaxis"] == "y2" and t["yaxis"] == "y"
        for gbps, share in zip(t["y"], frac[name]["y"], strict=True):
            assert close(share, gbps / PEAKS["mem_gbytes_per_s"])
    peaks = traces(fig, "peak")
    assert {(t["yaxis"], t["y"][0]) for t in peaks} == {("y", 2000.0), ("y2", 1.0)}
    assert all(t["line"]["dash"] == "dash" for t in peaks)


def test_decode_fraction_from_the_run_peak_where_rows_lack_it(tmp_path):
    rows = [{k: v for k, v in r.items() if k not in ("bw_fraction", "flops_fraction")}
            for r in decode_rows(PEAKS)]  # fmt: skip
    fig = decode_report.build(load_report_data([write_run(tmp_path / "d", rows, PEAKS)]))
    lines = traces(fig.figures[0], "line")
    bw = {t["name"]: t["y"] for t in lines if t["meta"]["metric"] == "gbytes_per_s"}
    for t in (t for t in lines if t["meta"]["metric"] == "fraction"):
        assert all(close(f, g / 2000.0) for f, g in zip(t["y"], bw[t["name"]], strict=True))
    old = decode_report.build(load_report_data([write_run(tmp_path / "o", rows, None)]))
    fig = old.figures[0]
    assert not traces(fig, "peak")
    assert {t["meta"]["metric"] for t in traces(fig, "line")} == {"gbytes_per_s"}
    assert "No peak bandwidth recorded" in old.note


def test_decode_axes_slice_decode_runs_and_nothing_else(attention_run):
    older = normalize(pd.DataFrame([{"case": "x", "impl": "naive", "status": "ok"}]))
    assert older.loc[0, "page_size"] == "contig" and older.loc[0, "cache_dist"] == "fixed"
    rows = load_report_data([attention_run]).rows
    _, slices = with_lines_and_slices(rows, ("seq_len", "dtype", "phase"))
    assert "page_size" not in slices and "cache_dist" not in slices
    ragged = [Case(workload="decode", seq_len=k, seqlen_q=1, seqlen_k=k, cache_dist=dist,
                   page_size=page, dtype="float16")
              for k in (512, 2048) for dist in ("fixed", "ragged")
              for page in (None, 32)]  # fmt: skip
    frame = normalize(pd.DataFrame([c.to_dict() | {"case": c.name, "impl": "naive"}
                                    for c in ragged]))  # fmt: skip
    assert sorted(frame["page_size"].unique()) == ["32", "contig"]
    _, slices = with_lines_and_slices(frame, ("seq_len",))
    assert slices == ["page_size", "cache_dist"]


def test_sections_registered_and_drawn(attention_run, decode_run, tmp_path):
    keys = [k for k, _ in SECTIONS]
    assert keys.index("throughput") < keys.index("roofline") < keys.index("decode")
    page = write_report([attention_run, decode_run], tmp_path / "r.html").read_text()
    assert 'id="sec-roofline"' in page and 'id="sec-decode"' in page
    page = write_report([attention_run], tmp_path / "a.html").read_text()
    assert 'id="sec-roofline"' in page and 'id="sec-decode"' not in page
