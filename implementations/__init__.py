"""Built-in implementations: this file is the table of contents; importing a module registers it.

Third-party implementations register through the entry-point group `harness.implementations`.
"""

from implementations import (  # noqa: F401
    bpt,
    bpt_layer,
    chunked,
    decode_flash,
    decode_flashinfer,
    decode_flex,
    decode_naive,
    decode_sdpa,
    decode_split_kv,
    decode_xformers,
    flash_attn,
    flex,
    layers,
    naive,
    ring,
    ring_peers,
    sdpa,
    ulysses,
    usp,
    xformers,
)
