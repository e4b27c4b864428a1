"""Attention masks, each defined once as a `mask_mod`-style predicate that every backend shares.

A mask says which (query, key) pairs attend. It is defined by `MaskSpec.mask_mod(seqlen_q,
seqlen_k)`: a function `(b, h, q_idx, kv_idx) -> bool tensor` in FlexAttention's `mask_mod`
convention (torch.nn.attention.flex_attention), built only from index arithmetic and lookups in
small tables, so the same function is compiled by FlexAttention, evaluated tile by tile by the
blockwise kernels, materialized by naive attention and SDPA, and applied by the float64 reference.

Alignment: query row i sits at position p = i + seqlen_k - seqlen_q, i.e. the queries are the last
seqlen_q positions of the keys' sequence (bottom-right alignment, as flash-attn and a KV cache do);
every pattern is the last seqlen_q rows of its seqlen_k × seqlen_k square. `causal_top_left` is
the one exception (SDPA's `is_causal`: p = i). When seqlen_q == seqlen_k the two agree.
Rows with no key at all (p < 0 under causal, when seqlen_q > seqlen_k) are defined: output 0,
lse -inf, zero gradients.

Kinds (`window` follows flash-attn's `window_size=(left, right)`, -1 meaning unbounded):
    none             every pair
    causal           kv <= p
    causal_top_left  kv <= i
    sliding_window   p - left <= kv <= p + right                  (Mistral's SWA: (W, 0))
    document         same document: packed sequences of `doc_lens` (or `num_docs` seeded lengths)
    prefix_lm        kv < prefix_len (bidirectional prefix) or kv <= p (with causal=True the
                     prefix loses its lookahead: plain causal)
    strided          |p - kv| < stride or (p - kv) % stride == 0  (Child et al., arXiv 1904.10509)
    random_block     block pairs kept with probability `density` (seeded), diagonal blocks always
    block_sparse     block band: |p // block - kv // block| <= band (block-aligned local)
    global_local     |p - kv| <= window or kv < num_global or 0 <= p < num_global (Longformer,
                     arXiv 2004.05150; the sparse-attention slides' "global+local")
`causal=True` adds kv <= p to any kind that is not causal already (causal_top_left stays
top-left aligned: the flag does not mix alignments); a causal document mask is packed-sequence
training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any, Literal, get_args

MaskKind = Literal["none", "causal", "causal_top_left", "sliding_window", "document", "prefix_lm",
                   "strided", "random_block", "block_sparse", "global_local"]  # fmt: skip
MASK_KINDS: tuple[str, ...] = get_args(MaskKind)
# The kinds whose parameters are tables indexed by position: they need 0 <= p < seqlen_k.
POSITION_TABLE_KINDS: tuple[str, ...] = ("document", "random_block")
# Which parameters each kind reads (the rest must stay unset).
PARAMS: dict[str, tuple[str, ...]] = {
    "none": (), "causal": (), "causal_top_left": (), "sliding_window": ("window",),
    "document": ("doc_lens", "num_docs", "seed"), "prefix_lm": ("prefix_len",),
    "strided": ("stride",), "random_block": ("block", "density", "seed"),
    "block_sparse": ("block", "band"), "global_local": ("window", "num_global"),
}  # fmt: skip
_CAUSAL_ALREADY = ("causal", "causal_top_left")
_INT_PARAMS = ("num_docs", "prefix_len", "stride", "block", "band", "num_global", "seed")

ModFn = Callable[[Any, Any, Any, Any], Any]


@dataclass(frozen=True)
class MaskSpec:
    """A mask kind and its parameters (see the module docstring for each kind's predicate).

    Raises ValueError (`check_params`) naming the parameter, its value and what is allowed.
    """

    kind: MaskKind = "none"
    causal: bool = False
    window: tuple[int, int] | None = None
    doc_lens: tuple[int, ...] | None = None
    num_docs: int | None = None
    prefix_len: int | None = None
    stride: int | None = None
    block: int | None = None
    density: float | None = None
    band: int | None = None
    num_global: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # lists (YAML, JSON, a user's literal) become tuples: the spec is a hashable cache key
        for name in ("window", "doc_lens"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in (*_INT_PARAMS, "window", "doc_lens", "density"):
            value = getattr(self, name)
            items = value if isinstance(value, tuple) else (value,)
            if value is None or (name == "seed" and value == 0):
                continue
            numeric = int if name != "density" else (int, float)
            if not isinstance(value, tuple if name in ("window", "doc_lens") else numeric) or any(
                isinstance(x, bool) or not isinstance(x, numeric) for x in items
            ):
                want = {"window": "[left, right] of integers", "doc_lens": "a list of integers",
                        "density": "a number"}.get(name, "an integer")  # fmt: skip
                raise ValueError(f"mask {self.kind}: {name} must be {want}; got {value!r}")

    # ---- identity ---------------------------------------------------------------------------

    @property
    def is_causal(self) -> bool:
        """True when no query attends to a key after its own position."""
        if self.kind in _CAUSAL_ALREADY or self.causal:
            return True
        if self.kind == "prefix_lm":
            return False  # the prefix attends both ways
        return self.kind == "sliding_window" and self.window is not None and self.window[1] == 0

    @property
    def is_dense(self) -> bool:
        """Plain full or plain causal attention (what every kernel takes)."""
        return self.kind in ("none", "causal") and (self.kind == "causal" or not self.causal)

    def normalized(self) -> MaskSpec:
        """`none` + causal is `causal`; a redundant causal flag is dropped."""
        if self.kind in ("none", "prefix_lm") and self.causal:
            return MaskSpec(kind="causal")  # prefix_lm ∧ causal: the prefix loses its lookahead
        if self.kind in _CAUSAL_ALREADY and self.causal:
            return replace(self, causal=False)
        return self

    def with_causal(self, causal: bool) -> MaskSpec:
        """This mask and, if `causal`, the causal constraint; a mask that is causal already
        (causal, causal_top_left, a window with right 0) is kept as it is: causal_top_left keeps
        its top-left alignment (a flag cannot mix two alignments)."""
        if not causal or self.is_causal:
            return self.normalized()
        return replace(self, causal=True).normalized()

    @property
    def slug(self) -> str:
        """The mask's part of a case name: `full` and `causal` as before, else kind and params."""
        spec = self.normalized()
        if spec.kind == "none":
            return "full"
        if spec.kind == "causal":
            return "causal"
        parts = [spec.kind.replace("_", "")]
        for name in PARAMS[spec.kind]:
            value = getattr(spec, name)
            if value is None or (name == "seed" and value == 0):
                continue
            text = "_".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}" \
                if isinstance(value, float) else str(value)  # fmt: skip
            parts.append(f"{name.replace('_', '')}{text}")
        if spec.causal:
            parts.append("causal")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The kind, the causal flag and the parameters that are set (JSON-ready)."""
        data = asdict(self)
        out: dict[str, Any] = {"kind": data.pop("kind"), "causal": data.pop("causal")}
        for name, value in data.items():
            if value is not None and not (name == "seed" and value == 0):
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str | None) -> MaskSpec:
        if data is None:
            return cls()
        if isinstance(data, str):
            return cls(kind=data).normalized()  # type: ignore[arg-type]
        if not isinstance(data, dict):
            raise ValueError(f"mask must be a kind name or a mapping; got {data!r}")
        if "kind" not in data:
            raise ValueError(f"mask: needs 'kind'; allowed kinds: {', '.join(MASK_KINDS)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"mask: unknown parameter {unknown[0]!r}; allowed: "
                             f"{', '.join(cls.__dataclass_fields__)}")  # fmt: skip
        args = dict(data)
        for name in ("window", "doc_lens"):
            if args.get(name) is not None:
                args[name] = tuple(args[name])
        return cls(**args).normalized()

    # ---- validation -------------------------------------------------------------------------

    def check_params(self) -> None:
        """ValueError naming the first bad parameter, its value and what is allowed."""
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask: unknown kind {self.kind!r}; allowed: {', '.join(MASK_KINDS)}")
        used = PARAMS[self.kind]
        for name in ("window", "doc_lens", "num_docs", "prefix_len", "stride", "block", "density",
                     "band", "num_global"):  # fmt: skip
            if getattr(self, name) is not None and name not in used:
                allowed = ", ".join(used) or "none"
                raise ValueError(f"mask {self.kind}: parameter {name!r} does not apply; "
                                 f"{self.kind} takes: {allowed}")  # fmt: skip
        _require = {
            "sliding_window": ("window",), "document": (), "prefix_lm": ("prefix_len",),
            "strided": ("stride",), "random_block": ("block", "density"),
            "block_sparse": ("block", "band"), "global_local": ("window", "num_global"),
        }.get(self.kind, ())  # fmt: skip
        for name in _require:
            if getattr(self, name) is None:
                raise ValueError(f"mask {self.kind}: needs {name!r}")
        if self.window is not None and (len(self.window) != 2 or min(self.window) < -1):
            raise ValueError(f"mask {self.kind}: window must be [left, right], each >= 0 or "
                             f"-1 (unbounded); got {list(self.window)}")  # fmt: skip
        if self.kind == "document":
            if (self.doc_lens is None) == (self.num_docs is None):
                raise ValueError("mask document: give exactly one of doc_lens (a list of "
                                 "lengths) or num_docs (seeded lengths)")  # fmt: skip
            if self.doc_lens is not None and (not self.doc_lens or min(self.doc_lens) < 1):
                raise ValueError(f"mask document: doc_lens must be lengths >= 1; got "
                                 f"{list(self.doc_lens)}")  # fmt: skip
        if self.seed and self.kind not in ("random_block",) and self.num_docs is None:
            raise ValueError(f"mask {self.kind}: seed applies only to random_block and to "
                             f"document with num_docs; got seed {self.seed}")  # fmt: skip
        for name in ("num_docs", "prefix_len", "stride", "block", "num_global"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"mask {self.kind}: {name} must be >= 1; got {value}")
        if self.band is not None and self.band < 0:
            raise ValueError(f"mask {self.kind}: band must be >= 0; got {self.band}")
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise ValueError(f"mask {self.kind}: density must be in (0, 1]; got {self.density}")

    def shape_reasons(self, seqlen_q: int, seqlen_k: int) -> list[str]:
        """Why this mask cannot apply to a (seqlen_q, seqlen_k) case (empty when it can)."""
        reasons = []
        if self.kind in POSITION_TABLE_KINDS and seqlen_q > seqlen_k:
            reasons.append(f"mask {self.kind} needs seqlen_q <= seqlen_k (the queries are the "
                           f"keys' last positions); got {seqlen_q} > {seqlen_k}")  # fmt: skip
        if self.doc_lens is not None and sum(self.doc_lens) != seqlen_k:
            reasons.append(f"mask document: doc_lens sum to {sum(self.doc_lens)}, but seqlen_k "
                           f"is {seqlen_k}")  # fmt: skip
        if self.num_docs is not None and self.num_docs > seqlen_k:
            reasons.append(f"mask document: num_docs {self.num_docs} > seqlen_k {seqlen_k}")
        return reasons

    # ---- the predicate ----------------------------------------------------------------------

    def document_lengths(self, seqlen_k: int) -> list[int]:
        """The documents' lengths: `doc_lens`, or `num_docs` seeded random cuts of seqlen_k."""
        if self.doc_lens is not None:
            return list(self.doc_lens)
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        cuts = torch.randperm(seqlen_k - 1, generator=gen)[: (self.num_docs or 1) - 1] + 1
        bounds = [0, *sorted(int(c) for c in cuts), seqlen_k]
        return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]

    def mask_mod(self, seqlen_q: int, seqlen_k: int, device: Any = "cpu") -> ModFn:
        """`(b, h, q_idx, kv_idx) -> bool` (broadcasting int64 index tensors), True = attend."""
        return _mask_mod(self.normalized(), seqlen_q, seqlen_k, str(device))

    def tile(self, rows: Any, cols: Any, seqlen_q: int, seqlen_k: int) -> Any:
        """The boolean mask of query rows `rows` × key columns `cols` (1-D int64 tensors)."""
        fn = self.mask_mod(seqlen_q, seqlen_k, rows.device)
        return fn(None, None, rows[:, None], cols[None, :])

    def dense(self, seqlen_q: int, seqlen_k: int, device: Any = "cpu") -> Any:
        """The whole (seqlen_q, seqlen_k) boolean mask: O(Sq·Sk) bytes, for S×S kernels only."""
        import torch

        rows = torch.arange(seqlen_q, device=device)
        cols = torch.arange(seqlen_k, device=device)
        return self.tile(rows, cols, seqlen_q, seqlen_k)

    def attended_pairs(self, seqlen_q: int, seqlen_k: int) -> int:
        """The number of (query, key) pairs that attend (exact; counted in row chunks)."""
        return _pairs(self.normalized(), seqlen_q, seqlen_k)


def _positions(q_idx: Any, seqlen_q: int, seqlen_k: int, top_left: bool) -> Any:
    return q_idx if top_left else q_idx + (seqlen_k - seqlen_q)


@lru_cache(maxsize=64)
def _mask_mod(spec: MaskSpec, seqlen_q: int, seqlen_k: int, device: str) -> ModFn:
    import torch

    kind = spec.kind
    top_left = kind == "causal_top_left"
    tables: dict[str, Any] = {}
    if kind == "document":
        lens = spec.document_lengths(seqlen_k)
        tables["doc"] = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(
            device
        )
    if kind == "random_block":
        assert spec.block is not None and spec.density is not None
        n = math.ceil(seqlen_k / spec.block)
        gen = torch.Generator().manual_seed(spec.seed)
        keep = torch.rand(n, n, generator=gen) < spec.density
        keep |= torch.eye(n, dtype=torch.bool)  # a row always sees its own block
        tables["keep"] = keep.to(device)

    def base(p: Any, kv: Any) -> Any:
        if kind in ("none",):
            return (p >= -(2**62)) & (kv >= 0)  # all True, broadcast to the pair's shape
        if kind in ("causal", "causal_top_left"):
            return kv <= p
        if kind == "sliding_window":
            left, right = spec.window  # type: ignore[misc]
            ok = (kv >= 0) & (p >= -(2**62))
            if left >= 0:
                ok = ok & (kv >= p - left)
            if right >= 0:
                ok = ok & (kv <= p + right)
            return ok
        if kind == "document":
            doc = tables["doc"]
            return doc[p.clamp(min=0)] == doc[kv]
        if kind == "prefix_lm":
            return (kv < spec.prefix_len) | (kv <= p)
        if kind == "strided":
            d = p - kv
            return (d.abs() < spec.stride) | (d % spec.stride == 0)
        if kind == "random_block":
            blk = spec.block
            return tables["keep"][p.clamp(min=0) // blk, kv // blk]
        if kind == "block_sparse":
            blk = spec.block
            return (p.div(blk, rounding_mode="floor") - kv // blk).abs() <= spec.band
        if kind == "global_local":
            left, right = spec.window  # type: ignore[misc]
            g = spec.num_global
            local = (kv >= p - left) if left >= 0 else (kv >= 0)
            if right >= 0:
                local = local & (kv <= p + right)
            return local | (kv < g) | ((p >= 0) & (p < g))
        raise ValueError(f"mask: unknown kind {kind!r}; allowed: {', '.join(MASK_KINDS)}")

    def mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        p = _positions(q_idx, seqlen_q, seqlen_k, top_left)
        ok = base(p, kv_idx)
        if spec.causal:
            ok = ok & (kv_idx <= p)
        return ok & (p >= 0) if kind in POSITION_TABLE_KINDS else ok

    return mod


@lru_cache(maxsize=256)
def _pairs(spec: MaskSpec, seqlen_q: int, seqlen_k: int) -> int:
    if spec.kind == "none" and not spec.causal:
        return seqlen_q * seqlen_k
    if spec.kind in ("causal", "causal_top_left") and not spec.causal:
        offset = 0 if spec.kind == "causal_top_left" else seqlen_k - seqlen_q
        # row i sees min(max(i + offset + 1, 0), seqlen_k) keys
        return sum(min(max(i + offset + 1, 0), seqlen_k) for i in range(seqlen_q))
    import torch

    total = 0
    cols = torch.arange(seqlen_k)
    chunk = max(1, (1 << 24) // max(seqlen_k, 1))
    for start in range(0, seqlen_q, chunk):
        rows = torch.arange(start, min(start + chunk, seqlen_q))
        total += int(spec.tile(rows, cols, seqlen_q, seqlen_k).sum())
    return total


def density(spec: MaskSpec, seqlen_q: int, seqlen_k: int) -> float:
    """The attended fraction of the seqlen_q × seqlen_k pairs."""
    return spec.attended_pairs(seqlen_q, seqlen_k) / max(1, seqlen_q * seqlen_k)
