"""The supervisor's durable ledger: every decided call, so a restart loses no live call.

Each decision is written (one row per call: who, what tool, the arguments as given, when, the
verdict, its status) **before** the service answers, and each outcome or operator decision
updates that row. At start, :meth:`LedgerStore.load` returns a tenant's calls of the recent past
and :meth:`~corral.supervisor.classifier.TenantSupervisor.restore` rebuilds the in-memory
indexes from them: the stored verdicts and statuses are authoritative, nothing is classified
again. Rows older than the rules' longest window (24 h), whose calls can no longer matter,
are pruned, except bookings whose interval has not ended and calls whose outcome is
``unknown`` (``unknown_outcome`` has no time window).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from corral.core.db import UtcDateTime, connected, create_tables, open_engine
from corral.core.errors import CorralError

_metadata = sa.MetaData()
_Id = sa.String(256)

calls = sa.Table(
    "supervisor_calls",
    _metadata,
    sa.Column("tenant", _Id, primary_key=True),
    sa.Column("call_id", _Id, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("agent", _Id, nullable=False),
    sa.Column("tool", sa.String(128), nullable=False),
    sa.Column("args", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("keep_until", UtcDateTime, nullable=True),
    sa.Index("supervisor_calls_by_time", "tenant", "at"),
)


class LedgerStoreError(CorralError):
    """The supervisor's database refused or failed an operation."""


@dataclass(frozen=True, slots=True)
class StoredCall:
    call_id: str
    agent: str
    tool: str
    args: dict[str, Any]
    at: datetime
    verdict: str
    status: str
    result: dict[str, Any]


class LedgerStore:
    """Every tenant's decided calls, on SQLite or PostgreSQL.

    Writes go through one writer thread that commits whatever is queued as one transaction
    (group commit, as the audit sequencer does): :meth:`submit` returns a future that resolves
    once the write is durable, so a service awaits durability without blocking its event loop,
    and one fsync covers every call decided meanwhile. Writes commit in the order submitted.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._seq: dict[str, int] = {}
        self._queue: queue.SimpleQueue[tuple[Callable[[Connection], None], Future[None]] | None]
        self._queue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> LedgerStore:
        return cls(open_engine(url, what="supervisor ledger", schema=schema, explicit_begin=True))

    def create_schema(self) -> None:
        with self._write("create schema") as conn:
            create_tables(conn, _metadata)

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._engine.dispose()

    # --------------------------------------------------------------- group commit

    def submit(self, write: Callable[[Connection], None]) -> Future[None]:
        """Queue ``write`` (run inside the next batch's transaction); the future resolves when
        that transaction committed, or fails with the batch's error."""
        future: Future[None] = Future()
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name="corral-ledger-writer")  # fmt: skip
                self._writer.start()
        self._queue.put((write, future))
        return future

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 4096:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            try:
                with self._write("commit a batch") as conn:
                    for write, _future in batch:
                        write(conn)
            except Exception as exc:
                for _write, future in batch:
                    future.set_exception(exc)
            else:
                for _write, future in batch:
                    future.set_result(None)

    def save_later(
        self, tenant: str, call_id: str, agent: str, tool: str, args: Mapping[str, Any],
        at: datetime, verdict: str, status: str, keep_until: datetime | None = None,
    ) -> Future[None]:  # fmt: skip
        """:meth:`save` through the group commit."""
        text = orjson.dumps(dict(args)).decode()

        def write(conn: Connection) -> None:
            self._insert(conn, tenant, call_id, agent, tool, text, at, verdict, status, keep_until)

        return self.submit(write)

    def update_later(
        self, tenant: str, call_id: str, status: str, result: Mapping[str, Any] | None = None
    ) -> Future[None]:
        """:meth:`update` through the group commit."""
        values = self._update_values(status, result)
        return self.submit(lambda conn: self._update(conn, tenant, call_id, values))

    def _write(self, what: str) -> AbstractContextManager[Connection]:
        def fail(exc: Exception) -> LedgerStoreError:
            return LedgerStoreError(f"supervisor ledger: {what} failed: {exc}")

        return connected(self._engine.execution_options(sqlite_immediate=True), fail, begin=True)

    def save(
        self,
        tenant: str,
        call_id: str,
        agent: str,
        tool: str,
        args: Mapping[str, Any],
        at: datetime,
        verdict: str,
        status: str,
        keep_until: datetime | None = None,
    ) -> None:
        """Record a decided call now (before the decision is answered)."""
        self.save_later(tenant, call_id, agent, tool, args, at, verdict, status,
                        keep_until).result()  # fmt: skip

    def _insert(
        self, conn: Connection, tenant: str, call_id: str, agent: str, tool: str, args: str,
        at: datetime, verdict: str, status: str, keep_until: datetime | None,
    ) -> None:  # fmt: skip
        seq = self._seq.get(tenant)
        if seq is None:
            found = conn.execute(
                sa.select(sa.func.max(calls.c.seq)).where(calls.c.tenant == tenant)
            ).scalar_one()
            seq = int(found) if found is not None else 0
        conn.execute(
            calls.insert().values(
                tenant=tenant, call_id=call_id, seq=seq + 1, agent=agent, tool=tool, args=args,
                at=at, verdict=verdict, status=status, result=None, keep_until=keep_until,
            )
        )  # fmt: skip
        self._seq[tenant] = seq + 1

    def update(
        self, tenant: str, call_id: str, status: str, result: Mapping[str, Any] | None = None
    ) -> None:
        """An outcome, a reconciliation or an operator's approval, now."""
        self.update_later(tenant, call_id, status, result).result()

    @staticmethod
    def _update_values(status: str, result: Mapping[str, Any] | None) -> dict[str, Any]:
        values: dict[str, Any] = {"status": status}
        if result is not None:
            values["result"] = orjson.dumps(dict(result)).decode()
        return values

    @staticmethod
    def _update(conn: Connection, tenant: str, call_id: str, values: dict[str, Any]) -> None:
        conn.execute(
            calls.update()
            .where(calls.c.tenant == tenant, calls.c.call_id == call_id)
            .values(**values)
        )

    def tenants(self) -> list[str]:
        with self._engine.connect() as conn:
            return list(conn.execute(sa.select(calls.c.tenant).distinct()).scalars())

    def load(self, tenant: str) -> list[StoredCall]:
        """The tenant's calls in the order they were decided."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                calls.select().where(calls.c.tenant == tenant).order_by(calls.c.seq)
            )
            return [
                StoredCall(
                    call_id=row.call_id, agent=row.agent, tool=row.tool,
                    args=orjson.loads(row.args), at=row.at, verdict=row.verdict,
                    status=row.status, result=orjson.loads(row.result) if row.result else {},
                )
                for row in rows
            ]  # fmt: skip

    def prune(self, tenant: str, before: datetime) -> int:
        """Forget calls made before ``before`` that no rule can still read."""
        with self._write("prune") as conn:
            gone = conn.execute(
                calls.delete().where(
                    calls.c.tenant == tenant,
                    calls.c.at < before,
                    calls.c.status != "unknown",
                    sa.or_(calls.c.keep_until.is_(None), calls.c.keep_until < before),
                )
            )
        return int(gone.rowcount)
