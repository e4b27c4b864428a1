"""Third-party adapters on CPU: lazy imports, availability reasons, per-case limits, call shape.

Real packages are absent here (and are blocked where they might not be); a present package is
simulated by fake modules written to a temporary folder (see `_FAKES`), CUDA by monkeypatching
torch.cuda. The runner test shows a package that imports but fails on use is an `error` row.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.case import Case
from harness.registry import REGISTRY

FLASH = ("flash_attn2", "flash_attn3", "flash_attn4")
XFORMERS = ("xformers", "xformers_cutlass", "xformers_flash", "xformers_flash3", "xformers_ck")
BACKEND_PREFIXES = ("flash_attn", "flash_attn_interface", "flash_attn_3", "xformers")
ROOT = Path(__file__).resolve().parents[2]

# ---- fake packages ---------------------------------------------------------------------------
FA2 = {
    "flash_attn/__init__.py": """
__version__ = "2.6.3"
CALLS = []

def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    CALLS.append({"q": q, "dropout_p": dropout_p, "softmax_scale": softmax_scale,
                  "causal": causal})
    return q * 3
""",
}
FA1 = {"flash_attn/__init__.py": "__version__ = '1.0.9'\ndef flash_attn_func(*a, **k): pass\n"}
FA3 = {  # some FlashAttention-3 versions return (out, lse)
    "flash_attn_interface.py": """
CALLS = []

def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **kwargs):
    CALLS.append({"causal": causal, "softmax_scale": softmax_scale})
    return q * 2, None
""",
}
FA4_ONLY = {  # flash-attn-4 alone: flash_attn is a bare namespace package holding cute/
    "flash_attn/cute/__init__.py": "def flash_attn_func(q, k, v, **kw):\n    return q * 4, None\n"
}
FA2_BROKEN = {"flash_attn/__init__.py": "raise ImportError('libcudart.so.12: cannot open shared "
                                        "object file')\n"}  # fmt: skip


def fake_xformers(*, mismatch: bool = False, forward_error: str | None = None,
                  dispatch_error: str | None = None,
                  unbuilt: tuple[str, ...] = ()) -> dict[str, str]:  # fmt: skip
    """A fake xformers: optional C++ build mismatch, failing forward, dispatcher refusal.

    Its ops refuse float64 with an xformers-style reason, and accept everything else; the op
    families in `unbuilt` say they are not available (as ops that need xformers' own C++ do).
    """
    cpp = "_cpp_library_load_exception = None\n_built_with_cuda = True\n"
    if mismatch:  # as xformers 0.0.35 records a _C.so that the dynamic loader refuses
        cpp = textwrap.dedent("""
            class _Info:
                torch_version = "2.10.0+cu128"
                cuda_version = 1208

            class xFormersInvalidLibException(Exception):
                build_info = _Info()

            try:
                try:
                    raise OSError("libcudart.so.12: cannot open shared object file")
                except OSError as inner:
                    raise OSError("Could not load this library: _C.so") from inner
            except OSError as exc:
                _cpp_library_load_exception = xFormersInvalidLibException()
                _cpp_library_load_exception.__cause__ = exc
            _built_with_cuda = False
        """)
    forward = ("    return query * 5\n" if forward_error is None
               else f"    raise RuntimeError({forward_error!r})\n")  # fmt: skip
    dispatch = ("    return None\n" if dispatch_error is None
                else f"    raise NotImplementedError({dispatch_error!r})\n")  # fmt: skip
    op = textwrap.dedent("""
        class FwOp:
            NAME = "{name}F"

            @classmethod
            def is_available(cls):
                return {built}

            @classmethod
            def not_supported_reasons(cls, inp):
                if inp.query.dtype.itemsize == 8:
                    return ["dtype=torch.float64 (supported: {{torch.float16, torch.bfloat16}})"]
                return []

        class BwOp:
            NAME = "{name}B"
    """)
    return {
        "xformers/__init__.py": "",
        "xformers/_cpp_lib.py": cpp,
        "xformers/ops/__init__.py": (
            # 0.0.35 imports FlashAttention-2's interface whenever a `flash_attn` package exists
            "import importlib.util\nif importlib.util.find_spec('flash_attn'):\n"
            "    import flash_attn.flash_attn_interface\n"
            "CALLS = []\n\nclass LowerTriangularMask:\n    pass\n\n"
            "def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, "
            "scale=None, *, op=None):\n    CALLS.append({'attn_bias': attn_bias, 'op': op})\n"
            + forward
        ),
        "xformers/ops/fmha/__init__.py": (
            "from dataclasses import dataclass\n\n@dataclass\nclass Inputs:\n"
            "    query: object\n    key: object\n    value: object\n    attn_bias: object = None\n"
        ),
        "xformers/ops/fmha/dispatch.py": "def _dispatch_fw(inp, needs_gradient):\n" + dispatch,
        **{
            f"xformers/ops/fmha/{family}.py": op.format(name=name, built=family not in unbuilt)
            for family, name in (("cutlass", "cutlass"), ("flash", "fa2"), ("ck", "ck"))
        },
    }


# ---- helpers ---------------------------------------------------------------------------------
def _forget_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop cached backend modules and the adapters' caches so each test sees its own fakes."""
    for name in list(sys.modules):
        if name.split(".")[0] in BACKEND_PREFIXES:
            monkeypatch.delitem(sys.modules, name)
    from implementations import flash_attn, xformers

    flash_attn._kernel.cache_clear()
    xformers._op.cache_clear()


@pytest.fixture(autouse=True)
def _clean_adapter_caches():
    yield
    from implementations import flash_attn, xformers

    for name in list(sys.modules):  # fakes imported during the test must not outlive it
        if name.split(".")[0] in BACKEND_PREFIXES:
            del sys.modules[name]

    flash_attn._kernel.cache_clear()
    xformers._op.cache_clear()


def _install(monkeypatch: pytest.MonkeyPatch, root: Path, *fakes: dict[str, str]) -> Path:
    _forget_backends(monkeypatch)
    for files in fakes:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    monkeypatch.syspath_prepend(str(root))
    return root


def _block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make `import name` fail exactly as for a package that is not installed."""
    _forget_backends(monkeypatch)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int] | None) -> None:
    """Pretend torch sees a CUDA device of this compute capability (None: no device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)


def _reason(name: str, device: str) -> str:
    av = REGISTRY.get(name).available(device)
    return "" if av.ok else av.reason


# ---- imports and missing packages ------------------------------------------------------------
def test_registering_the_adapters_imports_no_backend_package():
    """`import implementations` must not touch the backends (no import-time side effects)."""
    code = textwrap.dedent("""
        import sys
        seen = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                seen.append(name)
                return None
        sys.meta_path.insert(0, Spy())
        from harness.registry import REGISTRY
        names = REGISTRY.names()
        wanted = {"flash_attn2", "flash_attn3", "flash_attn4", "flex", "xformers",
                  "xformers_cutlass", "xformers_flash", "xformers_flash3", "xformers_ck"}
        assert wanted <= set(names), names
        backends = [n for n in seen if n.split(".")[0] in
                    ("flash_attn", "flash_attn_interface", "flash_attn_3", "xformers", "triton")]
        assert not backends, backends
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_missing_packages_name_the_install_command(monkeypatch, device):
    _block(monkeypatch, "flash_attn", "flash_attn_interface", "flash_attn_3", "xformers")
    assert _reason("flash_attn2", device) == "flash-attn is not installed: pip install '.[flash]'"
    assert _reason("flash_attn3", device).startswith(
        "FlashAttention-3 (flash_attn_interface) is not installed: build flash-attention's hopper/"
    )
    assert _reason("flash_attn4", device) == (
        "FlashAttention-4 (flash_attn.cute) is not installed: pip install '.[flash4]'"
    )
    for name in XFORMERS:
        assert _reason(name, device) == "xformers is not installed: pip install '.[xformers]'"


def test_fa4_missing_when_only_fa2_is_installed(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA2)
    assert _reason("flash_attn4", "cuda") == (
        "FlashAttention-4 (flash_attn.cute) is not installed: pip install '.[flash4]'"
    )


def test_a_broken_package_reports_its_import_error(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA2_BROKEN)
    assert _reason("flash_attn2", "cuda") == (
        "flash_attn is installed but does not import: ImportError: libcudart.so.12: cannot open "
        "shared object file"
    )


def test_flash_attn_1_is_not_flash_attn2(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA1)
    assert _reason("flash_attn2", "cuda") == (
        "flash-attn 1.0.9 is FlashAttention-1; flash_attn2 needs flash-attn>=2"
    )


def test_fa2_reports_missing_when_only_fa4_is_installed(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA4_ONLY)
    _gpu(monkeypatch, (9, 0))
    assert _reason("flash_attn2", "cuda").startswith("flash-attn 2 is not installed")
    assert _reason("flash_attn4", "cuda") == ""


# ---- CUDA and compute capability -------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "capability", "expected"),
    [
        ("flash_attn2", None, "needs CUDA: torch sees no CUDA device"),
        ("flash_attn2", (7, 5), "compute capability 8.0+ needed for FlashAttention-2; found 7.5"),
        ("flash_attn2", (8, 0), ""),
        ("flash_attn2", (9, 0), ""),
        ("flash_attn3", (8, 0), "compute capability 9.0+ needed for FlashAttention-3; found 8.0"),
        ("flash_attn3", (9, 0), ""),
        (
            "flash_attn3",
            (10, 0),
            "FlashAttention-3 supports compute capability up to 9.x; found 10.0",
        ),  # fmt: skip
        ("flash_attn4", (7, 5), "compute capability 8.0+ needed for FlashAttention-4; found 7.5"),
        ("flash_attn4", (8, 6), ""),
        ("flash_attn4", (10, 0), ""),
        (
            "flash_attn4",
            (13, 0),
            "FlashAttention-4 supports compute capability up to 12.x; found 13.0",
        ),
    ],
)
def test_flash_attn_needs_cuda_and_capability(monkeypatch, tmp_path, name, capability, expected):
    fa4 = {"flash_attn/cute/__init__.py": FA4_ONLY["flash_attn/cute/__init__.py"]}
    _install(monkeypatch, tmp_path, FA2, FA3, fa4)
    _gpu(monkeypatch, capability)
    assert _reason(name, "cuda") == expected


@pytest.mark.parametrize("name", FLASH)
def test_flash_attn_on_cpu_needs_cuda(monkeypatch, tmp_path, name):
    fa4 = {"flash_attn/cute/__init__.py": FA4_ONLY["flash_attn/cute/__init__.py"]}
    _install(monkeypatch, tmp_path, FA2, FA3, fa4)
    label = REGISTRY.get(name).label
    assert _reason(name, "cpu") == f"needs CUDA: {label} has no CPU version"


def test_flash_attn_case_limits():
    for name in FLASH:
        limits = REGISTRY.get(name).unsupported
        assert limits(Case(dtype="bfloat16", head_dim=128), "cuda") == []
        assert limits(Case(dtype="float16", head_dim=64), "cuda") == []
        (dtype_reason,) = limits(Case(dtype="float32", head_dim=64), "cuda")
        assert "float16 and bfloat16; got float32" in dtype_reason
        (dim_reason,) = limits(Case(dtype="bfloat16", head_dim=512), "cuda")
        assert "up to 256; got 512" in dim_reason
    (odd,) = REGISTRY.get("flash_attn4").unsupported(Case(dtype="float16", head_dim=60), "cuda")
    assert "multiple of 8" in odd


@pytest.mark.parametrize("capability, head_dim, num_reasons",
                         [((9, 0), 192, 0), ((10, 0), 192, 1), ((10, 0), 256, 0),
                          ((10, 0), 128, 0), ((11, 0), 160, 1)])  # fmt: skip
def test_fa4_head_dim_limits_follow_the_architecture(monkeypatch, capability, head_dim,
                                                     num_reasons):  # fmt: skip
    """flash-attn-4 (4.0.0b36) takes 8-256 on sm90 but only up to 128, or 256, on sm100/sm110."""
    _gpu(monkeypatch, capability)
    case = Case(dtype="bfloat16", head_dim=head_dim)
    reasons = REGISTRY.get("flash_attn4").unsupported(case, "cuda")
    assert len(reasons) == num_reasons, reasons
    assert all("sm100/sm110" in r for r in reasons)


def test_flash_attn_forward_passes_bshd_tensors_and_causal(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA2, FA3)
    import flash_attn
    import flash_attn_interface

    q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
    out = REGISTRY.get("flash_attn2").forward(q, k, v, causal=True)
    assert torch.equal(out, q * 3)
    (call,) = flash_attn.CALLS
    assert call["q"] is q and call["causal"] is True and call["dropout_p"] == 0.0
    out3 = REGISTRY.get("flash_attn3").forward(q, k, v, causal=False)  # (out, lse) -> out
    assert torch.equal(out3, q * 2) and flash_attn_interface.CALLS == [
        {"causal": False, "softmax_scale": None}
    ]


# ---- xformers --------------------------------------------------------------------------------
def test_xformers_cpp_load_failure_refuses_cuda_and_quotes_the_loader(monkeypatch, tmp_path):
    """xformers without its C++ library refuses every CUDA op, so every entry is skipped."""
    _install(monkeypatch, tmp_path, fake_xformers(mismatch=True))
    _gpu(monkeypatch, (9, 0))
    problem = ("xformers' C++ ops do not load (OSError: libcudart.so.12: cannot open shared "
               "object file; the wheel was built for torch 2.10.0+cu128 (CUDA 1208), this is "
               f"{torch.__version__})")  # fmt: skip
    for name in XFORMERS:
        assert _reason(name, "cuda") == f"{problem}, so xformers refuses every CUDA op"
    assert _reason("xformers_cutlass", "cpu") == (
        f"needs CUDA: xformers' cutlass op has no CPU version; {problem}"
    )


def test_xformers_ops_that_are_not_built_say_so(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, fake_xformers(unbuilt=("flash",)))
    _gpu(monkeypatch, (9, 0))
    assert _reason("xformers_cutlass", "cuda") == ""
    assert _reason("xformers_flash", "cuda") == (
        "xformers' fa2F operator is not available in this build"
    )


@pytest.mark.parametrize("fa4_first", [False, True])
def test_fa4s_bare_flash_attn_does_not_break_xformers(monkeypatch, tmp_path, fa4_first):
    """flash-attn-4 alone leaves `flash_attn` without FA2's interface, which xformers imports."""
    _install(monkeypatch, tmp_path, FA4_ONLY, fake_xformers())
    _gpu(monkeypatch, (9, 0))
    if fa4_first:
        assert _reason("flash_attn4", "cuda") == ""
        namespace = sys.modules["flash_attn"]
    assert _reason("xformers", "cuda") == ""
    if fa4_first:  # hidden only while xformers imported, then put back as it was
        assert sys.modules["flash_attn"] is namespace
    assert _reason("flash_attn4", "cuda") == ""


def test_xformers_needs_cuda_and_ck_needs_rocm(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, fake_xformers())
    assert _reason("xformers", "cpu") == (
        "needs CUDA: xformers' memory_efficient_attention op has no CPU version"
    )
    assert _reason("xformers_cutlass", "cpu") == "needs CUDA: xformers' cutlass op has no CPU " \
                                                 "version"  # fmt: skip
    _gpu(monkeypatch, (9, 0))
    assert _reason("xformers_flash3", "cuda") == "this xformers has no fmha.flash3 ops"
    assert _reason("xformers_cutlass", "cuda") == ""
    assert _reason("xformers_ck", "cuda") == "xformers' ck kernels need a ROCm (AMD) build of torch"


def test_xformers_case_reasons_are_xformers_own(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, fake_xformers())
    limits = REGISTRY.get("xformers_cutlass").unsupported
    assert limits(Case(dtype="float32", seq_len=4096), "cpu") == []
    assert limits(Case(dtype="float64", causal=True), "cpu") == [
        "xformers cutlassF: dtype=torch.float64 (supported: {torch.float16, torch.bfloat16})"
    ]


def test_xformers_dispatcher_refusal_is_condensed(monkeypatch, tmp_path):
    message = (
        "No operator found for `memory_efficient_attention_forward` with inputs:\n"
        "     query       : shape=(1, 128, 8, 64) (torch.float64)\n"
        "`fa2F@2.5.7` is not supported because:\n    device=cpu (supported: {'cuda'})\n"
        "    dtype=torch.float64 (supported: {torch.float16, torch.bfloat16})\n"
        "`cutlassF` is not supported because:\n    device=cpu (supported: {'cuda'})\n"
    )
    _install(monkeypatch, tmp_path, fake_xformers(dispatch_error=message))
    (reason,) = REGISTRY.get("xformers").unsupported(Case(dtype="float64"), "cpu")
    assert reason == (
        "no xformers op supports this case: fa2F@2.5.7: device=cpu (supported: {'cuda'}) "
        "dtype=torch.float64 (supported: {torch.float16, torch.bfloat16}); "
        "cutlassF: device=cpu (supported: {'cuda'})"
    )


def test_xformers_forward_forces_the_family_and_masks_causal(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, fake_xformers())
    import xformers.ops
    import xformers.ops.fmha.cutlass as cutlass

    q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
    assert torch.equal(REGISTRY.get("xformers_cutlass").forward(q, k, v, causal=True), q * 5)
    REGISTRY.get("xformers").forward(q, k, v, causal=False)
    forced, default = xformers.ops.CALLS
    assert forced["op"] == (cutlass.FwOp, cutlass.BwOp)
    assert isinstance(forced["attn_bias"], xformers.ops.LowerTriangularMask)
    assert default == {"attn_bias": None, "op": None}


# ---- sdpa cuDNN ------------------------------------------------------------------------------
def test_sdpa_cudnn_reasons(monkeypatch):
    assert _reason("sdpa_cudnn", "cpu").startswith("needs CUDA")
    _gpu(monkeypatch, None)
    assert _reason("sdpa_cudnn", "cuda") == "torch sees no CUDA device"
    limits = REGISTRY.get("sdpa_cudnn").unsupported
    assert limits(Case(dtype="bfloat16", head_dim=128), "cuda") == []
    assert len(limits(Case(dtype="float32", head_dim=256), "cuda")) == 2


# ---- through the harness ---------------------------------------------------------------------
def test_a_package_that_fails_on_use_is_an_error_row(monkeypatch, tmp_path):
    """The runner's worker process sees the fake package and records its failure verbatim."""
    from harness.results import RunDir
    from harness.run.sweep import plan, run_tasks
    from harness.suite import parse_suite

    # xformers needs CUDA; here, in this process and (through sitecustomize) in the workers, the
    # CPU passes for a GPU so that the fake kernel is reached and fails the way a real one does.
    pretend_gpu = {"sitecustomize.py": "import implementations.xformers as x\n"
                                       "x.cuda_reason = lambda *a, **k: ''\n"}  # fmt: skip
    root = _install(
        monkeypatch,
        tmp_path / "pkgs",
        fake_xformers(
            forward_error="CUDA error: no kernel image is available for execution on the device"
        ),
        pretend_gpu,
    )
    import implementations.xformers

    monkeypatch.setattr(implementations.xformers, "cuda_reason", lambda *a, **k: "")
    monkeypatch.setenv("PYTHONPATH", f"{root}:{ROOT}")
    suite = parse_suite({
        "name": "fake-xformers", "implementations": ["xformers", "flash_attn2"],
        "sweep": {"seq_len": [33], "num_heads": [2], "head_dim": [16], "phase": ["fwd"]},
        "timing": {"warmup": 0, "repeats": 1, "min_repeats": 1, "max_time_s": 1.0},
        "limits": {"case_timeout_s": 120}, "device": "cpu",
    })  # fmt: skip
    run = RunDir.create(tmp_path / "run", {"run_id": "test"}, {"suite": {}})
    rows = {r["impl"]: r for r in run_tasks(suite, plan(suite, "cpu"), run)}
    assert rows["xformers"]["status"] == "error"
    assert rows["xformers"]["reason"] == (
        "RuntimeError: CUDA error: no kernel image is available for execution on the device"
    )
    assert rows["flash_attn2"]["status"] == "skipped"
    assert rows["flash_attn2"]["reason"] == "flash-attn is not installed: pip install '.[flash]'"


def test_harness_list_shows_every_backend_with_its_reason(monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    import harness.cli.inspect_cmd as inspect_cmd
    from harness.cli import app

    _block(monkeypatch, "flash_attn", "flash_attn_interface", "flash_attn_3", "xformers")
    monkeypatch.setattr(inspect_cmd, "out", Console(width=250))
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines()
             if line.count("│") > 2}  # fmt: skip
    for name in (*FLASH, *XFORMERS, "flex", "sdpa_cudnn"):
        assert name in lines, result.output
    assert "pip install '.[flash]'" in lines["flash_attn2"]
    assert "skipped" in lines["xformers_cutlass"] and "pip install '.[xformers]'" in lines[
        "xformers_cutlass"]  # fmt: skip
