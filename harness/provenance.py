"""Where and with what a run was made: versions, commit, device, machine, numerics flags, time.

The commit is recorded only for the package's own checkout (`checkout_root`), never for a
repository that merely contains a copy of it.

What a regression guard needs to explain a change between two nights is recorded too: the GPU
driver (torch.utils.collect_env's `get_nvidia_driver_version`, i.e. `nvidia-smi`, on CUDA runs
only), the versions of the kernel packages the implementations import (from their installed
metadata: nothing is imported; None when not installed), the TF32 and determinism flags, and the
CPU frequency governor when the kernel exposes it. `collect_env.get_env_info()` is not called: it
runs `pip list`, `lscpu`, gcc, cmake and nvidia-smi (0.6 s on a 2-core CPU machine, for fields we
do not read).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import harness

# provenance key -> distribution name, whose installed version is recorded (None: not installed)
PACKAGES: dict[str, str] = {
    "flash_attn_version": "flash-attn",
    "flash_attn_3_version": "flash-attn-3",
    "flash_attn_4_version": "flash-attn-4",
    "xformers_version": "xformers",
    "triton_version": "triton",
    "cutlass_dsl_version": "nvidia-cutlass-dsl",
    "flashinfer_version": "flashinfer-python",
}
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
PROJECT_NAME = "attention-harness"  # [project] name in pyproject.toml
_NAME_LINE = re.compile(r"""name\s*=\s*["']([^"']+)["']""")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _project_name(pyproject: Path) -> str | None:
    """The `[project]` name in a pyproject.toml (read by hand: tomllib is Python >= 3.11)."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    section = None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line
        elif section == "[project]" and (m := _NAME_LINE.fullmatch(line)):
            return m.group(1)
    return None


def checkout_root(package_dir: Path | None = None) -> Path | None:
    """The git checkout of this package, or None when it is not in one of its own.

    A copy of the package inside an unrelated repository (vendored, or an installed tree under
    someone's project) must not record that repository's commit as the run's. So the checkout
    counts only if its top level holds this project's pyproject.toml and the package's
    `__init__.py` is tracked there at `<top level>/<package>/__init__.py`.
    """
    package_dir = (package_dir or Path(harness.__file__).parent).resolve()
    top = _git("rev-parse", "--show-toplevel", cwd=package_dir)
    if top is None:
        return None
    root = Path(top).resolve()
    if package_dir.parent != root or _project_name(root / "pyproject.toml") != PROJECT_NAME:
        return None
    init = f"{package_dir.name}/__init__.py"
    if _git("ls-files", "--error-unmatch", "--", init, cwd=root) is None:
        return None
    return root


def git_info(package_dir: Path | None = None) -> dict[str, Any]:
    """`git_commit` and `git_dirty` of the package's own checkout (None, None outside one)."""
    root = checkout_root(package_dir)
    if root is None:
        return {"git_commit": None, "git_dirty": None}
    commit = _git("rev-parse", "HEAD", cwd=root)
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
    return {"git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return cpu_model()


def package_version(distribution: str) -> str | None:
    """The installed version of `distribution` (read from its metadata, not imported); None
    when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    return {key: package_version(dist) for key, dist in PACKAGES.items()}


def _run_lambda(command: str) -> tuple[int, str, str]:
    """collect_env's `run`, with a timeout (a wedged driver must not hang `harness run`)."""
    try:
        out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, "", str(exc)
    return out.returncode, out.stdout.strip(), out.stderr.strip()


def gpu_driver_version(device: str) -> str | None:
    """The NVIDIA driver version on CUDA runs (collect_env parses `nvidia-smi`); else None."""
    if device != "cuda":
        return None
    from torch.utils import collect_env

    try:
        return collect_env.get_nvidia_driver_version(_run_lambda)
    except Exception:  # collect_env is best-effort by design; provenance must not fail a run
        return None


def cpu_governor() -> str | None:
    """cpu0's frequency governor (`performance`, `powersave`, ...); None where not exposed."""
    try:
        return GOVERNOR.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def numerics_flags() -> dict[str, Any]:
    """The process-wide switches that change results and speed: TF32 and determinism."""
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def collect(device: str, seed: int) -> dict[str, Any]:
    git = git_info()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "harness_version": harness.__version__,
        "git_commit": git["git_commit"],
        "git_dirty": git["git_dirty"],
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "gpu_driver_version": gpu_driver_version(device),
        **package_versions(),
        **numerics_flags(),
        "python_version": platform.python_version(),
        "device": device,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "num_threads": torch.get_num_threads(),
        "num_cpus": os.cpu_count(),
        "cpu_governor": cpu_governor(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
    }
