"""Where the append benchmarks write: fresh SQLite files or fresh PostgreSQL schemas (dropped
afterwards), through a :class:`~corral.audit.store.LogStore` or through the driver alone."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import sqlalchemy as sa

from benchmarks._common import POSTGRES_URL
from corral.audit.store import LogStore


class Backend:
    """Where the stores live: fresh SQLite files, or fresh PostgreSQL schemas."""

    def __init__(self, name: str, workdir: Path, postgres_url: str | None = None) -> None:
        self.name = name
        self._workdir = workdir
        self._postgres_url = postgres_url
        self._counter = 0

    @contextmanager
    def store(self) -> Iterator[LogStore]:
        """A new, empty store, closed (and for PostgreSQL dropped) afterwards."""
        self._counter += 1
        if self._postgres_url is None:
            store = LogStore.from_url(f"sqlite:///{self._workdir / f'appends-{self._counter}.db'}")
            store.create_schema()
            try:
                yield store
            finally:
                store.close()
            return
        with _postgres_schema(self._postgres_url) as schema:
            store = LogStore.from_url(self._postgres_url, schema=schema)
            store.create_schema()
            try:
                yield store
            finally:
                store.close()

    def raw_writer(self) -> RawWriter:
        self._counter += 1
        if self._postgres_url is None:
            return _RawSqlite(self._workdir / f"raw-{self._counter}.db")
        return _RawPostgres(self._postgres_url)


def postgres_problem(url: str = POSTGRES_URL) -> str | None:
    """Why PostgreSQL cannot be used (None if it can), and its version on success."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as exc:
        return f"cannot connect to {url}: {getattr(exc, 'orig', exc)}".strip()
    finally:
        engine.dispose()
    return None


def postgres_version(url: str = POSTGRES_URL) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


@contextmanager
def _postgres_schema(url: str) -> Iterator[str]:
    schema = f"corral_bench_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


class RawWriter:
    """The cost floor: one table of (seq, leaf), ``write`` = one transaction of rows."""

    def write(self, rows: list[tuple[int, bytes]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _RawSqlite(RawWriter):
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE leaves (seq INTEGER PRIMARY KEY, leaf BLOB NOT NULL)")

    def write(self, rows: list[tuple[int, bytes]]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO leaves VALUES (?, ?)", rows)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class _RawPostgres(RawWriter):
    def __init__(self, url: str) -> None:
        self._schema = f"corral_bench_raw_{uuid.uuid4().hex[:12]}"
        dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._db = psycopg.connect(dsn)
        self._db.execute(f'CREATE SCHEMA "{self._schema}"')
        self._db.execute(
            f'CREATE TABLE "{self._schema}".leaves (seq BIGINT PRIMARY KEY, leaf BYTEA NOT NULL)'
        )
        self._db.commit()

    def write(self, rows: list[tuple[int, bytes]]) -> None:
        with self._db.cursor() as cur:
            cur.executemany(f'INSERT INTO "{self._schema}".leaves VALUES (%s, %s)', rows)
        self._db.commit()

    def close(self) -> None:
        self._db.execute(f'DROP SCHEMA "{self._schema}" CASCADE')
        self._db.commit()
        self._db.close()
