"""Built-in implementations: this file is the table of contents; importing a module registers it.

Third-party implementations register through the entry-point group `harness.implementations`.
"""

from implementations import bpt, bpt_layer, chunked, layers, naive, ring, sdpa  # noqa: F401
