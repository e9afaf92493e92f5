"""Benchmarks of corral: the numbers live here, never in the tests (``benchmarks/README.md``).

``python -m benchmarks`` runs them all; :func:`main` takes the command-line arguments, so a test
can run ``main(["--quick", "--out", str(tmp_path)])``.
"""

from benchmarks.audit import main

__all__ = ["main"]
