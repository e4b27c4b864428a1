"""Where and with what a run was made: versions, commit, device, machine, time.

The commit is recorded only for the package's own checkout (`checkout_root`), never for a
repository that merely contains a copy of it.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import harness

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
        "python_version": platform.python_version(),
        "device": device,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "num_threads": torch.get_num_threads(),
        "num_cpus": os.cpu_count(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "utc_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
    }
