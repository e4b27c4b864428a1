"""Workloads: what an implementation computes (attention: q, k, v -> out; layer: x -> y;
decode: q, KV cache -> out).

A workload knows how to make seeded inputs, call an implementation in its layout, and compute the
float64 reference. The runner and the measurement code only see the `Workload` protocol.
"""

from __future__ import annotations

from typing import Any

from harness.workloads.base import Workload


def get_workload(name: str) -> Workload:
    if name == "attention":
        from harness.workloads.attention import AttentionWorkload

        return AttentionWorkload()
    if name == "layer":
        from harness.workloads.layer import LayerWorkload

        return LayerWorkload()
    if name == "decode":
        from harness.workloads.decode import DecodeWorkload

        return DecodeWorkload()
    raise ValueError(f"unknown workload {name!r}; allowed: attention, layer, decode")


__all__: list[Any] = ["Workload", "get_workload"]
