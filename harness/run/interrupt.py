"""Stopping a run on SIGINT, SIGTERM or SIGHUP: every worker and rank process killed at once.

The handler kills every live worker's process group (run/pool.py `kill_all_workers`) the moment
a signal arrives, wherever the runner is (waiting on a hung task, starting a worker), then raises
`Interrupted` once: `run_tasks` reaps its pools on the way out and the CLI says how to resume and
exits with 128 + the signal number. A repeated signal (the second Ctrl-C) kills again and raises
nothing: what is left to do waits for no task, so interrupting it could only break it (a
traceback, workers left unreaped). While a row is appended the signals are held, so a row and its
samples are written whole or not at all.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from harness.run.pool import kill_all_workers

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that no `except
    Exception` it passes through on its way out can swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # the shell's convention: 130 SIGINT, 143 SIGTERM, 129 SIGHUP


class _State:
    received: int | None = None  # the stop signal of the current stop_on_signals block
    held = 0  # depth of signals_held blocks
    deferred = False  # a stop came while held: raise when the block ends


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: a stop signal kills every worker group and raises `Interrupted` (main thread only).

    After a stop the handler stays installed, so a signal while the process exits can only kill
    again; without one, the previous handlers come back.
    """
    _State.received, _State.deferred = None, False

    def handler(signum: int, frame: FrameType | None) -> None:
        kill_all_workers()
        if _State.received is not None:
            return
        _State.received = signum
        if _State.held:
            _State.deferred = True
        else:
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        if _State.received is None:
            for s, h in previous.items():
                signal.signal(s, h)


@contextmanager
def signals_held() -> Iterator[None]:
    """Finish a block (a row's append) before a stop signal that arrives in it is raised.

    Deferred in the Python handler, not by a signal mask: a mask holds a signal back from one
    thread only, and the kernel hands it to any other (a progress bar's refresh thread), after
    which the main thread runs the handler all the same.
    """
    _State.held += 1
    try:
        yield
    finally:
        _State.held -= 1
    if not _State.held and _State.deferred and _State.received is not None:
        _State.deferred = False
        raise Interrupted(_State.received)
