"""Shared fixtures: the test-plugin site folder, tiny suites, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

PLUGIN_SITE = Path(__file__).parent / "plugins" / "site"


@pytest.fixture
def plugin_site(monkeypatch):
    """Put the misbehaving test plugins on sys.path (the spawned worker inherits sys.path)."""
    from harness.registry import REGISTRY

    monkeypatch.syspath_prepend(str(PLUGIN_SITE))
    monkeypatch.setenv("PYTHONPATH", str(PLUGIN_SITE))
    REGISTRY.refresh()
    yield PLUGIN_SITE


@pytest.fixture
def write_suite(tmp_path):
    def write(data: dict, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def tiny_suite(**over) -> dict:
    """A suite that runs in about a second per implementation."""
    data = {
        "name": "tiny",
        "implementations": ["naive"],
        "sweep": {"seq_len": [64], "num_heads": [2], "head_dim": [16], "phase": ["fwd"]},
        "timing": {"warmup": 0, "repeats": 2, "min_repeats": 1, "max_time_s": 1.0},
        "limits": {"case_timeout_s": 60},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data
