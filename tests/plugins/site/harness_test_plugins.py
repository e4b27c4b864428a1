"""Test-only implementations that misbehave on purpose: raise, abort the process, hang, or sleep.

Registered through the `harness.implementations` entry-point group by the dist-info beside this
file, so tests exercise the real plugin path; put this folder on sys.path to enable them.
"""

from __future__ import annotations

import os
import time

from harness.registry import Impl
from implementations.naive import naive_attention


def _raises(q, k, v, *, causal, block_size=None):
    raise RuntimeError("boom from a test plugin")


def _aborts(q, k, v, *, causal, block_size=None):
    os.abort()


def _hangs(q, k, v, *, causal, block_size=None):
    time.sleep(3600)


def _sleepy(q, k, v, *, causal, block_size=None):
    time.sleep(float(os.environ.get("HARNESS_TEST_SLEEP_S", "0.05")))
    return naive_attention(q, k, v, causal=causal)


def implementations() -> list[Impl]:
    return [
        Impl(name="plugin_raises", label="raises", forward=_raises, layout="bhsd"),
        Impl(name="plugin_aborts", label="os.abort()", forward=_aborts, layout="bhsd"),
        Impl(name="plugin_hangs", label="hangs", forward=_hangs, layout="bhsd"),
        Impl(name="plugin_sleepy", label="sleeps, then naive", forward=_sleepy, layout="bhsd"),
    ]
