"""The report in a real headless Chromium: loads cleanly, draws every figure, stays fast."""

from __future__ import annotations

import pytest

from harness.report import write_report
from harness.report.page import default_traces
from tests.browser.conftest import ARTIFACTS
from tests.helpers.synthetic_report import HOSTILE_REASON, write_synthetic_run

pytestmark = pytest.mark.browser

# Per figure on the page: [visible trace count, points per visible trace, drawn marker count].
RENDERED = """() => window.__reportFigures.map((f) => {
  const gd = document.getElementById(f.id);
  return {id: f.id, traces: gd.data.length,
          points: gd.data.map((t) => (t.x || []).length),
          roles: gd.data.map((t) => t.meta.role),
          drawn: gd.querySelectorAll('.scatterlayer .trace .points path.point').length};
})"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = write_synthetic_run(root, 1200)
    return write_report([run], root / "report.html")


def _expected(report_path):
    """What Python put on the page for the default control values, figure by figure."""
    import json
    import re

    text = report_path.read_text()
    blob = re.search(r'id="figures-data">(.*?)</script>', text, re.S).group(1)
    return {f["id"]: default_traces(f["fig"]) for f in json.loads(blob)}


def test_page_loads_without_errors_and_draws_every_point(open_report, report):
    page, errors = open_report(report)
    assert errors == []
    expected = _expected(report)
    rendered = {r["id"]: r for r in page.evaluate(RENDERED)}
    assert (
        set(rendered)
        == set(expected)
        == {
            "fig-throughput-0",
            "fig-memory-0",
            "fig-accuracy-0",
            "fig-block_size-0",
            "fig-scaling-0",
            "fig-ring_model-0",
            "fig-model-0",
            "fig-model-1",
        }
    )
    for fid, traces in expected.items():
        got = rendered[fid]
        assert got["traces"] == len(traces) > 0, fid
        assert got["points"] == [len(t["x"]) for t in traces], fid
        assert "line" in got["roles"], fid
        markers = sum(sum(y is not None for y in t["y"]) for t in traces
                      if "markers" in t.get("mode", ""))  # fmt: skip
        assert got["drawn"] == markers > 0, fid
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-synthetic.png"), full_page=True)
    assert (ARTIFACTS / "report-synthetic.png").stat().st_size > 10_000


def test_hostile_reason_is_text_not_markup(open_report, report):
    page, errors = open_report(report)
    page.fill("#row-filter", "__pwned")
    cells = page.eval_on_selector_all("#rows td.reason", "els => els.map(e => e.textContent)")
    assert cells and set(cells) == {HOSTILE_REASON}
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('#rows script, #rows b').length") == 0
    assert errors == []


def test_controls_switch_what_is_drawn(open_report, report):
    page, errors = open_report(report)
    page.select_option("#fig-throughput-0-controls select[data-control='phase']", "fwd_bwd")
    page.wait_for_function("""() => document.getElementById('fig-throughput-0').data
        .every((t) => t.meta.controls.phase === 'fwd_bwd')""")
    page.select_option("#fig-throughput-0-controls select[data-control='metric']", "tokens_per_s")
    page.wait_for_function("""() => document.getElementById('fig-throughput-0').layout
        .title.text.includes('tokens/s')""")
    shown, wanted = page.evaluate("""() => {
        const f = window.__reportFigures[0], gd = document.getElementById(f.id);
        const slice = f.fig.controls.find((c) => c.name === 'slice').options[0].value;
        const want = f.fig.data.filter((t) => t.meta.controls.phase === 'fwd_bwd'
            && t.meta.controls.metric === 'tokens_per_s' && t.meta.controls.slice === slice);
        return [gd.data.length, want.length];
    }""")
    assert shown == wanted > 0
    assert errors == []


def test_table_sorts_numerically(open_report, report):
    page, _ = open_report(report)
    page.click("#rows th:text-is('seq_len')")
    col = page.evaluate("window.__reportFigures && [...document.querySelectorAll('#rows th')]"
                        ".findIndex((th) => th.textContent === 'seq_len')")  # fmt: skip
    values = page.evaluate(f"[...document.querySelectorAll('#rows tbody tr')]"
                           f".map((tr) => Number(tr.children[{col}].textContent))")  # fmt: skip
    assert len(values) == 200 and values == sorted(values) and values[0] == 256


def test_5000_rows_render_fast_and_small(open_report, tmp_path):
    run = write_synthetic_run(tmp_path, 5000)
    path = write_report([run], tmp_path / "report.html")
    size = path.stat().st_size
    # 11 MiB: ~3/8 of these rows run on P = 2/4/8 devices, drawn as their own throughput lines
    # since the report stopped dropping them (~0.75 MiB of the 10.5).
    assert size < 11 * 2**20, f"{size / 2**20:.1f} MiB"
    # Rendering = our script: parse the embedded data, build the table, draw every figure. The
    # navigation-to-ready time adds parsing plotly.js itself (4.8 MB, the same for a 10-row run),
    # which on a busy 2-core machine alone can take 2-3 s; it is printed, not asserted.
    # Best of three loads: other work on the machine can only add to a load's time.
    render, ready = [], []
    for _ in range(3):
        page, errors = open_report(path)
        assert errors == []
        render.append(page.evaluate("window.__reportRenderMs"))
        ready.append(page.evaluate("window.__reportReadyMs"))
        page.close()
    print(
        f"5,000 rows: {size / 2**20:.2f} MiB; render {[round(t) for t in render]} ms, "
        f"navigation to ready {[round(t) for t in ready]} ms"
    )
    assert min(render) < 3000


def test_static_export_through_kaleido(browser, tmp_path):
    """`--static svg` exports every figure with kaleido driving the same system Chromium."""
    pytest.importorskip("kaleido", reason="kaleido not installed: pip install '.[static]'")
    run = write_synthetic_run(tmp_path, 300)
    write_report([run], tmp_path / "r.html", static="svg")
    files = sorted(p.name for p in (tmp_path / "r-figures").iterdir())
    assert files == sorted(
        [f"fig-{k}-0.svg" for k in ("accuracy", "memory", "ring_model", "scaling", "throughput")]
        + ["fig-model-0.svg", "fig-model-1.svg"]
    )
    assert all("<svg" in (tmp_path / "r-figures" / f).read_text()[:500] for f in files)
