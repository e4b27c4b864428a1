"""The pluggable registry of implementations.

Built-ins register from `implementations/__init__.py` (an explicit table of contents); third-party
packages register through the entry-point group `harness.implementations`, whose objects are an
`Impl`, an iterable of `Impl`, or a zero-argument callable returning either.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from harness.errors import HarnessError, UnknownImplementation
from harness.hooks import DistributedHooks

Layout = Literal["bshd", "bhsd"]
Workload = Literal["attention", "layer", "decode"]
ENTRY_POINT_GROUP = "harness.implementations"


@dataclass(frozen=True)
class Availability:
    """Whether an implementation can run on a device here, and if not, one sentence why."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Availability:
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


def _always(device: str) -> Availability:
    return Availability.yes()


def _no_limits(case: Any, device: str) -> list[str]:
    return []


@dataclass(frozen=True)
class Impl:
    """One registry entry.

    `forward` takes tensors in `layout` and returns the output in the same layout:
    attention: forward(q, k, v, *, causal, block_size[, mask][, softmax_scale]) -> out;
    layer:     forward(x, params, *, causal, block_size, num_heads) -> y.
    Attention shapes: q (batch, seqlen_q, num_heads, head_dim), k (batch, seqlen_k, num_kv_heads,
    head_dim), v (batch, seqlen_k, num_kv_heads, head_dim_v), out (batch, seqlen_q, num_heads,
    head_dim_v) (bshd; bhsd swaps seq and heads). `causal=True` is the bottom-right aligned causal
    mask (`harness.masks`); any other mask comes as `mask=` (a `harness.masks.MaskSpec`, with
    `causal=False`), a non-default scale as `softmax_scale=`; neither keyword is passed unless
    the case needs it, and a case needs only what the implementation declares:
    `features` (a subset of FEATURES: "gqa" num_kv_heads < num_heads, "seqlen_q_ne_k", "head_dim_v"
    != head_dim, "softmax_scale") and `mask_kinds` (the kinds of `harness.masks` it applies);
    `declared_reasons` says what a case needs beyond them, so an implementation that declares
    nothing only ever sees equal shapes with a full or causal mask.
    `available(device)` answers for a device type ("cpu" or "cuda");
    `unsupported(case, device)` lists the reasons a given case cannot run (dtype, head_dim,
    divisibility), empty when it can.

    Declared facts, copied into every row (the report reads them from the rows, never from here):
    `memory_exponent` is the power of the sequence length the working memory grows with (2 for
    kernels that materialize the S×S scores, 1 for blockwise ones, None when unknown);
    `uses_block_size` says whether `block_size` changes what the kernel does (the report's
    block-size figure plots only those).
    """

    name: str
    label: str
    forward: Callable[..., Any]
    layout: Layout = "bshd"
    workload: Workload = "attention"
    needs_process_group: bool = False
    supports_backward: bool = True
    memory_exponent: int | None = None
    uses_block_size: bool = False
    available: Callable[[str], Availability] = _always
    unsupported: Callable[[Any, str], list[str]] = _no_limits
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Public functions this implementation adds to the `harness` namespace (ring's
    # `ring_attention`, `shard_sequence`, `gather_sequence`), so `harness` never imports it by name.
    api: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    # Hooks for running on P ranks (shard, gather, observe exchanges, ...); None: single device.
    distributed: DistributedHooks | None = None
    features: frozenset[str] = frozenset()
    mask_kinds: tuple[str, ...] = ("none", "causal")


FEATURES: tuple[str, ...] = ("gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale", "paged_kv")


def declared_reasons(impl: Impl, case: Any) -> list[str]:
    """What an attention or decode `case` needs beyond what `impl` declares (features, masks).

    Decode implementations take per-sequence cache lengths and seqlen_q >= 1 by contract; they
    declare "gqa", "head_dim_v", "softmax_scale" and "paged_kv" (a paged cache) as they can.
    """
    workload = getattr(case, "workload", "attention")
    if impl.workload == "decode" and workload == "decode":
        decode_needs = {
            "gqa": case.kv_heads != case.num_heads, "head_dim_v": case.dim_v != case.head_dim,
            "softmax_scale": case.softmax_scale is not None, "paged_kv": case.page_size is not None,
        }  # fmt: skip
        return [f"no support for {feature}" for feature, needed
                in decode_needs.items() if needed and feature not in impl.features]  # fmt: skip
    if impl.workload != "attention" or workload != "attention":
        return []
    needs = {
        "gqa": (case.kv_heads != case.num_heads,
                f"GQA/MQA (num_kv_heads {case.kv_heads} < num_heads {case.num_heads})"),
        "seqlen_q_ne_k": (case.sq != case.sk, f"seqlen_q {case.sq} != seqlen_k {case.sk}"),
        "head_dim_v": (case.dim_v != case.head_dim,
                       f"head_dim_v {case.dim_v} != head_dim {case.head_dim}"),
        "softmax_scale": (case.softmax_scale is not None,
                          f"softmax_scale {case.softmax_scale}"),
    }  # fmt: skip
    reasons = [f"no support for {what}"
               for feature, (needed, what) in needs.items()
               if needed and feature not in impl.features]  # fmt: skip
    if case.mask.kind not in impl.mask_kinds:
        reasons.append(f"no support for the {case.mask.kind} mask; it takes: "
                       f"{', '.join(impl.mask_kinds)}")  # fmt: skip
    elif case.mask.causal and "causal" not in impl.mask_kinds:
        reasons.append("no support for causal masks")
    return reasons


class Registry:
    """Name → Impl, filled lazily on first use (built-ins, then entry points)."""

    def __init__(self) -> None:
        self._impls: dict[str, Impl] = {}
        self._loaded = False
        self.plugin_errors: dict[str, str] = {}

    def register(self, impl: Impl) -> Impl:
        if impl.name in self._impls and self._impls[impl.name] is not impl:
            raise HarnessError(f"implementation {impl.name!r} is registered twice")
        self._impls[impl.name] = impl
        return impl

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module("implementations")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                for impl in _as_impls(ep.load()):
                    self.register(impl)
            except Exception as exc:  # a broken plugin must not break the harness
                self.plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"

    def refresh(self) -> None:
        """Scan the entry points again (after sys.path changed, e.g. a plugin was installed)."""
        self._loaded = False
        self._load()

    def get(self, name: str) -> Impl:
        self._load()
        if name not in self._impls:
            raise UnknownImplementation(name, list(self._impls))
        return self._impls[name]

    def names(self, workload: Workload | None = None) -> list[str]:
        self._load()
        return [n for n, i in self._impls.items() if workload is None or i.workload == workload]

    def all(self) -> list[Impl]:
        self._load()
        return list(self._impls.values())

    def exported(self, name: str) -> Callable[..., Any] | None:
        """The public function `name` that some implementation exports (`Impl.api`), or None."""
        self._load()
        for impl in self._impls.values():
            if name in impl.api:
                return impl.api[name]
        return None


def _as_impls(obj: Any) -> Iterable[Impl]:
    if isinstance(obj, Impl):
        return [obj]
    if callable(obj) and not isinstance(obj, Iterable):
        return _as_impls(obj())
    impls = list(obj)
    if not all(isinstance(i, Impl) for i in impls):
        raise HarnessError("an entry point must give an Impl or an iterable of Impl")
    return impls


REGISTRY = Registry()
register = REGISTRY.register
