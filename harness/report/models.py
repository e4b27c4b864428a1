"""What the report knows about each implementation's memory behaviour, keyed by registry name.

`MEMORY_EXPONENT` is the power of the sequence length that the attention working memory grows with
(2 for kernels that materialize the S×S scores, 1 for blockwise ones; BPT arXiv 2305.19370 and
Rabe & Staats arXiv 2112.05682 give the models). The memory figure draws it as a dashed guide
anchored at each line's shortest ok length. `BLOCKWISE` names the implementations whose work depends
on `block_size`, the ones the block-size section plots. Other issues add their kernels here (one
line each); a row column `model_peak_mem_bytes`, when present, takes precedence over the guide.
"""

from __future__ import annotations

MEMORY_EXPONENT: dict[str, int] = {
    "naive": 2,
    "sdpa_math": 2,
    "chunked": 1,
    "sdpa_flash": 1,
    "sdpa_efficient": 1,
    "sdpa_cudnn": 1,
}

BLOCKWISE: set[str] = {"chunked"}

MODEL_MEM_COLUMN = "model_peak_mem_bytes"


def memory_exponent(impl: str) -> int | None:
    return MEMORY_EXPONENT.get(impl)


def is_blockwise(impl: str) -> bool:
    return impl in BLOCKWISE
