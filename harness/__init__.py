"""Long-context attention harness: run, compare and guard attention implementations.

Public API (layout (batch, seq, heads, head_dim) throughout):
    harness.attention(name, q, k, v, *, causal=False, block_size=None) -> Tensor
    harness.ring_attention(q, k, v, *, causal=False, seq_layout="zigzag", group=None,
                           seq_len=None, softmax_scale=None) -> Tensor
    harness.ulysses_attention(q, k, v, *, causal=False, seq_layout="contiguous", mask=None,
                              softmax_scale=None, block_size=None, group=None, seq_len=None)
    harness.usp_attention(q, k, v, *, causal=False, seq_layout="contiguous", softmax_scale=None,
                          ulysses_degree=None, seq_len=None)
    harness.shard_sequence(x, *, seq_layout, rank, world_size, dim=1) (pads an uneven tail) /
    harness.gather_sequence(parts, *, seq_layout, dim=1, seq_len=None) (drops it)
    harness.Unavailable, harness.REGISTRY, harness.Impl, harness.Availability

Importing `harness` imports neither torch nor any implementation: the read-only commands (`show`,
`report`, `compare`, ...) start in a fraction of a second. `attention` and the functions that
implementations export (`Impl.api`, e.g. ring's) load on first use.
"""

from __future__ import annotations

from typing import Any

from harness.errors import SuiteError, Unavailable, UnknownImplementation
from harness.registry import REGISTRY, Availability, Impl, register

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`attention`, and the public functions implementations export, imported on first use."""
    if name == "attention":
        from harness.api import attention

        return attention
    if not name.startswith("_"):
        import importlib.util

        if importlib.util.find_spec(f"harness.{name}") is not None:  # a submodule, not an export
            return importlib.import_module(f"harness.{name}")
        exported = REGISTRY.exported(name)
        if exported is not None:
            return exported
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


__all__ = [
    "REGISTRY",
    "Availability",
    "Impl",
    "SuiteError",
    "Unavailable",
    "UnknownImplementation",
    "__version__",
    "attention",
    "gather_sequence",
    "register",
    "ring_attention",
    "shard_sequence",
]
