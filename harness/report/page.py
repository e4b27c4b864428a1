"""Assemble the self-contained HTML page: plotly.js inlined once, figures and table as JSON.

All data reach the page as JSON inside `<script type="application/json">`, with `</` and `<!`
escaped so no string from results can close the script element; the table sets
cells with textContent and plotly text was escaped by the figure builders. No network is needed.
JSON has no NaN or infinity: figure builders leave such points out (or draw a gap), any a figure
still holds becomes null here (`finite_json`), and the table shows them as the text `nan` / `inf`.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import plotly

from harness.report.common import esc
from harness.report.sections import Section

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                 "toImageButtonOptions": {"format": "png", "scale": 2}}  # fmt: skip


@lru_cache(maxsize=1)
def plotly_js() -> str:
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path.read_text(encoding="utf-8")


def safe_json(text: str) -> str:
    """JSON text that is safe inside a <script> element (and still the same JSON).

    Inside a script element only `</` (which may close it) and `<!` (a comment opener that changes
    how the parser looks for the end) matter; `<` occurs in JSON text only inside strings, where
    `<\\/` and `\\u003c!` mean the same characters.
    """
    return text.replace("</", "<\\/").replace("<!", "\\u003c!")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def finite_json(value: Any) -> Any:
    """`value` with every NaN / infinity (also inside numpy arrays) as None: a gap in plotly."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if hasattr(value, "item") or hasattr(value, "tolist"):
        return finite_json(_jsonable(value))
    return value


def figure_json(fig: dict[str, Any]) -> str:
    """A figure as strict JSON; a NaN or infinity a builder left in becomes null (a gap)."""
    try:
        return json.dumps(fig, default=_jsonable, allow_nan=False, separators=(",", ":"))
    except ValueError:  # "Out of range float values are not JSON compliant": rare, so walk then
        return json.dumps(finite_json(fig), default=_jsonable, allow_nan=False,
                          separators=(",", ":"))  # fmt: skip


def default_traces(fig: dict[str, Any]) -> list[dict[str, Any]]:
    """The traces the page shows before anyone touches a control (each control's first option)."""
    chosen = {c["name"]: c["options"][0]["value"] for c in fig.get("controls", [])}
    return [
        t
        for t in fig["data"]
        if all(chosen.get(k, v) == v for k, v in t["meta"].get("controls", {}).items())
    ]


def figure_ids(sections: list[Section]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"fig-{s.key}-{i}", fig) for s in sections for i, fig in enumerate(s.figures)]


def _sections_html(sections: list[Section]) -> tuple[str, str]:
    nav, body = [], []
    ids = iter(figure_ids(sections))
    for s in sections:
        nav.append(f'<a href="#sec-{esc(s.key)}">{esc(s.title)}</a>')
        figs = "".join(
            f'<div class="figbox"><div class="controls" id="{fid}-controls"></div>'
            f'<div class="fig" id="{fid}" data-section="{esc(s.key)}"></div></div>'
            for fid, _ in (next(ids) for _ in s.figures)
        )
        note = f'<p class="note">{esc(s.note)}</p>' if s.note else ""
        body.append(f'<section id="sec-{esc(s.key)}" class="card"><h2>{esc(s.title)}</h2>'
                    f"{note}{figs}</section>")  # fmt: skip
    nav.append('<a href="#sec-table">All rows</a>')
    return "".join(nav), "".join(body)


def render_page(title: str, header: str, sections: list[Section], table: dict[str, Any]) -> str:
    figures = (
        "["
        + ",".join(
            f'{{"id": {json.dumps(fid)}, "fig": {figure_json(fig)}}}'
            for fid, fig in figure_ids(sections)
        )
        + "]"
    )
    nav, body = _sections_html(sections)
    return _TEMPLATE.format(
        title=esc(title), css=_CSS, header=header, nav=nav, body=body,
        figures=safe_json(figures), table=safe_json(json.dumps(table, allow_nan=False)),
        config=safe_json(json.dumps(PLOTLY_CONFIG)), plotly=plotly_js(), js=_JS,
    )  # fmt: skip


_CSS = """
:root { --fg:#1d2330; --muted:#5b6472; --line:#e3e6ea; --bg:#f6f7f9; --accent:#1f5fbf; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif; color:var(--fg);
  background:var(--bg); }
header.top { background:#fff; border-bottom:1px solid var(--line); padding:14px 28px 8px; }
header.top h1 { margin:0 0 6px; font-size:20px; }
nav a { margin-right:14px; color:var(--accent); text-decoration:none; font-size:13px; }
main { max-width:1500px; margin:0 auto; padding:16px 28px 40px; }
.runs { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:14px; }
.run { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 14px;
  flex:1 1 420px; }
.run h2 { font-size:14px; margin:0 0 6px; }
.run dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:0 0 8px; }
.run dt { color:var(--muted); } .run dd { margin:0; overflow-wrap:anywhere; }
.chip { display:inline-block; padding:1px 8px; margin:2px 4px 2px 0; border-radius:10px;
  background:#eef0f3; font-size:12px; }
.st-ok { background:#e3f4e6; } .st-oom,.st-error { background:#fbe4e4; }
.st-timeout { background:#fdf0dc; } .st-skipped,.st-unsupported { background:#eceef2; }
.nonfinite { margin-top:6px; color:#b26a00; font-size:12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 16px;
  margin-bottom:16px; }
.card h2 { font-size:16px; margin:0 0 2px; } .note { color:var(--muted); margin:0 0 6px; }
.fig { width:100%; }
.summarywrap { max-height:360px; overflow:auto; border:1px solid var(--line); }
table.summary th { cursor:default; } table.summary td.win b { font-weight:600; }
table.summary .val, table.summary td.ratio { color:var(--muted); white-space:nowrap; }
.controls label { margin-right:16px; font-size:13px; color:var(--muted); }
.controls select { margin-left:4px; padding:2px 4px; }
td.case { min-width:13em; max-width:22em; overflow-wrap:anywhere; }
#rows.compact .extra { display:none; }
#table-tools { margin:6px 0; } #table-tools input { padding:4px 8px; width:320px; }
.tablewrap { max-height:640px; overflow:auto; border:1px solid var(--line); }
table { border-collapse:collapse; font-size:12px; width:100%; }
th { position:sticky; top:0; background:#f0f2f5; cursor:pointer; text-align:left;
  padding:4px 6px; user-select:none; vertical-align:bottom; min-width:4.5em; }
th.sorted-asc::after { content:" ▲"; } th.sorted-desc::after { content:" ▼"; }
td { padding:3px 6px; border-top:1px solid var(--line); vertical-align:top; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
td.reason { min-width:180px; max-width:360px; overflow-wrap:anywhere; color:var(--muted); }
tr.s-oom td.status, tr.s-error td.status { color:#b3261e; font-weight:600; }
tr.s-timeout td.status { color:#b26a00; font-weight:600; }
"""

_JS = r"""
(function () {
  const t0 = performance.now();
  const figures = JSON.parse(document.getElementById('figures-data').textContent);
  const config = JSON.parse(document.getElementById('plotly-config').textContent);
  const table = JSON.parse(document.getElementById('table-data').textContent);
  const fmt = (v) => v === null || v === undefined ? '' : String(v);
  // numeric cells that are not finite arrive as text; sort them as numbers, `nan` with the blanks
  const NONFINITE = {'inf': Infinity, '-inf': -Infinity, 'nan': null};
  const number = (v) => typeof v === 'string' && v in NONFINITE ? NONFINITE[v] : v;
  const tbody = document.querySelector('#rows tbody');
  const headRow = document.querySelector('#rows thead tr');
  const statusCol = table.columns.indexOf('status');
  let order = table.rows.map((_, i) => i);
  const PAGE = 200;  // a few hundred DOM rows keep the page fast; "show all" renders the rest
  let limit = PAGE;
  // headers with units (`labels`), the field name as tooltip; `extra` columns hide until asked
  const extra = table.extra || [];
  const scale = table.scale || [];
  const show = (v, c) => typeof v === 'number' && scale[c] ? String(+(v * scale[c]).toPrecision(4))
    : fmt(v);
  table.columns.forEach((name, c) => {
    const th = document.createElement('th');
    th.textContent = (table.labels || table.columns)[c];
    th.title = name;
    if (extra[c]) th.classList.add('extra');
    th.dataset.col = String(c);
    th.addEventListener('click', () => sortBy(c, th));
    headRow.appendChild(th);
  });
  function draw() {
    const needle = document.getElementById('row-filter').value.toLowerCase();
    const frag = document.createDocumentFragment();
    let shown = 0, matched = 0;
    for (const i of order) {
      const row = table.rows[i];
      if (needle && !row.some((v) => fmt(v).toLowerCase().includes(needle))) continue;
      if (++matched > limit) continue;
      const tr = document.createElement('tr');
      if (statusCol >= 0) tr.className = 's-' + fmt(row[statusCol]);
      row.forEach((v, c) => {
        const td = document.createElement('td');
        td.textContent = show(v, c);
        const name = table.columns[c];
        td.className = (table.numeric[c] ? 'num' : name) + (extra[c] ? ' extra' : '');
        tr.appendChild(td);
      });
      frag.appendChild(tr);
      shown++;
    }
    tbody.replaceChildren(frag);
    document.getElementById('row-count').textContent =
      (needle ? matched + ' matching, ' : '') + shown + ' shown of ' + table.rows.length + ' rows';
    document.getElementById('show-all').hidden = matched <= limit;
  }
  function sortBy(c, th) {
    const desc = th.classList.contains('sorted-asc');
    for (const h of document.querySelectorAll('#rows th')) {
      h.classList.remove('sorted-asc', 'sorted-desc');
    }
    th.classList.add(desc ? 'sorted-desc' : 'sorted-asc');
    const num = table.numeric[c];
    const key = (i) => num ? number(table.rows[i][c]) : table.rows[i][c];
    order.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === null && y === null) return a - b;
      if (x === null) return 1;
      if (y === null) return -1;
      const r = num ? (x === y ? 0 : x < y ? -1 : 1) : String(x).localeCompare(String(y));
      return (desc ? -r : r) || a - b;
    });
    draw();
  }
  document.getElementById('row-filter').addEventListener('input', draw);
  const more = document.getElementById('more-columns');
  const hidden = table.columns.filter((_, c) => extra[c]);
  more.hidden = hidden.length === 0;
  more.title = hidden.join(', ');
  more.addEventListener('click', () => {
    const compact = document.getElementById('rows').classList.toggle('compact');
    more.textContent = compact ? 'more columns' : 'fewer columns';
  });
  document.getElementById('show-all').addEventListener('click', () => {
    limit = Infinity;
    draw();
  });
  draw();
  function matches(trace, chosen) {
    const wanted = (trace.meta && trace.meta.controls) || {};
    return Object.keys(wanted).every((k) => !(k in chosen) || chosen[k] === wanted[k]);
  }
  function plot(f, chosen) {
    // A deep copy, so an option's layout changes ("title.text") never leak into another's.
    const layout = JSON.parse(JSON.stringify(f.fig.layout));
    for (const c of f.fig.controls || []) {
      const opt = c.options.find((o) => o.value === chosen[c.name]);
      for (const [path, value] of Object.entries((opt && opt.relayout) || {})) {
        const keys = path.split('.');
        let node = layout;
        for (const k of keys.slice(0, -1)) node = node[k] = node[k] || {};
        node[keys[keys.length - 1]] = value;
      }
    }
    return Plotly.react(f.id, f.fig.data.filter((t) => matches(t, chosen)), layout, config);
  }
  function addControls(f, chosen) {
    const box = document.getElementById(f.id + '-controls');
    for (const c of f.fig.controls || []) {
      const label = document.createElement('label');
      label.textContent = c.label + ' ';
      const select = document.createElement('select');
      select.dataset.control = c.name;
      for (const o of c.options) {
        const opt = document.createElement('option');
        opt.value = o.value;
        opt.textContent = o.label;
        select.appendChild(opt);
      }
      select.addEventListener('change', () => { chosen[c.name] = select.value; plot(f, chosen); });
      label.appendChild(select);
      box.appendChild(label);
    }
  }
  window.__reportFigures = figures;
  Promise.all(figures.map((f) => {
    const chosen = {};
    for (const c of f.fig.controls || []) chosen[c.name] = c.options[0].value;
    addControls(f, chosen);
    return plot(f, chosen);
  })).then(() => {
      window.__reportScriptStartMs = t0;
      window.__reportRenderMs = performance.now() - t0;
      window.__reportReadyMs = performance.now();
      document.body.dataset.ready = '1';
    });
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
<script>{plotly}</script>
</head><body>
<header class="top"><h1>{title}</h1><nav>{nav}</nav></header>
<main>
{header}
{body}
<section id="sec-table" class="card"><h2>All rows</h2>
<p class="note">Every row with its status and reason; click a column to sort, type to filter;
"more columns" adds dtype, masking, block and world size, tokens/s.</p>
<div id="table-tools"><input id="row-filter" type="search" placeholder="filter rows">
<span id="row-count"></span> <button id="show-all" type="button" hidden>show all</button>
<button id="more-columns" type="button" hidden>more columns</button></div>
<div class="tablewrap"><table id="rows" class="compact"><thead><tr></tr></thead><tbody></tbody>
</table></div>
</section>
</main>
<script type="application/json" id="figures-data">{figures}</script>
<script type="application/json" id="plotly-config">{config}</script>
<script type="application/json" id="table-data">{table}</script>
<script>{js}</script>
</body></html>
"""
