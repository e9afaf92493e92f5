"""Durable appends per second through the real :class:`~corral.audit.log.Sequencer`.

What is measured, per backend and batch size ``B`` (each in a fresh database):

* **sequencer, B = 1** — one caller doing ``Sequencer.append()`` in a loop: each append is its
  own transaction and fsync, acknowledged before the next is sent.
* **sequencer, B = 64 / 1024** — one caller submitting ``B`` entries with ``submit_many()``
  and then waiting for all ``B`` futures, round after round, with ``max_batch = B``. The writer
  thread commits whatever is queued when it is free; the mean committed batch (appends /
  commits) is reported next to the rate.
* **concurrent** — ``threads`` callers each doing ``append()`` in a loop (default
  ``max_batch`` 1024): the group commit as a server with many agents would see it.
* **writer path only** — what the writer thread does for a batch, without the callers:
  ``CompactRange`` appends of precomputed leaf hashes and one ``LogStore.append_batch``.
* **baseline (cost floor)** — the same leaf bytes written with the driver alone: SQLite
  ``executemany`` + ``COMMIT`` in WAL mode with ``synchronous=FULL`` (what the store uses),
  PostgreSQL ``executemany`` + ``commit`` with ``synchronous_commit=on``; one table, one row per
  leaf, B leaves per transaction.

Every caller-side cost is inside the timed region (``submit_many()`` validates the entries
and computes their RFC 8785 leaves and leaf hashes in the caller's thread); building the
pydantic entry objects is not (a pool is built beforehand and reused across repeats).
Checkpoints are signed once a second meanwhile (``checkpoint_interval_s = 1``, the default), as
in production. After each run the store's log size is checked against the number of
acknowledged appends. The runs of one batch size are interleaved (floor, sequencer, writer
path, the order rotating between repeats), so that a slow spell of the shared disk hits them alike.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from statistics import median
from typing import Any

from benchmarks._backends import Backend, RawWriter
from benchmarks._common import (
    DEPLOYMENT,
    ORIGIN,
    TENANT,
    Metric,
    Phase,
    Profiler,
    spread,
)
from benchmarks._entries import entry
from corral.audit import entries, merkle
from corral.audit.keys import AuditKeys
from corral.audit.log import Sequencer
from corral.audit.store import LogStore
from corral.core.clock import SystemClock

APPEND_TARGET = 20_000.0


@dataclass(frozen=True)
class AppendPlan:
    """How much to append: ``counts[B]`` appends per run at batch size B, ``repeats`` runs."""

    counts: dict[int, int]
    repeats: int
    threads: int
    concurrent_count: int

    @property
    def pool_size(self) -> int:
        return max(*self.counts.values(), self.concurrent_count)

    def total(self, backends: int) -> int:
        per_backend = sum(self.counts.values()) * 2 * self.repeats  # sequencer + baseline
        per_backend += sum(c for b, c in self.counts.items() if b > 1) * self.repeats
        return backends * (per_backend + self.concurrent_count * self.repeats)


QUICK = AppendPlan(
    counts={1: 60, 64: 64 * 8, 1024: 1024 * 3}, repeats=3, threads=32, concurrent_count=1024
)
FULL = AppendPlan(
    counts={1: 300, 64: 64 * 48, 1024: 1024 * 12}, repeats=5, threads=64, concurrent_count=8192
)


# ---------------------------------------------------------------------------- runs


class _SequencerRuns:
    """Appends through one Sequencer; each :meth:`once` appends ``count`` more entries."""

    def __init__(
        self,
        store: LogStore,
        keys: AuditKeys,
        pool: list[entries.ActionRequested],
        batch: int,
        count: int,
    ) -> None:
        self._store, self._pool, self._batch, self._count = store, pool, batch, count
        self._sequencer = Sequencer(
            store,
            deployment=DEPLOYMENT,
            signer_for=keys.signer,
            clock=SystemClock(),
            max_batch=batch,
        )
        self._sequencer.append(TENANT, pool[0])  # creates the log, starts the writer
        self._sequencer.checkpoint(TENANT)
        self.acked = 1
        self.rates: list[float] = []
        self.batches: list[float] = []
        self.caller: list[float] = []

    def once(self, phase: Phase) -> None:
        sequencer, batch, count = self._sequencer, self._batch, self._count
        commits = sequencer.commits
        submitting = 0.0
        started = time.perf_counter()
        if batch == 1:
            for item in self._pool[:count]:
                sequencer.append(TENANT, item)
                phase.advance()
        else:
            for first in range(0, count, batch):
                t0 = time.perf_counter()
                chunk = [(e, None) for e in self._pool[first : first + batch]]
                futures = sequencer.submit_many(TENANT, chunk)
                submitting += time.perf_counter() - t0
                for future in futures:
                    future.result()
                phase.advance(len(futures))
        elapsed = time.perf_counter() - started
        self.acked += count
        self.rates.append(count / elapsed)
        self.batches.append(count / max(sequencer.commits - commits, 1))
        self.caller.append(submitting / elapsed)
        sequencer.checkpoint(TENANT)  # not timed: leaves the writer idle during other runs

    def close(self) -> None:
        self._sequencer.close()
        size = self._store.log_size(TENANT)
        if size != self.acked:
            raise AssertionError(f"log has {size} entries, {self.acked} were acknowledged")


class _WriterRuns:
    """The writer thread's work per batch, alone: tree.copy(), appends, append_batch."""

    def __init__(
        self, store: LogStore, hashes: list[bytes], leaves: list[bytes], batch: int, count: int
    ) -> None:
        self._store, self._hashes, self._leaves = store, hashes, leaves
        self._batch, self._count = batch, count
        self._tree = merkle.CompactRange()
        self.rates: list[float] = []

    def once(self, phase: Phase) -> None:
        batch, count = self._batch, self._count
        started = time.perf_counter()
        for first in range(0, count, batch):
            grown = self._tree.copy()
            start = grown.size
            nodes: list[tuple[merkle.NodeId, bytes]] = []
            for h in self._hashes[first : first + batch]:
                nodes.extend(grown.append(h))
            rows = [(leaf, None) for leaf in self._leaves[first : first + batch]]
            self._store.append_batch(TENANT, ORIGIN, start, rows, nodes)
            self._tree = grown
            phase.advance(len(rows))
        self.rates.append(count / (time.perf_counter() - started))


class _FloorRuns:
    """The same leaf bytes through the driver alone, ``batch`` rows per transaction."""

    def __init__(self, writer: RawWriter, leaves: list[bytes], batch: int, count: int) -> None:
        self._writer, self._leaves, self._batch, self._count = writer, leaves, batch, count
        self._seq = 0
        self.rates: list[float] = []

    def once(self, phase: Phase) -> None:
        batch, count = self._batch, self._count
        started = time.perf_counter()
        for first in range(0, count, batch):
            chunk = self._leaves[first : first + batch]
            self._writer.write([(self._seq + i, leaf) for i, leaf in enumerate(chunk)])
            self._seq += len(chunk)
            phase.advance(len(chunk))
        self.rates.append(count / (time.perf_counter() - started))


def _concurrent_runs(
    store: LogStore,
    keys: AuditKeys,
    pool: list[entries.ActionRequested],
    threads: int,
    count: int,
    repeats: int,
    phase: Phase,
) -> tuple[list[float], list[float]]:
    rates: list[float] = []
    batches: list[float] = []
    per_thread = count // threads
    with Sequencer(
        store, deployment=DEPLOYMENT, signer_for=keys.signer, clock=SystemClock()
    ) as sequencer:
        sequencer.append(TENANT, pool[0])
        for _ in range(repeats):
            gate = threading.Barrier(threads + 1)
            errors: list[BaseException] = []

            def appender(
                k: int, gate: threading.Barrier = gate, errors: list[BaseException] = errors
            ) -> None:
                gate.wait()
                try:
                    for item in pool[k * per_thread : (k + 1) * per_thread]:
                        sequencer.append(TENANT, item)
                except BaseException as exc:
                    errors.append(exc)

            workers = [threading.Thread(target=appender, args=(k,)) for k in range(threads)]
            for worker in workers:
                worker.start()
            commits = sequencer.commits
            gate.wait()
            started = time.perf_counter()
            for worker in workers:
                worker.join()
            elapsed = time.perf_counter() - started
            if errors:
                raise errors[0]
            rates.append(per_thread * threads / elapsed)
            batches.append(per_thread * threads / max(sequencer.commits - commits, 1))
            phase.advance(per_thread * threads)
    return rates, batches


# ------------------------------------------------------------------------------ driver


def _floor(backend: str) -> str:
    return f"raw {backend} executemany+commit of the same leaves, same batch size"


def _how(batch: int) -> str:
    if batch == 1:
        return "one caller, append() in a loop: one transaction and fsync per append"
    return f"one caller, submit_many() {batch} entries then wait for all {batch}; max_batch={batch}"


def _batch_size_runs(
    backend: Backend,
    batch: int,
    count: int,
    plan: AppendPlan,
    keys: AuditKeys,
    pool: list[entries.ActionRequested],
    leaves: list[bytes],
    hashes: list[bytes],
    phase: Phase,
    profiler: Profiler,
) -> list[Metric]:
    slug = backend.name.lower()
    raw = backend.raw_writer()
    with ExitStack() as stack:
        stack.callback(raw.close)
        floor = _FloorRuns(raw, leaves, batch, count)
        sequencer = _SequencerRuns(stack.enter_context(backend.store()), keys, pool, batch, count)
        stack.callback(sequencer.close)
        writer = None
        if batch > 1:
            writer = _WriterRuns(stack.enter_context(backend.store()), hashes, leaves, batch, count)
        runs: list[tuple[str, Callable[[Phase], None]]] = [
            ("floor", floor.once),
            ("sequencer", sequencer.once),
        ]
        if writer is not None:
            runs.append(("writer", writer.once))
        for r in range(plan.repeats):
            k = r % len(runs)
            for kind, once in runs[k:] + runs[:k]:
                with profiler(f"append_{slug}_{kind}_b{batch}"):
                    once(phase)
    is_target = backend.name == "SQLite" and batch == 1024
    group = f"durable appends, {backend.name}"
    metrics = [
        Metric(
            key=f"append.{slug}.sequencer.b{batch}",
            group=group,
            label=f"Sequencer, batch {batch}",
            value=median(sequencer.rates),
            unit="appends/s",
            better="higher",
            target=APPEND_TARGET if is_target else None,
            target_note="issue: >= 20,000 durable appends/s batched" if is_target else "",
            baseline_label=_floor(backend.name),
            baseline_value=median(floor.rates),
            details={
                "appends_per_run": count,
                "rate": spread(sequencer.rates),
                "mean_committed_batch": median(sequencer.batches),
                "caller_share_of_wall_time": median(sequencer.caller),
                "baseline_rate": spread(floor.rates),
                "how": _how(batch),
            },
        )
    ]
    if writer is not None:
        metrics.append(
            Metric(
                key=f"append.{slug}.writer.b{batch}",
                group=group,
                label=f"writer path only, batch {batch}",
                value=median(writer.rates),
                unit="appends/s",
                better="higher",
                baseline_label=_floor(backend.name),
                baseline_value=median(floor.rates),
                details={
                    "appends_per_run": count,
                    "rate": spread(writer.rates),
                    "how": "CompactRange + LogStore.append_batch, leaves precomputed",
                },
            )
        )
    return metrics


def run(
    plan: AppendPlan,
    backends: list[Backend],
    keys: AuditKeys,
    phase: Phase,
    profiler: Profiler,
) -> list[Metric]:
    """Every append figure for every backend; see the module docstring for what each is."""
    pool = [entry(i) for i in range(plan.pool_size)]
    leaves = [e.leaf() for e in pool]  # for the writer-only path and the floor (not timed)
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    # The pool is the harness's, not the system's: keep the collector from walking it on every
    # full collection (a long-running service freezes its start-up objects the same way).
    gc.collect()
    gc.freeze()
    metrics: list[Metric] = []
    for backend in backends:
        phase.start(f"durable appends: {backend.name}", plan.total(1))
        for batch, count in plan.counts.items():
            metrics += _batch_size_runs(
                backend, batch, count, plan, keys, pool, leaves, hashes, phase, profiler
            )
        with backend.store() as store:
            rates, committed = _concurrent_runs(
                store, keys, pool, plan.threads, plan.concurrent_count, plan.repeats, phase
            )
        metrics.append(
            Metric(
                key=f"append.{backend.name.lower()}.concurrent",
                group=f"durable appends, {backend.name}",
                label=f"{plan.threads} threads x append()",
                value=median(rates),
                unit="appends/s",
                better="higher",
                details={
                    "appends_per_run": plan.concurrent_count,
                    "rate": spread(rates),
                    "mean_committed_batch": median(committed),
                    "how": f"{plan.threads} threads, each append() in a loop, max_batch=1024",
                },
            )
        )
    phase.done()
    gc.unfreeze()
    return metrics


def throughput_picture_data(metrics: list[Metric]) -> dict[str, Any]:
    """Appends/s per (series, batch size), for the bar chart."""
    data: dict[str, dict[int, float]] = {}
    for m in metrics:
        parts = m.key.split(".")
        if len(parts) != 4 or not parts[3].startswith("b"):
            continue
        backend, kind, batch = parts[1], parts[2], int(parts[3][1:])
        name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(backend, backend)
        series = "Sequencer" if kind == "sequencer" else "writer path only"
        data.setdefault(f"{name} {series}", {})[batch] = m.value
        if kind == "sequencer" and m.baseline_value is not None:
            data.setdefault(f"{name} raw driver (floor)", {})[batch] = m.baseline_value
    return data
