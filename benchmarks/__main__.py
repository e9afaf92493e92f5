"""``python -m benchmarks``: every benchmark, one command (``make bench``).

``python -m benchmarks audit [options]`` or ``python -m benchmarks broker [options]`` runs one
suite; with no suite named, the audit chain's then the broker's run (``--quick`` applies to
both). Each module says what it measures: :mod:`benchmarks.audit`, :mod:`benchmarks.broker`.
"""

import sys

from benchmarks import audit, broker


def main(argv: list[str]) -> int:
    if argv[:1] == ["audit"]:
        return audit.main(argv[1:])
    if argv[:1] == ["broker"]:
        return broker.main(argv[1:])
    quick = ["--quick"] if "--quick" in argv else []
    return audit.main(argv) or broker.main(quick)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
