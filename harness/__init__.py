"""Long-context attention harness: run, compare and guard attention implementations.

Public API (layout (batch, seq, heads, head_dim) throughout):
    harness.attention(name, q, k, v, *, causal=False, block_size=None) -> Tensor
    harness.ring_attention(q, k, v, *, causal=False, layout="zigzag", group=None) -> Tensor
    harness.shard_sequence(x, *, layout, rank, world_size, dim=1) / harness.gather_sequence(...)
    harness.Unavailable, harness.REGISTRY, harness.Impl, harness.Availability
"""

from __future__ import annotations

__version__ = "0.1.0"

from harness.api import attention  # noqa: E402
from harness.errors import SuiteError, Unavailable, UnknownImplementation  # noqa: E402
from harness.registry import REGISTRY, Availability, Impl, register  # noqa: E402

_RING_API = ("ring_attention", "shard_sequence", "gather_sequence")


def __getattr__(name: str):
    """Ring attention's API, imported on first use (it lives with the implementation)."""
    if name in _RING_API:
        import implementations.ring as ring

        return getattr(ring, name)
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
