"""`harness frontier`: the search on fake probes with known thresholds, real probes whose budget
decides pass or fail (as data, never a crash), the JSON records, and one clear line on bad input."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.cli.frontier_cmd import parse_budget
from harness.frontier.probe import Prober, Shape
from harness.frontier.records import (
    FRONTIER_FORMAT_VERSION,
    Grid,
    Target,
    add_ratios,
    document,
    record_of,
)
from harness.frontier.search import Probe, check_grid, search_max


def _fake(threshold: int, calls: list[int] | None = None):
    """Passes up to `threshold` tokens (inclusive), fails above: a monotone memory limit."""

    def probe(length: int) -> Probe:
        if calls is not None:
            calls.append(length)
        ok = length <= threshold
        return Probe(length, ok, "ok" if ok else "oom", "" if ok else "over",
                     peak_mem_bytes=length * 1000)  # fmt: skip

    return probe


@pytest.mark.parametrize("threshold", [128, 129, 255, 256, 1000, 3 * 1024 + 5, 40_000, 65_535])
def test_exact_boundary_at_the_granularity(threshold: int) -> None:
    calls: list[int] = []
    res = search_max(_fake(threshold, calls), start=128, granularity=128, max_len=65536,
                     resolution=128)  # fmt: skip
    assert res.max_len == threshold // 128 * 128  # the largest multiple of 128 that fits
    assert res.first_fail is not None and res.first_fail.length == res.max_len + 128
    assert not res.capped and [p.length for p in res.probes] == calls
    # exponential phase: 128, 256, ... up to the first failure, then bisection
    first = next(i for i, c in enumerate(calls) if c > threshold)
    assert calls[: first + 1] == [128 * 2**i for i in range(first + 1)]
    assert len(calls) <= 2 * math.ceil(math.log2(65536 / 128)) + 2
    assert all(c % 128 == 0 for c in calls)


@pytest.mark.parametrize("threshold", [1000, 5000, 20_000])
def test_coarser_resolution_brackets_the_boundary(threshold: int) -> None:
    res = search_max(_fake(threshold), start=64, granularity=64, max_len=1 << 16,
                     resolution=1024)  # fmt: skip
    assert res.max_len is not None and res.first_fail is not None
    assert res.max_len <= threshold < res.first_fail.length
    assert res.first_fail.length - res.max_len <= 1024
    exact = search_max(_fake(threshold), start=64, granularity=64, max_len=1 << 16,
                       resolution=64)  # fmt: skip
    assert len(res.probes) < len(exact.probes)  # a coarser stop takes fewer probes


def test_capped_and_failing_from_the_start() -> None:
    capped = search_max(_fake(10**9), start=256, granularity=256, max_len=3 * 1024,
                        resolution=256)  # fmt: skip
    assert capped.capped and capped.max_len == 3 * 1024 and capped.first_fail is None
    assert [p.length for p in capped.probes] == [256, 512, 1024, 2048, 3072]
    none = search_max(_fake(100), start=256, granularity=256, max_len=4096, resolution=256)
    assert none.max_len is None and none.first_fail.length == 256 and len(none.probes) == 1


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"start": 100}, "start"), ({"max_len": 1000}, "max_len"), ({"resolution": 96}, "resolution"),
    ({"granularity": 0}, "granularity"), ({"start": 8192}, "start"),
])  # fmt: skip
def test_bad_grid_names_the_setting(kwargs, key) -> None:
    grid = {"start": 128, "granularity": 64, "max_len": 4096, "resolution": 64, **kwargs}
    with pytest.raises(ValueError, match=f"^{key}: .*allowed"):
        check_grid(**grid)


def test_records_schema_and_ratios() -> None:
    grid = Grid(start=128, granularity=128, resolution=128, max_seqlen=1 << 14)
    shape = Shape(batch=2, num_heads=4, hidden=64)
    records = []
    for impl, threshold in (("vanilla_layer", 300), ("memeff_layer", 2000), ("bpt_layer", 5000)):
        res = search_max(_fake(threshold), start=128, granularity=128, max_len=1 << 14,
                         resolution=128)  # fmt: skip
        records.append(record_of(Target("layer", impl, "fwd_bwd"), res, shape, grid, 1 << 30))
    add_ratios(records)
    doc = json.loads(json.dumps(document(records, device="cpu", budget_bytes=1 << 30,
                                         budget_source="--memory-budget")))  # fmt: skip
    assert doc["schema_version"] == FRONTIER_FORMAT_VERSION and doc["kind"] == "harness.frontier"
    bpt = doc["records"][2]
    assert {"workload", "impl", "phase", "axis", "max_len", "max_tokens", "budget_bytes",
            "peak_mem_bytes", "first_fail_len", "first_fail_status", "first_fail_reason",
            "capped", "ratios", "probes"} <= set(bpt)  # fmt: skip
    assert (bpt["max_len"], bpt["max_tokens"], bpt["first_fail_len"]) == (4992, 9984, 5120)
    assert bpt["peak_mem_bytes"] == 4992 * 1000 and bpt["first_fail_status"] == "oom"
    assert bpt["ratios"]["memeff_layer"] == pytest.approx(4992 / 1920)
    assert bpt["ratios"]["vanilla_layer"] == pytest.approx(4992 / 256)
    assert all(set(p) >= {"length", "ok", "status", "peak_mem_bytes"} for p in bpt["probes"])


def test_a_probe_over_the_budget_is_an_oom_row_and_under_it_passes() -> None:
    """The budget holds on the measured resident peak (inputs included): a layer at S = 2048,
    hidden 64 takes a few MiB above its inputs, so 1 MiB fails and 1 GiB passes, in the same
    worker, each as a row with its status, never an exception here."""
    shape = Shape(num_heads=4, hidden=64)
    with Prober("cpu", 1 << 30, threads=1, timeout_s=300) as prober:
        under = prober.probe("layer", "memeff_layer", "fwd_bwd", shape, 2048)
        assert prober.rows[-1]["mem_budget_bytes"] == 1 << 30
        over = prober.probe("layer", "memeff_layer", "fwd_bwd", shape, 2048, budget_bytes=1 << 20)
        assert prober.rows[-1]["mem_budget_bytes"] == 1 << 20
    assert under.ok and under.status == "ok" and under.peak_mem_bytes > 1 << 20
    assert not over.ok and over.status == "oom"
    assert "above the memory budget 1.0 MiB" in over.reason
    assert "harness frontier --memory-budget" in over.reason  # named as the user set it
    assert over.peak_mem_bytes == pytest.approx(under.peak_mem_bytes, rel=0.5)


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_budget(tmp_path) -> None:
    """vanilla (S² scores) stops well before memeff and bpt at the same small budget."""
    out, html = tmp_path / "f.json", tmp_path / "f.html"
    res = CliRunner().invoke(app, [
        "frontier", "--impl", "vanilla_layer", "--impl", "bpt_layer", "--phase", "fwd_bwd",
        "--memory-budget", "64MiB", "--device", "cpu", "--num-heads", "4", "--hidden", "64",
        "--block-size", "256", "--max-seqlen", "65536", "--threads", "1",
        "--json", str(out), "--report", str(html)], env={"COLUMNS": "160"})  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    by = {r["impl"]: r for r in doc["records"]}
    assert by["vanilla_layer"]["first_fail_status"] == "oom"
    assert by["bpt_layer"]["max_len"] >= 4 * by["vanilla_layer"]["max_len"]
    assert by["bpt_layer"]["peak_mem_bytes"] <= 64 << 20
    assert "Plotly.newPlot" in html.read_text()


def _one_line(args: list[str]) -> str:
    res = CliRunner().invoke(app, ["frontier", *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize(("args", "key", "value", "allowed"), [
    (["--impl", "bpt", "--phase", "train"], "--phase", "'train'", "fwd_bwd"),
    (["--impl", "nope"], "--impl", "'nope'", "bpt_layer"),
    (["--impl", "bpt", "--memory-budget", "8XB"], "--memory-budget", "'8XB'", "8GiB"),
    (["--impl", "bpt", "--memory-budget", "0.5KiB"], "--memory-budget", "'0.5KiB'", "1 MiB"),
    (["--impl", "bpt", "--dtype", "fp8"], "--dtype", "'fp8'", "bfloat16"),
    (["--impl", "bpt", "--start", "100"], "--start", "100", "multiples of 256"),
    (["--impl", "bpt", "--max-seqlen", "0"], "--max-seqlen", "0", "from 1 to"),
])  # fmt: skip
def test_bad_input_is_one_line_naming_key_value_allowed(args, key, value, allowed) -> None:
    line = _one_line(args)
    assert line.startswith(f"error: {key}: ") and value in line and allowed in line, line


def test_parse_budget() -> None:
    assert parse_budget("8GiB") == 8 << 30 and parse_budget("1.5GiB") == 3 << 29
    assert parse_budget("512MiB") == 512 << 20 and parse_budget("2097152") == 2 << 20
    assert parse_budget(None) is None and parse_budget("device") is None


def test_shape_makes_the_case_of_each_workload() -> None:
    shape = Shape(batch=2, num_heads=4, head_dim=32, hidden=64, causal=True, block_size=128)
    layer = shape.case("layer", 1024)
    assert (layer.seq_len, layer.hidden, layer.head_dim, layer.block_size) == (1024, 64, 16, 128)
    attn = shape.case("attention", 512)
    assert (attn.sq, attn.sk, attn.head_dim, attn.hidden, attn.causal) == (512, 512, 32, None, True)
    decode = shape.case("decode", 4096)  # the search axis is the cache: one new token
    assert (decode.sq, decode.sk, decode.batch) == (1, 4096, 2)


def test_figure_bars_carry_the_ratios() -> None:
    from harness.report.frontier import frontier_figure

    grid = Grid(start=128, granularity=128, resolution=128, max_seqlen=4096)
    records = []
    for impl, threshold in (("naive", 300), ("bpt", 10**6), ("<b>x</b>", 50)):
        res = search_max(_fake(threshold), start=128, granularity=128, max_len=4096,
                         resolution=128)  # fmt: skip
        records.append(record_of(Target("attention", impl, "fwd"), res, Shape(), grid, 1 << 30))
    fig = frontier_figure(records)
    (bars,) = fig["data"]
    assert bars["x"] == ["naive", "bpt"] and bars["y"] == [256, 4096]  # no bar without a max
    assert bars["text"] == ["1.0×", "≥16.0×"]  # bpt never failed: a lower bound
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert frontier_figure(records[2:]) is None
