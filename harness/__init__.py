"""Long-context attention harness: run, compare and guard attention implementations.

Public API (layout (batch, seq, heads, head_dim) throughout):
    harness.attention(name, q, k, v, *, causal=False, block_size=None) -> Tensor
    harness.Unavailable, harness.REGISTRY, harness.Impl, harness.Availability
"""

from __future__ import annotations

__version__ = "0.1.0"

from harness.api import attention  # noqa: E402
from harness.errors import SuiteError, Unavailable, UnknownImplementation  # noqa: E402
from harness.registry import REGISTRY, Availability, Impl, register  # noqa: E402

__all__ = [
    "REGISTRY",
    "Availability",
    "Impl",
    "SuiteError",
    "Unavailable",
    "UnknownImplementation",
    "__version__",
    "attention",
    "register",
]
