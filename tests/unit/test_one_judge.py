"""One judge: `compare`, `report --baseline` and `history` give the same verdicts on the same rows.

The runs are built so the report's old rule (ratio above 1.05 with p20-p80 ranges apart) and
compare's (10% effect and a Mann-Whitney test on the raw samples) disagree: a tight 7% slowdown the
old rule rang and compare leaves unchanged, and a noisy 15% slowdown the old rule missed and compare
finds significant. The report must ring exactly compare's rows.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.regress.compare import Side, compare_paths, judge
from harness.regress.history import flag_history, load_history, night_side, window_side
from harness.report import SECTIONS, ReportBug, register_section, write_report
from harness.report.page import plotly_js
from harness.suite import CompareSettings
from tests.helpers.synthetic_runs import failed_row, make_run, ok_row, samples


def _case(seq_len: int, mask: str = "full") -> str:
    return f"attn-b1-s{seq_len}-h4-d64-float32-{mask}-bs256"


def _row(case: str, impl: str, t: list[float], **kw: Any) -> dict[str, Any]:
    """An ok row with the p20 / p80 the report's old rule read."""
    row = ok_row(case=case, impl=impl, time_ms=t, **kw)
    row["time_ms_p20"], row["time_ms_p80"] = (float(np.percentile(t, q)) for q in (20, 80))
    return row


def _old_report_rule(b: dict[str, Any], c: dict[str, Any]) -> str:
    """The rule comparison.py had (5% and p20/p80 apart), kept here to prove the runs disagree."""
    ratio = c["time_ms_median"] / b["time_ms_median"]
    if ratio > 1.05 and c["time_ms_p20"] > b["time_ms_p80"]:
        return "regression"
    if ratio < 0.95 and c["time_ms_p80"] < b["time_ms_p20"]:
        return "improvement"
    return "unchanged"


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[dict, dict]]]:
    """A baseline and a candidate whose rows cover every kind of verdict."""
    tight, tight2 = samples(10.0, 0.01, seed=1), samples(10.0, 0.01, seed=2)
    noisy = samples(10.0, 0.3, n=60, seed=3)  # enough that the ratio's CI excludes 1.0
    rows = {  # name: (baseline row, candidate row)
        "tight_7pct": (_row(_case(256), "chunked", tight),
                       _row(_case(256), "chunked", [x * 1.07 for x in tight2])),
        "noisy_15pct": (_row(_case(512), "chunked", noisy),
                        _row(_case(512), "chunked", [x * 1.15 for x in noisy[::-1]])),
        "faster_20pct": (_row(_case(1024), "chunked", tight),
                         _row(_case(1024), "chunked", [x * 0.8 for x in tight2])),
        "same": (_row(_case(256), "naive", tight), _row(_case(256), "naive", tight2)),
        "memory_5pct": (_row(_case(512), "naive", tight, peak_mem_bytes=200 << 20),
                        _row(_case(512), "naive", tight2, peak_mem_bytes=int(1.05 * (200 << 20)))),
        "ok_to_oom": (_row(_case(1024), "naive", tight), failed_row(_case(1024), "naive")),
        "skipped": (failed_row(_case(256), "sdpa_cudnn", status="skipped", reason="needs CUDA"),
                    failed_row(_case(256), "sdpa_cudnn", status="skipped", reason="needs CUDA")),
    }  # fmt: skip
    base = make_run(tmp_path / "base", [b for b, _ in rows.values()])
    cand = make_run(tmp_path / "cand", [c for _, c in rows.values()])
    return base, cand, rows


def _figures(page: str) -> list[dict[str, Any]]:
    m = re.search(r'<script type="application/json" id="figures-data">(.*?)</script>', page, re.S)
    assert m
    return json.loads(m.group(1))


def _report_rings(page: str) -> dict[str, set[tuple[str, str, str]]]:
    """(case, impl, phase) of the rows the report's comparison figure rings, per verdict."""
    (fig,) = [f["fig"] for f in _figures(page) if f["id"].startswith("fig-comparison")]
    rings: dict[str, set[tuple[str, str, str]]] = {"regression": set(), "improvement": set()}
    for trace in fig["data"]:
        if trace["meta"]["role"] == "flag":
            rings[trace["meta"]["flag"]] |= {tuple(t.split(" · ")) for t in trace["text"]}
    return rings


def _compare_flags(result) -> dict[str, set[tuple[str, str, str]]]:
    return {v: {(r.case, r.impl, r.phase) for r in result.by_verdict(v)}
            for v in ("regression", "improvement")}  # fmt: skip


def test_the_runs_are_ones_where_the_old_report_rule_and_compare_disagree(pair):
    base, cand, rows = pair
    verdicts = {(r.case, r.impl): r.verdict for r in compare_paths(base, cand).rows}
    old = {name: _old_report_rule(b, c) for name, (b, c) in rows.items() if c["status"] == "ok"
           and b["status"] == "ok"}  # fmt: skip
    key = {name: (b["case"], b["impl"]) for name, (b, _) in rows.items()}
    assert old["tight_7pct"] == "regression" and verdicts[key["tight_7pct"]] == "unchanged"
    assert old["noisy_15pct"] == "unchanged" and verdicts[key["noisy_15pct"]] == "regression"
    assert verdicts[key["faster_20pct"]] == "improvement"
    assert verdicts[key["memory_5pct"]] == verdicts[key["ok_to_oom"]] == "regression"
    assert verdicts[key["same"]] == verdicts[key["skipped"]] == "unchanged"


def test_report_rings_exactly_the_rows_compare_flags(pair, tmp_path):
    base, cand, rows = pair
    result = compare_paths(base, cand)
    res = CliRunner().invoke(app, ["compare", str(base), str(cand)])
    assert res.exit_code == result.exit_code == 1
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(cand), "--baseline", str(base), "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    rings = _report_rings(page)
    assert rings == _compare_flags(result)
    assert {c for c, _, _ in rings["regression"]} == {_case(512), _case(1024)}  # noisy, mem, oom
    assert len(rings["regression"]) == 3 and len(rings["improvement"]) == 1
    assert ("attn-b1-s256-h4-d64-float32-full-bs256", "chunked", "fwd") not in rings["regression"]
    # the hover names compare's verdict and its reasons
    (fig,) = [f["fig"] for f in _figures(page) if f["id"].startswith("fig-comparison")]
    (red,) = [t for t in fig["data"] if t["meta"].get("flag") == "regression"]
    assert "compare: regression" in red["hovertemplate"]
    why = dict(zip(red["text"], red["customdata"], strict=True))
    assert why[f"{_case(512)} · chunked · fwd"].startswith("time +15.0% (BH-adjusted p=")
    assert why[f"{_case(1024)} · naive · fwd"].startswith("status ok -&gt; oom")
    assert "peak memory" in why[f"{_case(512)} · naive · fwd"]
    assert "1 improvement" in page and "3 regression" in page


def test_report_without_the_old_threshold_rule():
    from harness.report import comparison

    assert not hasattr(comparison, "THRESHOLD") and not hasattr(comparison, "compare_rows")
    from harness.report import history_figure

    assert not hasattr(history_figure, "comparison_figure")  # one comparison figure


def test_judge_is_compares_rule_on_one_row(pair):
    base, cand, rows = pair
    b, c = rows["noisy_15pct"]
    by_compare = next(r for r in compare_paths(base, cand).rows if r.case == b["case"]
                      and r.impl == b["impl"])  # fmt: skip
    # compare decides on BH-adjusted p-values; judge given the same one says the same
    bs, cs = Side(b, b["time_samples_ms"]), Side(c, c["time_samples_ms"])
    direct = judge(bs, cs, CompareSettings(), p_adjusted=by_compare.p_adjusted)
    assert by_compare.p_adjusted is not None and "BH-adjusted p=" in by_compare.reasons[0]
    assert direct.to_dict() == by_compare.to_dict()
    alone = judge(bs, cs, CompareSettings())
    assert alone.p_adjusted is None and alone.p_value == by_compare.p_value
    assert alone.reasons[0].startswith("time +15.0% (p=")
    assert judge(None, Side(c), CompareSettings()).verdict == "new"
    assert judge(Side(b), None, CompareSettings()).verdict == "missing"
    assert judge(Side(b), None, CompareSettings(), expected=False).verdict == "vanished"
    no_ci = judge(Side(b, b["time_samples_ms"]), Side(c, c["time_samples_ms"]),
                  CompareSettings(), ci=False)  # fmt: skip
    assert no_ci.verdict == direct.verdict and no_ci.time.ci_low is None


# --- history ------------------------------------------------------------------------------------


def _nights(root: Path, nights: list[dict[str, Any]]) -> None:
    """One run per night; each night maps impl -> row kwargs for ok_row (or a failed_row)."""
    for i, rows in enumerate(nights):
        make_run(root / f"night{i:02d}", rows, utc_time=f"2026-01-{i + 1:02d}T03:00:00+00:00",
                 commit=f"c{i}")  # fmt: skip


def _chunked(flagged) -> list[dict[str, Any]]:
    return flagged[flagged["impl"] == "chunked"].to_dict("records")


def test_history_flags_a_persistent_regression_the_judge_finds(tmp_path):
    times = [10, 10.2, 9.9, 10.1, 10, 10, 10, 13, 13.2]
    _nights(tmp_path, [[ok_row(time_ms=samples(t, 0.01, seed=i))] for i, t in enumerate(times)])
    nights = _chunked(flag_history(load_history(tmp_path)))
    assert [n["regressed"] for n in nights] == [False] * 8 + [True]
    assert nights[-1]["verdict"] == "regression" and nights[-1]["worse"].startswith("time +")
    # the flag is the judge's verdict on that night against the pooled window before the pair
    past = nights[:7]
    direct = judge(window_side(past), night_side(nights[-1]), CompareSettings(), ci=False)
    assert direct.verdict == "regression" and "; ".join(direct.reasons) == nights[-1]["worse"]
    assert len(window_side(past).samples) == 7 * 10


def test_history_does_not_flag_noise_the_old_median_rule_did(tmp_path):
    # Wide samples: the last two nights' medians sit > 10% above the window's median (the old
    # rule flagged that), but their samples are the window's spread again, no evidence of a change.
    window = [[x + 0.01 * i for x in (5, 7, 9, 11, 13, 15)] for i in range(7)]
    noisy = [5, 7, 11.2, 11.6, 13, 15]
    _nights(tmp_path, [[ok_row(time_ms=t)] for t in [*window, noisy, noisy]])
    nights = _chunked(flag_history(load_history(tmp_path)))
    window_median = float(np.median([n["time_ms_median"] for n in nights[:7]]))
    assert all(n["time_ms_median"] > 1.1 * window_median for n in nights[7:])  # old: flagged
    assert not any(n["regressed"] for n in nights)
    assert [n["verdict"] for n in nights[-2:]] == ["unchanged", "unchanged"]


def test_history_flags_a_gradient_error_regression_as_compare_does(tmp_path):
    # The old history rule read err_rel_l2 only; compare gates every error metric.
    def night(i: int, grad_err: float) -> list[dict[str, Any]]:
        row = ok_row(impl="chunked", phase="fwd_bwd", time_ms=samples(10, 0.01, seed=i))
        return [row | {"err_dq_rel_l2": grad_err, "err_naive_same_dtype_grad_rel_l2": 1e-6}]

    _nights(tmp_path, [night(i, 3e-7) for i in range(5)] + [night(5, 1e-6), night(6, 1e-6)])
    nights = _chunked(flag_history(load_history(tmp_path)))
    assert nights[-1]["regressed"] and "err_dq_rel_l2" in nights[-1]["worse"]


def test_history_cli_keeps_its_flags_and_writes_an_offline_page(tmp_path):
    times = [10, 10.2, 9.9, 10.1, 10, 13, 13.2, 13.1]
    _nights(tmp_path / "runs", [[ok_row(time_ms=samples(t, 0.01, seed=i))]
                                for i, t in enumerate(times)])  # fmt: skip
    html, csv = tmp_path / "h.html", tmp_path / "h.csv"
    runner = CliRunner()
    res = runner.invoke(app, ["history", str(tmp_path / "runs"), "--html", str(html),
                              "--csv", str(csv)])  # fmt: skip
    assert res.exit_code == 1, res.output
    page = html.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no CDN: plotly.js is inside
    assert plotly_js()[:200] in page
    header = csv.read_text().splitlines()[0].split(",")
    assert "verdict" in header and "time_samples_ms" not in header

    # --persist 3 needs a third worse night in a row; the last three nights are all slow
    def history(*flags: str) -> int:
        return runner.invoke(app, ["history", str(tmp_path / "runs"), *flags]).exit_code

    assert history("--persist", "3") == 1 and history("--persist", "4") == 0
    assert history("--time-tol", "0.5") == 0  # a 30% slowdown is inside a 50% tolerance
    res = runner.invoke(app, ["history", str(tmp_path / "runs"), "--time-tol", "-1"])
    assert res.exit_code == 2 and "--time-tol" in res.output


# --- NaN from skipped rows, and internal errors -----------------------------------------------

NIGHTLY_IMPLS = ("naive", "chunked", "sdpa_math", "sdpa_flash")  # sdpa_efficient/cudnn: skipped


def _nightly_rows(i: int, slow: float = 1.0) -> list[dict[str, Any]]:
    """The nightly suite's CPU shape: 2 lengths x 2 masks x 2 phases; CUDA-only impls skipped."""
    rows = []
    for seq_len in (256, 1024):
        for mask in ("full", "causal"):
            for phase in ("fwd", "fwd_bwd"):
                case = _case(seq_len, mask)
                for k, impl in enumerate(NIGHTLY_IMPLS):
                    t = samples((1 + k) * seq_len / 256 * (slow if impl == "chunked" else 1),
                                0.01, seed=i)  # fmt: skip
                    rows.append(ok_row(case, impl, phase, time_ms=t) | {"seq_len": seq_len})
                for impl in ("sdpa_efficient", "sdpa_cudnn"):
                    rows.append(failed_row(case, impl, phase, status="skipped",
                                           reason="needs CUDA") | {"seq_len": seq_len})  # fmt: skip
    return rows


def test_report_history_with_skipped_rows(tmp_path):
    root = tmp_path / "nightly"
    for i in range(6):
        make_run(root / f"night{i}", _nightly_rows(i, slow=1.3 if i >= 4 else 1.0),
                 suite_name="nightly", utc_time=f"2026-01-0{i + 1}T03:00:00+00:00")  # fmt: skip
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(root / "night5"), "-o", str(out), "--history",
                                   str(root), "--baseline", str(root / "night0")])  # fmt: skip
    assert res.exit_code == 0, res.output
    figures = {f["id"]: f["fig"] for f in _figures(out.read_text())}
    history = figures["fig-history-0"]["data"]
    skipped = [t for t in history if t.get("mode") == "lines+markers" and "sdpa_cudnn" in t["name"]]
    assert len(skipped) == 8 and all(y is None for t in skipped for y in t["y"])  # NaN -> null
    crosses = [t for t in history if t.get("mode") == "markers"]
    assert len(crosses) == 8 and all("chunked" in t["name"] for t in crosses)  # 8 chunked series
    assert all(t["meta"]["role"] == "flag" for t in crosses)
    rings = [t for t in figures["fig-comparison-0"]["data"] if t["meta"]["role"] == "flag"]
    assert [(t["meta"]["flag"], len(t["x"])) for t in rings] == [("regression", 8)]


def test_an_internal_report_error_is_not_a_user_error(tmp_path):
    run = make_run(tmp_path / "run", [ok_row()])

    def broken(data):
        raise ValueError("a bug in a section builder")

    before = list(SECTIONS)
    register_section("broken", broken)
    try:
        with pytest.raises(ReportBug, match="a bug in a section builder"):
            write_report([run], tmp_path / "r.html")
        res = CliRunner().invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html")])
        assert res.exit_code != 2 and isinstance(res.exception, ReportBug)
    finally:
        SECTIONS[:] = before
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2  # bad input still is


def test_nan_and_inf_become_null_in_adopted_figures():
    import plotly.graph_objects as go

    from harness.report.adopted import adopt
    from harness.report.page import figure_json

    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[1.0, math.nan, math.inf], mode="lines"))
    assert json.loads(figure_json(adopt(fig)))["data"][0]["y"] == [1.0, None, None]


def test_history_uses_the_suite_compare_thresholds_as_compare_does(tmp_path):
    """A suite that tolerates 50% slowdowns: compare passes a 30% one, so history must too."""
    for night in range(6):
        ms = 13.0 if night >= 4 else 10.0
        make_run(tmp_path / f"n{night}", [ok_row(time_ms=samples(ms, 0.01, seed=night))],
                 utc_time=f"2026-01-0{night + 1}T03:00:00+00:00",
                 compare={"time_tol": 0.5})  # fmt: skip
    assert compare_paths(tmp_path / "n3", tmp_path / "n5").exit_code == 0
    assert not flag_history(load_history(tmp_path))["regressed"].any()
    # the same nights under the default 10% tolerance, or the flag, are a regression
    assert flag_history(load_history(tmp_path), overrides={"time_tol": 0.1})["regressed"].iloc[-1]
    result = CliRunner().invoke(app, ["history", str(tmp_path)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["history", str(tmp_path), "--time-tol", "0.1"])
    assert result.exit_code == 1, result.output
