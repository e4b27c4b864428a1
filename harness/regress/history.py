"""Time series over many runs, and regressions that persist.

One night is noise; a change that holds is a signal. A series (suite × profile × device × case ×
implementation × phase) is flagged at night i when each of the last `persist` nights (default 2)
is worse than the `window` ok nights before them (as the nightly dashboards of large projects do,
e.g. Chromium's perf sheriffing and pytorch's HUD: compare against a recent window and wait for
confirmation). Worse has one meaning, compare's: `compare.judge` says `regression` for that night
(its row and raw samples as the candidate) against the window (the nights' median row values and
their pooled raw samples as the baseline). So a slowdown needs compare's effect *and* its
Mann-Whitney evidence, memory and error gate on compare's tolerances, and ok -> any other status
is a regression.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.regress.compare import Side, judge
from harness.results import RUN, RunDir, warn
from harness.rows import is_finite_number, row_key
from harness.suite import CompareSettings

SERIES = ["suite_name", "profile", "device_name", "case", "impl", "phase"]
SAMPLES = "time_samples_ms"  # a night's raw time samples (a list per row), what the judge reads
SUITE_COMPARE = "suite_compare"  # the run's suite `compare:` section (JSON text), as compare reads
NAN_FIELDS = "nan_fields"  # fields a night's row holds as NaN (the frame's NaN also means absent)
_COLUMNS = ["status", "reason", "time_ms_median", "peak_mem_bytes", "err_rel_l2"]
_KEY = ("case", "impl", "phase")


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (a folder with run.json) under `root`, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"results folder not found: {root}")
    return sorted(p.parent for p in root.rglob(RUN))


def load_history(root: str | Path, *, suite: str | None = None):
    """One long frame: a row per (run, case, impl, phase) with the run's time, commit, device.

    A run that cannot be read (a broken run.json, another schema version, a rows.jsonl that is a
    link or a folder) is skipped with a warning naming it; bad lines of a run are skipped with a
    warning each (`results.warn`); the other runs are still read. A row given twice in one run
    counts once (the later one, as compare reads it).
    """
    import pandas as pd

    records: list[dict[str, Any]] = []
    for path in find_runs(root):
        try:
            run = RunDir.open(path)
            meta = run.meta()
            if suite is not None and meta.get("suite_name") != suite:
                continue
            samples, rows = run.samples(), run.rows()
        except ResultsError as exc:
            warn(f"{exc}; run {path} skipped")
            continue
        prov = meta.get("provenance")
        prov = prov if isinstance(prov, dict) else {}
        times = {(s["case"], s["impl"], s["phase"]): list(s["time_ms"]) for s in samples}
        try:
            spec = run.suite().get("suite") or {}
        except ResultsError:
            spec = {}
        compare_section = spec.get("compare") if isinstance(spec, dict) else None
        head = {"run_id": meta.get("run_id") or path.name, "run_path": str(path),
                SUITE_COMPARE: json.dumps(compare_section or {}, sort_keys=True),
                "utc_time": prov.get("utc_time"), "git_commit": prov.get("git_commit"),
                "suite_name": meta.get("suite_name"), "profile": meta.get("profile") or "",
                "device_name": prov.get("device_name") or ""}  # fmt: skip
        for row in {row_key(r): r for r in rows}.values():
            rec = dict(head, case=row["case"], impl=row["impl"], phase=row["phase"])
            rec.update({c: row.get(c) for c in _COLUMNS})
            # every error metric (gradients too) and the naive yardsticks: the judge gates on them
            rec.update({k: v for k, v in row.items() if k.startswith("err_")})
            rec[SAMPLES] = times.get((row["case"], row["impl"], row["phase"]))
            rec[NAN_FIELDS] = [k for k, v in row.items() if isinstance(v, float) and math.isnan(v)]
            records.append(rec)
    if not records:
        where = f" of suite {suite!r}" if suite else ""
        raise ResultsError(f"no runs{where} with rows under {root}")
    frame = pd.DataFrame.from_records(records)
    frame["utc_time"] = pd.to_datetime(frame["utc_time"], utc=True, errors="coerce")
    return frame.sort_values(["utc_time", "run_id"], kind="stable").reset_index(drop=True)


def normalize(frame, ref: str):
    """Times relative to implementation `ref` in the same run, case and phase (a unitless ratio).

    The median and every raw sample are divided by the reference's median time that night, as
    compare's `--normalize-to` does, so the judge's rank test runs on the normalized samples.
    """
    keys = ["run_id", "case", "phase"]
    ref_rows = frame[(frame["impl"] == ref) & (frame["status"] == "ok")]
    if ref_rows.empty:
        raise ResultsError(f"--normalize-to: no ok rows of {ref!r}; allowed: "
                           f"{', '.join(sorted(frame['impl'].unique()))}")  # fmt: skip
    ref_t = ref_rows.set_index(keys)["time_ms_median"].rename("ref_time_ms")
    out = frame.join(ref_t, on=keys)
    out["time_ms_median"] = out["time_ms_median"] / out["ref_time_ms"]
    if SAMPLES in out.columns:
        out[SAMPLES] = [
            [t / scale for t in times] if isinstance(times, list) and scale > 0 else None
            for times, scale in zip(out[SAMPLES], out["ref_time_ms"], strict=True)
        ]
    return out.drop(columns="ref_time_ms")


def _median(values: list[Any]) -> float:
    vals = sorted(float(v) for v in values if is_finite_number(v))
    if not vals:
        return math.nan
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def _row(night: dict[str, Any]) -> dict[str, Any]:
    """A night as a result row for the judge: the frame's NaN fillers (absent fields) dropped, a
    NaN the row itself held kept (the judge calls it a regression, or not gated in a baseline)."""
    nan = set(night.get(NAN_FIELDS) or ())
    return {k: v for k, v in night.items() if k not in (SAMPLES, NAN_FIELDS)
            and (k in nan or not (isinstance(v, float) and math.isnan(v)))}  # fmt: skip


def _samples(night: dict[str, Any]) -> list[float]:
    times = night.get(SAMPLES)
    return [float(t) for t in times] if isinstance(times, list) else []


def night_side(night: dict[str, Any]) -> Side:
    """One night of a series as the judge's candidate: its row and raw samples."""
    return Side(_row(night), _samples(night) or None)


def window_side(past: list[dict[str, Any]]) -> Side:
    """ok nights as the judge's baseline: each numeric field's median over the nights, and every
    night's raw samples pooled (so night-to-night drift counts as noise, not as evidence)."""
    row = {k: past[-1][k] for k in _KEY} | {"status": "ok", "reason": ""}
    numeric = {k for n in past for k, v in _row(n).items()
               if (k.startswith("err_") or k in ("time_ms_median", "peak_mem_bytes"))
               and isinstance(v, int | float)}  # fmt: skip
    row.update({k: _median([n.get(k) for n in past]) for k in sorted(numeric)})
    pooled = [t for n in past for t in _samples(n)]
    return Side(row, pooled or None)


def flag_series(nights: list[dict[str, Any]], s: CompareSettings, *, window: int, persist: int,
                min_window: int) -> list[dict[str, Any]]:  # fmt: skip
    """Per night of one series: the window's median time, the judge's verdict on the night, why it
    is worse (compare's reasons, or None) and whether it is flagged (`persist` worse in a row).

    The `persist` nights ending at night i are each judged against the same window: the last
    `window` ok nights before the first of them (at least `min_window`).
    """
    out = []
    for i in range(len(nights)):
        start = i - persist + 1
        past = [n for n in nights[: max(0, start)] if n["status"] == "ok"][-window:]
        res: dict[str, Any] = {"ref_time_ms": math.nan, "verdict": None, "worse": None,
                               "regressed": False}  # fmt: skip
        if start >= 0 and len(past) >= min_window:
            base = window_side(past)
            res["ref_time_ms"] = base.row.get("time_ms_median", math.nan)
            regressed = True
            # newest night first: a night that is not worse settles it, the others need no judging
            for j in range(i, start - 1, -1):
                verdict = judge(base, night_side(nights[j]), s, ci=False)
                if j == i:
                    res["verdict"] = verdict.verdict
                    if verdict.verdict == "regression":
                        res["worse"] = "; ".join(verdict.reasons)
                if verdict.verdict != "regression":
                    regressed = False
                    break
            res["regressed"] = regressed
        out.append(res)
    return out


def _series_settings(nights: list[dict[str, Any]], settings: CompareSettings | None,
                     overrides: dict[str, Any]) -> CompareSettings:  # fmt: skip
    """The thresholds a series is judged by, as `compare` would judge its newest night: given
    `settings` win; else the newest run's suite `compare:` section with `overrides` on top."""
    if settings is not None:
        chosen = settings
    else:
        try:
            section = json.loads(nights[-1].get(SUITE_COMPARE) or "{}")
        except (TypeError, ValueError):
            section = {}
        merged = {**section, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            chosen = CompareSettings.model_validate(merged)
        except ValueError as exc:
            raise ResultsError(f"invalid compare settings for {nights[-1].get('run_path')}: "
                               f"{exc}") from None  # fmt: skip
    # The frame is already normalized when asked (`normalize`), so the judge compares its times.
    return chosen.model_copy(update={"normalize_to": None})


def flag_history(frame, settings: CompareSettings | None = None, *, window: int = 7,
                 persist: int = 2, min_window: int = 3,
                 overrides: dict[str, Any] | None = None):  # fmt: skip
    """The frame plus ref_time_ms, verdict (the judge's, or None before a window exists), worse
    (compare's reasons, or None) and regressed (bool: `persist` worse nights in a row) per night.

    Thresholds: `settings` when given; otherwise, per series, the newest run's suite `compare:`
    section with `overrides` (command-line flags) on top — exactly what `harness compare` uses.
    """
    import pandas as pd

    if persist < 1 or window < 1 or not 1 <= min_window <= window:
        raise ResultsError(f"need persist >= 1 and 1 <= min_window <= window; got persist "
                           f"{persist}, window {window}, min_window {min_window}")  # fmt: skip
    parts = []
    for _, group in frame.groupby(SERIES, sort=False, dropna=False):
        nights = group.to_dict("records")
        s = _series_settings(nights, settings, overrides or {})
        flags = flag_series(nights, s, window=window, persist=persist, min_window=min_window)
        parts.append(group.assign(**{k: [f[k] for f in flags] for k in flags[0]}))
    return pd.concat(parts).sort_index()


def latest_regressions(flagged):
    """Series whose newest night is flagged: the ones a nightly job should fail on."""
    last = flagged.groupby(SERIES, sort=False, dropna=False).tail(1)
    return last[last["regressed"]]
