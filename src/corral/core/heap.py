"""The garbage-collection policy of a latency-bound service with a large, long-lived heap.

CPython's cyclic collector walks every tracked object of the oldest generation on each full
collection. With 100,000 calls in the supervisor's ledgers that is 0.4-0.66 s, a stall for every
decision queued behind it. ``gc.freeze()`` moves what lives now to a permanent generation that
no collection walks; but freezing alone makes the oldest generation small, so CPython's rule
(a full collection once it has grown by a quarter) fires every few tenths of a second, each time
walking everything made since the freeze: 45-95 ms pauses at 2,000-5,000 decisions/s
(``benchmarks/supervisor.py``).

The policy: while :func:`policy` is in force, automatic full collections are off, and the
service calls :func:`settle` every :data:`SETTLE_EVERY_S`: one full collection of what was made
since the previous settle (everything older is frozen), then ``gc.freeze()`` of what survived.
Each pause is then bounded by one interval's allocations: 0.6-4 ms at 5,000 decisions/s
in-process on this 2-core machine, near zero when idle, where a full collection of the
unfrozen ledgers took 0.4-0.66 s. The young generations are collected as usual. Settling more
often is not better: every 20 ms, ``corral control``'s p50 at 500 calls/s rose from 7 to 29 ms.

The cost: an object that is frozen and later dies inside a reference cycle is never freed.
What the ledger forgets (its call records) holds no cycles and is freed by reference counting,
and garbage that is cyclic from birth is collected young or at the next settle. Measured on
``corral control`` after 11,000 calls at 500/s: of the 287,522 objects frozen, none was
unreachable (unfrozen and collected, in the running service).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

__all__ = ["SETTLE_EVERY_S", "policy", "settle"]

SETTLE_EVERY_S = 0.1
"""How often a service under :func:`policy` calls :func:`settle` (see the module's figures)."""

_NEVER = 2**30
"""Collections of generation 1 between automatic full collections: never, in practice."""


def settle() -> float:
    """Collect what was made since the last settle, then freeze what survived. Returns the
    pause, in milliseconds."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    return (time.perf_counter() - started) * 1e3


@contextlib.contextmanager
def policy() -> Iterator[None]:
    """Automatic full collections off (the caller settles), and the heap settled now; on exit,
    the frozen objects handed back to the collector and CPython's thresholds as they were (a
    process that goes on, such as a test run, frees what the service froze)."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], _NEVER)
    settle()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
