"""Time series over many runs: change points, and regressions that persist.

One night is noise; a change that holds is a signal. A series (suite × profile × device × case ×
implementation × phase) is cut into levels: `ruptures` (PELT, see `changepoints`) proposes where
its time, memory or error may have moved, a status change always proposes, and every proposal is
judged with compare's rule (`compare.judge`: effect beyond time_tol *and* Mann-Whitney evidence
between the pooled samples of the two segments; memory and error on compare's tolerances; ok ->
any other status is a regression). Only a judged `regression` or `improvement` is a change point.
A night is flagged (`regressed`) when a regression change point opened its level, it is at least
the `persist`-th night (default 2) of that level, and the judge still finds it worse than the
level before (as nightly dashboards do, e.g. Chromium's perf sheriffing, MongoDB's E-Divisive
change points in Evergreen: find the step, then confirm it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.regress.compare import Side, judge
from harness.regress.processes import PER_PROCESS, per_process
from harness.results import RUN, RunDir, warn
from harness.rows import is_finite_number, row_key
from harness.suite import CompareSettings

SERIES = ["suite_name", "profile", "device_name", "case", "impl", "phase"]
SAMPLES = "time_samples_ms"  # a night's raw time samples (a list per row), what the judge reads
SUITE_COMPARE = "suite_compare"  # the run's suite `compare:` section (JSON text), as compare reads
NAN_FIELDS = "nan_fields"  # fields a night's row holds as NaN (the frame's NaN also means absent)
_COLUMNS = ["status", "reason", "time_ms_median", "peak_mem_bytes", "err_rel_l2", PER_PROCESS]
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
    for column in (SAMPLES, PER_PROCESS):
        if column in out.columns:
            keep = is_finite_number if column == PER_PROCESS else (lambda t: True)  # a NaN sample
            out[column] = [  # stays: the judge calls it a regression
                [t / scale for t in times if keep(t)]
                if isinstance(times, list) and scale > 0
                else None
                for times, scale in zip(out[column], out["ref_time_ms"], strict=True)
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
    night's raw samples and per-process medians pooled (so night-to-night drift counts as noise,
    not as evidence)."""
    row = {k: past[-1][k] for k in _KEY} | {"status": "ok", "reason": ""}
    numeric = {k for n in past for k, v in _row(n).items()
               if (k.startswith("err_") or k in ("time_ms_median", "peak_mem_bytes"))
               and isinstance(v, int | float)}  # fmt: skip
    row.update({k: _median([n.get(k) for n in past]) for k in sorted(numeric)})
    processes = [t for n in past for t in per_process(n) or ()]
    if processes:
        row[PER_PROCESS] = processes
    pooled = [t for n in past for t in _samples(n)]
    return Side(row, pooled or None)


def _signals(night: dict[str, Any]) -> dict[str, Any]:
    """The fields whose moves make change-point candidates: time, peak memory, gated errors."""
    row = _row(night)
    return {k: v for k, v in row.items()
            if k in ("time_ms_median", "peak_mem_bytes")
            or (k.startswith("err_") and k.endswith("_rel_l2") and "naive" not in k)}  # fmt: skip


def candidates(nights: list[dict[str, Any]]) -> list[int]:
    """Night indices where a series may change level: every status change, every field that
    turns finite or not, and what `changepoints.change_points` (ruptures PELT) proposes on each
    field's positive values over the ok nights."""
    from harness.regress.changepoints import change_points

    cuts = {i for i in range(1, len(nights)) if nights[i]["status"] != nights[i - 1]["status"]}
    ok = [i for i, n in enumerate(nights) if n["status"] == "ok"]
    fields = sorted({k for i in ok for k in _signals(nights[i])})
    for field in fields:
        usable = [is_finite_number(nights[i].get(field)) and float(nights[i][field]) > 0
                  for i in ok]  # fmt: skip
        cuts |= {ok[j] for j in range(1, len(ok)) if usable[j] != usable[j - 1]}
        idx = [i for i, u in zip(ok, usable, strict=True) if u]
        cuts |= {idx[j] for j in change_points([float(nights[i][field]) for i in idx])}
    return sorted(cuts)


def _side(nights: list[dict[str, Any]], *, last: bool, window: int) -> Side:
    """A level (or a segment) as one side of the judge: its ok nights pooled (the last or the
    first `window` of them), or its edge night when that night is not ok."""
    edge = nights[-1] if last else nights[0]
    if edge["status"] != "ok":
        return night_side(edge)
    ok = [n for n in nights if n["status"] == "ok"]
    return window_side(ok[-window:] if last else ok[:window])


def flag_series(nights: list[dict[str, Any]], s: CompareSettings, *, window: int, persist: int,
                min_window: int) -> list[dict[str, Any]]:  # fmt: skip
    """Per night of one series, as `_flag_levels` below, with nights that have no time (a failed
    or skipped row, a NaN median) kept out of the levels: such a night is judged on its own
    against the ok nights before it (a status change is a regression), and it is `regressed`
    when `persist` such regressions run in a row. So a failed night inside a slowdown neither
    opens a level of its own nor hides the slowdown from the nights after it."""
    timed = [i for i, n in enumerate(nights)
             if n["status"] == "ok" and is_finite_number(n.get("time_ms_median"))]  # fmt: skip
    if len(timed) == len(nights):
        return _flag_levels(nights, s, window=window, persist=persist, min_window=min_window)
    out: list[dict[str, Any] | None] = [None] * len(nights)
    core = _flag_levels([nights[i] for i in timed], s, window=window, persist=persist,
                        min_window=min_window) if timed else []  # fmt: skip
    for i, res in zip(timed, core, strict=True):
        out[i] = res
    streak = 0
    for i, night in enumerate(nights):
        if out[i] is not None:
            streak = 0
            continue
        past = [nights[j] for j in timed if j < i][-window:]
        res: dict[str, Any] = {
            "ref_time_ms": math.nan,
            "verdict": None,
            "worse": None,
            "regressed": False,
            "change": None,
            "change_ratio": math.nan,
        }
        if past:
            _judge_night(res, past, night, s)
        streak = streak + 1 if res["verdict"] == "regression" else 0
        res["regressed"] = streak >= persist
        out[i] = res
    return out  # type: ignore[return-value]


def _flag_levels(nights: list[dict[str, Any]], s: CompareSettings, *, window: int, persist: int,
                 min_window: int) -> list[dict[str, Any]]:  # fmt: skip
    """Per night of one series: change (the verdict of a change point opening a new level here,
    else None), change_ratio (that level's median time / the level before), ref_time_ms, the
    judge's verdict on the night, why it is worse (compare's reasons, or None) and regressed.

    Levels: the series is cut at `candidates`; left to right, each segment is judged (compare's
    `judge`, both sides pooled over at most `window` nights) against the current level. A
    `regression` or `improvement` opens a new level; anything else (noise, a change below the
    thresholds) joins the current level. The first level needs `min_window` ok nights before it
    is judged against. Each night is then judged against its reference: the last `window` ok
    nights of the level before its own when a change opened its level, else its own level's ok
    nights before it (at least `min_window`). A night is `regressed` when its level was opened
    by a regression, it is at least the `persist`-th night of it, and it is itself judged a
    regression: a change that holds.
    """
    import statistics

    cuts = [0, *candidates(nights), len(nights)]
    segments = [nights[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    levels: list[dict[str, Any]] = [{"nights": list(segments[0]), "change": None, "prev": None}]
    for seg in segments[1:]:
        level = levels[-1]
        ok = [n for n in level["nights"] if n["status"] == "ok"]
        if level["prev"] is None and level["nights"][-1]["status"] == "ok" and len(ok) < min_window:
            level["nights"] += seg  # too few nights to call anything a change yet
            continue
        verdict = judge(_side(level["nights"], last=True, window=window),
                        _side(seg, last=False, window=window), s, ci=False)  # fmt: skip
        if verdict.verdict in ("regression", "improvement"):
            levels.append({"nights": list(seg), "change": verdict.verdict, "prev": level})
        else:
            level["nights"] += seg

    def level_time(nights_: list[dict[str, Any]]) -> float:
        times = [n["time_ms_median"] for n in nights_ if n["status"] == "ok"
                 and is_finite_number(n.get("time_ms_median"))]  # fmt: skip
        return float(statistics.median(times)) if times else math.nan

    out = []
    for level in levels:
        prev = level["prev"]
        prev_ok = [n for n in prev["nights"] if n["status"] == "ok"][-window:] if prev else []
        ratio = level_time(level["nights"]) / level_time(prev["nights"]) if prev else math.nan
        for pos, night in enumerate(level["nights"]):
            if prev is not None:
                past = prev_ok
            else:
                past = [n for n in level["nights"][:pos] if n["status"] == "ok"][-window:]
                past = past if len(past) >= min_window else []
            # the old columns first (CSV readers index them), the change-point ones after
            res: dict[str, Any] = {"ref_time_ms": math.nan, "verdict": None, "worse": None,
                                   "regressed": False,
                                   "change": level["change"] if pos == 0 else None,
                                   "change_ratio": ratio if pos == 0 else math.nan}  # fmt: skip
            if past:
                _judge_night(res, past, night, s)
                res["regressed"] = (level["change"] == "regression" and pos >= persist - 1
                                    and res["verdict"] == "regression")  # fmt: skip
            out.append(res)
    return out


def _judge_night(res: dict[str, Any], past: list[dict[str, Any]], night: dict[str, Any],
                 s: CompareSettings) -> None:  # fmt: skip
    """Fill `res` with the night's reference time, the judge's verdict against the pooled `past`
    nights, and why it is worse."""
    base = window_side(past)
    res["ref_time_ms"] = base.row.get("time_ms_median", math.nan)
    verdict = judge(base, night_side(night), s, ci=False)
    res["verdict"] = verdict.verdict
    if verdict.verdict == "regression":
        res["worse"] = "; ".join(verdict.reasons)


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
    """The frame plus, per night, ref_time_ms (the reference's median time), verdict (the judge's
    on the night, or None without a reference), worse (compare's reasons, or None), regressed
    (bool: see `flag_series`), change (`regression` / `improvement` on the first night of a new
    level, else None) and change_ratio (that level's median time over the level before's).

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
