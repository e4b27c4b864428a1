"""suites/gpu_backends.yaml validates; its GPU profiles expand to the sweep the issue asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.suite import load_suite

SUITE = Path(__file__).resolve().parents[2] / "suites" / "gpu_backends.yaml"


def test_cpu_profile_is_small_and_names_every_backend():
    suite = load_suite(SUITE)
    assert suite.device == "auto" and len(suite.cases()) == 2
    for name in ("flash_attn2", "flash_attn3", "flash_attn4", "xformers", "flex", "sdpa_cudnn"):
        assert name in suite.implementations


@pytest.mark.parametrize(("profile", "num_cases"), [("gpu", 6 * 2 * 2 * 2), ("gpu-quick", 3 * 2)])
def test_gpu_profiles_cover_the_baseline_axes(profile, num_cases):
    suite = load_suite(SUITE, profile=profile)
    cases = suite.cases()
    assert suite.device == "cuda" and len(cases) == num_cases
    assert {c.seq_len for c in cases} >= {4096, 16384, 65536}
    assert {c.causal for c in cases} == {False, True}
    assert set(suite.sweep.phase) == {"fwd", "fwd_bwd"}
    assert {c.dtype for c in cases} <= {"bfloat16", "float16"}
    if profile == "gpu":
        assert {c.seq_len for c in cases} == {4096, 8192, 16384, 32768, 65536, 131072}
        assert {c.head_dim for c in cases} == {64, 128}
        assert {c.dtype for c in cases} == {"bfloat16", "float16"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_a_cuda_profile_can_be_planned_but_not_run_without_a_gpu(tmp_path):
    runner = CliRunner()
    args = ["run", str(SUITE), "--profile", "gpu-quick", "--out", str(tmp_path)]
    planned = runner.invoke(app, [*args, "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert planned.output.strip().splitlines()[-1] == "84 tasks, 6 cases, device cuda"
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "torch sees no CUDA device" in refused.output
    assert list(tmp_path.iterdir()) == []  # nothing written
