"""One point of a sweep: the shape, precision and setting that every implementation is run on.

The case name is deterministic and is the join key of results, reports and comparisons; the phase
(fwd / bwd / fwd_bwd) is not part of it: one row per (case, implementation, phase). A name only
grows a part for a setting away from its default, so names of earlier cases are unchanged.

Shapes (the field's terms, as flash-attn names them): q (batch, seqlen_q, num_heads, head_dim),
k (batch, seqlen_k, num_kv_heads, head_dim), v (batch, seqlen_k, num_kv_heads, head_dim_v).
`seq_len` is the shorthand for both lengths; `num_kv_heads` divides `num_heads` (1 is MQA);
`softmax_scale` None means 1/sqrt(head_dim). `causal` is kept as the shorthand of the causal mask:
a case's mask is `mask` plus the causal constraint when `causal` is true (`harness.masks`), and
`causal` then reads whether the resulting mask is causal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.masks import MaskSpec

DType = Literal["float32", "float16", "bfloat16", "float64"]
Phase = Literal["fwd", "bwd", "fwd_bwd"]
SeqLayout = Literal["contiguous", "striped", "zigzag"]
WorkloadName = Literal["attention", "layer", "decode"]
# Decode: every sequence's cache holds seqlen_k tokens ("fixed"), or a seeded length between
# seqlen_k / 8 and seqlen_k ("ragged"; harness/workloads/decode.py).
CacheDist = Literal["fixed", "ragged"]
# How the inputs are laid out in memory: separate contiguous tensors, views of one packed qkv
# tensor (batch, seq, 3, heads, head_dim), or views with a strided last dim (..., head_dim, 2).
InputLayout = Literal["contiguous", "packed_qkv", "strided_last"]

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")
SEQ_LAYOUTS: tuple[str, ...] = ("contiguous", "striped", "zigzag")
INPUT_LAYOUTS: tuple[str, ...] = ("contiguous", "packed_qkv", "strided_last")


@dataclass(frozen=True)
class Case:
    """Shape and setting of one case; `hidden`, `ffn_expansion` matter for layers only.

    Raises ValueError for shapes that cannot exist (num_kv_heads not dividing num_heads).
    """

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
    seqlen_q: int | None = None
    seqlen_k: int | None = None
    num_kv_heads: int | None = None
    head_dim_v: int | None = None
    softmax_scale: float | None = None
    mask: MaskSpec = field(default_factory=MaskSpec)
    input_scale: float = 1.0
    input_layout: InputLayout = "contiguous"
    page_size: int | None = None
    cache_dist: CacheDist = "fixed"

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: resolve the shorthands once, here
        if isinstance(self.mask, dict | str):
            put(self, "mask", MaskSpec.from_dict(self.mask))
        default_q = 1 if self.workload == "decode" else self.seq_len  # decode: one new token
        put(self, "seqlen_q", self.seqlen_q or default_q)
        put(self, "seqlen_k", self.seqlen_k or self.seq_len)
        put(self, "num_kv_heads", self.num_kv_heads or self.num_heads)
        put(self, "head_dim_v", self.head_dim_v or self.head_dim)
        mask = self.mask.with_causal(self.causal)
        if self.workload == "decode":  # the cache's own mask: causal among the new tokens
            mask = MaskSpec(kind="causal") if (self.seqlen_q or 1) > 1 else MaskSpec()
        if mask.kind == "causal_top_left" and self.seqlen_q == self.seqlen_k:
            mask = MaskSpec(kind="causal")  # the two alignments agree on a square
        mask.check_params()
        put(self, "mask", mask)
        put(self, "causal", mask.is_causal)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} must divide num_heads "
                             f"{self.num_heads}")  # fmt: skip

    @property
    def sq(self) -> int:
        return self.seqlen_q  # type: ignore[return-value]  # resolved in __post_init__

    @property
    def sk(self) -> int:
        return self.seqlen_k  # type: ignore[return-value]

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads  # type: ignore[return-value]

    @property
    def dim_v(self) -> int:
        return self.head_dim_v  # type: ignore[return-value]

    @property
    def scale(self) -> float:
        """The softmax scale in use: `softmax_scale`, or 1/sqrt(head_dim)."""
        return (
            self.softmax_scale if self.softmax_scale is not None else 1 / math.sqrt(self.head_dim)
        )

    @property
    def is_standard(self) -> bool:
        """Equal lengths and heads, head_dim_v == head_dim, default scale, a full or causal mask:
        the case every attention kernel takes."""
        return (self.sq == self.sk == self.seq_len and self.kv_heads == self.num_heads
                and self.dim_v == self.head_dim and self.softmax_scale is None
                and self.mask.is_dense)  # fmt: skip

    @property
    def name(self) -> str:
        block = "auto" if self.block_size is None else str(self.block_size)
        if self.workload == "layer":
            head = (
                f"layer-b{self.batch}-s{self.seq_len}-hid{self.hidden}-h{self.num_heads}"
                f"-ffn{self.ffn_expansion}"
            )
        elif self.workload == "decode":
            cache = "contig" if self.page_size is None else f"page{self.page_size}"
            head = (f"decode-b{self.batch}-q{self.sq}-cache{self.sk}-h{self.num_heads}"
                    f"-kv{self.kv_heads}-d{self.head_dim}")  # fmt: skip
            if self.dim_v != self.head_dim:
                head += f"-dv{self.dim_v}"
            if self.softmax_scale is not None:
                head += f"-scale{self.softmax_scale:g}"
            return f"{head}-{self.dtype}-{cache}-{self.cache_dist}"
        else:
            head = f"attn-b{self.batch}-s{self.seq_len}-h{self.num_heads}-d{self.head_dim}"
        extra = []
        if (self.sq, self.sk) != (self.seq_len, self.seq_len):
            extra.append(f"q{self.sq}-k{self.sk}")
        if self.kv_heads != self.num_heads:
            extra.append(f"kv{self.kv_heads}")
        if self.dim_v != self.head_dim:
            extra.append(f"dv{self.dim_v}")
        if self.softmax_scale is not None:
            extra.append(f"scale{self.softmax_scale:g}")
        if self.input_scale != 1.0:
            extra.append(f"x{self.input_scale:g}")
        if self.input_layout != "contiguous":
            extra.append(self.input_layout.replace("_", ""))
        head = "-".join([head, *extra])
        name = f"{head}-{self.dtype}-{self.mask.slug}-bs{block}"
        if self.world_size > 1:
            name += f"-p{self.world_size}-{self.seq_layout}"
        return name

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """The case as row fields: `mask` is the kind, `mask_params` the causal flag and the
        kind's parameters (harness.masks.MaskSpec.to_dict)."""
        data = asdict(self)
        spec = self.mask.to_dict()
        data["mask"] = spec.pop("kind")
        data["mask_params"] = spec
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        """The inverse of `to_dict`; also reads cases written before masks existed."""
        args = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        mask = args.pop("mask", None)
        if mask is not None:
            args.pop("causal", None)  # read from the mask; written only as a derived flag
        params = data.get("mask_params") or {}
        if isinstance(mask, str):
            args["mask"] = MaskSpec.from_dict({"kind": mask, **params})
        elif isinstance(mask, dict):
            args["mask"] = MaskSpec.from_dict(mask)
        return cls(**args)
