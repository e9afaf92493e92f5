"""LogStore on SQLite and PostgreSQL: exact read-back, fencing, erasure, proofs, O(log n) reads."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from corral.audit import merkle
from corral.audit.merkle import NodeId
from corral.audit.store import LogStore, StoreConflict, StoredCheckpoint, StoredEntry
from corral.core.errors import ConfigError, StoreError
from tests.audit import _backends as b
from tests.audit._backends import store_fixture, store_url_fixture  # noqa: F401 (fixtures)

T = b.TENANT
ORIGIN = b.origin()
START_AT = b.START


def _leaves(n: int, tag: str = "") -> list[bytes]:
    return [b.entry(i, tag=tag)[0].leaf() for i in range(n)]


def _append(
    store: LogStore,
    leaves: list[bytes],
    batches: list[int],
    *,
    tenant: str = T,
    payloads: dict[int, bytes] | None = None,
) -> None:
    """Append ``leaves`` in batches of the given sizes, as a sequencer would."""
    payloads = payloads or {}
    tree = merkle.CompactRange()
    start = 0
    for size in batches:
        chunk = list(range(start, start + size))
        nodes = [n for i in chunk for n in tree.append(merkle.leaf_hash(leaves[i]))]
        rows = [(leaves[i], payloads.get(i)) for i in chunk]
        store.append_batch(tenant, b.origin(tenant), start, rows, nodes)
        start += size
    assert start == len(leaves)


def test_create_schema_is_idempotent_and_starts_empty(store: LogStore) -> None:
    store.create_schema()
    assert store.tenants() == []
    assert store.log_size(T) == 0
    assert store.origin(T) is None
    assert store.entries(T, 0, 10) == []
    assert store.checkpoints(T) == []
    assert store.latest_checkpoint(T) is None
    assert store.root(T, 0) == merkle.EMPTY_ROOT


@pytest.mark.parametrize("batches", [[13], [1] * 13, [5, 1, 7], [2, 2, 4, 5]])
def test_append_batch_reads_back_exactly(store: LogStore, batches: list[int]) -> None:
    leaves = _leaves(13)
    payloads = {1: b'{"data":{"to":"+1"}}', 8: b'{"data":{"to":"+2"}}'}
    _append(store, leaves, batches, payloads=payloads)
    assert store.tenants() == [T]
    assert store.log_size(T) == 13
    assert store.origin(T) == ORIGIN
    assert store.entries(T, 0, 13) == [
        StoredEntry(i, leaf, payloads.get(i), False) for i, leaf in enumerate(leaves)
    ]
    assert [e.seq for e in store.entries(T, 4, 9)] == [4, 5, 6, 7, 8]
    assert [e.seq for e in store.entries(T, 11, 99)] == [11, 12]
    # Every complete subtree is stored, each equal to merkle's recomputation, and no other.
    expected = b.all_nodes(leaves)
    assert store.nodes(T, list(expected)) == expected
    assert b.stored_node_count(store) == len(expected)
    assert store.root(T, 13) == merkle.root(leaves)


def test_tenants_are_separate_logs(store: LogStore) -> None:
    ours, theirs = _leaves(3), _leaves(5, tag="other")
    _append(store, ours, [3])
    _append(store, theirs, [2, 3], tenant="sparkle")
    assert store.tenants() == [T, "sparkle"]
    assert (store.log_size(T), store.log_size("sparkle")) == (3, 5)
    assert [e.leaf for e in store.entries("sparkle", 0, 5)] == theirs
    assert store.root(T, 3) == merkle.root(ours)
    assert store.root("sparkle", 5) == merkle.root(theirs)


@pytest.mark.parametrize("expected_size", [0, 2, 4])
def test_conflicting_append_is_fenced_and_writes_nothing(
    store: LogStore, expected_size: int
) -> None:
    leaves = _leaves(5)
    _append(store, leaves[:3], [3])
    tree = merkle.CompactRange()
    nodes = [n for leaf in leaves for n in tree.append(merkle.leaf_hash(leaf))]
    with pytest.raises(StoreConflict) as caught:
        store.append_batch(T, ORIGIN, expected_size, [(leaves[3], b"{}")], nodes[-3:])
    assert (caught.value.tenant, caught.value.expected_size, caught.value.actual_size) == (
        T,
        expected_size,
        3,
    )
    assert "has size 3, not the expected" in str(caught.value)
    assert store.log_size(T) == 3
    assert [e.seq for e in store.entries(T, 0, 10)] == [0, 1, 2]
    assert b.stored_node_count(store) == len(b.all_nodes(leaves[:3]))


def test_append_with_another_origin_is_refused(store: LogStore) -> None:
    _append(store, _leaves(1), [1])
    with pytest.raises(StoreError, match="has origin") as caught:
        store.append_batch(T, "elsewhere/tenants/brightsmile", 1, [], [])
    assert not isinstance(caught.value, StoreConflict)
    assert store.origin(T) == ORIGIN


def test_concurrent_writers_exactly_one_wins(store: LogStore) -> None:
    """Eight writers race to extend the same size: the fence lets exactly one through."""
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def writer(k: int) -> None:
        leaves = _leaves(3, tag=f"w{k}-")
        tree = merkle.CompactRange()
        nodes = [n for leaf in leaves for n in tree.append(merkle.leaf_hash(leaf))]
        start.wait()
        try:
            store.append_batch(T, ORIGIN, 0, [(leaf, None) for leaf in leaves], nodes)
            outcomes.append(f"won {k}")
        except StoreConflict:
            outcomes.append("fenced")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("fenced") == 7
    winner = int(winners[0].split()[1])
    assert [e.leaf for e in store.entries(T, 0, 10)] == _leaves(3, tag=f"w{winner}-")
    assert b.stored_node_count(store) == len(b.all_nodes(_leaves(3)))


def test_missing_node_is_named(store: LogStore) -> None:
    _append(store, _leaves(7), [7])
    with pytest.raises(StoreError, match=r"no tree node \(level 0, index 7\)"):
        store.nodes(T, [NodeId(0, 6), NodeId(0, 7), NodeId(3, 0)])
    with pytest.raises(StoreError, match="no tree node"):
        store.root(T, 8)  # beyond the log
    assert store.nodes(T, []) == {}


def test_proofs_from_the_store_equal_merkle_and_verify(store: LogStore) -> None:
    leaves = _leaves(21)
    _append(store, leaves, [3, 1, 9, 8])
    for size in range(1, 22):
        root = store.root(T, size)
        assert root == merkle.root(leaves[:size])
        for index in range(size):
            proof = store.inclusion_proof(T, index, size)
            assert proof == merkle.inclusion_proof(leaves[:size], index)
            assert merkle.verify_inclusion(
                merkle.leaf_hash(leaves[index]), index, size, proof, root
            )
        for old in range(1, size + 1):
            proof = store.consistency_proof(T, old, size)
            assert proof == merkle.consistency_proof(leaves[:size], old)
            assert merkle.verify_consistency(old, size, store.root(T, old), root, proof)
    with pytest.raises(ValueError, match="index < size"):
        store.inclusion_proof(T, 21, 21)


@contextmanager
def _statements(store: LogStore) -> Iterator[list[tuple[str, Any]]]:
    """Record every SQL statement (and its parameters) the store runs inside the block."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)


def _uses_primary_key_only(store: LogStore, statement: str, params: Any) -> bool:
    """Whether the database answers ``statement`` by primary-key lookups, without a scan."""
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            explained = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
            plan = [row[-1] for row in explained]
            lookups = [p for p in plan if "audit_nodes" in p]
            # e.g. "SEARCH audit_nodes USING INDEX sqlite_autoindex_audit_nodes_1 (tenant=? AND
            # node=?)": an index search on the whole key, once per listed node.
            return bool(lookups) and all(
                p.startswith("SEARCH") and "(tenant=? AND node=?)" in p for p in lookups
            )
        # Forbid sequential scans: a plan that still has one cannot use the index at all.
        conn.exec_driver_sql("SET enable_seqscan = off")
        text = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", params))
        return "Seq Scan" not in text and "audit_nodes_pkey" in text


def test_a_proof_is_one_query_for_o_log_n_nodes_by_primary_key(store: LogStore) -> None:
    n = 3001
    leaves = [b"leaf %d" % i for i in range(n)]
    _append(store, leaves, [1000, 1000, 1001])
    bound = 2 * math.ceil(math.log2(n))
    root = store.root(T, n)
    for index, size, old in [(0, n, 1), (1234, n, 1500), (2999, 3000, 2047), (n - 1, n, n - 1)]:
        for kind in ("inclusion", "consistency", "root"):
            with _statements(store) as seen:
                if kind == "inclusion":
                    store.inclusion_proof(T, index, size)
                elif kind == "consistency":
                    store.consistency_proof(T, old, size)
                else:
                    store.root(T, size)
            assert len(seen) == 1, f"{kind} proof ran {len(seen)} statements"
            statement, params = seen[0]
            nodes = len(params) - 1  # the tenant, then one key per node
            assert 1 <= nodes <= bound + 1, f"{kind} read {nodes} nodes"
            assert _uses_primary_key_only(store, statement, params), f"{kind}: {statement}"
    proof = store.inclusion_proof(T, 1234, n)
    assert merkle.verify_inclusion(merkle.leaf_hash(leaves[1234]), 1234, n, proof, root)


def test_checkpoints_round_trip(store: LogStore) -> None:
    leaves = _leaves(6)
    _append(store, leaves, [6])
    berlin = timezone(timedelta(hours=2))
    for size in (2, 4, 6):
        at = datetime(2026, 3, 3, 19, size, 1, 123456, tzinfo=berlin)
        store.add_checkpoint(T, size, store.root(T, size), b"note %d" % size, at)
    store.add_checkpoint(T, 4, store.root(T, 4), b"a second note", START_AT)  # kept as it was
    expected = [
        StoredCheckpoint(
            size,
            merkle.root(leaves[:size]),
            b"note %d" % size,
            datetime(2026, 3, 3, 17, size, 1, 123456, tzinfo=UTC),
        )
        for size in (2, 4, 6)
    ]
    got = store.checkpoints(T)
    assert got == expected
    assert all(c.at.utcoffset() == timedelta(0) for c in got)
    assert store.checkpoints(T, after_size=2) == expected[1:]
    assert store.checkpoints(T, after_size=0, limit=1) == expected[:1]
    assert store.latest_checkpoint(T) == expected[-1]
    with pytest.raises(StoreError, match="whose log has 6 leaves"):
        store.add_checkpoint(T, 7, bytes(32), b"n", START_AT)
    with pytest.raises(StoreError, match="whose log has 0 leaves"):
        store.add_checkpoint("nobody", 0, merkle.EMPTY_ROOT, b"n", START_AT)


def test_erasing_a_payload_keeps_leaf_and_proofs(store: LogStore) -> None:
    leaves = _leaves(5)
    payload = b'{"data":{"to":"+15550101234"},"salt":"..."}'
    _append(store, leaves, [2, 3], payloads={3: payload})
    root = store.root(T, 5)
    proof = store.inclusion_proof(T, 3, 5)
    assert store.entries(T, 3, 4) == [StoredEntry(3, leaves[3], payload, erased=False)]
    assert store.erase_personal(T, 3) is True
    assert store.erase_personal(T, 3) is False  # already gone
    assert store.erase_personal(T, 2) is False  # never had one
    assert store.entries(T, 2, 5) == [
        StoredEntry(2, leaves[2], None, erased=False),
        StoredEntry(3, leaves[3], None, erased=True),
        StoredEntry(4, leaves[4], None, erased=False),
    ]
    assert store.root(T, 5) == root == merkle.root(leaves)
    assert store.inclusion_proof(T, 3, 5) == proof
    assert merkle.verify_inclusion(merkle.leaf_hash(leaves[3]), 3, 5, proof, root)


def test_sqlite_connections_are_durable(tmp_path: Path) -> None:
    opened = b.StoreUrl("sqlite", f"sqlite:///{tmp_path / 'audit.db'}").open()
    try:
        with opened.engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        opened.close()
    expected = {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 10_000}
    assert pragma == expected


def test_sqlite_creates_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "data" / "deeper" / "audit.db"
    opened = LogStore.from_url(f"sqlite:///{path}")
    try:
        opened.create_schema()
    finally:
        opened.close()
    assert path.is_file()


@pytest.mark.parametrize(
    ("url", "schema", "message"),
    [
        ("sqlite://", None, "in memory"),
        ("sqlite:///:memory:", None, "in memory"),
        ("sqlite:////tmp/x.db", "s", "a database schema is for PostgreSQL"),
        ("mysql://root@localhost/db", None, "SQLite and PostgreSQL"),
    ],
)
def test_from_url_refuses_what_it_cannot_make_durable(
    url: str, schema: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        LogStore.from_url(url, schema=schema)
