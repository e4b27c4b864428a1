"""scripts/gpu_device.sh, the steps a GPU session runs on the offline device machine, tried on CPU.

The device's 30 s warm window and 64 MiB carries are the constraints: a wheel split across two
calls must be joined and checked before it is installed, and a run cut short (or a machine gone
cold) must resume from the packed run directory instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_device.sh"
WHEEL = "tinypkg-1.0-py3-none-any.whl"


def _step(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    names = ("SITE", "STASH", "RUNS", "WHL", "WHL2", "PACKS", "OUT", "CUDART12")
    dirs = {name: str(tmp / name.lower()) for name in names}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, "PY": sys.executable, **dirs, **env},
                          timeout=300)  # fmt: skip


def _wheel(path: Path, name: str, files: dict[str, str]) -> bytes:
    """A minimal valid wheel, so pip really installs what the steps hand it."""
    dist = f"{name}-1.0.dist-info"
    files = files | {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",  # fmt: skip
    }
    with zipfile.ZipFile(path, "w") as zf:
        for rel, text in files.items():
            zf.writestr(rel, text)
        zf.writestr(f"{dist}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{dist}/RECORD"]))
    return path.read_bytes()


def _tiny_wheel(path: Path) -> bytes:
    # shares its top-level folder with _base_wheel, as the CUTLASS DSL's wheels share theirs
    return _wheel(path, "tinypkg", {"shared_ns/tiny.py": "VALUE = 42\n"})


def _base_wheel(root: Path) -> None:
    (root / "whl").mkdir(exist_ok=True)
    _wheel(root / "whl" / "basepkg-1.0-py3-none-any.whl", "basepkg",
           {"shared_ns/base.py": "BASE = 1\n"})  # fmt: skip
    cudart = {"nvidia/cuda_runtime/lib/libcudart.so.12": "ELF"}
    _wheel(root / "whl" / "nvidia_cuda_runtime_cu12-1.0-py3-none-any.whl",
           "nvidia_cuda_runtime_cu12", cudart)  # fmt: skip


def _split(tmp: Path, data: bytes, *, corrupt: bool = False) -> None:
    """What scripts/gpu_wheels.sh does to a wheel over the carry limit."""
    (tmp / "whl").mkdir(exist_ok=True)
    (tmp / "whl2").mkdir(exist_ok=True)
    half = (len(data) + 1) // 2
    (tmp / "whl" / f"{WHEEL}.part1").write_bytes(data[:half])
    second = data[half:] if not corrupt else data[half:-1] + b"x"
    (tmp / "whl2" / f"{WHEEL}.part2").write_bytes(second)
    (tmp / "whl2" / f"{WHEEL}.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def test_setup_then_join_installs_every_wheel_into_one_tree(tmp_path):
    _base_wheel(tmp_path)
    _split(tmp_path, _tiny_wheel(tmp_path / WHEEL))
    setup = _step(tmp_path, "setup")
    assert setup.returncode == 0, setup.stderr
    assert "implementations" in setup.stdout  # `harness list` ran from the source tree
    assert (tmp_path / "site" / "shared_ns" / "base.py").exists()
    joined = _step(tmp_path, "join")
    assert joined.returncode == 0, joined.stderr
    # pip --target replaces a top-level folder per call; the join must not lose base.py
    assert (tmp_path / "site" / "shared_ns" / "tiny.py").read_text() == "VALUE = 42\n"
    assert (tmp_path / "site" / "shared_ns" / "base.py").read_text() == "BASE = 1\n"
    # the CUDA 12 runtime goes to the loader's path only, not into the import path
    assert (tmp_path / "cudart12" / "libcudart.so.12").read_text() == "ELF"
    assert not (tmp_path / "site" / "nvidia").exists()


def test_join_refuses_a_damaged_half(tmp_path):
    _split(tmp_path, _tiny_wheel(tmp_path / WHEEL), corrupt=True)
    # the stash as `setup` leaves it (the first part kept; setup itself, with its torch import
    # and `harness list`, ~8 s: test_setup_then_join_installs_every_wheel_into_one_tree)
    (tmp_path / "stash").mkdir()
    (tmp_path / "stash" / f"{WHEEL}.part1").write_bytes(
        (tmp_path / "whl" / f"{WHEEL}.part1").read_bytes()
    )
    joined = _step(tmp_path, "join")
    assert joined.returncode != 0 and "FAILED" in joined.stdout
    assert not (tmp_path / "site" / "shared_ns").exists()


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]


def test_a_cold_machine_resumes_from_the_carried_pack(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(json.dumps({
        "name": "tiny", "workload": "attention", "implementations": ["naive", "chunked"],
        "sweep": {"seq_len": [33], "num_heads": [1], "head_dim": [8], "phase": ["fwd"]},
        "timing": {"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0},
        "device": "cpu",
    }))  # fmt: skip
    first = _step(tmp_path, "run", str(suite), "-", "--impl", "naive")  # an unfinished run
    assert first.returncode == 0, first.stderr
    pack = tmp_path / "out" / "tiny--.tgz"
    with tarfile.open(pack) as tar:
        assert any(name.endswith("rows.jsonl") for name in tar.getnames())
    # The machine went cold: /tmp is gone, the pack comes back as a carried file.
    (tmp_path / "packs").mkdir()
    pack.rename(tmp_path / "packs" / pack.name)
    subprocess.run(["rm", "-rf", str(tmp_path / "runs")], check=True)
    second = _step(tmp_path, "run", str(suite), "-")
    assert second.returncode == 0, second.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny--").iterdir()
    rows = _rows(run_dir)
    assert sorted(r["impl"] for r in rows) == ["chunked", "naive"]  # naive kept, chunked added
    assert all(r["status"] == "ok" for r in rows)
    assert "1 rows written" in second.stderr


def test_a_failed_run_fails_the_step(tmp_path):
    result = _step(tmp_path, "run", "suites/no_such_suite.yaml", "-")
    assert result.returncode == 2 and "no_such_suite" in result.stderr


def test_unknown_step_is_a_usage_error(tmp_path):
    result = _step(tmp_path, "fly")
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.mark.parametrize("script", ["gpu_device.sh", "gpu_wheels.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0
