"""The report page and `harness report`: offline, escaped, one plotly.js, pluggable sections."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.report import SECTIONS, Section, register_section, write_report
from harness.report.data import load_report_data
from harness.report.header import status_counts
from harness.report.page import plotly_js, safe_json
from tests.helpers.synthetic_report import HOSTILE_REASON, write_synthetic_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("runs"), 1200)


@pytest.fixture(scope="module")
def small_run_dir(tmp_path_factory):
    """For what the size does not matter to (the hook, the CLI's wiring): a report's cost grows
    with its rows (1,200 rows against a baseline: ~10 s on a 2-core machine, 240: ~2 s)."""
    return write_synthetic_run(tmp_path_factory.mktemp("small"), 240)


@pytest.fixture(scope="module")
def html(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return write_report([run_dir], out).read_text()


def _json_block(page: str, block_id: str):
    match = re.search(
        rf'<script type="application/json" id="{block_id}">(.*?)</script>', page, re.S
    )
    assert match, block_id
    return json.loads(match.group(1))


def test_page_is_offline_with_plotly_inlined_once(html):
    assert html.count(plotly_js()[:200]) == 1
    assert not re.search(r"<script[^>]+src=", html)
    ours = html.replace(plotly_js(), "")
    assert "http://" not in ours and "https://" not in ours


def test_hostile_reason_never_reaches_the_page_as_markup(html):
    assert HOSTILE_REASON not in html  # its </script> is written <\\/script>
    markup = re.sub(r'<script type="application/json".*?</script>', "", html, flags=re.S)
    assert "__pwned" not in markup  # outside the inert JSON blocks: nowhere
    table = _json_block(html, "table-data")  # ... and the table holds it verbatim, as text
    assert HOSTILE_REASON in {cell for row in table["rows"] for cell in row}


def test_safe_json_round_trips_and_cannot_close_a_script():
    text = json.dumps({"a": "</script><script>x()</SCRIPT > <!-- <\\/b>"}, ensure_ascii=False)
    safe = safe_json(text)
    assert "</" not in safe and "<!" not in safe
    assert json.loads(safe) == json.loads(text)


def test_header_counts_every_status(run_dir, html):
    data = load_report_data([run_dir])
    counts = status_counts(data.rows)
    assert sum(counts.values()) == len(data.rows) == 1200
    assert {"ok", "oom", "timeout", "error", "unsupported"} <= {s for s, n in counts.items() if n}
    for status, n in counts.items():
        assert f'data-status="{status}">{status} <b>{n}</b>' in html
    assert "Synthetic CPU (cpu)" in html and "2.13.0+cpu" in html


def test_table_has_every_row(html):
    table = _json_block(html, "table-data")
    assert len(table["rows"]) == 1200
    assert {"case", "impl", "phase", "status", "reason"} <= set(table["columns"])


def test_sections_list_is_the_extension_hook(small_run_dir, tmp_path):
    def extra(data):
        return Section("extra", "Extra <section>", [], f"{len(data.rows)} rows <b>seen</b>")

    before = list(SECTIONS)
    try:
        register_section("extra", extra, before="memory")
        keys = [k for k, _ in SECTIONS]
        assert keys.index("extra") == keys.index("memory") - 1
        page = write_report([small_run_dir], tmp_path / "r.html").read_text()
        assert "Extra &lt;section&gt;" in page and "240 rows &lt;b&gt;seen&lt;/b&gt;" in page
        with pytest.raises(ValueError, match="no section 'nope'; sections: throughput"):
            register_section("other", extra, before="nope")
    finally:
        SECTIONS[:] = before


def test_cli_report_and_baseline(small_run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cmp.html"
    result = runner.invoke(
        app, ["report", str(small_run_dir), "-o", str(out), "--baseline", str(small_run_dir)]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'id="sec-comparison"' in page and "Ratios against baseline synthetic-240" in page


def test_cli_report_bad_input_exits_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = runner.invoke(app, ["report", str(tmp_path), "--static", "gif"])
    assert result.exit_code == 2 and "valid: png, svg" in result.output


def test_empty_run_still_reports(tmp_path):
    run = write_synthetic_run(tmp_path, 0)
    page = write_report([run], tmp_path / "r.html").read_text()
    assert _json_block(page, "figures-data") == [] and "0 rows" in page


def test_harness_run_writes_a_report(write_suite, tmp_path):
    """`harness run` ends with report.html in the run directory (a real, tiny CPU run)."""
    import subprocess
    import sys

    from tests.conftest import tiny_suite

    suite = write_suite(tiny_suite(implementations=["naive", "chunked"]))
    cmd = [sys.executable, "-m", "harness", "run", str(suite), "--out", str(tmp_path / "runs")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    page = (run_dir / "report.html").read_text()
    assert f"report: {run_dir / 'report.html'}" in out.stderr
    figures = _json_block(page, "figures-data")
    assert [f["id"] for f in figures] == ["fig-throughput-0", "fig-roofline-0", "fig-memory-0",
                                          "fig-accuracy-0"]  # fmt: skip
    # a real run records its device's ceilings (measured on a CPU): the roofline draws them
    roofline = next(f["fig"] for f in figures if f["id"] == "fig-roofline-0")
    assert any(t["meta"]["role"] == "roof" for t in roofline["data"])
