"""Hostile or broken suite files: each is one line, exit 2, nothing written, in a blink.

Examples first (alias bombs, duplicate keys, binary / UTF-16 / deeply nested files, sweeps past the
task cap, --impl and --filter mistakes), in process and through `harness run`; then a property:
any mutation of a valid suite either plans a sane run or is refused with one clean line.
"""

from __future__ import annotations

import gc
import json
import math
import random
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness import yaml_safe
from harness.errors import SuiteError
from harness.suite import load_suite, read_suite
from tests.conftest import tiny_suite

ROOT = Path(__file__).parents[2]
BASE = """\
name: tiny
implementations: [naive]
sweep: {seq_len: [64], num_heads: [2], head_dim: [16], phase: [fwd]}
timing: {warmup: 0, repeats: 2, min_repeats: 1, max_time_s: 1.0}
limits: {case_timeout_s: 60}
"""  # tiny_suite() as flow YAML: a line appended to it is line 6


def _bomb(levels: int = 9, width: int = 10) -> list[str]:
    """'Billion laughs': `width`**`levels` leaves from a few hundred bytes."""
    items = ['&a0 ["lol"]']
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return items


BOMB_IN_PROFILES = BASE + "profiles:\n  big:\n    x: [" + ", ".join(_bomb()) + "]\n"
BOMB_IN_DESCRIPTION = BASE + "description:\n" + "".join(f"  - {item}\n" for item in _bomb())

# (id, file content, words the one line must hold)
FILES: list[tuple[str, str | bytes, list[str]]] = [
    ("bomb-in-profiles", BOMB_IN_PROFILES, ["expands to more than 50,000 values", "limit"]),
    ("bomb-in-description", BOMB_IN_DESCRIPTION, ["expands to more than 50,000 values"]),
    ("recursive-alias", BASE + "description: &a [*a]\n", ["alias at line 6", "contains it"]),
    ("duplicate-top-key", BASE + "sweep: {seq_len: [128]}\n",
     ["duplicate key 'sweep' at line 6", "first at line"]),
    ("duplicate-nested-key", BASE.replace("phase: [fwd]}", "phase: [fwd], phase: [bwd]}"),
     ["duplicate key 'phase' at line 3 (first at line 3)"]),
    ("duplicate-on-one-line", BASE + "accuracy: {ref_max_rows: 8, ref_max_rows: 16}\n",
     ["duplicate key 'ref_max_rows' at line 6 (first at line 6)"]),
    ("binary", bytes(random.Random(0).randrange(256) for _ in range(4096)), ["save it as UTF-8"]),
    ("utf-16", BASE.encode("utf-16"), ["UTF-16", "save it as UTF-8"]),
    ("utf-16-no-bom", BASE.encode("utf-16-le"), ["NUL byte", "UTF-16"]),
    ("utf-32", BASE.encode("utf-32"), ["UTF-32"]),
    ("latin-1", BASE.replace("tiny", "tïny").encode("latin-1"), ["not UTF-8", "0xef"]),
    ("control-character", BASE + "description: a\x07b\n", ["U+0007", "line 6"]),
    ("nested-50000-deep", BASE + "description: " + "[" * 50000 + "]" * 50000 + "\n",
     ["larger than the limit of 64 KiB"]),
    ("nested-30000-deep", BASE + "description: " + "[" * 30000 + "]" * 30000 + "\n",
     ["nest deeper than 32 levels"]),
    ("nested-deep-by-aliases", BASE + "x: [" + ", ".join(
        [f"&d0 {'[' * 20}1{']' * 20}", f"&d1 {'[' * 20}*d0{']' * 20}"]) + "]\n",
     ["nest deeper than 32 levels", "aliases expanded"]),
    ("too-large", BASE + "description: '" + "x" * (70 << 10) + "'\n", ["64 KiB"]),
    ("5000-digit-int", BASE + "seed: " + "9" * 5000 + "\n", ["line 6", "4300 digits"]),
    ("bad-date", BASE + "description: 2001-13-45\n", ["line 6", "month must be in 1..12"]),
    ("python-tag", BASE + "seed: !!python/object/apply:os.getpid []\n", ["line 6", "python"]),
    ("syntax", BASE + "sweep: {seq_len: [1, 2\n", ["not valid YAML at line"]),
    ("long-axis-repeat", BASE.replace("[64]", str([*range(1, 9001), 1])),
     ["sweep.seq_len", "1 is listed twice"]),
    ("too-many-profiles", BASE + "profiles: {" + ", ".join(f"p{i}: {{}}" for i in range(40)) + "}",
     ["profiles", "at most 32 items"]),
    ("not-a-mapping", "- a\n- b\n", ["must be a mapping"]),
]  # fmt: skip


def _write(tmp_path: Path, content: str | bytes, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@contextmanager
def _heap_out_of_sight() -> Iterator[None]:
    """The test process's heap (torch, every earlier test) out of the collector's sight for the
    block (gc.freeze, as the worker does after its imports), then back: a collection inside,
    even the ones tracemalloc's slow allocations trigger, walks only what the block made. A full
    collection of that heap cost 0.3-1.5 s a call in a full run (~0 s alone)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _refused(call: Any) -> str:
    """The one-line SuiteError message of `call()`, which must fail fast and small: timed
    first, then measured under tracemalloc (which slows Python several times over)."""
    # This thread's CPU only (not threads earlier tests left running), and no cyclic GC inside
    # the timed call: a collection walks the whole heap the test process has grown by then
    # (torch and every earlier test), which cost up to 1.5 s in a full run and ~0 s alone.
    with _heap_out_of_sight():
        gc.disable()
        try:
            started = time.thread_time()
            with pytest.raises(SuiteError) as info:
                call()
            cpu = time.thread_time() - started
        finally:
            gc.enable()
        tracemalloc.start()
        try:
            with pytest.raises(SuiteError):
                call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    message = str(info.value)
    assert message.isprintable(), repr(message)  # one line: no line breaks, no escapes
    assert len(message) < 600, message
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for: {message}"
    assert peak < 32 << 20, f"{peak >> 20} MiB for: {message}"
    return message


@pytest.mark.parametrize(("content", "words"), [f[1:] for f in FILES], ids=[f[0] for f in FILES])
@pytest.mark.parametrize("loader", ["libyaml", "python"])
def test_hostile_file_is_one_fast_line(content, words, loader, tmp_path, monkeypatch):
    if loader == "python":  # the fallback where libyaml is missing recurses in Python
        monkeypatch.setattr(yaml_safe, "_Loader", yaml_safe._PyLoader)
    elif not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    path = _write(tmp_path, content)
    message = _refused(lambda: read_suite(path))
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_the_largest_valid_file_loads_fast(tmp_path):
    """At the size limit, 32 profiles each validated as a whole suite: still well under 1 s."""
    profiles = "profiles: {" + ", ".join(f"p{i}: {{seed: {i}}}" for i in range(32)) + "}\n"
    seq_len = str(list(range(1, 10_001)))
    path = _write(tmp_path, BASE.replace("[64]", seq_len) + profiles)
    assert path.stat().st_size > 55_000
    with _heap_out_of_sight():
        gc.disable()  # as in _refused: a collection would walk the whole test process's heap
        try:
            started = time.thread_time()
            suite = read_suite(path, profile="p31")
            assert time.thread_time() - started < 1.0
        finally:
            gc.enable()
    assert suite.seed == 31 and suite.sweep.num_cases() == 10_000


def test_base_is_the_tiny_suite_and_merge_keys_still_override(tmp_path):
    assert yaml_safe.load_yaml(BASE) == tiny_suite()
    text = "t: &t {warmup: 3, extra: 9}\n" + BASE.replace("{warmup: 0", "{<<: *t, warmup: 0")
    timing = yaml_safe.load_yaml(text)["timing"]
    assert timing["warmup"] == 0 and timing["extra"] == 9  # explicit keys win over merged ones


SWEEP_1E6 = {"seq_len": list(range(1, 101)), "batch": list(range(1, 101)),
             "num_heads": list(range(1, 101))}  # fmt: skip


def test_sweep_past_the_task_cap_is_refused_before_expanding(tmp_path):
    path = _write(tmp_path, yaml.safe_dump(tiny_suite(sweep=SWEEP_1E6)))
    message = _refused(lambda: read_suite(path))
    for word in ["1,000,000 cases", "1,000,000 tasks", "limits.max_tasks (100,000)",
                 "at most 10,000,000"]:  # fmt: skip
        assert word in message, message


def test_max_tasks_raises_the_cap_up_to_its_ceiling(tmp_path):
    sweep = {"seq_len": list(range(1, 301)), "batch": list(range(1, 401))}  # 120,000 cases
    suite = read_suite(_write(tmp_path, yaml.safe_dump(tiny_suite(
        sweep=sweep, limits={"max_tasks": 120_000}))))  # fmt: skip
    assert suite.sweep.num_cases() == 120_000
    path = _write(tmp_path, yaml.safe_dump(tiny_suite(limits={"max_tasks": 10**8})), "b.yaml")
    assert "less than or equal to 10000000" in _refused(lambda: read_suite(path))


def test_a_broken_profile_is_found_without_asking_for_it(tmp_path):
    data = tiny_suite(profiles={"gpu": {"limits": {"case_timeout_s": float("inf")}}})
    path = _write(tmp_path, yaml.safe_dump(data))
    message = _refused(lambda: read_suite(path))
    assert "(profile gpu): limits.case_timeout_s: Input should be a finite number" in message


def test_impl_and_filter_mistakes_are_refused(tmp_path):
    suite = read_suite(_write(tmp_path, yaml.safe_dump(tiny_suite(
        implementations=["naive", "chunked"], sweep={"seq_len": [64, 97]}))))  # fmt: skip
    message = _refused(lambda: suite.select(["naive", "chunked", "naive"]))
    assert message == "--impl: 'naive' is given twice; give each implementation once"
    message = _refused(lambda: suite.select(None, "s4096"))
    assert message == ("no case matches --filter 's4096'; cases are: "
                       "attn-b1-s64-h2-d16-float32-full-bsauto, "
                       "attn-b1-s97-h2-d16-float32-full-bsauto")  # fmt: skip
    assert "allowed: naive, chunked" in _refused(lambda: suite.select(["flash"]))
    cases, impls = suite.select(["chunked"], "s97")
    assert [c.name for c in cases] == ["attn-b1-s97-h2-d16-float32-full-bsauto"]
    assert impls == ["chunked"]


def test_filter_message_lists_a_few_cases_of_many(tmp_path):
    suite = read_suite(_write(tmp_path, yaml.safe_dump(tiny_suite(sweep=SWEEP_1E6 | {
        "num_heads": [2]}))))  # fmt: skip
    message = _refused(lambda: suite.select(None, "nothing\nlike this"))
    assert "--filter 'nothing\\nlike this'" in message and "(and 9,995 more)" in message


# --- through the command line ----------------------------------------------------------------


def _harness(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -m harness ARGS` under a 512 MiB address-space cap (a bomb must fail the test,
    not the machine), and the CPU seconds it took."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, preexec_fn=cap)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


CLI = [
    # (id, suite file content, extra arguments, words)
    ("bomb", BOMB_IN_PROFILES, [], ["expands to more than 50,000"]),
    ("bomb-dry-run", BOMB_IN_DESCRIPTION, ["--dry-run"], ["expands to more than 50,000"]),
    ("duplicate-key", BASE + "sweep: {seq_len: [128]}\n", [], ["duplicate key 'sweep'"]),
    ("binary", bytes(range(256)) * 4, [], ["save it as UTF-8"]),
    ("sweep-1e6", yaml.safe_dump(tiny_suite(sweep=SWEEP_1E6)), [], ["limits.max_tasks"]),
    ("timeout-inf", BASE.replace("case_timeout_s: 60", "case_timeout_s: .inf"), [],
     ["limits.case_timeout_s", "finite"]),
    ("seed-1e23", BASE + "seed: 1.0e+23\n", [], ["seed", "too large", "1e+23"]),
    ("phase-twice", BASE.replace("[fwd]", "[fwd, fwd]"), [], ["sweep.phase", "'fwd' is listed"]),
    ("impl-twice", BASE, ["--impl", "naive", "--impl", "naive"],
     ["--impl: 'naive' is given twice"]),
    ("filter-nothing", BASE, ["--filter", "s4096"], ["no case matches --filter 's4096'",
                                                      "cases are: attn-b1-s64"]),
]  # fmt: skip


@pytest.mark.parametrize(("content", "extra", "words"), [c[1:] for c in CLI],
                         ids=[c[0] for c in CLI])  # fmt: skip
def test_cli_refuses_in_one_line_and_writes_nothing(content, extra, words, tmp_path):
    path = _write(tmp_path, content)
    out = tmp_path / "results"
    proc, cpu = _harness("run", str(path), "--out", str(out), *extra)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists()
    assert cpu < 2.0, f"{cpu:.2f} CPU seconds (torch imported? the bomb expanded?)"


def test_cli_ring_profile_bomb_is_one_line(tmp_path):
    path = _write(tmp_path, "name: x\npeak_flops: [" + ", ".join(_bomb()) + "]\n", "p.yaml")
    proc, cpu = _harness("model", "ring", "--profile", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: the document expands to more than 50,000 values (aliases of aliases, "
        "at line 2?); the limit is 50,000"
    ]
    assert cpu < 2.0


# --- the property: mutate a valid suite any way, get a sane plan or one clean line ------------

VALID = tiny_suite(
    implementations=["naive", "chunked"],
    sweep={"seq_len": [64, 97], "causal": [False, True], "block_size": [None, 32]},
    limits={"case_timeout_s": 60, "memory_budget_gb": 1, "max_seq_len": {"naive": 97}},
    accuracy={"ref_max_rows": 64},
    seed=7,
    threads=1,
    description="a suite to break",
    profiles={"big": {"sweep": {"seq_len": [128, 256]}, "limits": {"case_timeout_s": 120}}},
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path and list index of `data`."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


ODD_VALUES = [None, True, False, 0, -1, 2**31, 2**63, 10**30, -(10**30), math.inf, -math.inf,
              math.nan, 1e300, 1e-300, -0.0, 0.5, "", "fwd", "naive", [], {}, [None], [0],
              {"x": 1}, _nested(40), _nested(8), "x" * 300]  # fmt: skip
HOSTILE = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(), st.none(), st.text(max_size=3)), max_size=4),
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid suite changed 1 or 2 ways (keys deleted or added, values swapped for hostile ones,
    list items repeated), dumped to YAML, then maybe damaged as text."""
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        kind = draw(st.sampled_from(["delete", "replace", "repeat", "add"]))
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "replace":
            parent[path[-1]] = draw(HOSTILE)
        elif kind == "repeat" and isinstance(parent[path[-1]], list) and parent[path[-1]]:
            parent[path[-1]].append(parent[path[-1]][0])
        elif kind == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.sampled_from(["extra", "seq_len", "phase"]))] = draw(HOSTILE)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    damage = draw(st.sampled_from(["none"] * 5 + ["repeat-line", "bytes", "cut", "bomb", "deep"]))
    lines = text.splitlines(keepends=True) or [""]
    at = draw(st.integers(0, len(lines) - 1))
    if damage == "repeat-line":
        lines.insert(at, lines[at])
    elif damage == "bytes":
        lines.insert(at, draw(st.binary(min_size=1, max_size=8)).decode("latin-1"))
    elif damage == "cut":
        lines = lines[:at]
    elif damage == "bomb":
        lines.append("x: [" + ", ".join(_bomb(draw(st.integers(5, 9)))) + "]\n")
    elif damage == "deep":
        lines.append("description: " + "[" * draw(st.integers(30, 3000)) + "\n")
    return "".join(lines)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("mutated")


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(text=mutated(), impl_twice=st.booleans(), case_filter=st.sampled_from([None, "s97", "zz"]))
def test_any_mutation_plans_a_sane_run_or_is_one_line(text, impl_twice, case_filter, scratch):
    from harness.run.sweep import plan

    path = scratch / "suite.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    started = time.thread_time()
    try:
        suite = load_suite(path)
        impls = [*suite.implementations, suite.implementations[0]] if impl_twice else None
        tasks = plan(suite, "cpu", impls=impls, case_filter=case_filter)
    except SuiteError as exc:
        message = str(exc)
        event(f"refused: {message.split(': ')[1 if message.startswith(str(path)) else 0][:30]}")
        assert message.isprintable() and len(message) < 600, repr(message)
        assert message.startswith((str(path), "--impl: ", "no case matches --filter ")), message
        assert time.thread_time() - started < 1.0, message
        return
    event("planned")
    assert not impl_twice
    assert 0 < len(tasks) <= suite.limits.max_tasks
    assert len({task.key for task in tasks}) == len(tasks)  # no row twice
    assert all(case_filter in task.case.name for task in tasks if case_filter)
    assert 0 <= suite.seed < 2**63 and 1 <= (suite.threads or 1) <= 4096
    json.dumps(suite.model_dump(mode="json"), allow_nan=False)  # suite.json stays strict JSON
    assert time.thread_time() - started < 1.0
