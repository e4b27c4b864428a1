"""The workload protocol the worker drives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from harness.case import Case
from harness.registry import Impl


@dataclass
class Inputs:
    """Seeded inputs in the public layout, shared by every implementation of a case."""

    tensors: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass
class Bound:
    """An implementation bound to one case's inputs, in its own layout (converted once, untimed).

    `forward()` returns the output in the public layout (a view, no copy). `leaves` are the tensors
    gradients are taken for, in the implementation's layout; `grad_to_public` maps a leaf's grad
    back to the public layout for comparison with the reference.
    """

    forward: Callable[[], torch.Tensor]
    leaves: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_to_public: Callable[[torch.Tensor], torch.Tensor] = lambda g: g


@dataclass
class Reference:
    """float64 reference: output rows (maybe sampled) and, when affordable, gradients."""

    out: torch.Tensor
    rows: torch.Tensor | None  # indices of sampled query rows; None when all rows
    grads: dict[str, torch.Tensor] | None
    naive_out_rel_l2: float | None = None
    naive_grad_rel_l2: dict[str, float] | None = None
    note: str = ""


class Workload(Protocol):
    def make_inputs(self, case: Case, device: str, seed: int) -> Inputs: ...

    def bind(self, impl: Impl, case: Case, inputs: Inputs, *, requires_grad: bool) -> Bound: ...

    def reference(
        self, case: Case, inputs: Inputs, dout: torch.Tensor | None, *, max_rows: int,
        chunk_rows: int, grad_max_seq: int,
    ) -> Reference: ...  # fmt: skip

    def select_rows(self, out: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor: ...
