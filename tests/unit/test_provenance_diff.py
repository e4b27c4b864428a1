"""Provenance a regression guard needs: what `collect` records, and `compare` naming every
provenance difference between baseline and candidate at the top of its output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from harness import provenance
from harness.cli import app
from harness.regress.compare import compare_paths, provenance_diff
from harness.regress.render import markdown
from tests.helpers.synthetic_runs import make_run, ok_row, samples

NEW_KEYS = ("gpu_driver_version", "flash_attn_version", "flash_attn_3_version",
            "flash_attn_4_version", "xformers_version", "triton_version", "cutlass_dsl_version",
            "flashinfer_version", "tf32_matmul", "tf32_cudnn", "float32_matmul_precision",
            "deterministic_algorithms", "cpu_governor")  # fmt: skip
PEAKS = {"mem_gbytes_per_s": 20.0, "tflops_fp32": 1.5, "tflops_low": 1.5, "source": "measured"}


def test_collect_records_what_a_regression_guard_needs():
    info = provenance.collect("cpu", 0)
    assert set(NEW_KEYS) <= info.keys()
    assert info["gpu_driver_version"] is None  # a CPU run asks no nvidia-smi
    for key in provenance.PACKAGES:
        assert info[key] is None or isinstance(info[key], str)
    assert isinstance(info["tf32_matmul"], bool) and isinstance(info["tf32_cudnn"], bool)
    assert info["float32_matmul_precision"] in ("highest", "high", "medium")
    assert isinstance(info["deterministic_algorithms"], bool)
    assert info["cpu_governor"] is None or isinstance(info["cpu_governor"], str)
    json.dumps(info)  # run.json holds it


def test_package_version_reads_metadata_and_none_when_missing():
    import torch

    assert provenance.package_version("torch") == torch.__version__
    assert provenance.package_version("no-such-distribution-xyz") is None


def test_provenance_diff_lists_changes_in_order_and_skips_what_always_differs():
    base = {"torch_version": "2.12.0", "device_name": "A", "git_commit": "abc", "seed": 0,
            "utc_time": "2026-01-01T00:00:00+00:00", "hostname": "h1", "triton_version": None,
            "device_peaks": dict(PEAKS)}  # fmt: skip
    cand = {"git_commit": "def", "torch_version": "2.13.0", "device_name": "B", "seed": 0,
            "utc_time": "2026-01-02T00:00:00+00:00", "hostname": "h2",
            "device_peaks": PEAKS | {"mem_gbytes_per_s": 20.00001, "tflops_fp32": 2.0},
            "flash_attn_version": None, "xformers_version": "0.0.35"}  # fmt: skip
    assert [str(c) for c in provenance_diff(base, cand)] == [
        "torch_version 2.12.0 → 2.13.0",
        "device_name A → B",
        "hostname h1 → h2",
        "device_peaks.tflops_fp32 1.5 → 2",  # the bandwidth's 1e-5 is below 4 digits
        "xformers_version (not recorded) → 0.0.35",  # None vs absent (triton, flash): unknown
        "git_commit abc → def",  # expected between nights: last
    ]
    assert provenance_diff(base, dict(base)) == []
    assert provenance_diff(None, {}) == []


def _pair(root: Path, base_prov: dict[str, Any], cand_prov: dict[str, Any]) -> tuple[Path, Path]:
    """Two runs of one suite with identical rows whose run.json provenance is updated."""
    rows = [ok_row(impl=impl, time_ms=samples(10.0, 0.01, seed=i))
            for i, impl in enumerate(("chunked", "naive"))]  # fmt: skip
    out = []
    for name, prov in (("base", base_prov), ("cand", cand_prov)):
        path = make_run(root / name, rows)
        meta = json.loads((path / "run.json").read_text())
        meta["provenance"].update(prov)
        (path / "run.json").write_text(json.dumps(meta))
        out.append(path)
    return out[0], out[1]


def test_compare_names_exactly_the_provenance_differences_first(tmp_path):
    base, cand = _pair(tmp_path, {"torch_version": "2.12.0", "device_peaks": PEAKS},
                       {"torch_version": "2.13.0",
                        "device_peaks": PEAKS | {"mem_gbytes_per_s": 25.0}})  # fmt: skip
    expected = ("provenance differs: torch_version 2.12.0 → 2.13.0; "
                "device_peaks.mem_gbytes_per_s 20 → 25")  # fmt: skip
    res = CliRunner().invoke(app, ["compare", str(base), str(cand), "--json",
                                   str(tmp_path / "c.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"note: {expected}"
    assert sum("provenance differs" in line for line in res.output.splitlines()) == 1
    assert "torch_version: " not in res.output  # the old per-key note is gone
    data = json.loads((tmp_path / "c.json").read_text())
    assert [(d["field"], d["baseline"], d["candidate"]) for d in data["provenance_diff"]] == [
        ("torch_version", "2.12.0", "2.13.0"),
        ("device_peaks.mem_gbytes_per_s", 20.0, 25.0),
    ]
    assert data["warnings"][0] == expected
    md = markdown(compare_paths(base, cand)).splitlines()
    assert md[2] == ("**Provenance differs:** torch_version 2.12.0 → 2.13.0; "
                     "device_peaks.mem_gbytes_per_s 20 → 25")  # fmt: skip
    assert sum("torch_version" in line for line in md) == 1


def test_identical_provenance_says_nothing(tmp_path):
    same = {"torch_version": "2.13.0", "device_peaks": PEAKS}
    base, cand = _pair(tmp_path, same, same)
    res = CliRunner().invoke(app, ["compare", str(base), str(cand)])
    assert res.exit_code == 0, res.output
    assert "provenance" not in res.output.lower()
    result = compare_paths(base, cand)
    assert result.provenance == [] and result.to_dict()["provenance_diff"] == []
    assert "Provenance" not in markdown(result)
