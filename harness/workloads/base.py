"""The workload protocol the worker drives."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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

    def bind(self, impl: Impl, case: Case, inputs: Inputs, *, requires_grad: bool,
             forward_kwargs: dict[str, Any] | None = None) -> Bound: ...  # fmt: skip

    def output_shape(self, case: Case) -> tuple[int, ...]: ...

    def reference(
        self, case: Case, inputs: Inputs, dout: torch.Tensor | None, *, max_rows: int,
        chunk_rows: int, grad_max_seq: int,
    ) -> Reference: ...  # fmt: skip

    def select_rows(self, out: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor: ...


def sampled_reference(
    seq: int, low_dtype: torch.dtype, dout: torch.Tensor | None, *, max_rows: int,
    grad_max_seq: int, rows_fn: Callable[[torch.Tensor, torch.dtype], torch.Tensor],
    grads_fn: Callable[[torch.dtype], dict[str, torch.Tensor]], workload: str | None = None,
) -> Reference:  # fmt: skip
    """The reference procedure every workload shares.

    Output rows come from `rows_fn(rows, dtype)`, in float64 and in the case's own dtype (the
    naive-same-precision yardstick); beyond `max_rows` rows a seeded sample is used. Gradients
    (`grads_fn(dtype)`) need every row, so they are computed only up to `grad_max_seq`.
    A naive error that is not finite (naive overflowed: float16 scores past 65504) is recorded
    as it is (inf), and the note says which rule of `harness.measure.tolerance` then applies to
    the row's errors (for `workload`; without one, only that the fallback applies).
    """
    from harness.measure.error import rel_l2
    from harness.measure.tolerance import fallback_note

    sampled = seq > max_rows
    if sampled:
        gen = torch.Generator().manual_seed(12345)
        rows = torch.randperm(seq, generator=gen)[:max_rows].sort().values
    else:
        rows = torch.arange(seq)
    ref = rows_fn(rows, torch.float64)
    result = Reference(out=ref, rows=rows if sampled else None, grads=None,
                       naive_out_rel_l2=rel_l2(rows_fn(rows, low_dtype), ref))  # fmt: skip
    notes = [f"output error on {rows.numel()} of {seq} rows (seeded sample)"] if sampled else []
    if dout is not None and seq > grad_max_seq:
        notes.append(f"no gradient reference above seq_len {grad_max_seq}")
    elif dout is not None:
        result.grads = grads_fn(torch.float64)
        naive_grads = grads_fn(low_dtype)
        result.naive_grad_rel_l2 = {n: rel_l2(naive_grads[n], result.grads[n])
                                    for n in result.grads}  # fmt: skip
    dtype = str(low_dtype).removeprefix("torch.")
    grad_naive = max(result.naive_grad_rel_l2.values()) if result.naive_grad_rel_l2 else None
    if workload is not None:
        notes.append(fallback_note(workload, dtype, result.naive_out_rel_l2, grad_naive))
    elif not all(math.isfinite(e) for e in (result.naive_out_rel_l2, grad_naive or 0.0)):
        notes.append(f"naive {dtype} is not finite (overflow): the fallback rule of "
                     "harness.measure.tolerance applies")  # fmt: skip
    result.note = "; ".join(n for n in notes if n)
    return result
