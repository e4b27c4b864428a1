"""Time from FLOPs and bytes: a roofline over a device profile.

A call doing F FLOPs and moving Q compulsory bytes on a device with achieved FLOP/s R and memory
bandwidth W takes at least max(F / R, Q / W) seconds (the roofline; compute- vs memory-bound by
arithmetic intensity F/Q against R/W, decoder-only notes sources/004 App. D). FLOPs and bytes
follow harness/measure/flops.py (forward 4·B·H·Sq·Sk·D over attended pairs, backward 2.5×; layers
add 2 FLOPs a weight a token, backward 2×; bytes: each tensor read or written once), which every
measured row already carries as `flops` and `bytes_moved`.

For a training step of a whole model: the decoder-only notes' model FLOPs (sources/004 §3.1,
eq. 3.2) 12·B·D·L·S·(S + (2 + E)·D), forward and backward.
"""

from __future__ import annotations

from harness.model.devices import Device


def roofline_s(flops: float, nbytes: float | None, device: Device,
               efficiency: float = 1.0) -> float:  # fmt: skip
    """Seconds for `flops` FLOPs and `nbytes` bytes: max(F / (R·eff), Q / W)."""
    compute = flops / (device.flops * efficiency)
    memory = (nbytes or 0.0) / device.hbm_bytes_per_s
    return max(compute, memory)


def training_step_flops(batch: int, seq_len: int, hidden: int, num_layers: int,
                        ffn_expansion: int = 4) -> float:  # fmt: skip
    """Model FLOPs of one forward + backward over B sequences of S tokens (sources/004 eq. 3.2):
    12·B·D·L·S·(S + (2 + E)·D). The S² part is attention (non-causal); the rest 6·N·tokens."""
    b, s, d, n_layers, e = batch, seq_len, hidden, num_layers, ffn_expansion
    return 12.0 * b * d * n_layers * s * (s + (2 + e) * d)
