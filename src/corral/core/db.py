"""One way to open a corral database: an SQLite file by default, PostgreSQL at scale.

The audit store and the broker store each own their tables; what they share is here: the
engine (SQLite in WAL mode with an fsync per commit, foreign keys and a busy timeout;
PostgreSQL with pre-ping and an optional schema of its own), aware UTC datetimes on both, and
creating the tables (and the schema) idempotently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from corral.core.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite keeps no offset: stored and read as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("refusing a naive datetime: corral times are timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per connection: WAL + fsync on every commit (durable acks), foreign keys, wait on locks."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_manual_begin(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own implicit BEGIN off: _sqlite_begin decides how each transaction starts.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def open_engine(
    url: str, *, what: str, schema: str | None = None, explicit_begin: bool = False
) -> Engine:
    """An engine for ``sqlite:///path`` (parent directory created, mode 0700) or PostgreSQL.

    ``schema`` (PostgreSQL only) puts the tables in that schema. ``explicit_begin`` (SQLite)
    lets connections with the execution option ``sqlite_immediate=True`` start with ``BEGIN
    IMMEDIATE``: a writer then takes the write lock up front instead of failing with
    SQLITE_BUSY when its read transaction tries to upgrade while another writer commits, and
    SAVEPOINTs work. Several writer threads or processes need it; a single writer does not.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ConfigError(f"the {what} needs an SQLite file: in memory is not durable")
        if schema is not None:
            raise ConfigError("a database schema is for PostgreSQL; SQLite has one per file")
        Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = sa.create_engine(parsed)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        if explicit_begin:
            sa.event.listen(engine, "connect", _sqlite_manual_begin)
            sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # pre_ping: a connection dropped by a server restart or failover is replaced on
        # checkout instead of failing the next transaction.
        engine = sa.create_engine(parsed, pool_pre_ping=True, pool_size=20, max_overflow=20)
        if schema is not None:
            engine = engine.execution_options(schema_translate_map={None: schema})
        return engine
    raise ConfigError(f"the {what} supports SQLite and PostgreSQL, not {url!r}")


@contextmanager
def connected(
    engine: Engine, fail: Callable[[sa.exc.SQLAlchemyError], Exception], *, begin: bool
) -> Iterator[Connection]:
    """A connection (with ``begin``: one transaction, committed when the block ends, rolled back
    if it raises); a database error comes out as the store's own error, ``fail(exc)``, with the
    driver's error chained. Each store says in ``fail`` how much of the driver's text it
    shows."""
    try:
        with engine.begin() if begin else engine.connect() as conn:
            yield conn
    except sa.exc.SQLAlchemyError as exc:
        raise fail(exc) from exc


def create_tables(conn: Connection, metadata: sa.MetaData) -> None:
    """Create ``metadata``'s tables (and the connection's PostgreSQL schema) if missing."""
    schema = conn.get_execution_options().get("schema_translate_map", {}).get(None)
    if schema is not None:
        conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
    metadata.create_all(conn)
