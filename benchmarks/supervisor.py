"""Benchmarks of the conflict supervisor: ``python -m benchmarks supervisor``.

Measures the latency of ``TenantSupervisor.decide`` in-process (no transport), for two fleets:
**1 tenant × 10 agents** with 100,000 earlier calls in its ledger, and **1,000 tenants × 10
agents** with 100,000 earlier calls in all (about 100 per tenant: 100,000 *per* tenant would
be 10^8 calls, over 100 GB at the measured bytes per call, more than this machine has). For
each fleet: 20,000 decisions (``--quick``: 2,000, after 10,000 earlier calls) of the calls
that follow, closed loop and open loop at 2,000 and 5,000 calls/s
(:mod:`benchmarks._open_loop` says exactly how), reported as p50, p99, p99.9 and the achieved
rate; and the memory the supervisors hold (``tracemalloc``, after a warm-up that loads every
module and cache: the bytes freed by dropping the filled supervisors; per call, beyond what the
same supervisors hold empty).

Every timed pass starts from an identically filled fleet: the workload is deterministic
(:mod:`benchmarks._supervisor_load`) and the fleet is filled again before each pass. Outcomes
and approvals of earlier calls are applied between decisions: untimed in a closed loop; in an
open loop they take time from the schedule, as they would in the service.

Garbage collection: every pass runs under the service's heap policy (:mod:`corral.core.heap`):
the filled fleet is settled (collected, then frozen) as ``Control.restore`` does, automatic
full collections are off, and the loop settles the heap every ``SETTLE_EVERY_S`` (0.1 s) from
the work between decisions, as the service's background task does; in an open loop, those
pauses take time from the schedule. The table adds the pause of one full collection with the
filled fleet, unfrozen (what the policy avoids) and frozen, and the longest collection pause
seen inside corral's passes, settles included.

The baseline, measured in the same run on the same calls: the stateless rules as Cedar
policies through ``cedarpy`` (:mod:`benchmarks._cedar`), closed loop and open loop at the
same rates, and whether its rules agree with corral's on every measured call. Cedar evaluates
five of corral's sixteen rules (the ones that need no history), so an ``x base`` below 1
means that corral, doing all sixteen, is slower than Cedar doing five.

Through the service socket (target p99 < 5 ms at 2,000 calls/s): ``corral control serve``
as its own process, 1 tenant and 1,000 tenants × 10 agents with the earlier calls (dated in
the last 1.5 days) restored from its store, an unmeasured warm-up of 1,000 calls at 500/s, then
open loop at 500, 2,000 and 5,000 calls/s (1,000 tenants: 2,000/s only)
(:mod:`benchmarks._control_socket`).

Prints the table, writes ``benchmarks/results/supervisor.json`` and
``supervisor_latency.png`` (histograms, log x, corral vs Cedar, with the 1 ms target line).
"""

from __future__ import annotations

import argparse
import gc
import resource
import shlex
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import (
    _cedar,
    _control_socket,
    _open_loop,
    _report,
    _supervisor_calls,
    _supervisor_load,
)
from benchmarks._common import Metric, Phase
from benchmarks._open_loop import Run, closed_loop, open_loop
from benchmarks._supervisor_load import Call, Fleet
from benchmarks._supervisor_report import SOCKET_TARGET_MS, Setup, metrics, picture
from corral.core import heap

__all__ = ["RESULTS", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
RATES = (2_000.0, 5_000.0)
AGENTS = 10
SOCKET_RATES = [500.0, 2_000.0, 5_000.0]
SKIPPED = "through the socket, 1,000 tenants × 10 agents: 500/s and 5,000/s (2,000/s only)"


class _Bars:
    """Progress bars that are redrawn only when told, never inside a timed loop."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.phase = progress, Phase(progress)

    def start(self, description: str, total: float) -> None:
        self.phase.start(description, total)
        self.progress.refresh()

    def tick(self, amount: float) -> None:
        self.phase.advance(amount)
        self.progress.refresh()

    def timed(self, description: str, n: int, loop: Any, *args: Any) -> Run[Any]:
        self.start(f"{description} (timing: no redraw)", n)
        run: Run[Any] = loop(*args)
        self.tick(n)
        return run


def _fill(setup: Setup, measured: int, bars: _Bars, why: str) -> tuple[Fleet, list[Call]]:
    """A freshly filled fleet, its heap not yet frozen."""
    gc.unfreeze()  # the previous fleet's objects, dropped by now, become collectable again
    bars.start(f"{setup.name}: fill {setup.earlier:,} earlier calls ({why})", setup.earlier)
    fleet, calls = _supervisor_load.prepare(setup.tenants, AGENTS, setup.earlier, measured,
                                            tick=bars.tick)  # fmt: skip
    gc.collect()
    return fleet, calls


class _Settling:
    """The work between decisions, and the service's periodic :func:`corral.core.heap.settle`."""

    def __init__(self, after: Callable[[Call, Any], None] | None = None) -> None:
        self.after, self.last = after, time.perf_counter()

    def __call__(self, call: Call, result: Any) -> None:
        if self.after is not None:
            self.after(call, result)
        if time.perf_counter() - self.last >= heap.SETTLE_EVERY_S:
            heap.settle()
            self.last = time.perf_counter()


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def memory(setup: Setup, bars: _Bars) -> dict[str, Any]:
    """Bytes the supervisors hold (traced with and without them, after a fill of their own),
    and what the same supervisors hold empty (policies, indexes), per tenant."""
    tracemalloc.start()
    try:
        fleet, _ = _fill(setup, 0, bars, "traced by tracemalloc, for memory")
        filled = _traced()
        records = sum(len(s.ledger.calls) for s in fleet.supervisors.values())
        objects = len(gc.get_objects())
        fleet.supervisors.clear()
        held = filled - _traced()
        objects -= len(gc.get_objects())
        empty = Fleet(_supervisor_load.Workload(setup.tenants, AGENTS, setup.earlier))
        built = _traced()
        empty.supervisors.clear()
        bare = built - _traced()
    finally:
        tracemalloc.stop()
    return {"bytes": held, "calls_in_ledgers": records, "empty_supervisors_bytes": bare,
            "bytes_per_tenant_empty": bare / setup.tenants,
            "bytes_per_call": (held - bare) / records, "gc_tracked_objects": objects,
            "gc_tracked_objects_per_call": objects / records}  # fmt: skip


def measure(setup: Setup, measured: int, bars: _Bars) -> None:
    """Every pass on one fleet, corral's and Cedar's interleaved."""
    setup.memory = memory(setup, bars)
    fleet, calls = _fill(setup, measured, bars, "for the closed loop")
    started = time.perf_counter()
    gc.collect()
    setup.memory["full_gc_ms"] = (time.perf_counter() - started) * 1e3
    setup.memory["gc_tracked_objects_in_process"] = len(gc.get_objects())
    heap.settle()  # as Control.restore does
    setup.memory["full_gc_frozen_ms"] = heap.settle()
    name = setup.name
    ours = bars.timed(f"{name}: corral, closed loop", len(calls), closed_loop, calls,
                      fleet.decide, _Settling(fleet.after))  # fmt: skip
    policies = {tenant: s.policy for tenant, s in fleet.supervisors.items()}
    del fleet
    cedar = _cedar.CedarSupervisor(policies, [f"agent-{k}" for k in range(AGENTS)])
    setup.cedar_policies = _cedar.policy_text(next(iter(policies.values())))
    theirs = bars.timed(f"{name}: Cedar, closed loop", len(calls), closed_loop, calls,
                        cedar.decide, _Settling())  # fmt: skip
    setup.corral.append(ours)
    setup.cedar.append(theirs)
    requests = [cedar.request(call) for call in calls]
    setup.cedar_authorize_only = bars.timed(f"{name}: Cedar, is_authorized alone", len(calls),
        closed_loop, requests, lambda request: cedar.authorize(*request))  # fmt: skip
    setup.agreement = _cedar.agreement(calls, ours.results, theirs.results)
    verdicts = Counter(d.verdict.value for d in ours.results)
    fired = Counter(rule for d in ours.results for rule in d.fired)
    setup.mix = {"verdicts": dict(verdicts.most_common()), "rules_fired": dict(fired.most_common())}
    for rate in RATES:
        fleet, calls = _fill(setup, measured, bars, f"for {rate:,.0f}/s")
        heap.settle()  # as Control.restore does
        each = f"open loop {rate:,.0f}/s"
        run = bars.timed(f"{name}: corral, {each}", len(calls), open_loop, calls, fleet.decide,
                         rate, _Settling(fleet.after))  # fmt: skip
        setup.corral.append(run)
        del fleet
        run = bars.timed(f"{name}: Cedar, {each}", len(calls), open_loop, calls, cedar.decide,
                         rate, _Settling())  # fmt: skip
        setup.cedar.append(run)
    for run in (*setup.corral, *setup.cedar, setup.cedar_authorize_only):
        run.results = []


def _socket_metrics(runs: list[_control_socket.SocketRun]) -> list[Metric]:
    out = []
    for run in runs:
        summary = run.summary()
        rate = f"{run.rate:,.0f}/s, {run.tenants:,} tenant{'s' if run.tenants > 1 else ''}"
        key = f"socket.{run.tenants}.{int(run.rate)}"
        out += [
            Metric(f"{key}.p50", "socket", f"through the socket, open loop {rate}, p50",
                   summary["p50_ms"], "ms", "lower"),
            Metric(f"{key}.p99", "socket", f"through the socket, open loop {rate}, p99",
                   summary["p99_ms"], "ms", "lower",
                   target=SOCKET_TARGET_MS if run.rate == 2_000.0 else None,
                   target_note="p99 < 5 ms at 2,000/s" if run.rate == 2_000.0 else ""),
            Metric(f"{key}.p999", "socket", f"through the socket, open loop {rate}, p99.9",
                   summary["p999_ms"], "ms", "lower"),
            Metric(f"{key}.achieved", "socket", f"achieved rate at {rate} offered",
                   summary["achieved_per_s"], "calls/s", "higher", details=summary),
        ]  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks supervisor")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 earlier calls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    earlier, measured = (10_000, 2_000) if args.quick else (100_000, 20_000)
    started_at, started = datetime.now(UTC), time.perf_counter()
    info, code = _report.machine(), _report.code()
    setups = [Setup("one_tenant", "1 tenant × 10 agents", 1, earlier),
              Setup("thousand_tenants", "1,000 tenants × 10 agents", 1_000, earlier)]  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, auto_refresh=False) as progress:
        bars = _Bars(progress)
        bars.start("warm-up: imports, caches, phone metadata", 1)
        _supervisor_load.prepare(1, AGENTS, 2_000, 0)
        with heap.policy():  # the service's (corral.core.heap)
            for setup in setups:
                measure(setup, measured, bars)
        bars.start("through corral control's socket: 500, 2,000, 5,000 calls/s", 1)
        progress.refresh()
        socket_runs = _control_socket.through_socket(earlier, measured // 2, SOCKET_RATES)
        socket_runs += _control_socket.through_socket(earlier, measured // 2, [2_000.0], 1_000)
        bars.phase.done()
        progress.refresh()
    figures = [m for setup in setups for m in metrics(setup)]
    figures += _socket_metrics(socket_runs)
    picture(out / "supervisor_latency.png", setups)
    duration = time.perf_counter() - started
    _report.write_json(out / "supervisor.json", {
        "benchmark": "corral conflict supervisor",
        "command": shlex.join(["python", "-m", "benchmarks", "supervisor", *(argv or [])]),
        "mode": "quick" if args.quick else "full",
        "started_at": started_at.isoformat(),
        "duration_s": duration,
        "machine": info,
        "code": code,
        "load_average_at_end": _report.machine()["load_average"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ratio_to_baseline": "how many times faster than the baseline (> 1: corral is faster)",
        "targets": {"in_process_p99_ms": 1.0, "socket_p99_ms_at_2000_per_s": SOCKET_TARGET_MS},
        "figures": [m.to_json() for m in figures],
        "setups": {s.key: {**s.to_json(), "agents_per_tenant": AGENTS,
                           "measured_calls": measured} for s in setups},
        "cedar": {"rules_expressed": sorted(_cedar.STATELESS),
                  "not_expressed": _cedar.NOT_EXPRESSED},
        "skipped": [SKIPPED],
        "socket": [run.summary() for run in socket_runs],
        "pictures": ["supervisor_latency.png"],
        "method": {"supervisor": __doc__, "workload": _supervisor_load.__doc__,
                   "tenants": _supervisor_calls.__doc__, "timing": _open_loop.__doc__,
                   "cedar": _cedar.__doc__},
    })  # fmt: skip
    title = (f"corral supervisor, {'quick' if args.quick else 'full'} run, {info['cpu_count']} "
             f"CPUs, commit {(code['commit'] or '?')[:7]}, {duration:.0f} s")  # fmt: skip
    console.print(_report.table(figures, title))
    console.print(
        "  baseline: the same calls, corral's 5 stateless rules as Cedar policies "
        "(cedarpy), same mode and rate; x base < 1: Cedar (5 rules) is faster"
    )
    for setup in setups:
        console.print(f"  {setup.name}: verdicts {setup.mix['verdicts']}")
    console.print(f"  Cedar cannot express: {', '.join(_cedar.NOT_EXPRESSED)}")
    console.print(f"  skipped: {SKIPPED}")
    console.print(f"results: {out / 'supervisor.json'}, {out / 'supervisor_latency.png'}")
    return 0
