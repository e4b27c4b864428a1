"""`harness show` and `harness list`: readable at 100 columns, units that fit, machine formats."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from harness.cli import app
from harness.cli.show_table import SHOWN, columns_for, fixed, render, sci
from harness.results import RunDir
from harness.rows import SCHEMA_VERSION
from tests.helpers.synthetic_runs import MARKUP_REASON, failed_row, make_run, ok_row

REPO = Path(__file__).parents[2]
LONG_CASE = "attn-b1-s131072-h16-d128-bfloat16-causal-bs512"
SHORT_CASE = "attn-b1-s97-h2-d32-float32-full-bs64"


def _gpu_like(path: Path) -> Path:
    """Long cases, seconds, tens of GiB, hundreds of TFLOP/s, every failure status."""
    rows = [
        ok_row(LONG_CASE, "sdpa_flash", "fwd", time_ms=[950.0] * 5,
               peak_mem_bytes=41 << 30) | {"tflops": 310.7},
        ok_row(LONG_CASE, "xformers_cutlass", "fwd_bwd", time_ms=[25_000.0] * 5,
               peak_mem_bytes=(41 << 30) + 12345) | {"tflops": 180.25},
        failed_row(LONG_CASE, "naive", "fwd", status="oom",
                   reason="[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: not enough"),
        failed_row(LONG_CASE, "flash_attn3", "fwd", status="unsupported",
                   reason="flash_attn3 needs an H100 (sm90); this is sm80"),
        failed_row(LONG_CASE, "ring", "fwd", status="timeout", reason="case exceeded 300 s"),
        failed_row(LONG_CASE, "bpt", "fwd", status="error", reason=MARKUP_REASON),
    ]  # fmt: skip
    return make_run(path, rows)


def _cpu_like(path: Path) -> Path:
    """Sub-millisecond times, KiB of memory, GFLOP/s, and a backend skipped on every case."""
    rows = []
    for case in (SHORT_CASE, SHORT_CASE.replace("full", "causal")):
        rows += [
            ok_row(case, "naive", "fwd", time_ms=[0.104] * 5,
                   peak_mem_bytes=98304) | {"tflops": 0.0232},
            ok_row(case, "chunked", "fwd_bwd", time_ms=[0.589] * 5,
                   peak_mem_bytes=143_000) | {"tflops": 0.00409},
            failed_row(case, "sdpa_cudnn", "fwd", status="skipped",
                       reason="needs CUDA: torch's cuDNN SDPA kernel has no CPU version"),
        ]  # fmt: skip
    return make_run(path, rows)


def _show(run: Path, *args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    """`harness show` as a user runs it, in a terminal of `columns` columns (COLUMNS)."""
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "harness", "show", str(run), *args],
                          capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=60)  # fmt: skip


def _header(lines: list[str]) -> list[str]:
    header = next(line for line in lines if line.strip().startswith("impl "))
    return re.split(r"\s{2,}", header.strip())


@pytest.mark.parametrize(
    ("make", "headers", "cells"),
    [
        (_gpu_like, ["impl", "phase", "status", "time s", "TFLOP/s", "peak GiB", "err rel",
                     "naive err"], ["0.950", "25.0", "311", "41.0", "3.0e-7"]),
        (_cpu_like, ["impl", "phase", "status", "time µs", "GFLOP/s", "peak KiB", "err rel",
                     "naive err"], ["104", "589", "23.2", "4.09", "96.0", "140"]),
    ],
    ids=["gpu-like", "cpu-like"],
)  # fmt: skip
def test_show_is_readable_at_100_columns(tmp_path, make, headers, cells):
    proc = _show(make(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, proc.stdout
    assert _header(lines) == headers  # every header whole, on one line, with its unit
    assert "e+0" not in proc.stdout and "e+1" not in proc.stdout  # no raw byte or flop counts
    for value in cells:
        assert re.search(rf"(^|\s){re.escape(value)}(\s|$)", proc.stdout, re.M), value
    for case in {r["case"] for r in RunDir(tmp_path / "run").rows()}:
        assert case in lines  # each case heads its group, whole


def test_show_numbers_each_distinct_reason_once(tmp_path):
    proc = _show(_cpu_like(tmp_path / "run"))
    reason = "needs CUDA: torch's cuDNN SDPA kernel has no CPU version"
    assert proc.stdout.count(reason) == 1
    assert proc.stdout.count("skipped [1]") == 2
    assert re.search(r"^\s*\[1\] " + re.escape(reason), proc.stdout, re.M)


def test_show_all_lists_every_field_within_the_width(tmp_path):
    proc = _show(_gpu_like(tmp_path / "run"), "--all")
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100
    assert "peak_mem_bytes=41.0 GiB" in proc.stdout and "e+" not in proc.stdout
    assert "num_samples=5" in proc.stdout and f"schema_version={SCHEMA_VERSION}" in proc.stdout


@pytest.mark.parametrize(
    ("top", "unit_header"),
    [(0.5, "time µs"), (12.0, "time ms"), (9999.0, "time ms"), (20_000.0, "time s")],
)
def test_time_unit_fits_the_largest_value(top, unit_header):
    cols = columns_for([{"time_ms_median": 0.01}, {"time_ms_median": top}])
    assert cols[0].header == unit_header


@pytest.mark.parametrize(
    ("top", "unit_header", "text"),
    [(98304, "peak KiB", "96.0"), (5 << 30, "peak MiB", "5120"), (41 << 30, "peak GiB", "41.0")],
)
def test_memory_unit_fits_the_largest_value(top, unit_header, text):
    (col,) = columns_for([{"peak_mem_bytes": top}])
    assert (col.header, col.text(top)) == (unit_header, text)


def test_number_formats_never_use_a_positive_exponent():
    assert [fixed(x) for x in (0.123, 9.996, 12.34, 1234.5, 99999.0)] == [
        "0.123", "10.0", "12.3", "1234", "99999"]  # fmt: skip
    assert [sci(x) for x in (2.8e-7, 1.5e-3, 0.0)] == ["2.8e-7", "1.5e-3", "0"]


def test_show_formats_are_raw_and_verbatim(tmp_path):
    run = _gpu_like(tmp_path / "run")
    rows = RunDir(run).rows()
    runner = CliRunner()
    res = runner.invoke(app, ["show", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data == [{c: r.get(c) for c in SHOWN} for r in rows]
    assert MARKUP_REASON in {r["reason"] for r in data}

    res = runner.invoke(app, ["show", str(run), "--format", "csv"])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(table[0]) == list(SHOWN)
    assert [r["reason"] for r in table] == [r["reason"] for r in rows]
    assert float(table[0]["peak_mem_bytes"]) == 41 << 30

    res = runner.invoke(app, ["show", str(run), "--format", "md"])
    assert res.exit_code == 0, res.output
    md = res.stdout.splitlines()
    assert md[0] == "| " + " | ".join(SHOWN) + " |" and len(md) == len(rows) + 2
    assert MARKUP_REASON.replace("|", "\\|") in res.stdout  # only the cell separator escaped

    res = runner.invoke(app, ["show", str(run), "--format", "json", "--all"])
    every = {k for r in rows for k in r}
    assert all(set(r) == every for r in json.loads(res.stdout)) and "num_samples" in every


def test_bad_format_is_one_line_and_exit_2(tmp_path):
    run = _cpu_like(tmp_path / "run")
    for cmd in (["show", str(run)], ["list"]):
        res = CliRunner().invoke(app, [*cmd, "--format", "xml"])
        assert res.exit_code == 2
        lines = [line for line in res.output.splitlines() if line]
        assert lines == ["error: --format: unknown value 'xml'; allowed: table, json, csv, md"]


def test_list_formats(monkeypatch):
    runner = CliRunner()
    res = runner.invoke(app, ["list", "--format", "json"])
    assert res.exit_code == 0, res.output
    records = {r["name"]: r for r in json.loads(res.stdout)}
    assert records["naive"]["status"] == "available" and records["naive"]["distributed"] is False
    assert records["ring"]["distributed"] is True
    assert set(records["naive"]) == {"name", "label", "workload", "layout", "distributed",
                                     "takes", "status", "reason"}  # fmt: skip
    assert records["naive"]["takes"] == "GQA Dv≠D Sq≠Sk scale; all masks"
    assert records["ring"]["takes"] == "GQA Dv≠D scale; masks: none, causal"
    res = runner.invoke(app, ["list", "--format", "csv"])
    assert res.exit_code == 0, res.output
    by_name = {r["name"]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert by_name.keys() == records.keys()
    assert by_name["flash_attn2"]["reason"] == records["flash_attn2"]["reason"]
    res = runner.invoke(app, ["list", "--format", "md"])
    assert res.exit_code == 0 and res.stdout.startswith("| name | label |")


def test_rows_of_a_case_stay_together_when_a_resume_appended_them_last():
    rows = [{"case": "a", "impl": "x", "phase": "fwd", "status": "ok"},
            {"case": "b", "impl": "x", "phase": "fwd", "status": "ok"},
            {"case": "a", "impl": "y", "phase": "fwd", "status": "error",
             "reason": "[/x] boom"}]  # fmt: skip
    console = Console(width=100, record=True)
    for line in render(rows, title="run", width=console.width):
        console.print(line)
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]
    assert lines[2:] == ["a", "x fwd ok", "y fwd error [1]", "b", "x fwd ok", "reasons:",
                         "[1] [/x] boom"]  # fmt: skip
