"""An implementation judged on all its rows at once (harness/regress/implementations.py): a
slowdown of one kernel that no row shows with confidence is found, same-code nights are not
flagged, and the verdict reaches compare's exit code, JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.regress.compare import compare_paths
from harness.regress.implementations import MIN_ROWS, judge_implementations, stouffer_z
from harness.regress.processes import PER_PROCESS, ProcessStats
from harness.regress.render import markdown
from tests.helpers.synthetic_runs import CASE, make_run, ok_row

IMPLS = ("naive", "chunked", "bpt", "sdpa_flash", "sdpa_math", "ring_demo")
ROWS_PER_IMPL, PROCESSES, REPEATS = 8, 6, 4  # the nightly CPU profile's shape


def test_stouffer_z_is_the_textbook_sum_of_normal_quantiles():
    ps = [0.01, 0.2, 0.5, 0.7]
    expected = sum(stats.norm.isf(p) for p in ps) / math.sqrt(len(ps))
    assert stouffer_z(ps) == pytest.approx(expected, rel=1e-12)
    # a p of exactly 0 or 1 (constant sides) is strong evidence, not an infinity
    assert math.isfinite(stouffer_z([0.0])) and stouffer_z([0.0]) > 7
    assert stouffer_z([0.0, 1.0]) == pytest.approx(0.0, abs=1e-3)


def _proc(ratio: float, p_slower: float) -> ProcessStats:
    return ProcessStats(ratio, ratio * 0.9, ratio * 1.1, p_slower, 1 - p_slower, 6, 6)


def _bh(ps: list[float]) -> list[float]:
    return list(stats.false_discovery_control(ps)) if ps else []


def test_effect_and_evidence_are_both_needed_and_small_groups_are_not_judged():
    rows = [("a", _proc(1.12, 0.01))] * 4  # significant and beyond 5%
    rows += [("b", _proc(1.03, 0.001))] * 4  # significant, within 5%
    rows += [("c", _proc(1.20, 0.3))] * 4  # beyond 5%, not significant
    rows += [("d", _proc(0.85, 0.999))] * 4  # faster
    rows += [("e", _proc(1.5, 0.0))] * (MIN_ROWS - 1)  # too few rows
    got = {r.impl: r for r in judge_implementations(rows, impl_tol=0.05, alpha=0.05, bh=_bh)}
    assert got["a"].verdict == "regression" and got["a"].z_slower > 0
    assert got["b"].verdict == "unchanged" and "within impl_tol" in got["b"].reason
    assert got["c"].verdict == "unchanged" and "not significant" in got["c"].reason
    assert got["d"].verdict == "improvement" and got["d"].z_slower < 0
    assert "e" not in got
    assert got["a"].p_adjusted >= got["a"].p_value  # the BH step only raises p


def _side(rng: np.random.Generator, slow: dict[str, float], sd_process: float) -> list[dict]:
    """Every impl's rows timed in PROCESSES processes of REPEATS samples: a process's level is
    lognormal with `sd_process` and independent across rows (as measured on the nightly profile:
    a shift shared by a process's rows explains ~4% of this variance), samples within 1%."""
    rows = []
    for impl in IMPLS:
        for i in range(ROWS_PER_IMPL):
            level = 10.0 * (1 + slow.get(impl, 0.0))
            levels = level * np.exp(rng.normal(0, sd_process, PROCESSES))
            parts = [list(lv * (1 + 0.01 * rng.uniform(-1, 1, REPEATS))) for lv in levels]
            row = ok_row(case=f"{CASE}-{i:02d}", impl=impl, time_ms=[x for p in parts for x in p])
            row[PER_PROCESS] = [float(np.median(p)) for p in parts]
            rows.append(row)
    return rows


def _compare(tmp_path: Path, seed: int, slow: dict[str, float], sd: float = 0.06):
    rng = np.random.default_rng(seed)
    base = make_run(tmp_path / f"b{seed}", _side(rng, {}, sd))
    cand = make_run(tmp_path / f"c{seed}-{sorted(slow.items())}", _side(rng, slow, sd))
    return compare_paths(base, cand, time_tol=0.10, impl_tol=0.05, common_shift=True)


def test_same_code_nights_flag_no_implementation(tmp_path):
    for seed in range(5):
        res = _compare(tmp_path, seed, {})
        assert len(res.implementations) == len(IMPLS)
        assert not [r for r in res.implementations if r.verdict != "unchanged"], seed


def test_a_ten_percent_slowdown_of_one_kernel_is_found_where_its_rows_alone_miss_it(tmp_path):
    caught = rows_caught = 0
    for seed in range(5):
        res = _compare(tmp_path, 100 + seed, {"sdpa_math": 0.10})
        moved = {r.impl: r.verdict for r in res.implementations if r.verdict != "unchanged"}
        assert set(moved) <= {"sdpa_math"}, moved  # no other implementation is flagged
        caught += moved.get("sdpa_math") == "regression"
        rows_caught += any(r.impl == "sdpa_math" and r.verdict == "regression" for r in res.rows)
        assert res.exit_code == (1 if moved or res.by_verdict("regression") else 0)
    assert caught >= 4
    assert caught > rows_caught  # at time_tol 10% the rows alone sit on the threshold


def test_a_three_percent_slowdown_stays_within_impl_tol(tmp_path):
    flagged = sum(
        any(r.verdict != "unchanged" for r in _compare(tmp_path, 200 + s, {"bpt": 0.03})
            .implementations)
        for s in range(5)
    )  # fmt: skip
    assert flagged <= 1


def test_the_verdict_reaches_exit_code_json_and_markdown(tmp_path):
    res = _compare(tmp_path, 7, {"chunked": 0.25})
    (found,) = [r for r in res.implementations if r.verdict == "regression"]
    assert found.impl == "chunked" and found.num_rows == ROWS_PER_IMPL
    assert res.failed and res.exit_code == 1
    data = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    first = data["implementations"][0]
    assert (first["impl"], first["verdict"]) == ("chunked", "regression")
    text = markdown(res)
    assert "| regression | chunked | 8 |" in text and "Stouffer" in text


def test_normalize_to_leaves_implementations_unjudged(tmp_path):
    rng = np.random.default_rng(3)
    base = make_run(tmp_path / "b", _side(rng, {}, 0.06))
    cand = make_run(tmp_path / "c", _side(rng, {"bpt": 0.3}, 0.06))
    res = compare_paths(base, cand, normalize_to="sdpa_flash")
    assert res.implementations == []  # per-process medians are not normalized


def test_an_implementation_with_too_few_tested_rows_is_named_not_dropped(tmp_path):
    rng = np.random.default_rng(5)
    base, cand = _side(rng, {}, 0.06), _side(rng, {}, 0.06)
    few = [r for r in base if r["impl"] == "bpt"][MIN_ROWS - 1 :]  # bpt keeps MIN_ROWS - 1 rows
    base = [r for r in base if r["impl"] != "bpt" or r not in few]
    res = compare_paths(
        make_run(tmp_path / "b", base), make_run(tmp_path / "c", cand), common_shift=True
    )
    assert "bpt" not in {r.impl for r in res.implementations}
    assert any(f"bpt ({MIN_ROWS - 1} rows)" in w for w in res.warnings), res.warnings


def test_rows_without_variance_add_no_evidence_either_way():
    """Processes that agree exactly give p 0 or 1 (a point interval): such a row must neither
    mask a real slowdown nor turn a negligible one into a regression (adversarial review)."""
    still = ProcessStats(1.0, 1.0, 1.0, 1.0, 1.0, 3, 3)  # unchanged, constant: p 1 both ways
    tiny = ProcessStats(1.0000001, 1.0000001, 1.0000001, 0.0, 1.0, 3, 3)  # constant, +1e-7
    slow = [("a", _proc(1.20, 1e-6))] * 4 + [("a", still)] * 3
    (got,) = judge_implementations(slow, impl_tol=0.05, alpha=0.05, bh=_bh)
    assert got.verdict == "regression" and got.z_slower > 4
    noisy = [("b", _proc(1.08, 0.045))] * 2 + [("b", tiny)]
    (got,) = judge_implementations(noisy, impl_tol=0.05, alpha=0.05, bh=_bh)
    assert got.verdict == "unchanged" and got.z_slower < 3


def test_without_common_shift_implementations_are_not_judged_and_a_note_says_why(tmp_path):
    rng = np.random.default_rng(9)
    base = make_run(tmp_path / "b", _side(rng, {}, 0.06))
    cand = make_run(tmp_path / "c", _side(rng, {"bpt": 0.3}, 0.06))
    res = compare_paths(base, cand, common_shift=False)
    assert res.implementations == []
    assert any("needs common_shift" in w for w in res.warnings)
