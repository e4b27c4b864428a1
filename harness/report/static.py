"""Optional static export of every figure (PNG or SVG) through kaleido and the system Chromium.

kaleido is an optional dependency (`pip install '.[static]'`); it drives a Chrome it finds on PATH
or through BROWSER_PATH, which we point at the Debian chromium when that is what is installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.errors import HarnessError
from harness.report.page import default_traces, figure_ids
from harness.report.sections import Section

FORMATS = ("png", "svg")


def require_static(fmt: str) -> None:
    """Raise a one-line HarnessError unless `fmt` is known and kaleido imports: called before the
    report writes anything, so a missing package never leaves a half-done report behind."""
    if fmt not in FORMATS:
        raise HarnessError(f"--static: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise HarnessError(
            f"--static {fmt} needs the kaleido package, which is not installed: "
            "pip install '.[static]' (or: pip install 'kaleido>=1.0')"
        ) from None


def export_static(sections: list[Section], out_dir: Path, fmt: str) -> list[Path]:
    require_static(fmt)
    chromium = shutil.which("chromium")
    if chromium and "BROWSER_PATH" not in os.environ:
        os.environ["BROWSER_PATH"] = chromium
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    import plotly.graph_objects as go

    for fid, spec in figure_ids(sections):
        path = out_dir / f"{fid}.{fmt}"
        fig = go.Figure({"data": default_traces(spec), "layout": spec["layout"]})
        fig.write_image(path, format=fmt, width=1400, height=spec["layout"].get("height", 500))
        written.append(path)
    return written
