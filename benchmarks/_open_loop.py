"""Timing one decision after another (closed loop) or on a fixed schedule (open loop).

**Closed loop**: each call is decided as soon as the previous one (and the work that follows
it, such as applying due outcomes) is done; latency = end − start of the ``decide`` call alone.

**Open loop** at R calls/s: call i is *scheduled* at t0 + i/R, whatever happened before. The
loop waits until the call's scheduled time, unless it is already late; latency = completion
time − scheduled time. A slow decision therefore also delays the calls scheduled behind it, and
their waiting counts, as it would for callers arriving at that rate (no coordinated omission).
The achieved rate is calls / (last completion − t0). The loop spins while it waits (it sleeps
only when over 2 ms ahead, never at these rates): on this VM a wake-up from ``time.sleep`` is
now and then a few ms late, and that lateness would be counted as decision latency.

Both loops are single-threaded (the supervisor decides one call at a time), start after a full
``gc.collect()``, and record with ``gc.callbacks`` how many collections of each generation ran
and the longest pause: a full (generation 2) collection walks every object of the ledgers,
and is the cause of the slowest decisions. The progress display is not redrawn during a timed
loop, so that drawing it takes no time from the calls.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from benchmarks._common import percentile

C = TypeVar("C")
R = TypeVar("R")
SPIN_S = 0.002


@dataclass
class Run(Generic[R]):
    """One timed pass over a list of calls."""

    mode: str
    """``closed`` or ``open``."""
    rate: float | None
    """The scheduled rate (calls/s) of an open loop."""
    latencies_ms: list[float]
    achieved_rate: float
    wall_s: float
    results: list[R] = field(default_factory=list)
    gc: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "closed loop" if self.rate is None else f"open loop {self.rate:,.0f}/s"

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scheduled_rate": self.rate,
            "achieved_rate": self.achieved_rate,
            "decisions": len(self.latencies_ms),
            "wall_s": self.wall_s,
            "p50_ms": self.p(50),
            "p99_ms": self.p(99),
            "p99_9_ms": self.p(99.9),
            "max_ms": max(self.latencies_ms),
            "gc": self.gc,
        }


class _GcWatch:
    """Counts collections per generation and the longest pause while installed."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.longest_ms = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.counts[info["generation"]] += 1
            self.longest_ms = max(self.longest_ms, (time.perf_counter() - self._started) * 1e3)

    def __enter__(self) -> _GcWatch:
        gc.collect()
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def report(self) -> dict[str, Any]:
        return {"collections_gen0_1_2": list(self.counts), "longest_pause_ms": self.longest_ms}


def closed_loop(
    calls: Sequence[C], decide: Callable[[C], R], after: Callable[[C, R], None] | None = None
) -> Run[R]:
    """Decide ``calls`` one after another; time each ``decide`` alone."""
    clock = time.perf_counter
    latencies: list[float] = []
    results: list[R] = []
    with _GcWatch() as watch:
        t0 = clock()
        for call in calls:
            start = clock()
            result = decide(call)
            latencies.append((clock() - start) * 1e3)
            results.append(result)
            if after is not None:
                after(call, result)
        wall = clock() - t0
    return Run("closed", None, latencies, len(calls) / wall, wall, results, watch.report())


def open_loop(
    calls: Sequence[C],
    decide: Callable[[C], R],
    rate: float,
    after: Callable[[C, R], None] | None = None,
) -> Run[R]:
    """Decide call i at t0 + i/``rate`` (or at once when late); latency from that time."""
    clock, sleep = time.perf_counter, time.sleep
    interval = 1.0 / rate
    latencies: list[float] = []
    results: list[R] = []
    with _GcWatch() as watch:
        t0 = clock() + 0.01
        done = t0
        for i, call in enumerate(calls):
            due = t0 + i * interval
            while True:
                ahead = due - clock()
                if ahead <= 0:
                    break
                if ahead > SPIN_S:
                    sleep(ahead - SPIN_S)
            result = decide(call)
            done = clock()
            latencies.append((done - due) * 1e3)
            results.append(result)
            if after is not None:
                after(call, result)
        wall = done - t0
    return Run("open", rate, latencies, len(calls) / wall, wall, results, watch.report())
