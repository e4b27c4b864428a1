"""Third-party adapters on CPU: lazy imports, availability reasons, per-case limits, call shape.

Real packages are absent here (and are blocked where they might not be); a present package is
simulated by fake modules written to a temporary folder (see `_FAKES`), CUDA by monkeypatching
torch.cuda. The runner test shows a package that imports but fails on use is an `error` row.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.case import Case
from harness.masks import MaskSpec
from harness.registry import REGISTRY, declared_reasons
from tests.helpers import fake_backends

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

# Fakes with upstream's signatures that compute attention in float64 with the mask the *library*
# documents (flash-attn's window_size and varlen sequences, xformers' biases), independently of
# harness.masks, so comparing with the harness's float64 reference checks the adapters' plumbing
# end to end. A keyword the upstream function lacks is a TypeError here too.
_REFERENCE = """
import math as _math
import torch as _torch


def attend(q, k, v, scale, keep):
    # (B, Sq, H, D) x (B, Sk, Hkv, D|Dv), keep (Sq, Sk) bool -> (B, Sq, H, Dv) in float64;
    # query head h reads kv head h // (H // Hkv); a row with no key gives 0
    heads, kv_heads = q.shape[2], k.shape[2]
    k = k.double().repeat_interleave(heads // kv_heads, dim=2)
    v = v.double().repeat_interleave(heads // kv_heads, dim=2)
    scale = 1 / _math.sqrt(q.shape[-1]) if scale is None else scale
    s = _torch.einsum("bqhd,bkhd->bhqk", q.double(), k) * scale
    p = _torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
    return _torch.einsum("bhqk,bkhd->bqhd", p, v).to(q.dtype)


def window_keep(sq, sk, causal, left, right):
    # flash-attn's documented mask: keys [p - left, p + right] inclusive, p = i + sk - sq;
    # -1 or None unbounded; causal: right = 0
    p = _torch.arange(sq)[:, None] + sk - sq
    j = _torch.arange(sk)[None, :]
    keep = _torch.ones(sq, sk, dtype=_torch.bool)
    if causal:
        keep &= j <= p
    if left is not None and left >= 0:
        keep &= j >= p - left
    if right is not None and right >= 0:
        keep &= j <= p + right
    return keep


def varlen(q, k, v, cu_q, cu_k, scale, causal, window):
    # (total, H, D): each sequence on its own, as flash_attn_varlen_func
    assert cu_q.dtype == _torch.int32 and cu_k.dtype == _torch.int32
    out = q.new_zeros(*q.shape[:2], v.shape[-1])
    for (a, b), (c, d) in zip(zip(cu_q.tolist(), cu_q.tolist()[1:]),
                              zip(cu_k.tolist(), cu_k.tolist()[1:])):
        keep = window_keep(b - a, d - c, causal, *window)
        out[a:b] = attend(q[None, a:b], k[None, c:d], v[None, c:d], scale, keep)[0]
    return out
"""

FA2_REF = {
    "flash_attn/__init__.py": _REFERENCE
    + """
__version__ = "2.8.3"
CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    CALLS.append({"fn": "flash_attn_func", "q": q, "k": k, "v": v, "dropout_p": dropout_p,
                  "softmax_scale": softmax_scale, "causal": causal, "window_size": window_size})
    keep = window_keep(q.shape[1], k.shape[1], causal, *window_size)
    return attend(q, k, v, softmax_scale, keep)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None):
    CALLS.append({"fn": "flash_attn_varlen_func", "q": q, "k": k, "v": v,
                  "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k,
                  "max_seqlen_q": max_seqlen_q, "max_seqlen_k": max_seqlen_k,
                  "dropout_p": dropout_p, "softmax_scale": softmax_scale, "causal": causal,
                  "window_size": window_size})
    return varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, window_size)
""",
}
FA3_REF = {  # hopper/flash_attn_interface.py's signatures; returns (out, lse) as some versions do
    "flash_attn_interface.py": _REFERENCE
    + """
CALLS = []


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None,
                    k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0,
                    softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0,
                    return_attn_probs=False):
    CALLS.append({"fn": "flash_attn_func", "q": q, "k": k, "v": v,
                  "softmax_scale": softmax_scale, "causal": causal, "window_size": window_size})
    keep = window_keep(q.shape[1], k.shape[1], causal, *window_size)
    return attend(q, k, v, softmax_scale, keep), None


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           seqused_q=None, seqused_k=None, softmax_scale=None, causal=False,
                           qv=None, q_descale=None, k_descale=None, v_descale=None,
                           window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                           pack_gqa=None, deterministic=False, sm_margin=0,
                           return_attn_probs=False):
    CALLS.append({"fn": "flash_attn_varlen_func", "q": q, "cu_seqlens_q": cu_seqlens_q,
                  "cu_seqlens_k": cu_seqlens_k, "max_seqlen_q": max_seqlen_q,
                  "max_seqlen_k": max_seqlen_k, "softmax_scale": softmax_scale,
                  "causal": causal, "window_size": window_size})
    out = varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, window_size)
    return out, None
""",
}
FA4_REF = {  # flash_attn/cute/interface.py's signatures: an unbounded window side is None
    "flash_attn/cute/__init__.py": _REFERENCE
    + """
CALLS = []


def _window(window_size):
    assert all(w is None or w >= 0 for w in window_size), window_size  # -1 is not FA4's
    return window_size


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(None, None),
                    learnable_sink=None, softcap=0.0, num_splits=1, pack_gqa=None,
                    deterministic=False, mask_mod=None, full_block_cnt=None,
                    full_block_idx=None, mask_block_cnt=None, mask_block_idx=None,
                    block_size=None, return_lse=False):
    CALLS.append({"fn": "flash_attn_func", "q": q, "softmax_scale": softmax_scale,
                  "causal": causal, "window_size": window_size})
    keep = window_keep(q.shape[1], k.shape[1], causal, *_window(window_size))
    return attend(q, k, v, softmax_scale, keep), None


def flash_attn_varlen_func(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                           max_seqlen_k=None, seqused_q=None, seqused_k=None, page_table=None,
                           softmax_scale=None, causal=False, window_size=(None, None),
                           learnable_sink=None, softcap=0.0, num_splits=1, pack_gqa=None,
                           deterministic=False, score_mod=None, mask_mod=None,
                           block_sparse_tensors=None, cu_total_m_blocks=None,
                           cu_total_n_blocks=None, aux_tensors=None, return_lse=False):
    CALLS.append({"fn": "flash_attn_varlen_func", "q": q, "cu_seqlens_q": cu_seqlens_q,
                  "max_seqlen_q": max_seqlen_q, "softmax_scale": softmax_scale,
                  "causal": causal, "window_size": window_size})
    out = varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                 _window(window_size))
    return out, None
""",
}

# xformers.ops.fmha.attn_bias (0.0.35): the classes, constructors and masks the adapter uses.
_XFORMERS_BIAS = """
from dataclasses import dataclass

import torch


def _ij(sq, sk):
    return torch.arange(sq)[:, None], torch.arange(sk)[None, :]


class AttentionBias:
    pass


class LowerTriangularMask(AttentionBias):  # top-left
    def keep(self, sq, sk):
        i, j = _ij(sq, sk)
        return j <= i


class LowerTriangularFromBottomRightMask(AttentionBias):
    def keep(self, sq, sk):
        i, j = _ij(sq, sk)
        return j <= i + sk - sq

    def make_local_attention(self, window_size):
        return LowerTriangularFromBottomRightLocalAttentionMask(window_size)


@dataclass
class LowerTriangularFromBottomRightLocalAttentionMask(LowerTriangularFromBottomRightMask):
    _window_size: int

    def __post_init__(self):
        if self._window_size <= 0:
            raise ValueError(f"Expected `window_size > 0`, but window_size={self._window_size}")

    def keep(self, sq, sk):  # tril(shift), triu(shift - window_size + 1)
        i, j = _ij(sq, sk)
        shift = sk - sq
        return (j <= i + shift) & (j >= i + shift - self._window_size + 1)


@dataclass
class LocalAttentionFromBottomRightMask(AttentionBias):
    window_left: int
    window_right: int

    def __post_init__(self):
        if self.window_left < 0 or self.window_right < 0:
            raise ValueError("Invalid window value passed to `LocalAttentionFromBottomRightMask`")

    def keep(self, sq, sk):  # triu(shift - window_left), tril(shift + window_right)
        i, j = _ij(sq, sk)
        shift = sk - sq
        return (j >= i + shift - self.window_left) & (j <= i + shift + self.window_right)


class BlockDiagonalMask(AttentionBias):
    def __init__(self, q_seqlen, kv_seqlen, device):
        self.q_seqlen, self.kv_seqlen, self.device = list(q_seqlen), list(kv_seqlen), device

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None, *, device=None):
        return cls(q_seqlen, q_seqlen if kv_seqlen is None else kv_seqlen, device)

    def make_causal(self):
        return BlockDiagonalCausalMask(self.q_seqlen, self.kv_seqlen, self.device)

    def _block(self, n, m):
        return torch.ones(n, m, dtype=torch.bool)

    def keep(self, sq, sk):
        assert (sum(self.q_seqlen), sum(self.kv_seqlen)) == (sq, sk)
        keep = torch.zeros(sq, sk, dtype=torch.bool)
        a = c = 0
        for n, m in zip(self.q_seqlen, self.kv_seqlen):
            keep[a:a + n, c:c + m] = self._block(n, m)
            a, c = a + n, c + m
        return keep


class BlockDiagonalCausalMask(BlockDiagonalMask):  # top-left within each block
    def _block(self, n, m):
        return LowerTriangularMask().keep(n, m)
"""

_XFORMERS_REFERENCE = """

def _reference(query, key, value, attn_bias, scale):
    # memory_efficient_attention's contract: [B, M, H, K], or [B, M, G, H, K] with k, v expanded
    # by the caller; a block-diagonal bias needs batch 1
    if isinstance(attn_bias, BlockDiagonalMask):
        assert query.shape[0] == key.shape[0] == value.shape[0] == 1
        assert attn_bias.device == query.device
    assert key.shape[:-1] == value.shape[:-1] and query.ndim == key.ndim
    shape = (*query.shape[:-1], value.shape[-1])
    if query.ndim == 5:
        assert query.shape[2:4] == key.shape[2:4]  # xformers does not broadcast
        query, key, value = (t.flatten(2, 3) for t in (query, key, value))
    sq, sk = query.shape[1], key.shape[1]
    keep = _torch.ones(sq, sk, dtype=_torch.bool) if attn_bias is None \\
        else attn_bias.keep(sq, sk)
    return attend(query, key, value, scale, keep).reshape(shape)
"""


def fake_xformers(*, mismatch: bool = False, forward_error: str | None = None,
                  dispatch_error: str | None = None, unbuilt: tuple[str, ...] = (),
                  reference: bool = False) -> dict[str, str]:  # fmt: skip
    """A fake xformers: optional C++ build mismatch, failing forward, dispatcher refusal.

    Its ops refuse float64 with an xformers-style reason, and accept everything else; the op
    families in `unbuilt` say they are not available (as ops that need xformers' own C++ do).
    Its biases (`xformers.ops.fmha.attn_bias`) have xformers 0.0.35's names, constructors and
    masks (`_XFORMERS_BIAS`); with `reference`, memory_efficient_attention computes attention in
    float64 with them (and checks 5-D and block-diagonal inputs as xformers does) instead of
    returning query * 5.
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
    if reference:
        forward = "    return _reference(query, key, value, attn_bias, scale)\n"
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
            "from xformers.ops.fmha.attn_bias import LowerTriangularMask, BlockDiagonalMask\n"
            + _REFERENCE
            + _XFORMERS_REFERENCE
            + "CALLS = []\n\n"
            "def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, "
            "scale=None, *, op=None, output_dtype=None):\n"
            "    CALLS.append({'attn_bias': attn_bias, 'op': op, 'scale': scale, 'query': query, "
            "'key': key, 'value': value})\n" + forward
        ),
        "xformers/ops/fmha/__init__.py": (
            "from dataclasses import dataclass\n\n@dataclass\nclass Inputs:\n"
            "    query: object\n    key: object\n    value: object\n    attn_bias: object = None\n"
            "    p: float = 0.0\n    scale: object = None\n    output_dtype: object = None\n"
        ),
        "xformers/ops/fmha/attn_bias.py": _XFORMERS_BIAS,
        "xformers/ops/fmha/dispatch.py": "def _dispatch_fw(inp, needs_gradient):\n" + dispatch,
        **{
            f"xformers/ops/fmha/{family}.py": op.format(name=name, built=family not in unbuilt)
            for family, name in (("cutlass", "cutlass"), ("flash", "fa2"), ("ck", "ck"))
        },
    }


# ---- helpers ---------------------------------------------------------------------------------
def _reset_adapters() -> None:
    from implementations import flash_attn, xformers

    flash_attn._kernel.cache_clear()
    xformers._op.cache_clear()


def _forget_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop cached backend modules and the adapters' caches so each test sees its own fakes."""
    fake_backends.forget(monkeypatch, BACKEND_PREFIXES, _reset_adapters)


@pytest.fixture(autouse=True)
def _clean_adapter_caches():
    with fake_backends.fakes_forgotten(BACKEND_PREFIXES):
        yield
    _reset_adapters()


def _install(monkeypatch: pytest.MonkeyPatch, root: Path, *fakes: dict[str, str]) -> Path:
    _forget_backends(monkeypatch)
    return fake_backends.install(monkeypatch, root, *fakes)


def _block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make `import name` fail exactly as for a package that is not installed."""
    _forget_backends(monkeypatch)
    fake_backends.block(monkeypatch, *names)


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
    from xformers.ops.fmha import attn_bias

    q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
    assert torch.equal(REGISTRY.get("xformers_cutlass").forward(q, k, v, causal=True), q * 5)
    REGISTRY.get("xformers").forward(q, k, v, causal=False)
    forced, default = xformers.ops.CALLS
    assert forced["op"] == (cutlass.FwOp, cutlass.BwOp)
    # causal=True is the harness's bottom-right mask (LowerTriangularMask is top-left)
    assert type(forced["attn_bias"]) is attn_bias.LowerTriangularFromBottomRightMask
    assert (default["attn_bias"], default["op"], default["scale"]) == (None, None, None)


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


# ---- masks, GQA, head_dim_v and softmax_scale through the fakes ------------------------------
def _options(case: Case) -> dict:
    """forward's keywords for a case, as the registry's contract gives them."""
    options: dict = {"causal": case.mask.kind == "causal"}
    if not case.mask.is_dense:
        options["mask"] = case.mask
    if case.softmax_scale is not None:
        options["softmax_scale"] = case.softmax_scale
    return options


def _inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    shapes = ((case.batch, case.sq, case.num_heads, case.head_dim),
              (case.batch, case.sk, case.kv_heads, case.head_dim),
              (case.batch, case.sk, case.kv_heads, case.dim_v))  # fmt: skip
    return tuple(torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes)


def _expected(case: Case, q, k, v) -> torch.Tensor:
    """The harness's own answer: float64 attention under `harness.masks` (not the fakes' masks)."""
    scope: dict = {}
    exec(_REFERENCE, scope)  # the same arithmetic as the fakes, with the harness's mask
    return scope["attend"](q, k, v, case.softmax_scale, case.mask.dense(case.sq, case.sk))


def _case(**kw) -> Case:
    base = {"batch": 2, "seq_len": 64, "num_heads": 4, "head_dim": 8, "dtype": "float64"}
    return Case(**{**base, **kw})


DOCS = {"kind": "document", "doc_lens": [30, 50, 17]}
END_TO_END = {
    "causal q<k": _case(seqlen_q=5, seqlen_k=9, causal=True),
    "causal q>k (empty rows)": _case(seqlen_q=9, seqlen_k=5, causal=True),
    "full gqa scale": _case(num_kv_heads=2, softmax_scale=0.3),
    "mqa causal": _case(num_kv_heads=1, causal=True, seqlen_q=7, seqlen_k=11),
    "swa (16, 0)": _case(mask={"kind": "sliding_window", "window": [16, 0]}),
    "window (4, 2) q<k": _case(seqlen_q=20, seqlen_k=33,
                               mask={"kind": "sliding_window", "window": [4, 2]}),
    "window (-1, 3) q>k": _case(seqlen_q=12, seqlen_k=10,
                                mask={"kind": "sliding_window", "window": [-1, 3]}),
    "window (5, 7) + causal, gqa": _case(num_kv_heads=2, causal=True,
                                         mask={"kind": "sliding_window", "window": [5, 7]}),
    "documents": _case(seq_len=97, mask=DOCS),
    "documents causal gqa scale": _case(seq_len=97, mask=DOCS, causal=True, num_kv_heads=2,
                                        softmax_scale=0.5),
    "documents seeded": _case(seq_len=40, mask={"kind": "document", "num_docs": 4, "seed": 3}),
}  # fmt: skip
FLASH_FAKES = {"flash_attn2": FA2_REF, "flash_attn3": FA3_REF, "flash_attn4": FA4_REF}


@pytest.mark.parametrize("name", FLASH)
@pytest.mark.parametrize("label", list(END_TO_END))
def test_flash_attn_forward_matches_the_harness_reference(monkeypatch, tmp_path, name, label):
    """flash-attn's documented semantics (the fakes) + the adapter == the harness's masks."""
    case = END_TO_END[label]
    _install(monkeypatch, tmp_path, FLASH_FAKES[name])
    impl = REGISTRY.get(name)
    low = dataclasses.replace(case, dtype="bfloat16")  # the fakes compute in float64
    assert declared_reasons(impl, case) == [] and impl.unsupported(low, "cuda") == []
    q, k, v = _inputs(case)
    out = impl.forward(q, k, v, **_options(case))
    assert out.shape == (case.batch, case.sq, case.num_heads, case.dim_v)
    torch.testing.assert_close(out, _expected(case, q, k, v), rtol=1e-12, atol=1e-12)


def _calls(name: str) -> list[dict]:
    module = {"flash_attn2": "flash_attn", "flash_attn3": "flash_attn_interface",
              "flash_attn4": "flash_attn.cute"}[name]  # fmt: skip
    return sys.modules[module].CALLS


@pytest.mark.parametrize("name", FLASH)
def test_flash_attn_passes_the_window_and_causal(monkeypatch, tmp_path, name):
    _install(monkeypatch, tmp_path, FLASH_FAKES[name])
    impl = REGISTRY.get(name)
    unbounded = None if name == "flash_attn4" else -1
    for case, causal, window in [
        (_case(mask={"kind": "sliding_window", "window": [16, 0]}), True, (16, 0)),
        (_case(mask={"kind": "sliding_window", "window": [4, 2]}), False, (4, 2)),
        (_case(mask={"kind": "sliding_window", "window": [4, 2]}, causal=True), True, (4, 0)),
        (_case(mask={"kind": "sliding_window", "window": [-1, 3]}), False, (unbounded, 3)),
        (_case(seqlen_q=5, seqlen_k=9, causal=True), True, None),  # bottom-right, no window
        (_case(seqlen_q=5, seqlen_k=9), False, None),
    ]:  # fmt: skip
        impl.forward(*_inputs(case), **_options(case))
        call = _calls(name)[-1]
        assert call["fn"] == "flash_attn_func" and call["causal"] is causal
        assert call["window_size"] == (window if window else (unbounded, unbounded)), case.name
        assert call["softmax_scale"] is None
    if name == "flash_attn2":
        assert call["dropout_p"] == 0.0


@pytest.mark.parametrize("name", FLASH)
def test_flash_attn_documents_go_through_varlen(monkeypatch, tmp_path, name):
    """B rows × documents [30, 50, 17] become one varlen batch of 6 sequences."""
    _install(monkeypatch, tmp_path, FLASH_FAKES[name])
    case = _case(seq_len=97, mask=DOCS, causal=True, num_kv_heads=2, softmax_scale=0.25)
    REGISTRY.get(name).forward(*_inputs(case), **_options(case))
    (call,) = _calls(name)
    assert call["fn"] == "flash_attn_varlen_func"
    assert call["cu_seqlens_q"].dtype == torch.int32
    assert call["cu_seqlens_q"].tolist() == [0, 30, 80, 97, 127, 177, 194]
    assert call["max_seqlen_q"] == 50 and call["causal"] is True
    assert call["softmax_scale"] == 0.25 and tuple(call["q"].shape) == (194, 4, 8)
    if name != "flash_attn4":
        assert call["cu_seqlens_k"].tolist() == call["cu_seqlens_q"].tolist()
        assert call["max_seqlen_k"] == 50
    if name == "flash_attn2":  # GQA stays native: k with the kv heads
        assert tuple(call["k"].shape) == (194, 2, 8) and tuple(call["v"].shape) == (194, 2, 8)


def test_flash_attn_gqa_is_native(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA2_REF)
    import flash_attn

    case = _case(num_kv_heads=2, causal=True, seqlen_q=3, seqlen_k=64)
    q, k, v = _inputs(case)
    REGISTRY.get("flash_attn2").forward(q, k, v, **_options(case))
    (call,) = flash_attn.CALLS
    assert call["q"] is q and call["k"] is k and call["v"] is v  # no repeat, no copy


def test_fa3_takes_head_dim_v(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA3_REF)
    case = _case(head_dim=192, head_dim_v=128, num_kv_heads=2, causal=True)
    low = dataclasses.replace(case, dtype="bfloat16")  # the fake computes in float64
    assert REGISTRY.get("flash_attn3").unsupported(low, "cuda") == []
    q, k, v = _inputs(case)
    out = REGISTRY.get("flash_attn3").forward(q, k, v, **_options(case))
    torch.testing.assert_close(out, _expected(case, q, k, v), rtol=1e-12, atol=1e-12)


OTHER_KINDS = [
    {"kind": "prefix_lm", "prefix_len": 8},
    {"kind": "strided", "stride": 4},
    {"kind": "random_block", "block": 16, "density": 0.5},
    {"kind": "block_sparse", "block": 16, "band": 1},
    {"kind": "global_local", "window": [4, 4], "num_global": 2},
]


@pytest.mark.parametrize("name", FLASH)
def test_flash_attn_features_and_mask_reasons(name):
    impl = REGISTRY.get(name)
    assert {"gqa", "seqlen_q_ne_k", "softmax_scale"} <= impl.features
    assert ("head_dim_v" in impl.features) is (name != "flash_attn2")
    assert impl.mask_kinds == ("none", "causal", "causal_top_left", "sliding_window", "document")
    ok = dict(dtype="bfloat16", head_dim=64)
    for mask in OTHER_KINDS:
        case = Case(**ok, mask=mask)
        (declared,) = declared_reasons(impl, case)
        assert f"no support for the {mask['kind']} mask" in declared
        (reason,) = impl.unsupported(case, "cuda")
        assert f"has no {mask['kind']} mask" in reason and reason.endswith("use flex")
    top_left = Case(**ok, seqlen_q=128, seqlen_k=256, mask="causal_top_left")
    assert declared_reasons(impl, top_left) == []
    (reason,) = impl.unsupported(top_left, "cuda")
    assert "bottom-right" in reason and "causal_top_left" in reason
    square = Case(**ok, seqlen_q=256, seqlen_k=256, mask="causal_top_left")  # the same mask
    assert square.mask.kind == "causal" and impl.unsupported(square, "cuda") == []
    docs = Case(**ok, seqlen_q=50, seqlen_k=97, mask=DOCS)
    (reason,) = impl.unsupported(docs, "cuda")
    assert "seqlen_q == seqlen_k" in reason
    assert impl.unsupported(Case(**ok, seq_len=97, mask=DOCS, causal=True), "cuda") == []
    swa = Case(**ok, num_kv_heads=2, softmax_scale=0.1, seqlen_q=100, seqlen_k=4096,
               mask={"kind": "sliding_window", "window": [16, 0]})  # fmt: skip
    assert declared_reasons(impl, swa) == [] and impl.unsupported(swa, "cuda") == []


def test_flash_attn_head_dim_v_reasons(monkeypatch):
    fa2, fa3, fa4 = (REGISTRY.get(n) for n in FLASH)
    dv = Case(dtype="bfloat16", head_dim=128, head_dim_v=64)
    (declared,) = declared_reasons(fa2, dv)
    assert "no support for head_dim_v 64 != head_dim 128" in declared
    (reason,) = fa2.unsupported(dv, "cuda")
    assert "head_dim_v == head_dim" in reason
    (reason,) = fa3.unsupported(dv, "cuda")  # hopper/flash_api.cpp: (128, 192] x (96, 128]
    assert "(128, 192]" in reason
    assert fa3.unsupported(Case(dtype="bfloat16", head_dim=64, head_dim_v=512), "cuda") == []
    deepseek = Case(dtype="bfloat16", head_dim=192, head_dim_v=128)
    assert fa3.unsupported(deepseek, "cuda") == []
    _gpu(monkeypatch, (10, 0))
    assert fa4.unsupported(deepseek, "cuda") == []
    assert len(fa4.unsupported(dv, "cuda")) == 1
    _gpu(monkeypatch, (9, 0))
    (reason,) = fa4.unsupported(deepseek, "cuda")
    assert "(192, 128) on sm100/sm110" in reason


def test_flash_attn_forward_refuses_what_it_cannot_express(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, FA2_REF)
    q, k, v = (torch.randn(1, 4, 2, 8, dtype=torch.float64) for _ in range(3))
    k8, v8 = (torch.randn(1, 8, 2, 8, dtype=torch.float64) for _ in range(2))
    fwd = REGISTRY.get("flash_attn2").forward
    with pytest.raises(NotImplementedError, match="causal_top_left"):
        fwd(q, k8, v8, causal=False, mask=MaskSpec(kind="causal_top_left"))
    with pytest.raises(NotImplementedError, match="prefix_lm"):
        fwd(q, k, v, causal=False, mask=MaskSpec(kind="prefix_lm", prefix_len=2))


# FlashAttention's own window clamping, as read in upstream's C++ (see _optional.py):
# FA2 csrc/flash_attn/flash_api.cpp (mha_fwd, set_params_fprop), FA3 hopper/flash_api.cpp.
def _fa2_keep(sq: int, sk: int, causal: bool, left: int, right: int) -> torch.Tensor:
    left = -1 if left >= sk else left
    right = -1 if right >= sk else right
    causal = causal and sq != 1
    right = 0 if causal else right
    if left < 0 and right < 0:
        return torch.ones(sq, sk, dtype=torch.bool)
    left = sk if left < 0 else left
    right = sk if right < 0 else right
    return MaskSpec(kind="sliding_window", window=(left, right)).dense(sq, sk)


def _fa3_keep(sq: int, sk: int, causal: bool, left: int, right: int) -> torch.Tensor:
    left = -1 if left >= sk - 1 else left
    right = -1 if right >= sq - 1 else right
    right = 0 if causal else right
    if left < 0 and right < 0:
        return torch.ones(sq, sk, dtype=torch.bool)
    left = sk - 1 if left < 0 else left
    right = sq - 1 if right < 0 else right
    return MaskSpec(kind="sliding_window", window=(left, right)).dense(sq, sk)


def test_fa2_window_differs_is_exactly_where_fa2_clamps_differently():
    from implementations._optional import fa2_window_differs

    for sq in range(1, 8):
        for sk in range(1, 8):
            for left in range(-1, 9):
                for right in range(-1, 9):
                    wanted = MaskSpec(kind="sliding_window", window=(left, right)).dense(sq, sk)
                    fa2 = _fa2_keep(sq, sk, right == 0, left, right)
                    differs = not torch.equal(fa2, wanted)
                    assert differs == fa2_window_differs(left, right, sq, sk), (sq, sk, left, right)
                    assert torch.equal(_fa3_keep(sq, sk, right == 0, left, right), wanted)


def test_fa2_window_reason_only_where_it_differs():
    fa2, fa3 = REGISTRY.get("flash_attn2"), REGISTRY.get("flash_attn3")
    case = Case(dtype="bfloat16", head_dim=64, seqlen_q=100, seqlen_k=10,
                mask={"kind": "sliding_window", "window": [4, -1]})  # fmt: skip
    (reason,) = fa2.unsupported(case, "cuda")
    assert "seqlen_q 100 > seqlen_k 10 + 1" in reason
    assert fa3.unsupported(case, "cuda") == []
    swa = Case(dtype="bfloat16", head_dim=64, seqlen_q=100, seqlen_k=10,
               mask={"kind": "sliding_window", "window": [4, 0]})  # fmt: skip
    assert fa2.unsupported(swa, "cuda") == []


# ---- xformers: biases, 5-D GQA, folded documents, the probe ---------------------------------
@pytest.mark.parametrize("name", ["xformers", "xformers_cutlass"])
@pytest.mark.parametrize("label", list(END_TO_END))
def test_xformers_forward_matches_the_harness_reference(monkeypatch, tmp_path, name, label):
    """xformers' documented biases (the fake) + the adapter == the harness's masks."""
    case = END_TO_END[label]
    _install(monkeypatch, tmp_path, fake_xformers(reference=True))
    impl = REGISTRY.get(name)
    assert declared_reasons(impl, case) == []
    q, k, v = _inputs(case)
    out = impl.forward(q, k, v, **_options(case))
    assert out.shape == (case.batch, case.sq, case.num_heads, case.dim_v)
    torch.testing.assert_close(out, _expected(case, q, k, v), rtol=1e-12, atol=1e-12)


def test_xformers_biases_per_case(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, fake_xformers(reference=True))
    import xformers.ops
    from xformers.ops.fmha import attn_bias as ab

    fwd = REGISTRY.get("xformers_flash").forward

    def bias(case: Case):
        fwd(*_inputs(case), **_options(case))
        return xformers.ops.CALLS[-1]["attn_bias"]

    assert type(bias(_case(seqlen_q=5, seqlen_k=9, causal=True))) is \
        ab.LowerTriangularFromBottomRightMask  # fmt: skip
    assert type(bias(_case(seqlen_q=5, seqlen_k=9, mask="causal_top_left"))) is \
        ab.LowerTriangularMask  # fmt: skip
    assert bias(_case(seqlen_q=5, seqlen_k=9)) is None
    swa = bias(_case(mask={"kind": "sliding_window", "window": [16, 0]}))
    assert type(swa) is ab.LowerTriangularFromBottomRightLocalAttentionMask
    assert swa._window_size == 17  # keys p - 16 .. p
    local = bias(_case(mask={"kind": "sliding_window", "window": [4, 2]}))
    assert local == ab.LocalAttentionFromBottomRightMask(window_left=4, window_right=2)
    wide = bias(_case(seqlen_q=20, seqlen_k=33, mask={"kind": "sliding_window",
                                                      "window": [-1, 3]}))  # fmt: skip
    assert wide == ab.LocalAttentionFromBottomRightMask(window_left=33, window_right=3)
    docs = bias(_case(seq_len=97, mask=DOCS))
    assert type(docs) is ab.BlockDiagonalMask and docs.q_seqlen == [30, 50, 17] * 2
    causal_docs = bias(_case(seq_len=97, mask=DOCS, causal=True))
    assert type(causal_docs) is ab.BlockDiagonalCausalMask
    assert causal_docs.kv_seqlen == [30, 50, 17] * 2


def test_xformers_gqa_is_5d_with_expanded_kv_and_documents_fold_the_batch(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, fake_xformers(reference=True))
    import xformers.ops

    case = _case(seq_len=97, mask=DOCS, num_heads=6, num_kv_heads=2, head_dim_v=4,
                 softmax_scale=0.2)  # fmt: skip
    out = REGISTRY.get("xformers").forward(*_inputs(case), **_options(case))
    assert out.shape == (2, 97, 6, 4)
    call = xformers.ops.CALLS[-1]
    assert tuple(call["query"].shape) == (1, 194, 2, 3, 8)  # [B, M, G, H, K], B folded
    assert tuple(call["key"].shape) == (1, 194, 2, 3, 8)
    assert tuple(call["value"].shape) == (1, 194, 2, 3, 4)
    assert call["key"].stride(3) == 0 and call["value"].stride(3) == 0  # expanded, not copied
    assert call["scale"] == 0.2


def test_xformers_probe_builds_the_calls_inputs(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, fake_xformers())
    from xformers.ops.fmha import attn_bias as ab

    from implementations.xformers import _probe_inputs

    gqa = Case(batch=3, seqlen_q=4096, seqlen_k=8192, num_heads=8, num_kv_heads=2, head_dim=64,
               head_dim_v=32, dtype="bfloat16", causal=True, softmax_scale=0.1)  # fmt: skip
    inp = _probe_inputs(gqa, "cpu")
    assert tuple(inp.query.shape) == (3, 256, 2, 4, 64) and inp.key.stride(3) == 0
    assert tuple(inp.key.shape) == (3, 257, 2, 4, 64)  # seqlen_q < seqlen_k kept
    assert tuple(inp.value.shape) == (3, 257, 2, 4, 32)
    assert type(inp.attn_bias) is ab.LowerTriangularFromBottomRightMask and inp.scale == 0.1
    docs = Case(batch=2, seq_len=4096, num_heads=4, head_dim=64, dtype="bfloat16",
                mask={"kind": "document", "doc_lens": [1000, 3000, 96]})  # fmt: skip
    inp = _probe_inputs(docs, "cpu")
    assert type(inp.attn_bias) is ab.BlockDiagonalMask and inp.query.shape[0] == 1
    assert inp.query.shape[1] == sum(inp.attn_bias.q_seqlen) <= 2 * 257
    assert len(inp.attn_bias.q_seqlen) == 6
    small = Case(batch=2, seq_len=97, num_heads=4, head_dim=64, dtype="bfloat16", mask=DOCS)
    assert _probe_inputs(small, "cpu").attn_bias.q_seqlen == [30, 50, 17] * 2
    top_left = Case(seqlen_q=300, seqlen_k=300, head_dim=64, mask="causal_top_left")
    assert type(_probe_inputs(top_left, "cpu").attn_bias) is \
        ab.LowerTriangularFromBottomRightMask  # square: the case reads `causal`  # fmt: skip
    swa = Case(seq_len=4096, head_dim=64, mask={"kind": "sliding_window", "window": [16, 0]})
    assert _probe_inputs(swa, "cpu").attn_bias._window_size == 17


@pytest.mark.parametrize("name", XFORMERS)
def test_xformers_features_and_mask_reasons(monkeypatch, tmp_path, name):
    _install(monkeypatch, tmp_path, fake_xformers())
    impl = REGISTRY.get(name)
    assert impl.features == {"gqa", "seqlen_q_ne_k", "head_dim_v", "softmax_scale"}
    assert impl.mask_kinds == ("none", "causal", "causal_top_left", "sliding_window", "document")
    for mask in OTHER_KINDS:
        case = Case(dtype="bfloat16", head_dim=64, mask=mask)
        assert f"no support for the {mask['kind']} mask" in declared_reasons(impl, case)[0]
        (reason,) = impl.unsupported(case, "cpu")
        assert f"no {mask['kind']} bias" in reason and reason.endswith("use flex")
    docs = Case(dtype="bfloat16", head_dim=64, seqlen_q=50, seqlen_k=97, mask=DOCS)
    assert "seqlen_q == seqlen_k" in impl.unsupported(docs, "cpu")[0]
    top_left = Case(dtype="bfloat16", head_dim=64, seqlen_q=128, seqlen_k=256,
                    mask="causal_top_left")  # fmt: skip
    assert declared_reasons(impl, top_left) == []
    if name == "xformers_flash3":  # the fake has no fmha.flash3 to probe
        return
    assert impl.unsupported(top_left, "cpu") == []
    wide = Case(dtype="bfloat16", head_dim=64, seqlen_q=100, seqlen_k=10,
                mask={"kind": "sliding_window", "window": [4, -1]})  # fmt: skip
    reasons = impl.unsupported(wide, "cpu")
    assert bool(reasons) is (name in ("xformers", "xformers_flash")), reasons
