"""Where and with what a run was made: versions, commit, device, machine, time."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import harness


def _git(*args: str) -> str | None:
    root = Path(harness.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


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
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "harness_version": harness.__version__,
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
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
