"""Time series over many runs, and regressions that persist.

One night is noise; a change that holds is a signal. A series (suite × profile × device × case ×
implementation × phase) is flagged at night i when each of the last `persist` nights (default 2)
is worse than the median of the `window` ok nights before them (as the nightly dashboards of large
projects do, e.g. Chromium's perf sheriffing and pytorch's HUD: compare against a recent window and
wait for confirmation). Worse means: time above 1 + time_tol, peak memory above 1 + mem_tol (and
the byte floor), error above err_factor × the window, or a failed status after ok nights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.results import RunDir
from harness.rows import FAILED
from harness.suite import CompareSettings

SERIES = ["suite_name", "profile", "device_name", "case", "impl", "phase"]
_REF_COLUMNS = (("time", "time_ms_median"), ("mem", "peak_mem_bytes"), ("err", "err_rel_l2"))
_COLUMNS = ["status", "reason", "time_ms_median", "peak_mem_bytes", "err_rel_l2"]


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (a folder with run.json) under `root`, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"results folder not found: {root}")
    return sorted(p.parent for p in root.rglob("run.json"))


def load_history(root: str | Path, *, suite: str | None = None):
    """One long frame: a row per (run, case, impl, phase) with the run's time, commit, device."""
    import pandas as pd

    records: list[dict[str, Any]] = []
    for path in find_runs(root):
        try:
            run = RunDir.open(path)
        except ResultsError:
            continue  # another schema version or a torn run: not part of this history
        meta = run.meta()
        if suite is not None and meta.get("suite_name") != suite:
            continue
        prov = meta.get("provenance") or {}
        head = {"run_id": meta.get("run_id") or path.name, "run_path": str(path),
                "utc_time": prov.get("utc_time"), "git_commit": prov.get("git_commit"),
                "suite_name": meta.get("suite_name"), "profile": meta.get("profile") or "",
                "device_name": prov.get("device_name") or ""}  # fmt: skip
        for row in run.rows():
            rec = dict(head, case=row["case"], impl=row["impl"], phase=row["phase"])
            rec.update({c: row.get(c) for c in _COLUMNS})
            records.append(rec)
    if not records:
        where = f" of suite {suite!r}" if suite else ""
        raise ResultsError(f"no runs{where} with rows under {root}")
    frame = pd.DataFrame.from_records(records)
    frame["utc_time"] = pd.to_datetime(frame["utc_time"], utc=True, errors="coerce")
    return frame.sort_values(["utc_time", "run_id"], kind="stable").reset_index(drop=True)


def normalize(frame, ref: str):
    """Times relative to implementation `ref` in the same run, case and phase (a unitless ratio)."""
    keys = ["run_id", "case", "phase"]
    ref_rows = frame[(frame["impl"] == ref) & (frame["status"] == "ok")]
    if ref_rows.empty:
        raise ResultsError(f"--normalize-to: no ok rows of {ref!r}; allowed: "
                           f"{', '.join(sorted(frame['impl'].unique()))}")  # fmt: skip
    ref_t = ref_rows.set_index(keys)["time_ms_median"].rename("ref_time_ms")
    out = frame.join(ref_t, on=keys)
    out["time_ms_median"] = out["time_ms_median"] / out["ref_time_ms"]
    return out.drop(columns="ref_time_ms")


def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return math.nan
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def _worse(night: dict[str, Any], ref: dict[str, float], s: CompareSettings) -> str | None:
    """Why one night is worse than its reference window, or None."""
    if night["status"] in FAILED:
        return f"status {night['status']}"
    if night["status"] != "ok":
        return None
    t, m, e = (night.get(c) for c in ("time_ms_median", "peak_mem_bytes", "err_rel_l2"))
    if t is not None and ref["time"] > 0 and t > (1 + s.time_tol) * ref["time"]:
        return f"time x{t / ref['time']:.2f}"
    if m is not None and m - ref["mem"] > max(s.mem_tol * ref["mem"], s.mem_floor_bytes):
        return f"memory x{m / ref['mem']:.3f}"
    if e is not None and e > s.err_factor * ref["err"] + 1e-9:
        return f"error x{e / ref['err']:.2f}" if ref["err"] > 0 else "error"
    return None


def flag_series(nights: list[dict[str, Any]], s: CompareSettings, *, window: int, persist: int,
                min_window: int) -> list[dict[str, Any]]:  # fmt: skip
    """Per night of one series: the window reference, whether it is worse, whether it is flagged."""
    out = []
    for i in range(len(nights)):
        start = i - persist + 1
        past = [n for n in nights[max(0, start - window) : max(0, start)] if n["status"] == "ok"]
        res = {"ref_time_ms": math.nan, "worse": None, "regressed": False}
        if start >= 0 and len(past) >= min_window:
            ref = {k: _median([n.get(c) for n in past]) for k, c in _REF_COLUMNS}
            why = [_worse(n, ref, s) for n in nights[start : i + 1]]
            res.update(ref_time_ms=ref["time"], worse=why[-1],
                       regressed=all(w is not None for w in why))  # fmt: skip
        out.append(res)
    return out


def flag_history(frame, settings: CompareSettings | None = None, *, window: int = 7,
                 persist: int = 2, min_window: int = 3):  # fmt: skip
    """The frame plus ref_time_ms, worse (reason or None) and regressed (bool) per night."""
    import pandas as pd

    s = settings or CompareSettings()
    if persist < 1 or window < 1 or min_window > window:
        raise ResultsError(f"need persist >= 1 and 1 <= min_window <= window; got persist "
                           f"{persist}, window {window}, min_window {min_window}")  # fmt: skip
    parts = []
    for _, group in frame.groupby(SERIES, sort=False, dropna=False):
        nights = group.to_dict("records")
        flags = flag_series(nights, s, window=window, persist=persist, min_window=min_window)
        parts.append(group.assign(**{k: [f[k] for f in flags] for k in flags[0]}))
    return pd.concat(parts).sort_index()


def latest_regressions(flagged):
    """Series whose newest night is flagged: the ones a nightly job should fail on."""
    last = flagged.groupby(SERIES, sort=False, dropna=False).tail(1)
    return last[last["regressed"]]
