"""The frontier search: the largest length at which a monotone probe passes.

Exponential, then binary: start at `start`, double while the probe passes (up to `max_len`), then
bisect between the last pass and the first failure on multiples of `granularity` until the gap is at
most `resolution`. Every probe is kept, in the order it ran. The probe is any callable, so the
search is tested on fake probes with a known threshold and run on real ones (harness/frontier/
probe.py: one isolated worker task per length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Probe:
    """One length tried: whether the phase completed within the budget, and what was measured."""

    length: int
    ok: bool
    status: str  # the row status: ok, oom, timeout, error, skipped, unsupported
    reason: str = ""
    peak_mem_bytes: int | None = None  # measured peak, inputs included (None when not measured)
    elapsed_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    """The frontier of one probe: `max_len` passed (None: even `start` failed), `first_fail` is
    the smallest failing length tried (None: nothing failed up to `max_len`, so `capped`)."""

    max_len: int | None
    first_fail: Probe | None
    capped: bool
    probes: list[Probe] = field(default_factory=list)

    @property
    def at_max(self) -> Probe | None:
        return next((p for p in self.probes if p.ok and p.length == self.max_len), None)


def check_grid(start: int, granularity: int, max_len: int, resolution: int) -> None:
    """ValueError naming the setting when the search grid is not well formed."""
    for name, value in (("start", start), ("granularity", granularity), ("max_len", max_len),
                        ("resolution", resolution)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name}: {value} is not allowed; allowed: an integer >= 1")
    for name, value in (("start", start), ("max_len", max_len), ("resolution", resolution)):
        if value % granularity:
            raise ValueError(f"{name}: {value} is not a multiple of the granularity "
                             f"{granularity}; allowed: multiples of {granularity}")  # fmt: skip
    if start > max_len:
        raise ValueError(f"start: {start} is above max_len {max_len}; allowed: 1..{max_len}")


def search_max(probe: Callable[[int], Probe], *, start: int, granularity: int, max_len: int,
               resolution: int) -> SearchResult:  # fmt: skip
    """The largest passing length, to within `resolution`, assuming pass/fail is monotone.

    Lengths tried are multiples of `granularity` (e.g. the block size); the result is exact
    when resolution == granularity. A non-monotone probe (a pass above a failure) still ends,
    since each step halves the bracket; its probes show what happened.
    """
    check_grid(start, granularity, max_len, resolution)
    probes: list[Probe] = []

    def run(length: int) -> Probe:
        result = probe(length)
        probes.append(result)
        return result

    passed: int | None = None
    failed: Probe | None = None
    length = start
    while True:
        result = run(length)
        if not result.ok:
            failed = result
            break
        passed = length
        if length >= max_len:
            break
        length = min(2 * length, max_len)
    if passed is not None and failed is not None:
        while failed.length - passed > resolution:
            steps = (failed.length - passed) // granularity
            mid = passed + max(1, steps // 2) * granularity
            result = run(mid)
            if result.ok:
                passed = mid
            else:
                failed = result
    return SearchResult(max_len=passed, first_fail=failed,
                        capped=failed is None and passed == max_len, probes=probes)  # fmt: skip
