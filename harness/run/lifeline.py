"""Ties a child process's life to its parent's: when the parent dies, the child dies too.

The worker (run/worker.py) and rank processes (run/ranks.py) call `die_with_parent` first thing.
A runner killed with SIGKILL has no chance to kill its worker, and a worker killed by the runner's
case timeout none to kill its ranks; left alone, they compute for minutes as orphans.

On Linux the kernel does it: prctl(PR_SET_PDEATHSIG, SIGKILL) sends SIGKILL the moment the parent
exits, with no thread to run and no poll interval, and it works while the child is stuck in C code
holding the GIL (a kernel, a gloo collective), where a Python watchdog thread never runs. The parent
that counts is the thread that started the child, which is the main thread in both cases. Elsewhere
(macOS), a daemon thread polls `os.getppid()` once a second as a fallback.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_S = 1.0


def die_with_parent() -> str:
    """Arrange for this process to be killed when its parent exits; returns how ("prctl"...)."""
    parent = mp.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()
    how = "prctl" if sys.platform.startswith("linux") and _prctl_pdeathsig() else "watchdog"
    if how == "watchdog":
        threading.Thread(target=_watch, args=(parent_pid,), name="die-with-parent",
                         daemon=True).start()  # fmt: skip
    if os.getppid() != parent_pid:  # the parent died before the tie was made
        os._exit(128 + signal.SIGKILL)
    return how


def _prctl_pdeathsig() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_POLL_S)
    os._exit(128 + signal.SIGKILL)
