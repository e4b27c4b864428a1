"""The list of report sections: the one place where a new kind of figure plugs in.

A section builder is a pure function `ReportData -> Section | None` (None: nothing to show for
these runs, e.g. no world_size > 1 rows). The page renders `SECTIONS` in order. Another module
adds its own with `register_section("ring_model", builder, before="comparison")`; nothing here
needs to change for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.report.data import ReportData


@dataclass(frozen=True)
class Section:
    """A titled block of figures (plotly JSON dicts, see FigureSpec); `note` is plain text."""

    key: str
    title: str
    figures: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


SectionBuilder = Callable[[ReportData], "Section | None"]
SECTIONS: list[tuple[str, SectionBuilder]] = []


def register_section(key: str, builder: SectionBuilder, *, before: str | None = None) -> None:
    """Add (or replace) the builder called `key`, at the end or in front of section `before`."""
    for i, (name, _) in enumerate(SECTIONS):
        if name == key:
            SECTIONS[i] = (key, builder)
            return
    keys = [name for name, _ in SECTIONS]
    if before is not None and before not in keys:
        raise ValueError(f"register_section: no section {before!r}; sections: {', '.join(keys)}")
    SECTIONS.insert(keys.index(before) if before else len(SECTIONS), (key, builder))


def figure_section(key: str, title: str, figure: Callable[[Any], dict[str, Any] | None],
                   note: str) -> SectionBuilder:  # fmt: skip
    """The common builder: one figure drawn from the rows; no section when it has nothing."""

    def build(data: ReportData) -> Section | None:
        fig = figure(data.rows)
        return None if fig is None else Section(key, title, [fig], note)

    return build


def build_sections(data: ReportData) -> list[Section]:
    return [s for _, builder in SECTIONS if (s := builder(data)) is not None]
