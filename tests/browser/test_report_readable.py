"""The report reads at a glance on a 1280 px screen: no sideways scrolling, the row table's extra
columns behind a button, and lines that coincide still told apart by symbol or dash (issue 14)."""

from __future__ import annotations

import json

import pytest

from harness.report import write_report
from tests.browser.conftest import ARTIFACTS
from tests.helpers.synthetic_report import write_synthetic_run

pytestmark = pytest.mark.browser

# Line traces plotly drew in a figure, grouped by panel and points: the groups that coincide.
COINCIDING = """(id) => {
  const gd = document.getElementById(id), groups = {};
  gd._fullData.forEach((t) => {
    if (!t.visible || t.meta.role !== 'line' || !String(t.mode).includes('lines')) return;
    const key = t.xaxis + JSON.stringify(Array.from(t.x)) + JSON.stringify(Array.from(t.y));
    (groups[key] = groups[key] || []).push(
      {name: t.name, symbol: String(t.marker.symbol), dash: t.line.dash});
  });
  return Object.values(groups).filter((g) => g.length > 1);
}"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("readable")
    return write_report([write_synthetic_run(root, 200)], root / "report.html")


@pytest.fixture(scope="module")
def page_1280(browser, report):
    """One page for the module: loading plotly.js takes seconds on a busy machine."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(report.resolve().as_uri())
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
    yield page, errors
    page.close()


def test_no_sideways_scrolling_at_1280_px_and_extra_columns_on_demand(page_1280):
    page, errors = page_1280
    widths = page.evaluate("""() => {
        const s = document.scrollingElement, w = document.querySelector('.tablewrap');
        return {page: [s.scrollWidth, s.clientWidth], table: [w.scrollWidth, w.clientWidth]};
    }""")
    assert widths["page"][0] <= widths["page"][1], widths
    assert widths["table"][0] <= widths["table"][1], widths
    headers = page.eval_on_selector_all(
        "#rows th", "els => els.map(e => [e.textContent, e.offsetWidth > 0])"
    )
    shown = [h for h, visible in headers if visible]
    assert "median time (ms)" in shown and "peak memory (MiB)" in shown  # units in headers
    assert "dtype" not in shown and "block size" not in shown
    page.click("#more-columns")
    shown = page.eval_on_selector_all(
        "#rows th", "els => els.filter(e => e.offsetWidth > 0).map(e => e.textContent)"
    )
    assert {"dtype", "causal", "block size", "world size", "tokens/s"} <= set(shown)
    page.click("#more-columns")
    # bytes are shown in MiB; sorting still uses the stored bytes
    col = [h for h, _ in headers].index("peak memory (MiB)")
    table = json.loads(page.text_content("#table-data"))
    first = page.eval_on_selector(f"#rows tbody tr td:nth-child({col + 1})", "e => e.textContent")
    raw = table["rows"][0][table["columns"].index("peak_mem_bytes")]
    assert float(first) == pytest.approx(raw / 2**20, rel=1e-3)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-1280.png"), full_page=True)
    assert errors == []


@pytest.mark.parametrize("fig", ["fig-memory-0", "fig-throughput-0"])
def test_lines_that_coincide_differ_in_symbol_or_dash(page_1280, fig):
    page, errors = page_1280
    if fig == "fig-throughput-0":  # give chunked sdpa_flash's numbers: the two lines coincide
        page.evaluate("""() => {
            const f = window.__reportFigures.find((x) => x.id === 'fig-throughput-0');
            const gd = document.getElementById(f.id);
            const lines = gd.data.filter((t) => t.meta.role === 'line');
            const a = lines.find((t) => t.name === 'chunked');
            const b = lines.find((t) => t.name === 'ring_demo' && t.xaxis === a.xaxis);
            b.x = a.x.slice(); b.y = a.y.slice();
            return Plotly.react(gd, gd.data, gd.layout);
        }""")
    groups = page.evaluate(COINCIDING, fig)
    assert groups, "the synthetic run has lines that coincide (chunked and ring_demo)"
    for group in groups:
        styles = [(t["symbol"], t["dash"]) for t in group]
        assert len(set(styles)) == len(styles), group
        assert len({t["symbol"] for t in group}) == len(group), group
    assert errors == []
