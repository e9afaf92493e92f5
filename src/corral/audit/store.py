"""Storage of per-tenant audit logs through SQLAlchemy Core: SQLite (default) and PostgreSQL.

Each tenant has one log, a Merkle tree of RFC 6962 leaves. The store keeps, per tenant:

* ``audit_logs`` — the log's origin and size; the size is the fencing token of the single
  writer (an append names the size it expects and changes nothing if another writer moved it);
* ``audit_entries`` — the leaves (never changed once written) and whether one had a personal
  payload; ``audit_personal`` — those payloads, kept apart so that erasing one (a data-deletion
  request) deletes a row and leaves every leaf, proof and checkpoint unchanged;
* ``audit_nodes`` — every complete subtree hash (level 0: leaf hashes), so that an append
  writes O(log n) rows at worst (:class:`~corral.audit.merkle.CompactRange`) and a root,
  inclusion or consistency proof for any size reads O(log n) rows by primary key in one query
  (``merkle.*_plan`` says which, ``merkle.*_from_nodes`` folds them);
* ``audit_checkpoints`` — signed c2sp.org/tlog-checkpoint notes.

Durability: every write is one transaction. SQLite runs with ``journal_mode=WAL`` and
``synchronous=FULL`` (each commit fsyncs the WAL); PostgreSQL commits with its default
``synchronous_commit=on``. The sequencer (:mod:`corral.audit.log`) acknowledges an append only
after :meth:`LogStore.append_batch` returned.

>>> import tempfile
>>> from corral.audit import merkle
>>> store = LogStore.from_url(f"sqlite:///{tempfile.mkdtemp()}/audit.db")
>>> store.create_schema()
>>> tree = merkle.CompactRange()
>>> nodes = [n for leaf in (b"a", b"b", b"c") for n in tree.append(merkle.leaf_hash(leaf))]
>>> store.append_batch("t1", "corral.local/tenants/t1", 0, [(b"a", None), (b"b", None),
...                    (b"c", b'{"data":{}}')], nodes)
>>> store.log_size("t1"), store.root("t1", 3) == merkle.root([b"a", b"b", b"c"])
(3, True)
>>> store.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from corral.audit import merkle
from corral.audit.merkle import NodeId
from corral.core.db import UtcDateTime, connected, create_tables, open_engine
from corral.core.errors import ConfigError, StoreError

__all__ = ["LogStore", "StoreConflict", "StoreError", "StoredCheckpoint", "StoredEntry"]

#: Node ids per SELECT: a proof plan is far below this (at most ~2 * 64), while a longer OR
#: chain would approach SQLite's expression-depth limit of 1000.
_NODES_PER_QUERY = 256


class StoreConflict(StoreError):
    """Another writer moved the log: the append named a size that is no longer the log's.

    Nothing of the append was written. The writer must reload the log before appending again.
    """

    def __init__(self, tenant: str, expected_size: int, actual_size: int) -> None:
        super().__init__(
            f"audit log of tenant {tenant!r} has size {actual_size}, not the expected "
            f"{expected_size}: another writer appended (fenced off)"
        )
        self.tenant = tenant
        self.expected_size = expected_size
        self.actual_size = actual_size


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One leaf; ``personal`` is its payload, None if it never had one or it was ``erased``."""

    seq: int
    leaf: bytes
    personal: bytes | None
    erased: bool


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint (``note``, a c2sp.org/signed-note) of the tree of ``size`` leaves."""

    size: int
    root: bytes
    note: bytes
    at: datetime


Batch = tuple[str, str, int, Sequence[tuple[bytes, bytes | None]], Sequence[tuple[NodeId, bytes]]]
"""One log's part of :meth:`LogStore.append_batches`: ``(tenant, origin, expected_size, leaves,
nodes)``, the arguments of :meth:`LogStore.append_batch`."""


_metadata = sa.MetaData()
_Tenant = sa.String(256)

_logs = sa.Table(
    "audit_logs",
    _metadata,
    sa.Column("tenant", _Tenant, primary_key=True),
    sa.Column("origin", sa.String(1024), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
)
_entries = sa.Table(
    "audit_entries",
    _metadata,
    sa.Column("tenant", _Tenant, sa.ForeignKey("audit_logs.tenant"), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("leaf", sa.LargeBinary, nullable=False),
    sa.Column("has_personal", sa.Boolean, nullable=False),
)
_personal = sa.Table(
    "audit_personal",
    _metadata,
    sa.Column("tenant", _Tenant, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.ForeignKeyConstraint(["tenant", "seq"], ["audit_entries.tenant", "audit_entries.seq"]),
)
_nodes = sa.Table(
    "audit_nodes",
    _metadata,
    sa.Column("tenant", _Tenant, sa.ForeignKey("audit_logs.tenant"), primary_key=True),
    # One integer per node, (level << 56) | index (see _node_key): a proof's nodes are then one
    # small "node IN (...)" query, which both databases answer from the primary key.
    sa.Column("node", sa.BigInteger, primary_key=True),
    sa.Column("hash", sa.LargeBinary, nullable=False),
)
_LEVEL_SHIFT = 56  # indexes below 2**56 (72 quadrillion leaves); levels below 2**7
_INDEX_MASK = (1 << _LEVEL_SHIFT) - 1


def _node_key(node: NodeId) -> int:
    return (node.level << _LEVEL_SHIFT) | node.index


def _node_id(key: int) -> NodeId:
    return NodeId(key >> _LEVEL_SHIFT, key & _INDEX_MASK)


class _DriverSQL:
    """The hot path's statements, written for the driver directly.

    An append's three bulk INSERTs and a proof's node SELECT run on every commit and every
    proof. Through SQLAlchemy Core they cost about 15 us per appended entry (per-row parameter
    processing: two thirds of a commit on SQLite) and about half of a proof's time (expression
    building, cache keys, expanding IN); as driver SQL with plain tuples they cost what the
    database does. The statements are built from the same Table objects, with the schema a
    PostgreSQL store was opened with, and every identifier is quoted by the dialect.
    """

    def __init__(self, engine: Engine) -> None:
        schema = (engine.get_execution_options().get("schema_translate_map") or {}).get(None)
        self._quote = engine.dialect.identifier_preparer
        self._prefix = "" if schema is None else f"{self._quote.quote_schema(schema)}."
        self._mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self.insert_entries = self._insert(_entries)
        self.insert_personal = self._insert(_personal)
        self.insert_nodes = self._insert(_nodes)
        self._select_nodes: dict[int, str] = {}
        # Once per log per commit, and once per checkpoint (thousands a second with many
        # tenants): built once here rather than compiled by Core on every call.
        q, m = self._quote.quote, self._mark
        logs = self._table(_logs)
        self.create_log = (
            f"INSERT INTO {logs} ({q('tenant')}, {q('origin')}, {q('size')}) "  # noqa: S608
            f"VALUES ({m}, {m}, 0) ON CONFLICT DO NOTHING"
        )
        self.move_size = (
            f"UPDATE {logs} SET {q('size')} = {m} WHERE {q('tenant')} = {m} "  # noqa: S608
            f"AND {q('size')} = {m} AND {q('origin')} = {m}"
        )
        self.log_row = f"SELECT {q('origin')}, {q('size')} FROM {logs} WHERE {q('tenant')} = {m}"  # noqa: S608
        self.add_checkpoint = self._insert(_checkpoints) + " ON CONFLICT DO NOTHING"
        self._time = _checkpoints.c.at.type.bind_processor(engine.dialect)

    def time(self, value: datetime) -> Any:
        return self._time(value) if self._time is not None else value

    def _table(self, table: sa.Table) -> str:
        return self._prefix + self._quote.quote(table.name)

    def _insert(self, table: sa.Table) -> str:
        columns = ", ".join(self._quote.quote(c.name) for c in table.columns)
        marks = ", ".join(self._mark for _ in table.columns)
        return f"INSERT INTO {self._table(table)} ({columns}) VALUES ({marks})"  # noqa: S608

    def select_nodes(self, count: int) -> str:
        """``SELECT node, hash`` of one tenant's ``count`` listed nodes (params: tenant, keys)."""
        sql = self._select_nodes.get(count)
        if sql is None:
            marks = ", ".join(self._mark for _ in range(count))
            sql = (
                f"SELECT node, hash FROM {self._table(_nodes)}"  # noqa: S608 - quoted names
                f" WHERE tenant = {self._mark} AND node IN ({marks})"
            )
            self._select_nodes[count] = sql
        return sql


_checkpoints = sa.Table(
    "audit_checkpoints",
    _metadata,
    sa.Column("tenant", _Tenant, sa.ForeignKey("audit_logs.tenant"), primary_key=True),
    sa.Column("size", sa.BigInteger, primary_key=True),
    sa.Column("root", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.LargeBinary, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
)


def _failed(what: str, exc: Exception) -> StoreError:
    return StoreError(f"audit store: {what} failed: {exc}")


class LogStore:
    """All per-tenant logs in one database; safe to share between threads.

    The store does no sequencing: it trusts the caller for leaf and node hashes, and only
    guarantees that an append is all-or-nothing and lands exactly at the size it expected.
    Database errors come out as :class:`StoreError` (the driver's error chained).
    """

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(f"audit store supports SQLite and PostgreSQL, not {engine.url}")
        self._engine = engine
        self._sql = _DriverSQL(engine)

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> LogStore:
        """Open ``sqlite:///path`` (parent directory created) or ``postgresql+psycopg://...``.

        ``schema`` (PostgreSQL only) puts the tables in that schema instead of the default one.
        """
        return cls(open_engine(url, what="audit store", schema=schema))

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> None:
        """Create the tables (and the PostgreSQL schema) if missing; safe to repeat."""
        with self._write("create schema") as conn:
            create_tables(conn, _metadata)

    def close(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------------- plumbing

    def _read(self, what: str) -> AbstractContextManager[Connection]:
        return connected(self._engine, lambda exc: _failed(what, exc), begin=False)

    def _write(self, what: str) -> AbstractContextManager[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        return connected(self._engine, lambda exc: _failed(what, exc), begin=True)

    # ---------------------------------------------------------------------------- reads

    def tenants(self) -> list[str]:
        with self._read("list tenants") as conn:
            return list(conn.scalars(sa.select(_logs.c.tenant).order_by(_logs.c.tenant)))

    def log_size(self, tenant: str) -> int:
        """The number of leaves in the tenant's log (0 if it has none yet)."""
        with self._read("read log size") as conn:
            size = conn.scalar(sa.select(_logs.c.size).where(_logs.c.tenant == tenant))
        return int(size or 0)

    def origin(self, tenant: str) -> str | None:
        with self._read("read origin") as conn:
            return conn.scalar(sa.select(_logs.c.origin).where(_logs.c.tenant == tenant))

    def entries(self, tenant: str, start: int, end: int) -> list[StoredEntry]:
        """Leaves ``start <= seq < end`` that exist, with their payloads, in order."""
        e, p = _entries, _personal
        query = (
            sa.select(e.c.seq, e.c.leaf, e.c.has_personal, p.c.payload)
            .select_from(e.outerjoin(p, sa.and_(p.c.tenant == e.c.tenant, p.c.seq == e.c.seq)))
            .where(e.c.tenant == tenant, e.c.seq >= start, e.c.seq < end)
            .order_by(e.c.seq)
        )
        with self._read("read entries") as conn:
            rows = conn.execute(query).all()
        return [
            StoredEntry(row.seq, row.leaf, row.payload, row.has_personal and row.payload is None)
            for row in rows
        ]

    def nodes(self, tenant: str, ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
        """The hashes of ``ids`` in one query (per 256 ids), by primary key.

        Raises :class:`StoreError` naming the first missing node: a node that should exist
        and does not means a size beyond the log or a damaged store.
        """
        found: dict[NodeId, bytes] = {}
        wanted = list(dict.fromkeys(ids))
        with self._read("read tree nodes") as conn:
            for i in range(0, len(wanted), _NODES_PER_QUERY):
                keys = [_node_key(n) for n in wanted[i : i + _NODES_PER_QUERY]]
                sql = self._sql.select_nodes(len(keys))
                for key, digest in conn.exec_driver_sql(sql, (tenant, *keys)):
                    found[_node_id(key)] = bytes(digest)
        for node in wanted:
            if node not in found:
                raise StoreError(
                    f"audit log of tenant {tenant!r} has no tree node (level {node.level}, "
                    f"index {node.index}): a size beyond the log, or a damaged store"
                )
        return found

    def checkpoints(
        self, tenant: str, after_size: int = 0, limit: int | None = None
    ) -> list[StoredCheckpoint]:
        """Checkpoints of sizes above ``after_size``, smallest first."""
        query = (
            sa.select(_checkpoints)
            .where(_checkpoints.c.tenant == tenant, _checkpoints.c.size > after_size)
            .order_by(_checkpoints.c.size)
            .limit(limit)
        )
        with self._read("read checkpoints") as conn:
            rows = conn.execute(query).all()
        return [StoredCheckpoint(r.size, r.root, r.note, r.at) for r in rows]

    def latest_checkpoint(self, tenant: str) -> StoredCheckpoint | None:
        query = (
            sa.select(_checkpoints)
            .where(_checkpoints.c.tenant == tenant)
            .order_by(_checkpoints.c.size.desc())
            .limit(1)
        )
        with self._read("read latest checkpoint") as conn:
            row = conn.execute(query).first()
        return None if row is None else StoredCheckpoint(row.size, row.root, row.note, row.at)

    # --------------------------------------------------------------------------- writes

    def append_batch(
        self,
        tenant: str,
        origin: str,
        expected_size: int,
        leaves: Sequence[tuple[bytes, bytes | None]],
        nodes: Sequence[tuple[NodeId, bytes]],
    ) -> None:
        """Append ``leaves`` (leaf bytes, personal payload or None) at ``expected_size``.

        One transaction: creates the log on first use, moves its size from ``expected_size``
        with a conditional UPDATE (the fence), then inserts entries, payloads and the new tree
        ``nodes``. Raises :class:`StoreConflict` and writes nothing if the log's size is not
        ``expected_size``; an empty ``leaves`` only creates the log and checks the size.
        """
        with self._write(f"append to the log of tenant {tenant!r}") as conn:
            self._append(conn, tenant, origin, expected_size, leaves, nodes)

    def append_batches(self, batches: Sequence[Batch]) -> None:
        """:meth:`append_batch` for several tenants' logs in one transaction (one fsync):
        all of them or, if any log's fence or write fails, none."""
        with self._write(f"append to {len(batches)} logs") as conn:
            for batch in batches:
                self._append(conn, *batch)

    def _append(
        self,
        conn: Connection,
        tenant: str,
        origin: str,
        expected_size: int,
        leaves: Sequence[tuple[bytes, bytes | None]],
        nodes: Sequence[tuple[NodeId, bytes]],
    ) -> None:
        new_size = expected_size + len(leaves)
        sql = self._sql
        conn.exec_driver_sql(sql.create_log, (tenant, origin))
        moved = conn.exec_driver_sql(sql.move_size, (new_size, tenant, expected_size, origin))
        if moved.rowcount != 1:
            found_origin, found_size = conn.exec_driver_sql(sql.log_row, (tenant,)).one()
            if found_origin != origin:
                raise StoreError(
                    f"audit log of tenant {tenant!r} has origin {found_origin!r}, not {origin!r}"
                )
            raise StoreConflict(tenant, expected_size, int(found_size))
        if leaves:
            conn.exec_driver_sql(
                sql.insert_entries,
                [
                    (tenant, expected_size + i, leaf, payload is not None)
                    for i, (leaf, payload) in enumerate(leaves)
                ],
            )
        payloads = [
            (tenant, expected_size + i, payload)
            for i, (_, payload) in enumerate(leaves)
            if payload is not None
        ]
        if payloads:
            conn.exec_driver_sql(sql.insert_personal, payloads)
        if nodes:
            rows = [(tenant, _node_key(n), h) for n, h in nodes]
            conn.exec_driver_sql(sql.insert_nodes, rows)

    def add_checkpoint(
        self, tenant: str, size: int, root: bytes, note: bytes, at: datetime
    ) -> None:
        """Store a signed checkpoint; one already stored for ``size`` is kept as it is.

        Raises :class:`StoreError` if the log is shorter than ``size`` (or does not exist).
        """
        with self._write(f"add a checkpoint to the log of tenant {tenant!r}") as conn:
            self._add_checkpoint(conn, tenant, size, root, note, at)

    def add_checkpoints(self, checkpoints: Sequence[tuple[str, StoredCheckpoint]]) -> None:
        """:meth:`add_checkpoint` for several tenants in one transaction (all or none)."""
        with self._write(f"add {len(checkpoints)} checkpoints") as conn:
            for tenant, c in checkpoints:
                self._add_checkpoint(conn, tenant, c.size, c.root, c.note, c.at)

    def _add_checkpoint(
        self, conn: Connection, tenant: str, size: int, root: bytes, note: bytes, at: datetime
    ) -> None:
        sql = self._sql
        row = conn.exec_driver_sql(sql.log_row, (tenant,)).first()
        log_size = None if row is None else int(row[1])
        if log_size is None or log_size < size:
            raise StoreError(
                f"checkpoint of size {size} for tenant {tenant!r}, whose log has "
                f"{log_size or 0} leaves"
            )
        conn.exec_driver_sql(sql.add_checkpoint, (tenant, size, root, note, sql.time(at)))

    def erase_personal(self, tenant: str, seq: int) -> bool:
        """Delete entry ``seq``'s personal payload; False if there was none (left or ever).

        The leaf (which holds only a salted commitment) stays, so proofs do not change.
        """
        with self._write(f"erase payload {seq} of tenant {tenant!r}") as conn:
            deleted = conn.execute(
                sa.delete(_personal).where(_personal.c.tenant == tenant, _personal.c.seq == seq)
            )
        return bool(deleted.rowcount)

    # ----------------------------------------------------------- proofs: plan, one read, fold

    def root(self, tenant: str, size: int) -> bytes:
        """RFC 6962 §2.1 ``MTH`` of the first ``size`` leaves of the tenant's log."""
        return merkle.root_from_nodes(size, self.nodes(tenant, merkle.root_plan(size)))

    def inclusion_proof(self, tenant: str, index: int, size: int) -> list[bytes]:
        """RFC 6962 §2.1.1 audit path for leaf ``index`` in the tree of ``size`` leaves.

        Requires ``0 <= index < size <= log size`` (``ValueError`` / :class:`StoreError`).
        """
        plan = merkle.inclusion_plan(index, size)
        return merkle.inclusion_proof_from_nodes(index, size, self.nodes(tenant, plan))

    def consistency_proof(self, tenant: str, old_size: int, new_size: int) -> list[bytes]:
        """RFC 6962 §2.1.2 proof that the tree of ``old_size`` leaves prefixes ``new_size``'s.

        Requires ``0 <= old_size <= new_size <= log size``; empty if there is nothing to prove.
        """
        plan = merkle.consistency_plan(old_size, new_size)
        nodes = self.nodes(tenant, plan)
        return merkle.consistency_proof_from_nodes(old_size, new_size, nodes)
