"""The frontier of each (workload, implementation, phase): search, record, ratios, JSON file.

The file: `schema_version` (FRONTIER_FORMAT_VERSION), device, budget, records. A record (one per
target): `workload`, `impl`, `phase`, `axis`
(`seq_len`, or `cache_len` for decode), `max_len` (largest length that passed; None when even
the first failed), `max_tokens` (max_len × batch), `budget_bytes` (what the probes were held to),
`peak_mem_bytes` (measured at max_len, inputs included), `first_fail_len`, `first_fail_status`,
`first_fail_reason` (the smallest failing length tried; None when capped), `capped` (max_len hit
--max-seqlen), the grid (`start`, `granularity`, `resolution`, `max_seqlen`), `ratios`
({other impl: max_len / its max_len} within the same workload and phase) and every probe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from harness.frontier.probe import AXIS, Prober, Shape, budget_of
from harness.frontier.search import Probe, SearchResult, search_max

FRONTIER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Target:
    workload: str
    impl: str
    phase: str


@dataclass(frozen=True)
class Grid:
    start: int
    granularity: int
    resolution: int
    max_seqlen: int


def record_of(target: Target, result: SearchResult, shape: Shape, grid: Grid,
              budget_bytes: int | None) -> dict[str, Any]:  # fmt: skip
    """The JSON record of one search (ratios are added by `add_ratios`)."""
    at_max, fail = result.at_max, result.first_fail
    return {
        "workload": target.workload, "impl": target.impl, "phase": target.phase,
        "axis": AXIS[target.workload], "max_len": result.max_len,
        "max_tokens": None if result.max_len is None else result.max_len * shape.batch,
        "budget_bytes": budget_bytes,
        "peak_mem_bytes": None if at_max is None else at_max.peak_mem_bytes,
        "first_fail_len": None if fail is None else fail.length,
        "first_fail_status": None if fail is None else fail.status,
        "first_fail_reason": None if fail is None else fail.reason,
        "capped": result.capped, **asdict(grid), "shape": asdict(shape),
        "probes": [p.to_dict() for p in result.probes],
    }  # fmt: skip


def add_ratios(records: list[dict[str, Any]]) -> None:
    """Each record's max_len over every other's of the same workload and phase (None where a
    side has no max_len)."""
    for rec in records:
        rec["ratios"] = {
            other["impl"]: (rec["max_len"] / other["max_len"]
                            if rec["max_len"] and other["max_len"] else None)
            for other in records
            if other is not rec and (other["workload"], other["phase"]) ==
            (rec["workload"], rec["phase"])
        }  # fmt: skip


ProgressFn = Callable[[Target, Probe], None]


def run_frontier(targets: Iterable[Target], shape: Shape, grid: Grid, prober: Prober, *,
                 progress: ProgressFn | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Search every target with `prober` (its device and budget); the records, with ratios."""
    records = []
    for target in targets:
        seen = len(prober.rows)

        def probe(length: int, target: Target = target) -> Probe:
            result = prober.probe(target.workload, target.impl, target.phase, shape, length)
            if progress is not None:
                progress(target, result)
            return result

        result = search_max(probe, start=grid.start, granularity=grid.granularity,
                            max_len=grid.max_seqlen, resolution=grid.resolution)  # fmt: skip
        budget = budget_of(prober.rows[seen:]) or prober.budget_bytes
        records.append(record_of(target, result, shape, grid, budget))
    add_ratios(records)
    return records


def document(records: list[dict[str, Any]], *, device: str, budget_bytes: int | None,
             budget_source: str) -> dict[str, Any]:  # fmt: skip
    """The `--json` file: a schema version, where the numbers come from, and the records."""
    from harness import __version__

    return {"schema_version": FRONTIER_FORMAT_VERSION, "kind": "harness.frontier",
            "harness_version": __version__, "device": device, "budget_bytes": budget_bytes,
            "budget_source": budget_source, "records": records}  # fmt: skip
