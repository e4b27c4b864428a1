"""Fake third-party packages for adapter tests: write them, import them, and forget them after.

A test writes fake `flash_attn` / `xformers` / ... modules under its tmp_path and imports them in
place of the real packages (or blocks them: `import x` fails as for a package not installed).
Afterwards the fakes must not outlive the test, but a real package that got imported stays: its
torch ops stay registered, and importing it a second time registers them twice, which torch
refuses (xformers).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _ours(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.split(".")[0] in prefixes


def installed(module: object) -> bool:
    """A real package (site-packages), not a fake written under a test's tmp_path."""
    return "site-packages" in str(getattr(module, "__file__", None) or "")


@contextmanager
def fakes_forgotten(prefixes: tuple[str, ...]) -> Iterator[None]:
    """Around a test: afterwards the modules under `prefixes` are what they were before it, plus
    any real package it imported."""
    before = {n: m for n, m in sys.modules.items() if _ours(n, prefixes)}
    yield
    for name in list(sys.modules):
        module = sys.modules[name]
        if _ours(name, prefixes) and module is not before.get(name) and not installed(module):
            del sys.modules[name]
    sys.modules.update(before)


def forget(monkeypatch: pytest.MonkeyPatch, prefixes: tuple[str, ...],
           reset: Callable[[], None]) -> None:  # fmt: skip
    """Drop the imported modules under `prefixes` (restored after the test) and the adapters'
    caches, so the test imports its own fakes."""
    for name in list(sys.modules):
        if _ours(name, prefixes):
            monkeypatch.delitem(sys.modules, name)
    reset()


def install(monkeypatch: pytest.MonkeyPatch, root: Path, *fakes: dict[str, str]) -> Path:
    """Write the fake files ({relative path: source}) under `root` and put it first on sys.path."""
    for files in fakes:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    monkeypatch.syspath_prepend(str(root))
    return root


def block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make `import name` fail exactly as for a package that is not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)
