"""Run directories: tidy rows (JSONL), raw samples, the expanded suite and provenance.

Rows and samples are appended one line at a time with flush + fsync, so a run killed at any moment
leaves every finished row readable (a torn last line is ignored on read); whole files (suite,
provenance) are written atomically through a rename. Every record carries `schema_version`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.rows import READABLE_VERSIONS, SCHEMA_VERSION, row_key, upgrade

ROWS = "rows.jsonl"
SAMPLES = "samples.jsonl"
SUITE = "suite.json"
RUN = "run.json"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, default=str, allow_nan=True)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn final line from a killed run
    return records


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, run_meta: dict[str, Any], suite: dict[str, Any]) -> RunDir:
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=False)
        write_json_atomic(run.path / RUN, {"schema_version": SCHEMA_VERSION, **run_meta})
        write_json_atomic(run.path / SUITE, {"schema_version": SCHEMA_VERSION, **suite})
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not (run.path / RUN).is_file():
            raise ResultsError(f"not a run directory (no {RUN}): {run.path}")
        version = run.meta().get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ResultsError(
                f"{run.path}: schema_version {version!r}; this harness reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        return run

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / RUN).read_text())

    def suite(self) -> dict[str, Any]:
        return json.loads((self.path / SUITE).read_text())

    def append(self, row: dict[str, Any]) -> None:
        """Write a row; its raw time samples go to samples.jsonl, the row keeps their count."""
        row = dict(row)
        samples = row.pop("time_samples_ms", None)
        if samples is not None:
            _append_line(self.path / SAMPLES, {
                "schema_version": SCHEMA_VERSION, "case": row["case"], "impl": row["impl"],
                "phase": row["phase"], "time_ms": samples,
            })  # fmt: skip
        _append_line(self.path / ROWS, row)

    def repair(self) -> None:
        """Cut a torn last line (a run killed mid-write) so appends start on a fresh line."""
        for name in (ROWS, SAMPLES):
            path = self.path / name
            if not path.exists() or path.stat().st_size == 0:
                continue
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
                    f.flush()
                    os.fsync(f.fileno())

    def rows(self) -> list[dict[str, Any]]:
        return [upgrade(r) for r in _read_lines(self.path / ROWS)]

    def samples(self) -> list[dict[str, Any]]:
        return _read_lines(self.path / SAMPLES)

    def done_keys(self) -> set[tuple[str, str, str]]:
        return {row_key(r) for r in self.rows()}


def load_rows(path: str | Path):
    """The rows of a run directory as a pandas DataFrame (one row per case × impl × phase)."""
    import pandas as pd

    run = RunDir.open(path)
    frame = pd.DataFrame.from_records(run.rows())
    if not frame.empty and "run_id" not in frame.columns:
        frame.insert(0, "run_id", run.meta().get("run_id"))
    return frame
