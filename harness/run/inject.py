"""A known slowdown injected into one implementation's timed calls, to test the regression judge.

`benchmarks/false_alarms.py` asks whether `harness compare` flags a real change (and only a real
change): it runs the nightly suite twice at one commit, and again with
HARNESS_TEST_SLOWDOWN="NAME=FRACTION[,NAME=FRACTION...]" set, which makes every timed call of
implementation NAME take (1 + FRACTION) × its own duration: after the call returns, the worker
busy-waits for FRACTION × the call's measured time on a monotonic clock. A busy wait, not a sleep,
so the extra time is CPU time like a slower kernel's. CPU only: on CUDA the call returns before its
kernels finish, so the wait would not scale with them (the variable is refused there). Tests and
benchmarks only; a row measured with it records `injected_slowdown`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from harness.errors import HarnessError

SLOWDOWN_ENV = "HARNESS_TEST_SLOWDOWN"


def injected_slowdowns(text: str | None = None) -> dict[str, float]:
    """NAME → FRACTION from HARNESS_TEST_SLOWDOWN (or `text`); {} when unset.

    Raises HarnessError naming the variable, the bad entry and the expected form.
    """
    text = os.environ.get(SLOWDOWN_ENV, "") if text is None else text
    out: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, value = entry.partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not name or not 0.0 <= fraction <= 10.0:
            raise HarnessError(f"{SLOWDOWN_ENV}: {entry!r} is not NAME=FRACTION with FRACTION in "
                               "[0, 10] (e.g. sdpa_math=0.10)")  # fmt: skip
        out[name.strip()] = fraction
    return out


def slowed(fn: Callable[[], Any], impl: str, device: str) -> tuple[Callable[[], Any], float]:
    """`fn` made (1 + fraction)× slower if HARNESS_TEST_SLOWDOWN names `impl`; and the fraction."""
    fraction = injected_slowdowns().get(impl, 0.0)
    if fraction == 0.0:
        return fn, 0.0
    if device != "cpu":
        raise HarnessError(f"{SLOWDOWN_ENV} injects on CPU only; device is {device!r}")

    def slower() -> Any:
        t0 = time.perf_counter()
        out = fn()
        until = time.perf_counter() + (time.perf_counter() - t0) * fraction
        while time.perf_counter() < until:
            pass
        return out

    return slower, fraction
