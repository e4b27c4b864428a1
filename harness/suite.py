"""Suite files (YAML): validated with pydantic on load, expanded into deterministic cases.

Every user mistake becomes one `SuiteError` line that names the file, the key, the bad value and the
allowed values (or the limit); nothing is written before a suite has validated. The file is read
with bounded work (`harness.yaml_safe`: size, alias expansion, nesting, duplicate keys), and every
number is bounded here, so that no value validates only to fail every row of the run:

- sizes (seq_len, batch, num_heads, head_dim, block_size, hidden, ffn_expansion, accuracy.*):
  1 .. 2**31 - 1; world_size: 1 .. 1024 (every rank is a process on this machine)
- threads: 1 .. 4096, a fixed bound rather than the CPU count, so that a suite validates alike on
  every machine (a --dry-run on a laptop checks a suite meant for a 192-core server)
  Unset, workers use the physical cores the process may run on (affinity mask, cgroup quota:
  harness/run/threads.py), not torch's implicit count; each row records its `num_threads`.
- seed: 0 .. 2**63 - 1 (torch.manual_seed's range)
- case_timeout_s, max_time_s: above 0, at most 7 days; every float finite (no .inf, .nan)
- timing.warmup_ms: 0 .. 7 days (in ms); timing.processes: 1 .. 64; timing.l2_flush and
  timing.cuda_graph: true or false (no 1, "yes")
- memory_budget_gb: 1 MiB .. 1 PiB (2**-10 .. 2**20 GiB); below 1 MiB it rounds to nothing
- cases × implementations × phases: at most limits.max_tasks (100,000; raise it up to 10**7)
- axis values and implementations: each listed once (a repeat would duplicate rows)
- profiles: at most 32

Every profile is validated with the suite, not only the one asked for, so a broken GPU profile is
found on the laptop.
"""

from __future__ import annotations

import copy
import itertools
import math
import reprlib
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.case import CacheDist, Case, DType, InputLayout, Phase, SeqLayout, WorkloadName
from harness.errors import SuiteError, UnknownImplementation
from harness.masks import POSITION_TABLE_KINDS, MaskKind, MaskSpec
from harness.yaml_safe import YamlInputError, one_line, read_yaml

MAX_SIZE = 2**31 - 1
MAX_WORLD_SIZE = 1024
MAX_THREADS = 4096
MAX_SEED = 2**63 - 1
MAX_SECONDS = 7 * 24 * 3600.0
MIN_BUDGET_GB, MAX_BUDGET_GB = 2.0**-10, 2.0**20  # 1 MiB, 1 PiB
MAX_TASKS, MAX_TASKS_CEILING = 100_000, 10_000_000
MAX_REPEATS = 1_000_000
MAX_PROFILES = 32
MAX_PROCESSES = 64  # timing.processes: fresh workers per row

Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]
WorldSize = Annotated[int, Field(gt=0, le=MAX_WORLD_SIZE)]
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
Repeats = Annotated[int, Field(gt=0, le=MAX_REPEATS)]
Scale = Annotated[float, Field(gt=0, le=1e6)]
MAX_DOCS = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _each_once(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()  # axis values are ints, strings, bools or None: all hashable
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice; list each value once")
        seen.add(value)
    return values


class Mask(_Strict):
    """A mask with parameters, as a sweep value (`harness.masks` defines each kind)."""

    kind: MaskKind
    causal: bool = False
    window: (
        tuple[Annotated[int, Field(ge=-1, le=MAX_SIZE)], Annotated[int, Field(ge=-1, le=MAX_SIZE)]]
        | None
    ) = None  # noqa: E501
    doc_lens: tuple[Size, ...] | None = Field(default=None, min_length=1, max_length=MAX_DOCS)
    num_docs: Size | None = None
    prefix_len: Size | None = None
    stride: Size | None = None
    block: Size | None = None
    density: float | None = Field(default=None, gt=0, le=1)
    band: Annotated[int, Field(ge=0, le=MAX_SIZE)] | None = None
    num_global: Size | None = None
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: Any) -> Any:
        """YAML's `true` is not a stride or a density (pydantic would read it as 1)."""
        if info.field_name != "causal" and isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @model_validator(mode="after")
    def _params_fit_kind(self) -> Mask:
        self.spec().check_params()  # ValueError naming the parameter and what the kind takes
        return self

    def spec(self) -> MaskSpec:
        return MaskSpec.from_dict(self.model_dump())


class Sweep(_Strict):
    """The axes; cases are their Cartesian product (phase is a row axis, not a case axis).

    `seq_len` is the shorthand for seqlen_q and seqlen_k; null in seqlen_q / seqlen_k /
    num_kv_heads / head_dim_v means "as seq_len / num_heads / head_dim". A case's mask is `mask`
    plus the causal constraint where `causal` is true (`harness.masks`).
    """

    seq_len: list[Size] = Field(default=[1024], min_length=1)
    batch: list[Size] = Field(default=[1], min_length=1)
    num_heads: list[Size] = Field(default=[8], min_length=1)
    head_dim: list[Size] = Field(default=[64], min_length=1)
    block_size: list[Size | None] = Field(default=[None], min_length=1)
    dtype: list[DType] = Field(default=["float32"], min_length=1)
    causal: list[bool] = Field(default=[False], min_length=1)
    world_size: list[WorldSize] = Field(default=[1], min_length=1)
    seq_layout: list[SeqLayout] = Field(default=["contiguous"], min_length=1)
    hidden: list[Size | None] = Field(default=[None], min_length=1)
    ffn_expansion: list[Size] = Field(default=[4], min_length=1)
    seqlen_q: list[Size | None] = Field(default=[None], min_length=1)
    seqlen_k: list[Size | None] = Field(default=[None], min_length=1)
    num_kv_heads: list[Size | None] = Field(default=[None], min_length=1)
    head_dim_v: list[Size | None] = Field(default=[None], min_length=1)
    softmax_scale: list[Scale | None] = Field(default=[None], min_length=1)
    mask: list[Mask] = Field(default=[Mask(kind="none")], min_length=1)
    input_scale: list[Scale] = Field(default=[1.0], min_length=1)
    input_layout: list[InputLayout] = Field(default=["contiguous"], min_length=1)
    cache_len: list[Size | None] = Field(default=[None], min_length=1)
    page_size: list[Size | None] = Field(default=[None], min_length=1)
    cache_dist: list[CacheDist] = Field(default=["fixed"], min_length=1)
    phase: list[Phase] = Field(default=["fwd"], min_length=1)

    @field_validator("mask", mode="before")
    @classmethod
    def _kind_names(cls, values: Any) -> Any:
        """A bare kind name (`causal`) is the mask of that kind with no parameters."""
        if isinstance(values, list):
            return [{"kind": v} if isinstance(v, str) else v for v in values]
        return values

    @field_validator("mask")
    @classmethod
    def _masks_differ(cls, values: list[Mask]) -> list[Mask]:
        """Two entries that are one mask (`causal` and `{kind: none, causal: true}`) would be
        one case under two spellings."""
        seen: dict[str, Mask] = {}
        for value in values:
            slug = value.spec().slug
            if slug in seen:
                raise ValueError(f"{value.model_dump(exclude_defaults=True)} is the same mask as "
                                 f"{seen[slug].model_dump(exclude_defaults=True)}; list each "
                                 "mask once")  # fmt: skip
            seen[slug] = value
        return values

    @field_validator("*")
    @classmethod
    def _values_once(cls, values: list[Any]) -> list[Any]:
        return _each_once(values)

    def num_cases(self) -> int:
        """The size of the Cartesian product of the case axes (phase aside), before duplicates
        (layouts at world_size 1) collapse: computed without expanding anything."""
        return math.prod(len(axis) for axis in self.case_axes())

    def case_axes(self) -> tuple[list[Any], ...]:
        """The case axes in expansion order (phase aside)."""
        return (self.batch, self.seq_len, self.num_heads, self.head_dim, self.hidden,
                self.ffn_expansion, self.dtype, self.causal, self.block_size, self.world_size,
                self.seq_layout, self.seqlen_q, self.seqlen_k, self.num_kv_heads,
                self.head_dim_v, self.softmax_scale, self.mask, self.input_scale,
                self.input_layout, self.cache_len, self.page_size, self.cache_dist)  # fmt: skip


class Timing(_Strict):
    """Warm-up calls, then timed calls until `repeats` or the `max_time_s` budget is reached.

    warmup_ms: more warm-up calls until this much wall time has passed (after `warmup`), as
    triton's do_bench. l2_flush / cuda_graph: CUDA only (harness/measure/timing.py): zero a buffer
    larger than L2 before each sample; time replays of a CUDA graph of the call. processes: each row
    is timed in this many fresh worker processes, one per round, rounds interleaved across rows
    (asv's `processes`); the samples are pooled (harness/run/rounds.py).
    """

    warmup: int = Field(default=1, ge=0, le=MAX_REPEATS)
    repeats: Repeats = 5
    min_repeats: Repeats = 3
    max_time_s: Seconds = 10.0
    warmup_ms: float = Field(default=0.0, ge=0, le=MAX_SECONDS * 1e3)
    l2_flush: bool = True
    cuda_graph: bool = False
    processes: int = Field(default=1, ge=1, le=MAX_PROCESSES)

    @field_validator("l2_flush", "cuda_graph", mode="before")
    @classmethod
    def _true_or_false(cls, value: Any) -> Any:
        if not isinstance(value, bool):  # pydantic would read "yes" or 1 as true
            raise ValueError("must be true or false")
        return value

    @field_validator("warmup_ms", "processes", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value


class Limits(_Strict):
    case_timeout_s: Seconds = 300.0
    memory_budget_gb: float | None = Field(default=None, gt=0)
    max_seq_len: dict[str, Size] = Field(default_factory=dict)
    max_tasks: int = Field(default=MAX_TASKS, gt=0, le=MAX_TASKS_CEILING)

    @field_validator("memory_budget_gb")
    @classmethod
    def _budget_in_range(cls, value: float | None) -> float | None:
        # Below 1 MiB the budget rounds to a few bytes (1e-12 GiB: 0, which reads as "none").
        if value is not None and not MIN_BUDGET_GB <= value <= MAX_BUDGET_GB:
            raise ValueError(f"must be between {MIN_BUDGET_GB} (1 MiB) and {MAX_BUDGET_GB:.0f} "
                             "(1 PiB) GiB")  # fmt: skip
        return value


class Accuracy(_Strict):
    """How the float64 reference is computed: rows beyond `ref_max_rows` are sampled."""

    ref_max_rows: Size = 1024
    ref_chunk_rows: Size = 256
    grad_ref_max_seq: Size = 2048


class CompareSettings(_Strict):
    """Regression thresholds that `harness compare` reads from the candidate run's suite.

    A time regression needs the effect (ratio above 1 + time_tol) and significance (one-sided
    Mann-Whitney U p-value below alpha, with at least min_samples raw samples on each side);
    memory and error are near-deterministic and gate on tolerances alone.
    """

    time_tol: float = Field(default=0.10, ge=0)
    # An implementation judged on all its rows at once (harness/regress/implementations.py) is
    # measured far more precisely than one row (~2% against ~6%), so its effect threshold is lower:
    # midway between a change a nightly should let pass (3%) and one it must catch (10%).
    impl_tol: float = Field(default=0.065, ge=0)
    mem_tol: float = Field(default=0.02, ge=0)
    mem_floor_bytes: int = Field(default=1 << 20, ge=0, le=2**63 - 1)  # VmHWM jitters ~200 KiB
    err_factor: float = Field(default=2.0, ge=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    min_samples: Repeats = 5
    normalize_to: str | None = None
    # Judge each row after removing the run-wide common shift (the median over rows of the
    # candidate/baseline time ratio): on a shared VM every row of a night moves together by a few
    # percent, which is the machine, not a kernel (harness/regress/compare.py `common_shift`).
    common_shift: bool = False

    @model_validator(mode="after")
    def _one_normalization(self) -> CompareSettings:
        if self.common_shift and self.normalize_to is not None:
            raise ValueError(
                "common_shift and normalize_to both rescale time; choose one "
                "(with --normalize-to, add --no-common-shift when the suite sets "
                "common_shift)"
            )
        return self


class Suite(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)  # part of a folder name
    description: str = ""
    workload: WorkloadName = "attention"
    implementations: list[str] = Field(min_length=1)
    sweep: Sweep = Sweep()
    timing: Timing = Timing()
    limits: Limits = Limits()
    accuracy: Accuracy = Accuracy()
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, gt=0, le=MAX_THREADS)
    # each profile is validated as a whole suite: their number bounds the work of a load
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=MAX_PROFILES)
    compare: CompareSettings = CompareSettings()

    @field_validator("implementations")
    @classmethod
    def _implementations_once(cls, values: list[str]) -> list[str]:
        return _each_once(values)

    def warnings(self) -> list[str]:
        """Lines worth a warning before a run (legal, but probably not what was meant)."""
        t, need = self.timing, self.compare.min_samples
        # compare tests the samples of every process pooled (timing.processes)
        least, most = t.min_repeats * t.processes, t.repeats * t.processes
        out = []
        if least < need:
            when = "can time-gate none of its rows"
            if most >= need:
                when = f"cannot time-gate a row that max_time_s ({t.max_time_s:g} s) stops early"
            per = f" × timing.processes ({t.processes})" if t.processes > 1 else ""
            out.append(f"timing.min_repeats ({t.min_repeats}){per} is below compare.min_samples "
                       f"({need}): `harness compare` {when} (verdict `ungated`, "
                       f"too few samples); raise timing.min_repeats (and timing.repeats) to "
                       f"{-(-need // t.processes)}")  # fmt: skip
        return out

    @model_validator(mode="after")
    def _timing_consistent(self) -> Suite:
        if self.timing.min_repeats > self.timing.repeats:
            raise ValueError(
                f"timing.min_repeats ({self.timing.min_repeats}) must be <= "
                f"timing.repeats ({self.timing.repeats})"
            )
        return self

    @model_validator(mode="after")
    def _tasks_within_limit(self) -> Suite:
        cases, impls, phases = (self.sweep.num_cases(), len(self.implementations),
                                len(self.sweep.phase))  # fmt: skip
        limit = self.limits.max_tasks
        if cases * impls * phases > limit:
            raise ValueError(
                f"the sweep is {cases:,} cases × {impls} implementation(s) × {phases} phase(s) = "
                f"{cases * impls * phases:,} tasks, above limits.max_tasks ({limit:,}); shrink "
                f"the sweep or raise limits.max_tasks (at most {MAX_TASKS_CEILING:,})"
            )
        return self

    @model_validator(mode="after")
    def _shapes_exist(self) -> Suite:
        """Shapes that cannot exist fail the load, not the run (checked per axis pair, without
        expanding the sweep: a profile-rich file must still load in a blink)."""
        s = self.sweep
        for heads, kv in itertools.product(s.num_heads, s.num_kv_heads):
            if kv is not None and heads % kv:
                raise ValueError(f"sweep.num_kv_heads: {kv} does not divide num_heads {heads}")
        if "packed_qkv" in s.input_layout and (
            any(kv is not None for kv in s.num_kv_heads) or any(d is not None for d in s.head_dim_v)
            or any(q is not None for q in s.seqlen_q) or any(k is not None for k in s.seqlen_k)
        ):  # fmt: skip
            raise ValueError("sweep.input_layout: packed_qkv views q, k, v of one (b, s, 3, h, d) "
                             "tensor, so it needs null seqlen_q, seqlen_k, num_kv_heads and "
                             "head_dim_v (equal shapes)")  # fmt: skip
        # only masks with position tables constrain the lengths (harness.masks.shape_reasons)
        specs = [m.spec() for m in s.mask if m.kind in POSITION_TABLE_KINDS]
        axes = itertools.product(s.seq_len, s.seqlen_q, s.seqlen_k) if specs else ()
        lengths = {(sq or sk or seq, sk or seq) for seq, sq, sk in axes}
        for spec, (sq, sk) in itertools.product(specs, lengths):
            problems = spec.shape_reasons(sq, sk)
            if problems:
                hint = "; a length sweep of documents takes num_docs" if spec.doc_lens else ""
                raise ValueError(f"sweep.mask: {problems[0]} (seqlen_q {sq}, seqlen_k {sk})"
                                 f"{hint}")  # fmt: skip
        return self

    def cases(self) -> list[Case]:
        """The deterministic expansion: axes in declaration order, duplicates removed."""
        try:
            return self._expand()
        except ValueError as exc:
            raise _error(str(exc)) from None

    def _expand(self) -> list[Case]:
        seen: dict[str, Case] = {}
        for values in itertools.product(*self.sweep.case_axes()):
            (batch, seq, heads, hd, hidden, ffn, dtype, causal, block, world, seq_layout, sq, sk,
             kv_heads, hd_v, scale, mask, x_scale, in_layout, cache_len, page,
             dist) = values  # fmt: skip
            sk = cache_len or sk  # decode: the cache length is seqlen_k
            try:
                case = Case(
                    workload=self.workload, batch=batch, seq_len=sk or seq, num_heads=heads,
                    head_dim=(hidden // heads if self.workload == "layer" and hidden else hd),
                    hidden=hidden if self.workload == "layer" else None,
                    ffn_expansion=ffn, dtype=dtype, causal=causal, block_size=block,
                    world_size=world, seq_layout=seq_layout if world > 1 else "contiguous",
                    seqlen_q=sq, seqlen_k=sk, num_kv_heads=kv_heads, head_dim_v=hd_v,
                    softmax_scale=scale, mask=mask.spec(), input_scale=x_scale,
                    input_layout=in_layout, page_size=page, cache_dist=dist,
                )  # fmt: skip
            except ValueError as exc:
                raise ValueError(f"sweep: {exc}") from None
            problems = case.mask.shape_reasons(case.sq, case.sk)
            if problems:
                raise ValueError(f"sweep.mask: {problems[0]} (case {case.name}); a length "
                                 "sweep of documents takes num_docs")  # fmt: skip
            seen.setdefault(case.name, case)
        return list(seen.values())

    def select(self, impls: Iterable[str] | None = None,
               case_filter: str | None = None) -> tuple[list[Case], list[str]]:  # fmt: skip
        """The cases and implementations that `--filter` and `--impl` keep (all by default)."""
        chosen = list(impls) if impls else list(self.implementations)
        for i, name in enumerate(chosen):
            if name not in self.implementations:
                raise _error(f"--impl: {name!r} is not in the suite; allowed: "
                             f"{', '.join(self.implementations)}")  # fmt: skip
            if name in chosen[:i]:
                raise _error(f"--impl: {name!r} is given twice; give each implementation once")
        cases = self.cases()
        if case_filter:
            kept = [case for case in cases if case_filter in case.name]
            if not kept:
                names = [case.name for case in cases]
                more = f" (and {len(names) - 5:,} more)" if len(names) > 5 else ""
                raise _error(f"no case matches --filter {case_filter!r}; cases are: "
                             f"{', '.join(names[:5])}{more}")  # fmt: skip
            cases = kept
        return cases, chosen


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The allowed keys of the (sub)model found at `loc`, for 'unknown key' messages."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        sub = field.annotation
        args = typing.get_args(sub)
        if typing.get_origin(sub) is list and args:  # list[Mask]: the keys of its items
            sub = args[0]
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
        else:
            return None
    return list(model.model_fields)


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 60, 60, 40, 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6


def _short(value: Any) -> str:
    """`value`'s repr in at most 100 characters (a bad value can be a 50,000-item list)."""
    text = _REPR.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _error(message: str) -> SuiteError:
    """A SuiteError whose message is one line, whatever the file held (keys with line breaks)."""
    return SuiteError(one_line(message))


def _one_line(err: ValidationError, model: type[BaseModel], where: str) -> str:
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) or []
        return f"{where}: unknown key {key!r}; allowed keys: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"{where}: missing required key {key!r}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "int_parsing_size":  # a float beyond int64: no bound was even reached
        msg = "too large for an integer (every integer key is at most 2**63 - 1)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if not loc:  # a rule across keys: the message names them; the input is the whole suite
        return f"{where}: {msg}{more}"
    return f"{where}: {key}: {msg}; got {_short(first.get('input'))}{more}"


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _model(data: dict[str, Any], where: str) -> Suite:
    try:
        return Suite.model_validate(data)
    except ValidationError as err:
        raise _error(_one_line(err, Suite, where)) from None


def _validate(data: Any, where: str, profile: str | None) -> Suite:
    """The suite (with `profile` applied) after its schema and limits; every profile is checked."""
    if not isinstance(data, dict):
        raise _error(f"{where}: a suite must be a mapping of keys; got {type(data).__name__}")
    base = _model(data, where)
    if profile is not None and profile not in base.profiles:
        allowed = ", ".join(base.profiles) or "(none defined)"
        raise _error(f"{where}: unknown profile {profile!r}; allowed: {allowed}")
    chosen = base
    for name, over in base.profiles.items():
        merged = _deep_merge({k: v for k, v in data.items() if k != "profiles"}, over)
        suite = _model(merged, f"{where} (profile {name})")
        if name == profile:
            chosen = suite
    return chosen


def parse_suite(data: Any, *, where: str = "suite", profile: str | None = None) -> Suite:
    """Validate a suite mapping (already parsed YAML), applying `profile` if named."""
    suite = _validate(data, one_line(where), profile)
    check_suite(suite, one_line(where))
    return suite


def check_suite(suite: Suite, where: str) -> None:
    """The checks that need the registry (which imports the implementations, and torch)."""
    from harness.registry import REGISTRY

    known = REGISTRY.names(suite.workload)
    for i, name in enumerate(suite.implementations):
        try:
            impl = REGISTRY.get(name)
        except UnknownImplementation:
            raise _error(
                f"{where}: implementations[{i}]: unknown implementation {name!r}; "
                f"allowed for workload {suite.workload!r}: {', '.join(known)}"
            ) from None
        if impl.workload != suite.workload:
            raise _error(
                f"{where}: implementations[{i}]: {name!r} serves workload {impl.workload!r}, "
                f"not {suite.workload!r}; allowed: {', '.join(known)}"
            )
    for name in suite.limits.max_seq_len:
        if name not in suite.implementations:
            raise _error(
                f"{where}: limits.max_seq_len: {name!r} is not in implementations; "
                f"allowed: {', '.join(suite.implementations)}"
            )
    ref = suite.compare.normalize_to
    if ref is not None and ref not in suite.implementations:
        raise _error(
            f"{where}: compare.normalize_to: {ref!r} is not in implementations; "
            f"allowed: {', '.join(suite.implementations)}"
        )
    s = suite.sweep
    if suite.workload == "decode":
        _check_decode(suite, where)
    else:
        for key, default in (("cache_len", [None]), ("page_size", [None]),
                             ("cache_dist", ["fixed"])):  # fmt: skip
            if getattr(s, key) != default:
                raise _error(f"{where}: sweep.{key}: only the decode workload takes {key}; "
                             f"workload is {suite.workload!r}")  # fmt: skip
    if suite.workload == "layer":
        for key in ("seqlen_q", "seqlen_k", "num_kv_heads", "head_dim_v", "softmax_scale"):
            if getattr(s, key) != [None]:
                raise _error(f"{where}: sweep.{key}: the layer workload takes no {key}; "
                             "allowed: null")  # fmt: skip
        given = {"mask": [m.spec().slug for m in s.mask], "input_scale": s.input_scale,
                 "input_layout": s.input_layout}  # fmt: skip
        for key, default in (("mask", ["full"]), ("input_scale", [1.0]),
                             ("input_layout", ["contiguous"])):  # fmt: skip
            if given[key] != default:
                shown = "none" if key == "mask" else default[0]
                raise _error(f"{where}: sweep.{key}: the layer workload takes {key} "
                             f"{shown!r} only (the causal axis sets its mask)")  # fmt: skip
    if suite.workload == "layer" and None in suite.sweep.hidden:
        raise _error(f"{where}: sweep.hidden: the layer workload needs hidden sizes; got null")
    if suite.workload == "layer":
        for hidden, heads in itertools.product(suite.sweep.hidden, suite.sweep.num_heads):
            if hidden % heads:
                raise _error(
                    f"{where}: sweep.hidden: {hidden} is not divisible by num_heads {heads}"
                )


def _check_decode(suite: Suite, where: str) -> None:
    """Decode is forward only, its mask is the cache's (bottom-right causal among the new
    tokens), and every sequence must hold its seqlen_q new tokens."""
    s = suite.sweep
    if s.phase != ["fwd"]:
        raise _error(f"{where}: sweep.phase: the decode workload is forward only; allowed: fwd; "
                     f"got {s.phase}")  # fmt: skip
    # keys the decode workload does not read: refused rather than silently collapsed
    why = {"mask": "its mask is the cache's: causal among the new tokens",
           "causal": "its mask is the cache's: causal among the new tokens",
           "input_layout": "the cache is its layout", "world_size": "one device",
           "block_size": "implementations choose their own splits",
           "input_scale": "its inputs are not scaled", "seqlen_k": "the cache length is cache_len",
           "hidden": "no layer", "ffn_expansion": "no layer",
           "seq_layout": "one device"}  # fmt: skip
    defaults = {"mask": ["full"], "causal": [False], "input_layout": ["contiguous"],
                "world_size": [1], "block_size": [None], "input_scale": [1.0],
                "seqlen_k": [None], "hidden": [None], "ffn_expansion": [4],
                "seq_layout": ["contiguous"]}  # fmt: skip
    given = {k: getattr(s, k) for k in defaults}
    given["mask"] = [m.spec().slug for m in s.mask]
    for key, default in defaults.items():
        if given[key] != default:
            shown = {"mask": "none", "causal": "false"}.get(key, default[0])
            shown = "null" if shown is None else shown
            raise _error(f"{where}: sweep.{key}: the decode workload takes {key} {shown} only "
                         f"({why[key]}); got {given[key]}")  # fmt: skip
    if "seq_len" in s.model_fields_set and "cache_len" in s.model_fields_set:
        raise _error(f"{where}: sweep.seq_len: a decode suite names its cache length cache_len; "
                     "give cache_len, not seq_len")  # fmt: skip
    for case in suite.cases():
        if case.sq > case.sk:
            raise _error(f"{where}: sweep.seqlen_q: {case.sq} new tokens do not fit a cache of "
                         f"{case.sk} (cache_len); seqlen_q must be <= cache_len")  # fmt: skip


def read_suite(path: str | Path, *, profile: str | None = None) -> Suite:
    """Read and validate a suite file up to the registry (imports no torch): `load_suite` less
    `check_suite`, so a bad file, --impl or --filter is refused in a blink."""
    path = Path(path)
    where = one_line(str(path))
    if not path.is_file():
        raise _error(f"suite file not found: {where}")
    try:
        data = read_yaml(path)
    except YamlInputError as exc:
        raise _error(f"{where}: {exc}") from None
    return _validate(data, where, profile)


def load_suite(path: str | Path, *, profile: str | None = None) -> Suite:
    """Read and validate a suite file; every failure is one SuiteError line."""
    suite = read_suite(path, profile=profile)
    check_suite(suite, one_line(str(path)))
    return suite
