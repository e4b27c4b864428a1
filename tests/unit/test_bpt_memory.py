"""Peak CPU memory of bpt grows linearly in S while naive attention's grows quadratically.

Measured the harness's way (VmHWM via harness.measure.memory.measure_peak) in a fresh process
started with MALLOC_ENV, so freed tensors go back to the kernel and RSS tracks live tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.measure.memory import MALLOC_ENV, cpu_peak_supported

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = """
import json, sys, torch
from harness.measure.memory import measure_peak
from implementations.bpt import bpt_attention
from implementations.naive import naive_attention
torch.set_num_threads(1)
fns = {"bpt": bpt_attention, "naive": naive_attention}
peaks = {}
for name, fn in fns.items():
    for seq in (1024, 2048, 4096):
        q, k, v, dout = (torch.randn(1, 2, seq, 64) for _ in range(4))
        leaves = [t.requires_grad_(True) for t in (q, k, v)]
        def step():
            fn(*leaves, causal=False, block_size=512).backward(dout)
        step()  # one-time costs (thread pools, lazy initialisation) out of the measurement
        peaks[f"{name}-{seq}"] = measure_peak(step, "cpu").above_baseline_bytes
print(json.dumps(peaks))
"""


# ~11 s (S up to 4096 with backward); by default the growth law (blockwise linear, naive
# quadratic) is test_memory_growth.py::test_naive_quadratic_chunked_linear
@pytest.mark.slow
@pytest.mark.skipif(not cpu_peak_supported(), reason="/proc/self/clear_refs is not writable")
def test_bpt_peak_memory_grows_linearly_naive_quadratically() -> None:
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    peaks = json.loads(done.stdout.strip().splitlines()[-1])

    def increments_ratio(name: str) -> float:
        """(peak(4k) - peak(2k)) / (peak(2k) - peak(1k)): 2 if linear (plus a constant), 4 if
        quadratic."""
        p1, p2, p4 = (peaks[f"{name}-{s}"] for s in (1024, 2048, 4096))
        return (p4 - p2) / max(p2 - p1, 1)

    assert 1.2 < increments_ratio("bpt") < 3.0, peaks
    assert increments_ratio("naive") > 3.0, peaks
    assert peaks["naive-4096"] > 20 * peaks["bpt-4096"], peaks
