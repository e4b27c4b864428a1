"""The analytic ring model: formulas by hand, the overlap threshold, memory scaling, calibration."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.model.ring import (
    PROFILES,
    BlockTimes,
    DeviceProfile,
    ModelError,
    Workload,
    load_profile,
    max_context,
    memory_bytes,
    overlap_block_tokens,
    predict,
    ring_model_figure,
)
from harness.model.ring_calibration import fit_link, validate
from harness.results import RunDir

# round numbers: 1e12 FLOP/s, 1e9 B/s, 1 ms latency, 1e9 bytes of memory
TOY = DeviceProfile(name="toy", peak_flops=1e12, link_bytes_per_s=1e9, link_latency_s=1e-3,
                    memory_bytes=1e9)  # fmt: skip
ATTN = Workload(batch=1, num_heads=2, head_dim=8, dtype_bytes=2, grad_bytes=4, phase="fwd",
                hidden=16, num_layers=1, num_params=0)  # fmt: skip


def test_forward_time_by_hand() -> None:
    world, seq = 4, 4096
    n = seq // world
    compute = 4 * 1 * 2 * 8 * n * n / 1e12  # 4·b·H·D·n² FLOPs per step
    comm = 2 * 1 * 2 * 8 * n * 2 / 1e9 + 1e-3  # K and V: 2·b·H·n·D·p bytes, plus latency
    pred = predict(TOY, ATTN, world, seq)
    assert pred.step_compute_s == pytest.approx(compute)
    assert pred.step_comm_s == pytest.approx(comm)
    assert pred.comm_bytes_per_step == 2 * 2 * 8 * n * 2
    # three steps with an exchange cost max(compute, comm), the last one compute alone
    assert pred.total_s == pytest.approx(3 * max(compute, comm) + compute)
    assert pred.comm_total_s == pytest.approx(3 * comm)


def test_fwd_bwd_time_by_hand() -> None:
    w = ATTN.model_copy(update={"phase": "fwd_bwd"})
    world, n = 3, 512
    f = 4 * 2 * 8 * n * n / 1e12
    b = 2.5 * f
    kv, dkv = 2 * 2 * 8 * n * 2, 2 * 2 * 8 * n * 4
    c = lambda nbytes: nbytes / 1e9 + 1e-3  # noqa: E731
    fwd = 2 * max(f, c(kv)) + f
    bwd = max(b, c(kv)) + max(b, c(kv + dkv)) + max(b, c(dkv)) + c(dkv)  # + the final hop home
    assert predict(TOY, w, world, world * n).total_s == pytest.approx(fwd + bwd)


def test_causal_zigzag_does_half_the_pairs_per_step() -> None:
    w = ATTN.model_copy(update={"causal": True, "seq_layout": "zigzag"})
    n = 1024
    full = predict(TOY, ATTN, 4, 4 * n)
    steps = [t / (4 * 2 * 8 / 1e12) for t in _step_compute(w, 4, n)]
    assert steps[0] == n * (n + 1) // 2  # the diagonal block, causal
    assert steps[1:] == [n * n // 2] * 3  # every other step: half a block on the slowest rank
    assert predict(TOY, w, 4, 4 * n).total_s < full.total_s


def _step_compute(w: Workload, world: int, n: int) -> list[float]:
    from harness.model.ring import step_compute_s

    return step_compute_s(TOY, w, world, n, "fwd")


def test_overlap_threshold_is_the_papers_f_over_b_in_bf16() -> None:
    a100 = PROFILES["a100-nvlink"]
    c_star = overlap_block_tokens(a100, Workload(dtype_bytes=2), "fwd")
    assert c_star == pytest.approx(312e12 / 300e9)  # the paper's ~1k tokens
    ib = overlap_block_tokens(PROFILES["a100-infiniband"], Workload(dtype_bytes=2), "fwd")
    assert ib == pytest.approx(24_960)  # the paper's 24.5k (K = 1024)
    w = ATTN.model_copy(update={"dtype_bytes": 2})
    edge = overlap_block_tokens(TOY, w, "fwd")  # 2·1e12 / (2·1e9) = 1000
    assert edge == pytest.approx(1000)
    # latency aside, compute equals comm at the threshold; just below it overlap fails
    no_latency = TOY.model_copy(update={"link_latency_s": 0.0})
    at = predict(no_latency, w, 2, 2 * 1000)
    assert at.step_compute_s == pytest.approx(at.step_comm_s)
    assert at.overlap and not predict(no_latency, w, 2, 2 * 998).overlap


def test_memory_parts_by_hand() -> None:
    w = Workload(batch=1, num_heads=2, head_dim=8, dtype_bytes=2, phase="fwd", hidden=16,
                 num_layers=3, num_params=1000, state_bytes_per_param=16,
                 saved_per_token_hidden=2)  # fmt: skip
    mem = memory_bytes(w, 4, 4096)
    n = 1024
    assert mem["states"] == 1000 * 16 / 4
    assert mem["activations"] == 3 * 2 * n * 16 + 6 * n * 16
    assert mem["attn_inputs"] == 4 * 16 * n * 2
    # two alternating receive buffers of K and V at P >= 3 (implementations/ring/_Ring2)
    assert mem["kv_in_flight"] == 2 * (2 * 16 * n * 2)
    assert memory_bytes(w, 2, 4096)["kv_in_flight"] == 2 * 16 * 2048 * 2
    assert memory_bytes(w, 1, 4096)["kv_in_flight"] == 0


def test_max_context_grows_linearly_with_devices() -> None:
    w = Workload(num_params=0)  # no sharded states: per-device memory is all per-token
    prof = PROFILES["a100-nvlink"]
    # from P = 3 on the receive buffers are fixed (two pairs), so per-device memory is the same
    base = max_context(prof, w, 4) / 4
    assert base > 0 and max_context(prof, w, 1) >= base
    for p in (8, 64, 4096):
        assert max_context(prof, w, p) == pytest.approx(p * base, rel=1e-3)
    # and it fits: one more local token per device would not
    s = max_context(prof, w, 8)
    assert sum(memory_bytes(w, 8, s).values()) <= prof.memory_bytes
    assert sum(memory_bytes(w, 8, s + 8 * 64).values()) > prof.memory_bytes


def test_seven_b_on_eight_a100_is_near_the_papers_256k() -> None:
    from harness.model.ring import MODELS

    s = max_context(PROFILES["a100-nvlink"], Workload(**MODELS["7b"]), 8)
    assert 200_000 <= s <= 320_000  # arXiv 2310.01889 Table 3: 256k


def _synthetic_run(path, true: DeviceProfile, heads: int = 4, d: int = 64) -> RunDir:
    """P = 1 rows at two local lengths and P = 2, 3, 4 rows priced by `true`."""
    run = RunDir.create(path, {"run_id": "x", "provenance": {"num_cpus": 8}}, {})
    shape = {"impl": "ring", "workload": "attention", "batch": 1, "num_heads": heads,
             "head_dim": d, "dtype": "float32", "seq_layout": "zigzag", "status": "ok"}  # fmt: skip
    for n in (512, 1024):  # two local lengths, so bytes and exchange counts are not collinear
        f_block, b_block = 0.010 * (n / 512) ** 2, 0.025 * (n / 512) ** 2
        for phase, t in (("fwd", f_block), ("fwd_bwd", f_block + b_block)):
            run.append({**shape, "case": f"p1-{n}-{phase}", "phase": phase, "world_size": 1,
                        "seq_len": n, "causal": False, "time_ms_median": t * 1e3})  # fmt: skip
        blocks = BlockTimes(local_len=n, fwd_full_s=f_block, bwd_full_s=b_block)
        kv = 2 * heads * n * d * 4
        for p in (2, 3, 4):
            w = Workload(batch=1, num_heads=heads, head_dim=d, dtype_bytes=4, phase="fwd")
            pred = predict(true, w, p, p * n, blocks)
            run.append({**shape, "case": f"p{p}-{n}", "phase": "fwd", "world_size": p,
                        "seq_len": p * n, "causal": False, "time_ms_median": pred.total_s * 1e3,
                        "comm_ms": pred.comm_total_s * 1e3, "num_exchanges": p - 1,
                        "bytes_sent_per_rank": [kv * (p - 1)] * p})  # fmt: skip
    return run


def test_calibration_recovers_known_parameters(tmp_path) -> None:
    bw, lat, heads, d = 2e9, 3e-4, 4, 64
    true = DeviceProfile(name="t", peak_flops=1e11, link_bytes_per_s=bw, link_latency_s=lat,
                         memory_bytes=1e10)  # fmt: skip
    run = _synthetic_run(tmp_path / "run", true)
    got_bw, got_lat = fit_link(run.rows())
    assert got_bw == pytest.approx(bw, rel=1e-6) and got_lat == pytest.approx(lat, rel=1e-6)
    prof, recs = validate(run.path)
    assert prof.compute_slots == 8 and len(recs) == 6
    assert all(abs(r["error_pct"]) < 1e-6 for r in recs)
    # a link slow enough to be exposed (100× slower) must show up in the prediction
    slow = true.model_copy(update={"link_bytes_per_s": bw / 100})
    w = Workload(batch=1, num_heads=heads, head_dim=d, dtype_bytes=4, phase="fwd")
    blocks = BlockTimes(local_len=512, fwd_full_s=0.010)
    slow_s, true_s = (predict(x, w, 4, 2048, blocks).total_s for x in (slow, true))
    assert slow_s > 1.1 * true_s


def test_fit_slots_recovers_a_machine_with_one_effective_core(tmp_path) -> None:
    true = DeviceProfile(name="t", peak_flops=1e11, link_bytes_per_s=2e9, link_latency_s=1e-4,
                         memory_bytes=1e10, compute_slots=1.0)  # fmt: skip
    run = _synthetic_run(tmp_path / "run", true)
    _, naive = validate(run.path)  # assumes the run's 8 cores: too fast from P = 2 on
    assert all(r["error_pct"] < -20 for r in naive)
    prof, recs = validate(run.path, fit_slots=True)
    assert prof.compute_slots == pytest.approx(1.0)
    assert all(abs(r["error_pct"]) < 1e-6 for r in recs)
    assert {r["world_size"] for r in recs if r["in_sample"]} == {2}


def test_calibration_without_multi_rank_rows_is_a_model_error(tmp_path) -> None:
    run = RunDir.create(tmp_path / "run", {"run_id": "x"}, {})
    with pytest.raises(ModelError, match="at least two"):
        validate(run.path)


def test_profile_from_yaml_and_bad_names(tmp_path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\npeak_flops: 1.0e14\nlink_bytes_per_s: 1.0e10\nmemory_bytes: 1.0e10\n")
    assert load_profile(str(f)).peak_flops == 1e14
    with pytest.raises(ModelError, match="allowed: a100-nvlink"):
        load_profile("a100")
    f.write_text("name: bad\npeak_flops: -1\n")
    with pytest.raises(ModelError, match="not a device profile"):
        load_profile(str(f))


def test_figure_has_one_log_log_line_per_profile() -> None:
    fig = ring_model_figure(max_p=64)
    assert [t.name for t in fig.data] == list(PROFILES)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    ys = [y for y in fig.data[0].y if y]
    assert ys == sorted(ys) and not any(isinstance(y, float) and math.isnan(y) for y in ys)


def test_cli_prints_the_table(tmp_path) -> None:
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["model", "ring", "--profile", "h100-sxm", "--max-p", "16",
                                   "--json", str(out)], env={"COLUMNS": "160"})  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "max context" in res.output and "h100-sxm" in res.output
    assert out.read_text().count('"world_size"') == 5  # P = 1, 2, 4, 8, 16


def test_cli_bad_profile_is_one_line_and_exit_2() -> None:
    res = CliRunner().invoke(app, ["model", "ring", "--profile", "nope"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown device profile 'nope'" in lines[0]


# --- the per-step slowest rank: O(P) schedule calls, equal to the scan of every rank ------------


def _slowest_by_scanning_every_rank(w: Workload, world: int, n: int) -> list[tuple[int, int]]:
    """The O(P²) reference: every rank at every step, keeping the first strictly larger."""
    from harness.model.ring import rank_pairs

    steps = []
    for step in range(world):
        worst = (0, 0)
        for rank in range(world):
            pairs = rank_pairs(w.seq_layout, w.causal, world, n, rank, step)
            if sum(pairs) > sum(worst):
                worst = pairs
        steps.append(worst)
    return steps


@pytest.mark.parametrize("seq_layout", ["contiguous", "striped", "zigzag"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_the_fast_slowest_rank_equals_the_full_scan(seq_layout, causal) -> None:
    from harness.model.ring import _step_pairs

    w = ATTN.model_copy(update={"seq_layout": seq_layout, "causal": causal})
    for world in range(1, 17):
        for n in (1, 2, 7, 8, 64):  # odd local lengths split unevenly in zigzag and striped
            assert _step_pairs(w, world, n) == _slowest_by_scanning_every_rank(w, world, n), \
                (world, n)  # fmt: skip


def test_the_default_table_calls_the_schedule_o_of_p_times(monkeypatch) -> None:
    """`harness model ring` took 94 s at the default --max-p 4096 with a call per rank and step."""
    from harness.model import ring

    calls = []
    real = ring.rank_pairs
    monkeypatch.setattr(ring, "rank_pairs", lambda *a: calls.append(a) or real(*a))
    ring._slowest_per_step.cache_clear()
    w = Workload(causal=True)
    rows = ring.table(PROFILES["a100-nvlink"], w, max_p=4096)
    ring._slowest_per_step.cache_clear()
    assert [r["world_size"] for r in rows][-1] == 4096
    assert len(calls) <= 2 * sum(ring.world_sizes(4096))  # the scan made Σ P² = 22 million
