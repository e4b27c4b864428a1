"""Phase closures built from a bound forward: what one timed call of fwd / bwd / fwd_bwd does.

fwd runs under no_grad (inference). bwd builds the graph once, outside the timed call, and times
`backward(retain_graph=True)`. fwd_bwd times a training step's forward and backward together.
Gradients are cleared (set to None, no kernel) at the start of each call so accumulation costs
nothing; `Phase.reset` clears them *between* calls, so that a peak-memory baseline read after it
holds no gradients of an earlier call (else the timed call frees and re-allocates them inside the
baseline and its peak leaves them out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.workloads.base import Bound


@dataclass(frozen=True)
class Phase:
    """One timed call (`fn`) and how to drop what earlier calls left behind (`reset`)."""

    fn: Callable[[], object]
    reset: Callable[[], None]


def make_phase(phase: str, bound: Bound, dout: torch.Tensor | None) -> Phase:
    leaves = list(bound.leaves.values())

    def clear() -> None:
        for t in leaves:
            t.grad = None

    if phase == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                bound.forward()  # the output is dropped here, never kept past the call

        return Phase(fwd, clear)
    assert dout is not None and leaves, "backward phases need leaves and an upstream gradient"
    if phase == "bwd":
        out = bound.forward()

        def bwd() -> None:
            clear()
            out.backward(dout, retain_graph=True)

        return Phase(bwd, clear)
    if phase == "fwd_bwd":

        def fwd_bwd() -> None:
            clear()
            bound.forward().backward(dout)

        return Phase(fwd_bwd, clear)
    raise ValueError(f"unknown phase {phase!r}; allowed: fwd, bwd, fwd_bwd")


def grad_bytes(bound: Bound) -> int:
    """Bytes of the gradients a backward phase produces (one per leaf, the leaf's shape/dtype)."""
    return sum(t.numel() * t.element_size() for t in bound.leaves.values())


def run_once_for_check(phase: str, bound: Bound, dout: torch.Tensor | None):
    """One untimed call that returns the output and (for backward phases) public-layout grads."""
    if phase == "fwd":
        with torch.no_grad():
            return bound.forward(), None
    for t in bound.leaves.values():
        t.grad = None
    out = bound.forward()
    out.backward(dout)
    grads = {n: bound.grad_to_public(t.grad) for n, t in bound.leaves.items()}
    return out.detach(), grads
