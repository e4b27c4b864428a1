"""HTML reports of runs: `write_report(run_dirs, out_path)` → one self-contained, offline page.

Pipeline: run dirs → `data.load_report_data` (pandas) → section builders (pure functions of the
frames, listed in `sections.SECTIONS`; add one with `register_section`) → `page.render_page`.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError
from harness.report import (
    accuracy,
    adopted,
    blocks,
    comparison,
    decode,
    memory,
    models,
    patterns,
    roofline,
    scaling,
    shapes,
    throughput,
)
from harness.report.data import ReportData, load_report_data
from harness.report.header import header_html
from harness.report.page import render_page
from harness.report.sections import SECTIONS, Section, build_sections, register_section
from harness.report.table import table_payload
from harness.results import write_text_atomic

for _key, _module in (
    ("throughput", throughput),
    ("roofline", roofline),
    ("decode", decode),
    ("memory", memory),
    ("accuracy", accuracy),
    ("block_size", blocks),
    ("shapes", shapes),
    ("patterns", patterns),
    ("scaling", scaling),
    ("comparison", comparison),
):
    register_section(_key, _module.build)
register_section("history", adopted.history_section)
register_section("ring_model", adopted.ring_model_section, before="comparison")
register_section("model", models.model_section, before="comparison")

__all__ = ["SECTIONS", "ReportBug", "ReportData", "Section", "register_section", "render_report",
           "write_report"]  # fmt: skip


class ReportBug(RuntimeError):
    """Drawing the report failed on valid input: a bug to report, never a user error (exit 2)."""


def render_report(data: ReportData) -> tuple[str, list[Section]]:
    sections = build_sections(data)
    ids = [str(m.get("run_id", "?")) for m in data.metas]
    title = "Attention harness report: " + (", ".join(ids) if ids else "no runs")
    return render_page(title, header_html(data), sections, table_payload(data.rows)), sections


def write_report(
    run_dirs: list[Path], out_path: Path, *, baseline: Path | None = None,
    static: str | None = None, history_root: Path | None = None,
) -> Path:  # fmt: skip
    """Write the report of `run_dirs` (optionally against `baseline`) to `out_path`.

    With `static` ("png" or "svg"), every figure is also exported beside it, under
    `<out_path stem>-figures/`; whether the export can run (kaleido installed) is checked before
    anything is written. With `history_root`, a history section shows every run under it.
    A run directory given twice (another spelling, a symlink) is read once.
    With `baseline`, each run is judged by `harness compare`'s rule and the verdicts are drawn.

    Bad input raises a `HarnessError` (a ValueError: the CLI's exit 2). Any other failure is a
    bug in the report and raises `ReportBug` (a RuntimeError), never mistaken for bad input.
    """
    if static:
        from harness.report.static import require_static

        require_static(static)
    try:
        data = load_report_data([Path(p) for p in run_dirs], baseline=baseline)
        if history_root is not None:
            from harness.regress.history import flag_history, load_history

            data.extra["history"] = flag_history(load_history(history_root))
        text, sections = render_report(data)
    except HarnessError:
        raise
    except Exception as exc:
        raise ReportBug(f"the report failed, not the input: {type(exc).__name__}: {exc}") from exc
    out_path = Path(out_path)
    # atomic, and on failure no temporary file left behind; an OSError is a WriteError naming it
    write_text_atomic(out_path, text, make_parents=True)
    if static:
        from harness.report.static import export_static

        export_static(sections, out_path.parent / f"{out_path.stem}-figures", static)
    return out_path
