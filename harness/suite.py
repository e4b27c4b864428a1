"""Suite files (YAML): validated with pydantic on load, expanded into deterministic cases.

Every user mistake becomes one `SuiteError` line that names the file, the key, the bad value and the
allowed values; nothing is written before a suite has validated.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from harness.case import Case, DType, Phase, SeqLayout, WorkloadName
from harness.errors import SuiteError, UnknownImplementation


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sweep(_Strict):
    """The axes; cases are their Cartesian product (phase is a row axis, not a case axis)."""

    seq_len: list[PositiveInt] = Field(default=[1024], min_length=1)
    batch: list[PositiveInt] = Field(default=[1], min_length=1)
    num_heads: list[PositiveInt] = Field(default=[8], min_length=1)
    head_dim: list[PositiveInt] = Field(default=[64], min_length=1)
    block_size: list[PositiveInt | None] = Field(default=[None], min_length=1)
    dtype: list[DType] = Field(default=["float32"], min_length=1)
    causal: list[bool] = Field(default=[False], min_length=1)
    world_size: list[PositiveInt] = Field(default=[1], min_length=1)
    seq_layout: list[SeqLayout] = Field(default=["contiguous"], min_length=1)
    hidden: list[PositiveInt | None] = Field(default=[None], min_length=1)
    ffn_expansion: list[PositiveInt] = Field(default=[4], min_length=1)
    phase: list[Phase] = Field(default=["fwd"], min_length=1)


class Timing(_Strict):
    """Warm-up calls, then timed calls until `repeats` or the `max_time_s` budget is reached."""

    warmup: int = Field(default=1, ge=0)
    repeats: PositiveInt = 5
    min_repeats: PositiveInt = 3
    max_time_s: float = Field(default=10.0, gt=0)


class Limits(_Strict):
    case_timeout_s: float = Field(default=300.0, gt=0)
    memory_budget_gb: float | None = Field(default=None, gt=0)
    max_seq_len: dict[str, PositiveInt] = Field(default_factory=dict)


class Accuracy(_Strict):
    """How the float64 reference is computed: rows beyond `ref_max_rows` are sampled."""

    ref_max_rows: PositiveInt = 1024
    ref_chunk_rows: PositiveInt = 256
    grad_ref_max_seq: PositiveInt = 2048


class CompareSettings(_Strict):
    """Regression thresholds that `harness compare` reads from the candidate run's suite.

    A time regression needs the effect (ratio above 1 + time_tol) and significance (one-sided
    Mann-Whitney U p-value below alpha, with at least min_samples raw samples on each side);
    memory and error are near-deterministic and gate on tolerances alone.
    """

    time_tol: float = Field(default=0.10, ge=0)
    mem_tol: float = Field(default=0.02, ge=0)
    mem_floor_bytes: int = Field(default=1 << 20, ge=0)  # CPU VmHWM peaks jitter by ~200 KiB
    err_factor: float = Field(default=2.0, ge=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    min_samples: PositiveInt = 5
    normalize_to: str | None = None


class Suite(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    workload: WorkloadName = "attention"
    implementations: list[str] = Field(min_length=1)
    sweep: Sweep = Sweep()
    timing: Timing = Timing()
    limits: Limits = Limits()
    accuracy: Accuracy = Accuracy()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: PositiveInt | None = None
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    compare: CompareSettings = CompareSettings()

    @model_validator(mode="after")
    def _timing_consistent(self) -> Suite:
        if self.timing.min_repeats > self.timing.repeats:
            raise ValueError(
                f"timing.min_repeats ({self.timing.min_repeats}) must be <= "
                f"timing.repeats ({self.timing.repeats})"
            )
        return self

    def cases(self) -> list[Case]:
        """The deterministic expansion: axes in declaration order, duplicates removed."""
        s = self.sweep
        seen: dict[str, Case] = {}
        for values in itertools.product(
            s.batch, s.seq_len, s.num_heads, s.head_dim, s.hidden, s.ffn_expansion,
            s.dtype, s.causal, s.block_size, s.world_size, s.seq_layout,
        ):  # fmt: skip
            batch, seq, heads, hd, hidden, ffn, dtype, causal, block, world, seq_layout = values
            case = Case(
                workload=self.workload, batch=batch, seq_len=seq, num_heads=heads,
                head_dim=(hidden // heads if self.workload == "layer" and hidden else hd),
                hidden=hidden if self.workload == "layer" else None,
                ffn_expansion=ffn, dtype=dtype, causal=causal, block_size=block,
                world_size=world, seq_layout=seq_layout if world > 1 else "contiguous",
            )  # fmt: skip
            seen.setdefault(case.name, case)
        return list(seen.values())


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The allowed keys of the (sub)model found at `loc`, for 'unknown key' messages."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
        else:
            return None
    return list(model.model_fields)


def _one_line(err: ValidationError, model: type[BaseModel], where: str) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) or []
        return f"{where}: unknown key {key!r}; allowed keys: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"{where}: missing required key {key!r}"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: {key or 'suite'}: {msg}; got {value!r}{more}"


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_suite(data: Any, *, where: str = "suite", profile: str | None = None) -> Suite:
    """Validate a suite mapping (already parsed YAML), applying `profile` if named."""
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: a suite must be a mapping of keys; got {type(data).__name__}")
    try:
        base = Suite.model_validate(data)
    except ValidationError as err:
        raise SuiteError(_one_line(err, Suite, where)) from None
    if profile is None:
        suite = base
    else:
        if profile not in base.profiles:
            allowed = ", ".join(base.profiles) or "(none defined)"
            raise SuiteError(f"{where}: unknown profile {profile!r}; allowed: {allowed}")
        merged = _deep_merge({k: v for k, v in data.items() if k != "profiles"},
                             base.profiles[profile])  # fmt: skip
        try:
            suite = Suite.model_validate(merged)
        except ValidationError as err:
            raise SuiteError(_one_line(err, Suite, f"{where} (profile {profile})")) from None
    _check_implementations(suite, where)
    return suite


def _check_implementations(suite: Suite, where: str) -> None:
    from harness.registry import REGISTRY

    known = REGISTRY.names(suite.workload)
    for i, name in enumerate(suite.implementations):
        try:
            impl = REGISTRY.get(name)
        except UnknownImplementation:
            raise SuiteError(
                f"{where}: implementations[{i}]: unknown implementation {name!r}; "
                f"allowed for workload {suite.workload!r}: {', '.join(known)}"
            ) from None
        if impl.workload != suite.workload:
            raise SuiteError(
                f"{where}: implementations[{i}]: {name!r} serves workload {impl.workload!r}, "
                f"not {suite.workload!r}; allowed: {', '.join(known)}"
            )
    for name in suite.limits.max_seq_len:
        if name not in suite.implementations:
            raise SuiteError(
                f"{where}: limits.max_seq_len: {name!r} is not in implementations; "
                f"allowed: {', '.join(suite.implementations)}"
            )
    ref = suite.compare.normalize_to
    if ref is not None and ref not in suite.implementations:
        raise SuiteError(
            f"{where}: compare.normalize_to: {ref!r} is not in implementations; "
            f"allowed: {', '.join(suite.implementations)}"
        )
    if suite.workload == "layer" and None in suite.sweep.hidden:
        raise SuiteError(f"{where}: sweep.hidden: the layer workload needs hidden sizes; got null")
    if suite.workload == "layer":
        for hidden, heads in itertools.product(suite.sweep.hidden, suite.sweep.num_heads):
            if hidden % heads:
                raise SuiteError(
                    f"{where}: sweep.hidden: {hidden} is not divisible by num_heads {heads}"
                )


def load_suite(path: str | Path, *, profile: str | None = None) -> Suite:
    """Read and validate a suite file; every failure is one SuiteError line."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse_suite(data, where=str(path), profile=profile)
