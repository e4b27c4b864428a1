"""Phase closures built from a bound forward: what one timed call of fwd / bwd / fwd_bwd does.

fwd runs under no_grad (inference). bwd builds the graph once, outside the timed call, and times
`backward(retain_graph=True)`. fwd_bwd times a training step's forward and backward together.
Gradients are cleared (set to None, no kernel) before each call so accumulation costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.workloads.base import Bound


def make_phase(phase: str, bound: Bound, dout: torch.Tensor | None) -> Callable[[], object]:
    leaves = list(bound.leaves.values())

    def clear() -> None:
        for t in leaves:
            t.grad = None

    if phase == "fwd":

        def fwd() -> torch.Tensor:
            with torch.no_grad():
                return bound.forward()

        return fwd
    assert dout is not None and leaves, "backward phases need leaves and an upstream gradient"
    if phase == "bwd":
        out = bound.forward()

        def bwd() -> None:
            clear()
            out.backward(dout, retain_graph=True)

        return bwd
    if phase == "fwd_bwd":

        def fwd_bwd() -> None:
            clear()
            bound.forward().backward(dout)

        return fwd_bwd
    raise ValueError(f"unknown phase {phase!r}; allowed: fwd, bwd, fwd_bwd")


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
