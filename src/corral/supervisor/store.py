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

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from corral.core.db import UtcDateTime, create_tables, open_engine
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
    """Every tenant's decided calls, on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._seq: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> LedgerStore:
        return cls(open_engine(url, what="supervisor ledger", schema=schema, explicit_begin=True))

    def create_schema(self) -> None:
        with self._write("create schema") as conn:
            create_tables(conn, _metadata)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _write(self, what: str) -> Iterator[Connection]:
        try:
            with self._engine.execution_options(sqlite_immediate=True).begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(f"supervisor ledger: {what} failed: {exc}") from exc

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
        """Record a decided call (before the decision is answered)."""
        with self._write("save a call") as conn:
            seq = self._seq.get(tenant)
            if seq is None:
                found = conn.execute(
                    sa.select(sa.func.max(calls.c.seq)).where(calls.c.tenant == tenant)
                ).scalar_one()
                seq = int(found) if found is not None else 0
            seq += 1
            conn.execute(
                calls.insert().values(
                    tenant=tenant, call_id=call_id, seq=seq, agent=agent, tool=tool,
                    args=orjson.dumps(dict(args)).decode(), at=at, verdict=verdict,
                    status=status, result=None, keep_until=keep_until,
                )
            )  # fmt: skip
            self._seq[tenant] = seq

    def update(
        self, tenant: str, call_id: str, status: str, result: Mapping[str, Any] | None = None
    ) -> None:
        """An outcome, a reconciliation or an operator's approval."""
        values: dict[str, Any] = {"status": status}
        if result is not None:
            values["result"] = orjson.dumps(dict(result)).decode()
        with self._write("update a call") as conn:
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
