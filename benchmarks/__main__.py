"""``python -m benchmarks``: run every benchmark (see :mod:`benchmarks.audit`)."""

import sys

from benchmarks.audit import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
