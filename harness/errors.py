"""Typed errors: user mistakes are ValueErrors that name the key and the allowed values."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class for errors the harness raises on purpose."""


class SuiteError(HarnessError, ValueError):
    """A suite file (or a CLI option that overrides it) is invalid; the message is one line."""


class UnknownImplementation(HarnessError, ValueError):
    """An implementation name that no registry entry carries."""

    def __init__(self, name: str, allowed: list[str]):
        super().__init__(
            f"unknown implementation {name!r}; allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )
        self.name = name
        self.allowed = allowed


class Unavailable(HarnessError, RuntimeError):
    """An implementation cannot run here (package missing, no CUDA, unsupported case)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class ResultsError(HarnessError, ValueError):
    """A run directory is missing, unreadable or of another schema version."""
