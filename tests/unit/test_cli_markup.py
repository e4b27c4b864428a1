"""Strings from results are text, never markup, in every command and file the CLI writes.

One reason (tests/helpers/synthetic_runs.MARKUP_REASON) carries gloo's `[/path:line]` (a rich
closing tag), `[enforce fail at ...]` and `[bold]` (rich styles), `</script><!--` and `<b>` (HTML)
and `|` (a Markdown cell separator); each command must show it exactly as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import harness.cli.inspect_cmd as inspect_cmd
import harness.cli.regress_cmd as regress_cmd
from harness.cli import app
from tests.helpers.synthetic_runs import MARKUP_REASON, hostile_pair


@pytest.fixture
def runs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    # Wide consoles, so the reason is on one line and can be found whole.
    for module in (inspect_cmd, regress_cmd):
        monkeypatch.setattr(module, "out", Console(width=600))
    return hostile_pair(tmp_path)


def _invoke(*args: str, code: int = 0) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == code, res.output
    return res.stdout


def test_show_prints_the_reason_verbatim_in_every_format(runs):
    _, cand = runs
    assert MARKUP_REASON in _invoke("show", str(cand))
    assert MARKUP_REASON in _invoke("show", str(cand), "--all")
    rows = json.loads(_invoke("show", str(cand), "--format", "json"))
    assert [r["reason"] for r in rows].count(MARKUP_REASON) == 2
    assert MARKUP_REASON in _invoke("show", str(cand), "--format", "csv")
    assert MARKUP_REASON.replace("|", "\\|") in _invoke("show", str(cand), "--format", "md")


def test_table_lists_the_reason_verbatim(runs):
    _, cand = runs
    assert f"- flash_attn2: {MARKUP_REASON}" in _invoke("table", str(cand))


def test_compare_prints_and_writes_the_reason_verbatim(runs, tmp_path):
    base, cand = runs
    js, md = tmp_path / "cmp.json", tmp_path / "cmp.md"
    text = _invoke("compare", str(base), str(cand), "--json", str(js), "--markdown", str(md),
                   code=1)  # fmt: skip
    assert f"status ok -> error: {MARKUP_REASON}" in text
    (row,) = [r for r in json.loads(js.read_text(encoding="utf-8"))["rows"] if r["impl"] == "naive"]
    assert row["reasons"] == [f"status ok -> error: {MARKUP_REASON}"]
    assert MARKUP_REASON.replace("|", "\\|") in md.read_text(encoding="utf-8")


def test_report_escapes_the_reason_and_keeps_it_as_data(runs, tmp_path):
    _, cand = runs
    page = tmp_path / "report.html"
    _invoke("report", str(cand), "-o", str(page))
    html = page.read_text(encoding="utf-8")
    assert MARKUP_REASON not in html  # its </script> is written <\/script>
    assert html.count("</script>") == html.count("<script")  # no script ended early
    blocks = re.findall(r'<script type="application/json" id="([\w-]+)">(.*?)</script>', html, re.S)
    assert blocks and all("<!--" not in body and "</" not in body for _, body in blocks)
    table = json.loads(dict(blocks)["table-data"])
    assert MARKUP_REASON in {cell for row in table["rows"] for cell in row}
