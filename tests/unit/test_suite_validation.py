"""Bad suites: one clear line naming the key, the value and the allowed values; exit 2; no files."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import SuiteError
from harness.suite import load_suite, parse_suite
from tests.conftest import tiny_suite

BAD = [
    # (id, change to the tiny suite, words the message must contain)
    ("unknown-top-key", {"implementatons": ["naive"]}, ["implementatons", "allowed keys",
                                                        "implementations"]),
    ("unknown-sweep-key", {"sweep": {"seq_lens": [64]}}, ["sweep.seq_lens", "seq_len"]),
    ("unknown-timing-key", {"timing": {"warmups": 2}}, ["timing.warmups", "warmup"]),
    ("unknown-impl", {"implementations": ["naive", "flashy"]}, ["flashy", "implementations[1]",
                                                                "chunked"]),
    ("bad-dtype", {"sweep": {"dtype": ["float31"]}}, ["sweep.dtype[0]", "float31", "bfloat16"]),
    ("bad-phase", {"sweep": {"phase": ["backward"]}}, ["sweep.phase[0]", "backward", "fwd_bwd"]),
    ("zero-seq", {"sweep": {"seq_len": [0]}}, ["sweep.seq_len[0]", "greater than 0"]),
    ("negative-heads", {"sweep": {"num_heads": [-2]}}, ["sweep.num_heads[0]", "-2"]),
    ("string-seq", {"sweep": {"seq_len": ["long"]}}, ["sweep.seq_len[0]", "long"]),
    ("empty-axis", {"sweep": {"causal": []}}, ["sweep.causal", "at least 1"]),
    ("bad-layout", {"sweep": {"seq_layout": ["spiral"]}}, ["sweep.seq_layout[0]", "zigzag"]),
    ("renamed-layout", {"sweep": {"layout": ["zigzag"]}}, ["sweep.layout", "seq_layout"]),
    ("bad-device", {"device": "tpu"}, ["device", "tpu", "cuda"]),
    ("bad-workload", {"workload": "mlp"}, ["workload", "mlp", "attention"]),
    ("no-impls", {"implementations": []}, ["implementations", "at least 1"]),
    ("bad-timeout", {"limits": {"case_timeout_s": 0}}, ["limits.case_timeout_s", "greater than 0"]),
    ("bad-repeats", {"timing": {"repeats": 2, "min_repeats": 5}}, ["min_repeats", "repeats"]),
    ("bad-name", {"name": "my suite!"}, ["name", "my suite!"]),
    ("limit-unknown-impl", {"limits": {"max_seq_len": {"chunked": 8}}}, ["max_seq_len",
                                                                         "chunked", "naive"]),
    ("layer-without-hidden", {"workload": "layer", "implementations": ["naive"]},
     ["naive", "workload"]),
    ("not-a-mapping", ["a", "list"], ["mapping"]),
    # numbers that used to validate and then crash the run or fail every row (issue 12)
    ("timeout-inf", {"limits": {"case_timeout_s": math.inf}}, ["limits.case_timeout_s", "finite",
                                                               "inf"]),
    ("timeout-1e300", {"limits": {"case_timeout_s": 1e300}}, ["limits.case_timeout_s", "604800",
                                                              "1e+300"]),
    ("max-time-nan", {"timing": {"max_time_s": math.nan}}, ["timing.max_time_s", "finite"]),
    ("budget-inf", {"limits": {"memory_budget_gb": math.inf}}, ["limits.memory_budget_gb",
                                                                "finite"]),
    ("budget-1e300", {"limits": {"memory_budget_gb": 1e300}}, ["limits.memory_budget_gb", "1 PiB",
                                                               "1e+300"]),
    ("budget-1e-12", {"limits": {"memory_budget_gb": 1e-12}}, ["limits.memory_budget_gb", "1 MiB",
                                                               "1e-12"]),
    ("seed-1e23", {"seed": 1e23}, ["seed", "too large", "1e+23"]),
    ("seed-10**23", {"seed": 10**23}, ["seed", "less than or equal to 9223372036854775807"]),
    ("seed-negative", {"seed": -1}, ["seed", "greater than or equal to 0", "-1"]),
    ("seed-fraction", {"seed": 1.5}, ["seed", "1.5"]),
    ("threads-1e5", {"threads": 100000}, ["threads", "less than or equal to 4096", "100000"]),
    ("threads-0", {"threads": 0}, ["threads", "greater than 0"]),
    ("world-size-1e5", {"sweep": {"world_size": [100000]}}, ["sweep.world_size[0]", "1024"]),
    ("seq-past-int32", {"sweep": {"seq_len": [2**63]}}, ["sweep.seq_len[0]", "2147483647"]),
    ("compare-inf", {"compare": {"time_tol": math.inf}}, ["compare.time_tol", "finite"]),
    ("long-name", {"name": "x" * 101}, ["name", "at most 100 characters"]),
    # a repeated value would run the same row twice
    ("phase-twice", {"sweep": {"phase": ["fwd", "fwd"]}}, ["sweep.phase", "'fwd' is listed twice",
                                                           "['fwd', 'fwd']"]),
    ("seq-twice", {"sweep": {"seq_len": [64, 64.0]}}, ["sweep.seq_len", "64 is listed twice"]),
    ("block-null-twice", {"sweep": {"block_size": [None, None]}}, ["sweep.block_size",
                                                                   "None is listed twice"]),
    ("causal-twice", {"sweep": {"causal": [True, True]}}, ["sweep.causal", "True is listed"]),
    ("impl-twice", {"implementations": ["naive", "naive"]}, ["implementations",
                                                             "'naive' is listed twice"]),
    # the task cap, checked on the axes' lengths before anything is expanded
    ("over-max-tasks", {"sweep": {"seq_len": list(range(1, 1001)), "batch": list(range(1, 201))}},
     ["200,000 cases", "200,000 tasks", "limits.max_tasks (100,000)"]),
    ("max-tasks-past-ceiling", {"limits": {"max_tasks": 10**8}}, ["limits.max_tasks",
                                                                  "10000000"]),
]  # fmt: skip


@pytest.mark.parametrize(("change", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_suite_gives_one_clear_line(change, words):
    data = tiny_suite(**change) if isinstance(change, dict) else change
    with pytest.raises(SuiteError) as info:
        parse_suite(data, where="s.yaml")
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_a_huge_bad_value_is_shown_short():
    with pytest.raises(SuiteError) as info:
        parse_suite(tiny_suite(description=[list(range(10_000))] * 100), where="s.yaml")
    assert str(info.value).startswith("s.yaml: description: Input should be a valid string; got")
    assert len(str(info.value)) < 200


def test_a_rule_across_keys_does_not_repeat_the_whole_suite():
    with pytest.raises(SuiteError) as info:
        parse_suite(tiny_suite(timing={"repeats": 2, "min_repeats": 5}), where="s.yaml")
    assert str(info.value) == ("s.yaml: timing.min_repeats (5) must be <= timing.repeats (2)")


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsweep: {seq_len: [1, 2\n")
    with pytest.raises(SuiteError, match="not valid YAML at line"):
        load_suite(path)


def test_unknown_profile_lists_allowed(write_suite):
    path = write_suite(tiny_suite(profiles={"gpu": {"device": "cuda"}}))
    with pytest.raises(SuiteError, match="unknown profile 'tpu'; allowed: gpu"):
        load_suite(path, profile="tpu")


def test_profile_overrides_merge():
    suite = parse_suite(tiny_suite(profiles={"big": {"sweep": {"seq_len": [128, 256]}}}),
                        profile="big")  # fmt: skip
    assert suite.sweep.seq_len == [128, 256] and suite.sweep.num_heads == [2]


def test_case_names_deterministic_and_unique():
    suite = parse_suite(tiny_suite(sweep={"seq_len": [64, 97], "causal": [False, True],
                                          "seq_layout": ["zigzag", "striped"]}))  # fmt: skip
    names = [c.name for c in suite.cases()]
    assert names == [c.name for c in suite.cases()]
    assert len(names) == len(set(names)) == 4  # layouts collapse at world_size 1
    assert names[0] == "attn-b1-s64-h2-d16-float32-full-bsauto"


@pytest.mark.parametrize(("change", "words"), [BAD[0][1:], BAD[4][1:], BAD[3][1:]])
def test_cli_exits_2_and_writes_nothing(change, words, write_suite, tmp_path):
    path = write_suite(tiny_suite(**change))
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "run", str(path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert all(w in lines[0] for w in words)
    assert not out.exists()
