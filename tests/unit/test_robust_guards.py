"""Guards and provenance: the default memory guard and the S×S pre-flight estimate (with a tiny
fake MemAvailable, so nothing here allocates much), the worker's backstop under the default guard,
the commit recorded only for the package's own checkout, and `model ring`'s option checks.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.case import Case
from harness.run import measure_task
from harness.run.task import Task

ROOT = Path(__file__).parents[2]
TIMING = {"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0}
ACCURACY = {"ref_max_rows": 64, "ref_chunk_rows": 64, "grad_ref_max_seq": 256}


@pytest.fixture
def mem_available(monkeypatch):
    """`mem_available(nbytes)`: what /proc/meminfo's MemAvailable reads, for the guard."""

    def fake(nbytes: int | None) -> None:
        monkeypatch.setattr(measure_task, "_mem_available_bytes", lambda: nbytes)
        measure_task.default_guard_bytes.cache_clear()

    yield fake
    measure_task.default_guard_bytes.cache_clear()


def _task(impl: str = "naive", *, seq_len: int = 64, num_heads: int = 2, head_dim: int = 16,
          phase: str = "fwd", budget: int | None = None, measure: str = "all") -> Task:  # fmt: skip
    case = Case(seq_len=seq_len, num_heads=num_heads, head_dim=head_dim)
    return Task(case=case, impl=impl, phase=phase, device="cpu", seed=0, timing=TIMING,
                accuracy=ACCURACY, memory_budget_bytes=budget, measure=measure)  # fmt: skip


# --- the default guard ------------------------------------------------------------------------


def test_meminfo_is_read():
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo here")
    assert measure_task._mem_available_bytes() > 0


def test_default_guard_is_a_fraction_of_mem_available_read_once(mem_available, monkeypatch):
    mem_available(100 << 20)
    assert measure_task.default_guard_bytes("cpu") == int(0.8 * (100 << 20))
    monkeypatch.setattr(measure_task, "_mem_available_bytes", lambda: 1)
    assert measure_task.default_guard_bytes("cpu") == int(0.8 * (100 << 20))  # once a process


def test_the_suite_budget_wins_over_the_guard(mem_available):
    mem_available(100 << 20)
    assert measure_task.budget_for(_task(budget=5 << 20)) == (5 << 20, "limits.memory_budget_gb")
    budget, source = measure_task.budget_for(_task())
    assert budget == int(0.8 * (100 << 20)) and source.startswith("default guard")
    mem_available(None)  # no /proc/meminfo: no guard, as before
    assert measure_task.budget_for(_task()) == (None, measure_task.DEFAULT_GUARD)


# --- the S×S pre-flight estimate --------------------------------------------------------------


def test_the_estimate_is_batch_heads_sq_sk_bytes_and_3x_with_backward():
    fwd = measure_task.sxs_estimate_bytes(_task(seq_len=16384, num_heads=8))
    assert fwd == 1 * 8 * 16384 * 16384 * 4  # 8 GiB of float32 scores
    for phase in ("bwd", "fwd_bwd"):
        assert measure_task.sxs_estimate_bytes(_task(seq_len=16384, num_heads=8,
                                                     phase=phase)) == 3 * fwd  # fmt: skip


@pytest.fixture
def no_inputs(monkeypatch):
    """Making a case's inputs fails loudly: what must not happen for a refused task."""

    class InputsMade(Exception):
        pass

    def refuse(task):
        raise InputsMade(task.impl)

    monkeypatch.setattr(measure_task, "_case_state", refuse)
    return InputsMade


def test_naive_16k_under_the_default_guard_is_oom_without_running(mem_available, no_inputs):
    """The example that reached 8.7 GB: now refused before a single input is made."""
    mem_available(4 << 30)  # a machine with 4 GiB free: the guard is 3.2 GiB
    row = measure_task.measure(_task(seq_len=16384, num_heads=8))
    assert row["status"] == "oom"
    assert row["reason"].startswith("pre-flight estimate: S×S scores 1·8·16384² float32 (fwd)")
    assert "8192.0 MiB" in row["reason"] and "default guard" in row["reason"]
    assert "not run" in row["reason"]
    assert row["mem_budget_bytes"] == int(0.8 * (4 << 30))
    assert row["memory_exponent"] == 2 and row["label"]


def test_a_suite_budget_is_held_to_the_measured_peak_not_the_estimate(mem_available, no_inputs):
    mem_available(1 << 10)  # the guard would refuse; the suite's budget replaces it
    with pytest.raises(no_inputs):  # 8 MiB of scores > 1 MiB, yet it runs: the peak decides
        measure_task.measure(_task(seq_len=1024, budget=1 << 20))


def test_backward_counts_three_copies(mem_available, no_inputs):
    fwd = measure_task.sxs_estimate_bytes(_task(seq_len=512))
    mem_available(int(2 * fwd / 0.8))  # the guard holds the forward twice, not three times
    with pytest.raises(no_inputs):
        measure_task.measure(_task(seq_len=512))  # fits: goes on to make its inputs
    row = measure_task.measure(_task(seq_len=512, phase="fwd_bwd"))
    assert row["status"] == "oom" and "(fwd_bwd)" in row["reason"]


def test_linear_memory_kernels_are_not_preflighted(mem_available, no_inputs):
    mem_available(1 << 10)  # 1 KiB free: only a measured peak can say chunked does not fit
    with pytest.raises(no_inputs):
        measure_task.measure(_task("chunked", seq_len=16384, num_heads=8))


def test_a_measured_peak_over_the_default_guard_is_oom_naming_it(mem_available):
    task = _task(seq_len=64, head_dim=64, measure="memory")
    # the guard lets the 32 KiB of scores pass the pre-flight; the 96 KiB of inputs break it
    mem_available(int((measure_task.sxs_estimate_bytes(task) + 1) / 0.8) + 1)
    row = measure_task.measure(task)
    assert row["status"] == "oom", row
    assert row["peak_mem_bytes"] > row["mem_budget_bytes"] >= measure_task.sxs_estimate_bytes(task)
    assert row["reason"].startswith("peak memory") and "default guard" in row["reason"]
    assert row["mem_budget_bytes"] == measure_task.default_guard_bytes("cpu")


def test_the_worker_backstop_applies_the_default_guard(mem_available, monkeypatch):
    from harness.run import worker

    limits = []
    monkeypatch.setattr(resource, "setrlimit", lambda what, value: limits.append((what, value)))
    mem_available(2 << 30)
    worker.apply_limits("cpu", None, None)
    worker.apply_limits("cpu", 1 << 30, None)  # a suite budget: its own ceiling, as before
    (what, (soft, hard)), (_, (suite_soft, _)) = limits
    assert what == resource.RLIMIT_AS and soft == hard
    # VmSize + budget + 1 GiB slack: the two differ by exactly the budgets' difference
    assert soft - suite_soft == int(0.8 * (2 << 30)) - (1 << 30)
    mem_available(None)
    worker.apply_limits("cpu", None, None)
    assert len(limits) == 2  # nothing to guard by: no ceiling


# --- provenance: the package's own checkout only ----------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                         check=True, capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip()


def _repo(path: Path, *, pyproject_name: str | None, package_at: str, track: bool = True):
    """A git repository holding a copy of the harness package at `package_at`."""
    path.mkdir()
    _git(path, "init", "-q")
    shutil.copytree(ROOT / "harness", path / package_at / "harness",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    if pyproject_name is not None:
        (path / "pyproject.toml").write_text(f'[project]\nname = "{pyproject_name}"\n')
    if track:
        _git(path, "add", "-A")
    elif pyproject_name is not None:
        _git(path, "add", "pyproject.toml")
    _git(path, "commit", "-q", "--allow-empty", "-m", "x")
    return path / package_at / "harness", _git(path, "rev-parse", "HEAD")


@pytest.fixture
def needs_git():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")


@pytest.mark.parametrize(
    "pyproject_name, package_at, track",
    [(None, "vendor", True), (None, ".", True), ("someone-else", ".", True),
     ("attention-harness", "vendor", True), ("attention-harness", ".", False)],
    ids=["vendored", "copy-at-top", "other-project", "nested", "untracked"],
)  # fmt: skip
def test_a_copy_in_another_repository_records_no_commit(tmp_path, needs_git, pyproject_name,
                                                       package_at, track):  # fmt: skip
    from harness.provenance import git_info

    package, _ = _repo(tmp_path / "repo", pyproject_name=pyproject_name, package_at=package_at,
                       track=track)  # fmt: skip
    assert git_info(package) == {"git_commit": None, "git_dirty": None}


def test_the_own_checkout_records_its_commit(tmp_path, needs_git):
    from harness.provenance import git_info

    package, head = _repo(tmp_path / "repo", pyproject_name="attention-harness", package_at=".")
    assert git_info(package) == {"git_commit": head, "git_dirty": False}
    (package / "__init__.py").write_text("# changed\n")
    assert git_info(package)["git_dirty"] is True


def test_outside_any_repository_no_commit(tmp_path, needs_git):
    from harness.provenance import git_info

    shutil.copytree(ROOT / "harness", tmp_path / "harness",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    assert git_info(tmp_path / "harness")["git_commit"] is None


# --- model ring: every numeric option checked, one line, exit 2 --------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [(["--seq-len", "-5"], "--seq-len: -5 is out of range"),
     (["--seq-len", "0"], "--seq-len: 0 is out of range"),
     (["--seq-len", str(2**41)], "is out of range"),
     (["--max-p", "0"], "--max-p: 0 is out of range"),
     (["--max-p", "-3"], "--max-p: -3 is out of range"),
     (["--max-p", "100000"], "--max-p: 100000 is out of range"),
     (["--stat", "mean"], "--stat: unknown value 'mean'")],
)  # fmt: skip
def test_model_ring_options_are_checked_first(args, needle):
    from harness.cli import app

    res = CliRunner().invoke(app, ["model", "ring", *args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and needle in lines[0] and "allowed" in lines[0]
