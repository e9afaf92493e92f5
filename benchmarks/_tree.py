"""The big log: filling a store fast but honestly, the tree baseline, and proof latency.

* **Build.** Leaves go through :class:`~corral.audit.merkle.CompactRange` (every complete
  subtree it returns is a node row) and :meth:`LogStore.append_batch` in batches of 50,000: the
  code path of a sequencer commit, minus the caller and the fsync per small batch. Roots at a
  few thousand sizes are recorded on the way, so proofs are checked against roots that did not
  come from the store.
* **Tree baseline.** The same leaves through ``pymerkle.InmemoryTree`` (its default mode hashes
  leaves as ``SHA-256(0x00 || d)`` and nodes as ``SHA-256(0x01 || l || r)``: RFC 6962, no option
  changed), through ``corral.audit.merkle.root`` (root only, O(log n) memory) and through a
  ``CompactRange`` that keeps every node (what pymerkle keeps); all three roots must be equal.
* **Proofs.** ``LogStore.inclusion_proof(tenant, i, n)`` for random ``i`` and
  ``LogStore.consistency_proof(tenant, m, n)`` for random ``m``, with ``n`` the log size (the
  latest checkpoint: what clients ask for), each timed alone after a warm-up, each verified
  afterwards with ``merkle.verify_*``. The baseline is :class:`FloorNodes`, the same nodes read
  with ``sqlite3`` alone (the proofs must be equal); pymerkle's in-memory ``prove_inclusion`` /
  ``prove_consistency`` on the same indexes are reported beside it (memory, not a database).
"""

from __future__ import annotations

import gc
import math
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import pymerkle

from benchmarks._common import (
    ORIGIN,
    TENANT,
    Metric,
    Phase,
    Profiler,
    percentile,
    repeat,
    spread,
)
from corral.audit import merkle
from corral.audit.store import LogStore

PROOF_TARGET_MS = 1.0
BUILD_BATCH = 50_000
_TICK = 1 << 14


@dataclass
class Latencies:
    """Per-proof latencies in ms, for the histogram."""

    corral: dict[str, list[float]] = field(default_factory=dict)
    floor: dict[str, list[float]] = field(default_factory=dict)
    pymerkle: dict[str, list[float]] = field(default_factory=dict)


class FloorNodes:
    """The proof floor: the same node hashes in a minimal SQLite table of its own (one integer
    key per node, ``level << 56 | index``, as the rowid), read with ``sqlite3`` alone in one
    ``key IN (...)`` SELECT and folded by the same ``merkle.*_from_nodes``. Independent of how
    the store lays out its tables, so it stays the cost floor whatever the store does."""

    _SHIFT = 56

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE nodes (key INTEGER PRIMARY KEY, hash BLOB NOT NULL)")

    def add(self, nodes: list[tuple[merkle.NodeId, bytes]]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO nodes VALUES (?, ?)",
            [((n.level << self._SHIFT) | n.index, h) for n, h in nodes],
        )
        self._db.execute("COMMIT")

    def _read(self, ids: list[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        keys = [(n.level << self._SHIFT) | n.index for n in ids]
        query = f"SELECT key, hash FROM nodes WHERE key IN ({','.join('?' * len(keys))})"
        mask = (1 << self._SHIFT) - 1
        return {
            merkle.NodeId(k >> self._SHIFT, k & mask): h for k, h in self._db.execute(query, keys)
        }

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        nodes = self._read(merkle.inclusion_plan(index, size))
        return merkle.inclusion_proof_from_nodes(index, size, nodes)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        nodes = self._read(merkle.consistency_plan(old_size, size))
        return merkle.consistency_proof_from_nodes(old_size, size, nodes)

    def close(self) -> None:
        self._db.close()


def build(
    store: LogStore, floor: FloorNodes, leaves: list[bytes], wanted: set[int], phase: Phase
) -> tuple[bytes, dict[int, bytes], Metric]:
    """Fill an empty store (and, untimed, the floor) with ``leaves``; return the root and the
    roots at the ``wanted`` sizes."""
    phase.start(f"build store ({len(leaves):,} entries)", len(leaves))
    tree = merkle.CompactRange()
    roots: dict[int, bytes] = {}
    hashing = writing = 0.0
    rows = 0
    for first in range(0, len(leaves), BUILD_BATCH):
        chunk = leaves[first : first + BUILD_BATCH]
        t0 = time.perf_counter()
        start = tree.size
        nodes: list[tuple[merkle.NodeId, bytes]] = []
        for leaf in chunk:
            nodes.extend(tree.append(merkle.leaf_hash(leaf)))
            if tree.size in wanted:
                roots[tree.size] = tree.root()
        t1 = time.perf_counter()
        store.append_batch(TENANT, ORIGIN, start, [(leaf, None) for leaf in chunk], nodes)
        t2 = time.perf_counter()
        hashing += t1 - t0
        writing += t2 - t1
        rows += len(chunk) + len(nodes)
        floor.add(nodes)
        phase.advance(len(chunk))
    total = hashing + writing
    if store.root(TENANT, len(leaves)) != tree.root():
        raise AssertionError("the store's root differs from the CompactRange's")
    metric = Metric(
        key="build.store",
        group=f"store of {len(leaves):,} entries (SQLite)",
        label=f"bulk build, append_batch of {BUILD_BATCH:,}",
        value=len(leaves) / total,
        unit="entries/s",
        better="higher",
        details={
            "seconds": total,
            "hashing_s": hashing,
            "store_write_s": writing,
            "rows_written": rows,
            "runs": 1,
        },
    )
    return tree.root(), roots, metric


def tree_baseline(
    leaves: list[bytes], expected_root: bytes, repeats: int, budget_s: float, phase: Phase
) -> tuple[list[Metric], Any]:
    """Build the tree with pymerkle and with corral; returns the figures and pymerkle's tree."""
    n = len(leaves)
    phase.start(f"pymerkle InmemoryTree ({n:,} leaves)", n * repeats)

    kept: list[Any] = []  # the last tree only: it serves the proof baseline

    def pymerkle_tree() -> bytes:
        kept.clear()
        tree = pymerkle.InmemoryTree()
        append = tree.append_entry
        for i, data in enumerate(leaves):
            append(data)
            if i % _TICK == _TICK - 1:
                phase.advance(_TICK)
        phase.advance(n % _TICK)
        kept.append(tree)
        return bytes(tree.get_state())

    pm_roots, pm_seconds = repeat(pymerkle_tree, repeats, budget_s)
    pm_tree = kept[0]

    phase.start(f"corral merkle.root ({n:,} leaves)", repeats)

    def corral_root() -> bytes:
        phase.advance()
        return merkle.root(leaves)

    roots, root_seconds = repeat(corral_root, repeats, budget_s)

    phase.start(f"corral CompactRange, all nodes ({n:,} leaves)", repeats)

    def corral_nodes() -> bytes:
        tree = merkle.CompactRange()
        nodes: dict[merkle.NodeId, bytes] = {}
        for data in leaves:
            nodes.update(tree.append(merkle.leaf_hash(data)))
        phase.advance()
        return tree.root()

    node_roots, node_seconds = repeat(corral_nodes, repeats, budget_s)
    equal = all(r == expected_root for r in (*pm_roots, *roots, *node_roots))
    if not equal:
        raise AssertionError("pymerkle and corral disagree on the root of the same leaves")
    common = {"roots_equal": equal, "pymerkle_version": pymerkle.__version__}
    group = f"tree of the same {n:,} leaves"
    metrics = [
        Metric(
            key="tree.pymerkle",
            group=group,
            label="pymerkle InmemoryTree (baseline)",
            value=median(pm_seconds),
            unit="s",
            better="lower",
            details={"seconds": spread(pm_seconds), **common},
        ),
        Metric(
            key="tree.corral_root",
            group=group,
            label="corral merkle.root (root only)",
            value=median(root_seconds),
            unit="s",
            better="lower",
            baseline_label="pymerkle InmemoryTree, same leaves",
            baseline_value=median(pm_seconds),
            details={"seconds": spread(root_seconds), **common},
        ),
        Metric(
            key="tree.corral_nodes",
            group=group,
            label="corral CompactRange, all nodes kept",
            value=median(node_seconds),
            unit="s",
            better="lower",
            baseline_label="pymerkle InmemoryTree, same leaves",
            baseline_value=median(pm_seconds),
            details={"seconds": spread(node_seconds), **common},
        ),
    ]
    return metrics, pm_tree


def _timed(
    samples: list[tuple[int, int]], call: Any, phase: Phase, *first: str
) -> tuple[list[float], list[Any]]:
    """Time each ``call(*first, *args)`` alone, in ms."""
    latencies: list[float] = []
    results: list[Any] = []
    for args in samples:
        t0 = time.perf_counter_ns()
        result = call(*first, *args)
        latencies.append((time.perf_counter_ns() - t0) / 1e6)
        results.append(result)
        phase.advance()
    return latencies, results


@dataclass(frozen=True)
class ProofSamples:
    """What the proofs ask for: leaf ``indexes`` and ``old_sizes``, each proved in ``size``."""

    size: int
    indexes: list[int]
    old_sizes: list[int]

    @classmethod
    def draw(cls, size: int, recorded: dict[int, bytes], count: int, seed: int = 7) -> ProofSamples:
        rng = random.Random(seed)
        indexes = [rng.randrange(size) for _ in range(count)]
        old_sizes = sorted(s for s in recorded if 0 < s < size)
        rng.shuffle(old_sizes)
        return cls(size, indexes, old_sizes[:count])


_WARM = 100


def store_proofs(
    store: LogStore,
    floor: FloorNodes,
    samples: ProofSamples,
    leaves: list[bytes],
    root: bytes,
    roots: dict[int, bytes],
    phase: Phase,
    profiler: Profiler,
) -> Latencies:
    """Time the store's proofs and the floor's (after a warm-up), then verify every one.

    Runs before the pymerkle tree exists: its millions of objects would make the garbage
    collector's passes longer during the timed calls.
    """
    n, indexes, old_sizes = samples.size, samples.indexes, samples.old_sizes
    phase.start(f"proofs at {n:,} entries", 4 * _WARM + 2 * (len(indexes) + len(old_sizes)))
    gc.collect()
    _timed([(i, n) for i in indexes[:_WARM]], store.inclusion_proof, phase, TENANT)
    _timed([(m, n) for m in old_sizes[:_WARM]], store.consistency_proof, phase, TENANT)
    _timed([(i, n) for i in indexes[:_WARM]], floor.inclusion_proof, phase)
    _timed([(m, n) for m in old_sizes[:_WARM]], floor.consistency_proof, phase)
    with profiler("proofs_store"):
        inc_ms, inc_proofs = _timed([(i, n) for i in indexes], store.inclusion_proof, phase, TENANT)
        con_ms, con_proofs = _timed(
            [(m, n) for m in old_sizes], store.consistency_proof, phase, TENANT
        )
    floor_inc, floor_inc_proofs = _timed([(i, n) for i in indexes], floor.inclusion_proof, phase)
    floor_con, floor_con_proofs = _timed(
        [(m, n) for m in old_sizes], floor.consistency_proof, phase
    )
    phase.done()
    if floor_inc_proofs != inc_proofs or floor_con_proofs != con_proofs:
        raise AssertionError("the sqlite3 floor and the store return different proofs")
    for i, proof in zip(indexes, inc_proofs, strict=True):
        if not merkle.verify_inclusion(merkle.leaf_hash(leaves[i]), i, n, proof, root):
            raise AssertionError(f"inclusion proof of leaf {i} in size {n} does not verify")
    for m, proof in zip(old_sizes, con_proofs, strict=True):
        if not merkle.verify_consistency(m, n, roots[m], root, proof):
            raise AssertionError(f"consistency proof {m} -> {n} does not verify")
    return Latencies(
        corral={"inclusion": inc_ms, "consistency": con_ms},
        floor={"inclusion": floor_inc, "consistency": floor_con},
    )


def pymerkle_proofs(
    pm_tree: Any, samples: ProofSamples, latencies: Latencies, phase: Phase
) -> None:
    """The same proofs from pymerkle's in-memory tree (it counts leaves from 1)."""
    n = samples.size
    phase.start(f"pymerkle proofs at {n:,} leaves", len(samples.indexes) + len(samples.old_sizes))
    inc, _ = _timed([(i + 1, n) for i in samples.indexes], pm_tree.prove_inclusion, phase)
    con, _ = _timed([(m, n) for m in samples.old_sizes], pm_tree.prove_consistency, phase)
    phase.done()
    latencies.pymerkle = {"inclusion": inc, "consistency": con}


def proof_metrics(samples: ProofSamples, latencies: Latencies) -> list[Metric]:
    """p50, p99 and p99.9 per kind against the floor, and pymerkle's p99 beside them."""
    n = samples.size
    metrics: list[Metric] = []
    group = f"proofs at {n:,} entries (SQLite, warm)"
    for kind, rows in (
        ("inclusion", [len(merkle.inclusion_plan(i, n)) for i in samples.indexes]),
        ("consistency", [len(merkle.consistency_plan(m, n)) for m in samples.old_sizes]),
    ):
        ours, floor = latencies.corral[kind], latencies.floor[kind]
        theirs = latencies.pymerkle.get(kind, [])
        details: dict[str, Any] = {
            "samples": len(ours),
            "verified": len(ours),
            "p50_ms": percentile(ours, 50),
            "p99_ms": percentile(ours, 99),
            "p99_9_ms": percentile(ours, 99.9),
            "max_ms": max(ours),
            "rows_read_mean": sum(rows) / len(rows),
            "rows_read_max": max(rows),
            "log2_size": math.log2(n),
            "floor_sqlite3_p50_ms": percentile(floor, 50),
            "floor_sqlite3_p99_ms": percentile(floor, 99),
        }
        for q, name in ((50, "p50"), (99, "p99"), (99.9, "p99.9")):
            metrics.append(
                Metric(
                    key=f"proof.{kind}.{name}",
                    group=group,
                    label=f"{kind} {name} ({sum(rows) / len(rows):.1f} rows read)",
                    value=percentile(ours, q),
                    unit="ms",
                    better="lower",
                    target=PROOF_TARGET_MS if name == "p99" else None,
                    target_note="issue: p99 < 1 ms at 1M entries" if name == "p99" else "",
                    baseline_label="same nodes via sqlite3 alone (key IN (...)), same fold",
                    baseline_value=percentile(floor, q),
                    details=details,
                )
            )
        if theirs:
            metrics.append(
                Metric(
                    key=f"proof.{kind}.pymerkle_p99",
                    group=group,
                    label=f"{kind} p99, pymerkle in memory",
                    value=percentile(theirs, 99),
                    unit="ms",
                    better="lower",
                    details={"samples": len(theirs), "p50_ms": percentile(theirs, 50)},
                )
            )
    return metrics
