"""`harness baseline promote` and the pytest-benchmark exporter."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import HarnessError
from harness.regress.baseline import baseline_dir, describe, promote
from harness.regress.compare import compare_paths
from harness.regress.pytest_benchmark import stats, to_pytest_benchmark
from harness.report.comparison import comparison_figure, verdict_frame
from tests.helpers.synthetic_runs import failed_row, make_run, ok_row, samples


def test_promote_copies_the_data_files_to_a_device_and_suite_folder(tmp_path):
    run = make_run(tmp_path / "run1", [ok_row()], device_name="NVIDIA H100 80GB HBM3",
                   profile="gpu")  # fmt: skip
    (run / "report.html").write_text("<html/>")
    target = promote(run, tmp_path / "baselines")
    assert target == tmp_path / "baselines" / "nvidia-h100-80gb-hbm3" / "synth-gpu"
    assert target == baseline_dir(run, tmp_path / "baselines")
    assert sorted(p.name for p in target.iterdir()) == [
        "baseline.json", "rows.jsonl", "run.json", "samples.jsonl", "suite.json"]  # fmt: skip
    assert describe(target)["run_id"] == "run1"
    assert compare_paths(target, run).exit_code == 0  # a baseline is a run directory
    with pytest.raises(HarnessError, match="already exists"):
        promote(run, tmp_path / "baselines")
    assert promote(run, tmp_path / "baselines", force=True) == target


def test_promote_refuses_failed_rows_and_empty_runs(tmp_path):
    run = make_run(tmp_path / "run1", [ok_row(), failed_row(impl="naive", status="error")])
    with pytest.raises(HarnessError, match="1 failed rows"):
        promote(run, tmp_path / "b")
    res = CliRunner().invoke(app, ["baseline", "promote", str(run), "--root", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--force" in res.output
    res = CliRunner().invoke(app, ["baseline", "promote", str(tmp_path / "nope")])
    assert res.exit_code == 2


def test_pytest_benchmark_stats_follow_its_definitions():
    s = stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median"] == 3.0 and s["rounds"] == 5 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["q1"] == 1.75 and s["q3"] == 28.0 and s["iqr"] == 26.25  # its Method 3 quartiles
    assert s["ops"] == pytest.approx(1 / 22.0) and s["total"] == 110.0
    s = stats([0.55, 0.7, 0.77, 1.1, 1.33, 3.17])  # the example
    assert s["q1"] == 0.7 and s["q3"] == 1.33 and s["iqr_outliers"] == 1


@pytest.mark.parametrize(
    "data",
    [[0.55, 0.7, 0.77, 1.1, 1.33, 3.17], [1.0, 2.0, 3.0, 4.0, 100.0], [2.5], [3.0, 1.0],
     [5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0],
     samples(10.0, 0.05, n=13), samples(3.0, 0.3, n=30)],
)  # fmt: skip
def test_exported_statistics_equal_pytest_benchmark_stats(data):
    from pytest_benchmark.stats import Stats

    ref = Stats()
    for t in data:
        ref.update(t)
    s = stats(data)
    assert {k: s[k] for k in Stats.fields} == ref.as_dict()
    assert s["data"] == data and s["iterations"] == 1


def test_export_says_how_to_install_pytest_benchmark_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytest_benchmark.stats", None)
    with pytest.raises(HarnessError, match="pip install pytest-benchmark"):
        stats([1.0, 2.0])


def test_export_carries_the_row_fields_as_extra_info(tmp_path):
    row = ok_row(time_ms=samples(10.0, 0.05))
    row.update(seqlen_q=64, seqlen_k=128, num_kv_heads=2, head_dim_v=32, mask="sliding_window",
               mask_density=0.5, bytes_moved=1000, gbytes_per_s=1.5, page_size=16,
               cache_dist="fixed")  # fmt: skip
    extra = to_pytest_benchmark(make_run(tmp_path / "r", [row]))["benchmarks"][0]["extra_info"]
    assert extra["seqlen_q"] == 64 and extra["seqlen_k"] == 128 and extra["num_kv_heads"] == 2
    assert extra["head_dim_v"] == 32 and extra["mask"] == "sliding_window"
    assert extra["mask_density"] == 0.5 and extra["bytes_moved"] == 1000
    assert extra["gbytes_per_s"] == 1.5 and extra["page_size"] == 16
    assert extra["cache_dist"] == "fixed"


def test_export_is_read_by_pytest_benchmark_compare(tmp_path):
    t = samples(10.0, 0.05)
    run = make_run(tmp_path / "run1", [ok_row(time_ms=t), ok_row(impl="naive", time_ms=t),
                                       failed_row(impl="sdpa_math")])  # fmt: skip
    data = to_pytest_benchmark(run)
    assert [b["name"].split("[")[0] for b in data["benchmarks"]] == ["chunked", "naive"]
    assert data["benchmarks"][0]["stats"]["median"] == pytest.approx(statistics.median(t) / 1e3)
    out = tmp_path / "0001_run.json"
    res = CliRunner().invoke(app, ["export", "pytest-benchmark", str(run), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["version"]
    tool = shutil.which("pytest-benchmark", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("the pytest-benchmark command is not installed next to this python")
    cmd = [tool, "compare", str(out), "--columns=min,median,max", "--group-by=group"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "chunked" in proc.stdout and "naive" in proc.stdout


def test_comparison_figure_marks_regressions(tmp_path):
    t = samples(10.0, 0.01)
    b = make_run(tmp_path / "b", [ok_row(time_ms=t), ok_row(impl="naive", time_ms=t)])
    c = make_run(
        tmp_path / "c", [ok_row(time_ms=[x * 1.5 for x in t]), ok_row(impl="naive", time_ms=t)]
    )
    fig = comparison_figure(verdict_frame([compare_paths(b, c)]))
    points = {t["name"]: t for t in fig["data"] if t["meta"].get("metric") == "time_ratio"}
    assert points["chunked"]["y"] == [pytest.approx(1.5)] and points["naive"]["y"] == [1.0]
    assert [v for v, _ in points["chunked"]["customdata"]] == ["regression"]
    assert [v for v, _ in points["naive"]["customdata"]] == ["unchanged"]
    rings = [t for t in fig["data"] if t["meta"]["role"] == "flag"]
    assert len(rings) == 1 and rings[0]["meta"]["flag"] == "regression"
    assert rings[0]["y"] == [pytest.approx(1.5)] and rings[0]["marker"]["color"] == "#d62728"
    assert rings[0]["text"][0].endswith("chunked · fwd")
