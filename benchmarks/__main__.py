"""``python -m benchmarks``: every benchmark, one command (``make bench``).

``python -m benchmarks audit|broker|supervisor [options]`` runs one suite; with no suite
named, all three run in that order (``--quick`` applies to each). Each module says what it
measures: :mod:`benchmarks.audit`, :mod:`benchmarks.broker`, :mod:`benchmarks.supervisor`.
"""

import sys

from benchmarks import audit, broker, supervisor


def main(argv: list[str]) -> int:
    if argv[:1] == ["audit"]:
        return audit.main(argv[1:])
    if argv[:1] == ["broker"]:
        return broker.main(argv[1:])
    if argv[:1] == ["supervisor"]:
        return supervisor.main(argv[1:])
    quick = ["--quick"] if "--quick" in argv else []
    return audit.main(argv) or broker.main(quick) or supervisor.main(quick)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
