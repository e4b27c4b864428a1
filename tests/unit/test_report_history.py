"""The report's history section: built from many runs, flagged nights marked, strings escaped."""

from __future__ import annotations

import json

from harness.report import write_report
from tests.helpers.synthetic_runs import make_run, ok_row, samples


def test_history_section_with_flagged_nights_and_escaping(tmp_path):
    root = tmp_path / "nights"
    for i, t in enumerate([10, 10.1, 9.9, 10.0, 13.0, 13.1]):
        rows = [ok_row(impl="chunked", time_ms=samples(t, 0.01, seed=i)),
                ok_row(impl="<script>x</script>", time_ms=samples(5, 0.01, seed=i))]  # fmt: skip
        make_run(root / f"night{i}", rows, utc_time=f"2026-01-0{i + 1}T03:00:00+00:00",
                 commit=f"c{i}")  # fmt: skip
    out = write_report([root / "night5"], tmp_path / "r.html", history_root=root)
    page = out.read_text()
    assert 'id="sec-history"' in page
    assert "<script>x</script>" not in page  # raw, outside the escaped JSON
    start = page.index('id="figures-data">') + len('id="figures-data">')
    figures = json.loads(page[start : page.index("</script>", start)])
    history = [f["fig"] for f in figures if f["id"].startswith("fig-history")]
    assert len(history) == 1
    traces = history[0]["data"]
    lines = [t for t in traces if t.get("mode") == "lines+markers"]
    assert len(lines) == 2 and all(len(t["y"]) == 6 for t in lines)
    flagged = [t for t in traces if t.get("mode") == "markers"]
    assert len(flagged) == 1 and len(flagged[0]["y"]) == 1  # only the second slow night
    shown = json.dumps([(t.get("name"), t.get("hovertemplate")) for t in traces])
    assert "<script>" not in shown and "&lt;script&gt;" in shown
