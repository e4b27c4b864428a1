"""bpt_layer's measured training peak against memeff_layer's, through the frontier's probe (the
runner's memory pass): the paper's 2bsh vs 8bsh + 2bsh argues for at most half."""

from __future__ import annotations

import pytest

from harness.frontier.probe import Prober, Shape


@pytest.mark.slow
def test_bpt_layer_peak_is_at_most_half_of_memeff_layer() -> None:
    shape = Shape(num_heads=4, hidden=128, block_size=256)
    with Prober("cpu", 8 << 30, threads=2, timeout_s=900) as prober:
        for impl in ("memeff_layer", "bpt_layer"):
            assert prober.probe("layer", impl, "fwd_bwd", shape, 4096).ok
        memeff, bpt = (r["peak_mem_above_inputs_bytes"] for r in prober.rows)
    assert bpt <= 0.5 * memeff, (bpt / 2**20, memeff / 2**20)
