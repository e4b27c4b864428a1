"""`python -m harness ...`: the CLI without installing the package (as on GPU machines)."""

from harness.cli import main

main()
