"""The bpt suites load, expand to the cases the issue's comparisons need, and their GPU profiles
validate too."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.suite import load_suite

SUITES = Path(__file__).resolve().parents[2] / "suites"


@pytest.mark.parametrize("name", ["bpt", "bpt_blocks", "bpt_layer"])
@pytest.mark.parametrize("profile", [None, "gpu"])
def test_suite_validates(name: str, profile: str | None) -> None:
    suite = load_suite(SUITES / f"{name}.yaml", profile=profile)
    assert suite.cases()


def test_bpt_suite_has_the_issue_case_for_every_baseline() -> None:
    suite = load_suite(SUITES / "bpt.yaml")
    names = {c.name for c in suite.cases()}
    assert "attn-b1-s8192-h8-d64-float32-full-bsauto" in names
    assert "attn-b1-s8192-h8-d64-float32-causal-bsauto" in names
    assert {"bpt", "sdpa_flash"} <= set(suite.implementations)
    assert set(suite.sweep.phase) == {"fwd", "fwd_bwd"}


def test_block_sweep_spans_128_to_4096() -> None:
    suite = load_suite(SUITES / "bpt_blocks.yaml")
    assert sorted(c.block_size for c in suite.cases() if not c.causal) == [
        128,
        256,
        512,
        1024,
        2048,
        4096,
    ]


def test_layer_suite_has_s_at_least_4k_for_every_layer() -> None:
    suite = load_suite(SUITES / "bpt_layer.yaml")
    assert suite.workload == "layer"
    assert max(c.seq_len for c in suite.cases()) >= 4096
    assert suite.limits.max_seq_len.get("vanilla_layer", 10**9) >= 4096
