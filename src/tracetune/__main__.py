"""`python -m tracetune ...`: the `tracetune` command, for environments where the package is on
the path but not installed (no console script)."""

from tracetune.cli import main

main()
