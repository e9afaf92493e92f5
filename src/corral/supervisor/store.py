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
from collections.abc import Mapping
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


class _DriverSQL:
    """The two statements every decision and outcome runs, as driver SQL for ``executemany``.

    Through SQLAlchemy Core each row cost about 0.6 ms of the writer thread's CPU (expression
    building and per-row parameter processing), and that thread shares the GIL with the event
    loop answering calls. As driver SQL, a batch's rows go to one ``executemany`` with plain
    tuples, converted by the columns' own bind processors (so the stored form is the one Core
    would write and :meth:`LedgerStore.load` reads). Identifiers are quoted by the dialect, with
    the schema a PostgreSQL store was opened with, as ``corral.audit.store`` does.
    """

    _INSERTED = ("tenant", "call_id", "seq", "agent", "tool", "args", "at", "verdict", "status",
                 "keep_until")  # fmt: skip

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        schema = (engine.get_execution_options().get("schema_translate_map") or {}).get(None)
        quote = dialect.identifier_preparer
        table = ("" if schema is None else f"{quote.quote_schema(schema)}.") + quote.quote(
            calls.name
        )
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        columns = ", ".join(quote.quote(name) for name in self._INSERTED)
        marks = ", ".join(mark for _ in self._INSERTED)
        self.insert = f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608
        where = f"{quote.quote('tenant')} = {mark} AND {quote.quote('call_id')} = {mark}"
        self.update_status = f"UPDATE {table} SET {quote.quote('status')} = {mark} WHERE {where}"  # noqa: S608
        self.update_result = (
            f"UPDATE {table} SET {quote.quote('status')} = {mark}, "  # noqa: S608
            f"{quote.quote('result')} = {mark} WHERE {where}"
        )
        # Forget what no rule can read: made before the cutoff, outcome not ``unknown``, and
        # not a booking whose interval ends after it (the same test as :meth:`LedgerStore.prune`).
        at, keep = quote.quote("at"), quote.quote("keep_until")
        self.prune = (
            f"DELETE FROM {table} WHERE {quote.quote('tenant')} = {mark} AND {at} < {mark} "  # noqa: S608
            f"AND {quote.quote('status')} <> 'unknown' AND ({keep} IS NULL OR {keep} < {mark})"
        )
        at_type = calls.c.at.type
        self._time = at_type.bind_processor(dialect)

    def time(self, value: datetime | None) -> Any:
        return self._time(value) if self._time is not None else value


@dataclass(frozen=True, slots=True)
class _Write:
    """One queued row: ``sql`` with ``params`` (tenant's next seq filled in by the writer)."""

    sql: str
    params: tuple[Any, ...]
    future: Future[None]
    tenant: str | None = None


class LedgerStore:
    """Every tenant's decided calls, on SQLite or PostgreSQL.

    Writes go through one writer thread that commits whatever is queued as one transaction
    (group commit, as the audit sequencer does): :meth:`save_later` and :meth:`update_later`
    return a future that resolves once the write is durable, so a service awaits durability
    without blocking its event loop, and one fsync covers every call decided meanwhile. Writes
    commit in the order submitted; consecutive writes of one statement go to one
    ``executemany``.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sql = _DriverSQL(engine)
        self._seq: dict[str, int] = {}
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
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

    def _submit(self, write: _Write) -> Future[None]:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name="corral-ledger-writer")  # fmt: skip
                self._writer.start()
        self._queue.put(write)
        return write.future

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
            seq = dict(self._seq)
            try:
                with self._write("commit a batch") as conn:
                    self._execute(conn, batch, seq)
            except Exception as exc:
                for write in batch:
                    write.future.set_exception(exc)
            else:
                self._seq = seq
                for write in batch:
                    write.future.set_result(None)

    def _execute(self, conn: Connection, batch: list[_Write], seq: dict[str, int]) -> None:
        """Run ``batch`` in order, each run of one statement as one ``executemany``."""
        run: list[tuple[Any, ...]] = []
        sql = batch[0].sql
        for write in batch:
            if write.sql != sql:
                conn.exec_driver_sql(sql, run)
                run, sql = [], write.sql
            params = write.params
            if write.tenant is not None:
                params = (params[0], params[1], self._next_seq(conn, write.tenant, seq),
                          *params[2:])  # fmt: skip
            run.append(params)
        conn.exec_driver_sql(sql, run)

    @staticmethod
    def _next_seq(conn: Connection, tenant: str, seq: dict[str, int]) -> int:
        last = seq.get(tenant)
        if last is None:
            found = conn.execute(
                sa.select(sa.func.max(calls.c.seq)).where(calls.c.tenant == tenant)
            ).scalar_one()
            last = int(found) if found is not None else 0
        seq[tenant] = last + 1
        return last + 1

    def save_later(
        self, tenant: str, call_id: str, agent: str, tool: str, args: Mapping[str, Any],
        at: datetime, verdict: str, status: str, keep_until: datetime | None = None,
    ) -> Future[None]:  # fmt: skip
        """:meth:`save` through the group commit."""
        for moment in (at, keep_until):
            if moment is not None and moment.tzinfo is None:
                raise ValueError("refusing a naive datetime: corral times are timezone-aware")
        params = (tenant, call_id, agent, tool, orjson.dumps(dict(args)).decode(),
                  self._sql.time(at), verdict, status, self._sql.time(keep_until))  # fmt: skip
        return self._submit(_Write(self._sql.insert, params, Future(), tenant))

    def update_later(
        self, tenant: str, call_id: str, status: str, result: Mapping[str, Any] | None = None
    ) -> Future[None]:
        """:meth:`update` through the group commit."""
        if result is None:
            write = _Write(self._sql.update_status, (status, tenant, call_id), Future())
        else:
            text = orjson.dumps(dict(result)).decode()
            write = _Write(self._sql.update_result, (status, text, tenant, call_id), Future())
        return self._submit(write)

    def prune_later(self, tenant: str, before: datetime) -> Future[None]:
        """:meth:`prune` through the group commit, behind every write queued before it."""
        if before.tzinfo is None:
            raise ValueError("refusing a naive datetime: corral times are timezone-aware")
        cutoff = self._sql.time(before)
        return self._submit(_Write(self._sql.prune, (tenant, cutoff, cutoff), Future()))

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

    def update(
        self, tenant: str, call_id: str, status: str, result: Mapping[str, Any] | None = None
    ) -> None:
        """An outcome, a reconciliation or an operator's approval, now."""
        self.update_later(tenant, call_id, status, result).result()

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
