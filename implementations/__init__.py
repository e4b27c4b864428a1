"""Built-in implementations: this file is the table of contents; importing a module registers it.

Third-party implementations register through the entry-point group `harness.implementations`.
"""

from implementations import chunked, naive, sdpa  # noqa: F401
from implementations import flash_attn, flex, xformers  # noqa: F401  (third-party backends)
