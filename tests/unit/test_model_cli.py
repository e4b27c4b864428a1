"""`harness model project` and `harness model predict`: tables, and one clear line on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harness.cli import app


def _one_line(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def test_project_prints_every_impl_and_count(tmp_path) -> None:
    out = tmp_path / "p.json"
    res = CliRunner().invoke(app, ["model", "project", "--device", "A100-80GB", "--params", "7b",
                                   "--devices", "1,8,32", "--json", str(out)],
                             env={"COLUMNS": "160"})  # fmt: skip
    assert res.exit_code == 0, res.output
    table = json.loads(out.read_text())["table"]
    assert [(r["impl"], r["devices"]) for r in table][:3] == [("vanilla", 1), ("vanilla", 8),
                                                               ("vanilla", 32)]  # fmt: skip
    assert len(table) == 12 and "does not fit" in res.output  # 7B states do not fit one A100


@pytest.mark.parametrize(("args", "key", "value", "allowed"), [
    (["--device", "A200"], "--device", "'A200'", "H100-80GB"),
    (["--params", "70b"], "--params", "'70b'", "13b"),
    (["--impl", "flash"], "--impl", "'flash'", "ring"),
    (["--devices", "0,8"], "--devices", "'0,8'", "integers from 1 to"),
    (["--devices", "eight"], "--devices", "'eight'", "integers from 1 to"),
])  # fmt: skip
def test_project_bad_input_is_one_line(args, key, value, allowed) -> None:
    line = _one_line(["model", "project", *args])
    assert key in line and value in line and allowed in line


def test_predict_missing_run_dir_is_one_line(tmp_path) -> None:
    line = _one_line(["model", "predict", str(tmp_path / "nope")])
    assert "RUN_DIR" in line and "nope" in line and "allowed" in line


def test_project_prices_a_given_length_or_says_it_does_not_fit(tmp_path) -> None:
    out = tmp_path / "p.json"
    res = CliRunner().invoke(app, ["model", "project", "--device", "H100-80GB", "--impl", "ring",
                                   "--devices", "8,64", "--seq-len", "1000000", "--json",
                                   str(out)], env={"COLUMNS": "160"})  # fmt: skip
    assert res.exit_code == 0, res.output
    at8, at64 = json.loads(out.read_text())["table"]
    assert at8["step_time_s"] is None and "does not fit" in res.output  # 233k max on 8
    # 1M tokens of 7B on 64 devices: the notes' 12·B·D·L·S·(S + 6D) FLOPs over 64 × 989e12 × 0.5
    flops = 12 * 4096 * 32 * 1e6 * (1e6 + 6 * 4096)
    assert at64["seq_len"] == 1_000_000
    assert at64["step_time_s"] == pytest.approx(flops / (64 * 989e12 * 0.5), rel=0.01)
