"""One point of a sweep: the shape, precision and setting that every implementation is run on.

The case name is deterministic and is the join key of results, reports and comparisons; the phase
(fwd / bwd / fwd_bwd) is not part of it: one row per (case, implementation, phase).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

DType = Literal["float32", "float16", "bfloat16", "float64"]
Phase = Literal["fwd", "bwd", "fwd_bwd"]
SeqLayout = Literal["contiguous", "striped", "zigzag"]
WorkloadName = Literal["attention", "layer"]

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")
SEQ_LAYOUTS: tuple[str, ...] = ("contiguous", "striped", "zigzag")


@dataclass(frozen=True)
class Case:
    """Shape and setting of one case; `hidden`, `ffn_expansion` matter for layers only."""

    workload: WorkloadName = "attention"
    batch: int = 1
    seq_len: int = 1024
    num_heads: int = 8
    head_dim: int = 64
    block_size: int | None = None
    dtype: DType = "float32"
    causal: bool = False
    world_size: int = 1
    seq_layout: SeqLayout = "contiguous"
    hidden: int | None = None
    ffn_expansion: int = 4

    @property
    def name(self) -> str:
        mask = "causal" if self.causal else "full"
        block = "auto" if self.block_size is None else str(self.block_size)
        if self.workload == "layer":
            head = (
                f"layer-b{self.batch}-s{self.seq_len}-hid{self.hidden}-h{self.num_heads}"
                f"-ffn{self.ffn_expansion}"
            )
        else:
            head = f"attn-b{self.batch}-s{self.seq_len}-h{self.num_heads}-d{self.head_dim}"
        name = f"{head}-{self.dtype}-{mask}-bs{block}"
        if self.world_size > 1:
            name += f"-p{self.world_size}-{self.seq_layout}"
        return name

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        return cls(**data)
