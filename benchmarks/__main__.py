"""``python -m benchmarks``: every benchmark, one command (``make bench``).

``python -m benchmarks audit|broker|supervisor|runtime [options]`` runs one suite; with no
suite named, all four run in that order (``--quick`` applies to each). Each module says what it
measures: :mod:`benchmarks.audit`, :mod:`benchmarks.broker`, :mod:`benchmarks.supervisor`,
:mod:`benchmarks.runtime`.
"""

import sys

from benchmarks import audit, broker, e2e, runtime, supervisor


def main(argv: list[str]) -> int:
    if argv[:1] == ["audit"]:
        return audit.main(argv[1:])
    if argv[:1] == ["broker"]:
        return broker.main(argv[1:])
    if argv[:1] == ["supervisor"]:
        return supervisor.main(argv[1:])
    if argv[:1] == ["runtime"]:
        return runtime.main(argv[1:])
    if argv[:1] == ["e2e"]:  # not in the run of every suite: it starts the whole chain
        return e2e.main(argv[1:])
    quick = ["--quick"] if "--quick" in argv else []
    return (audit.main(argv) or broker.main(quick) or supervisor.main(quick)
            or runtime.main(quick))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
