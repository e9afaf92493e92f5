"""Where activations live: SQLAlchemy Core tables on SQLite or PostgreSQL.

``template_activations`` holds one row per activation (one per tenant and template): the pinned
version string, its content hash, whether the last change was automatic, a revision counter,
and the ``template.activated`` audit entry that put this version in force, as its RFC 8785
bytes. ``template_activation_history`` gets one row per change and is append-only: triggers
on both databases refuse UPDATE, DELETE (and on PostgreSQL TRUNCATE), so the record of who
ran which version when cannot be rewritten through corral or by a slip in a SQL console.
``template_notices`` holds one row per activation and sunset date that notice was given of
(:mod:`corral.templates.maintenance`), with its ``template.notice`` audit entry: the notice is
given once per date, not once per round.

Every row is checked when read (valid version, an entry that parses and agrees with the
columns): a corrupted row raises :class:`CorruptActivation` naming the table and the row, and
a write transaction that meets one changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from corral.audit.entries import (
    Entry,
    EntryError,
    TemplateActivated,
    TemplateNotice,
    parse_entry,
)
from corral.core.db import UtcDateTime, connected, create_tables, open_engine
from corral.templates.version import TemplateError, Version, VersionError

__all__ = [
    "Activation",
    "ActivationConflict",
    "ActivationStore",
    "ActivationStoreError",
    "Change",
    "CorruptActivation",
    "HistoryRecord",
    "NoticeRecord",
]

_metadata = sa.MetaData()
_Id = sa.String(256)

activations_table = sa.Table(
    "template_activations",
    _metadata,
    sa.Column("activation_id", _Id, primary_key=True),
    sa.Column("tenant", _Id, nullable=False),
    sa.Column("template", _Id, nullable=False),
    sa.Column("version", _Id, nullable=False),
    sa.Column("content_hash", sa.String(128), nullable=False),
    sa.Column("automatic", sa.Boolean, nullable=False),
    sa.Column("activated_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),
    sa.UniqueConstraint("tenant", "template", name="template_activations_one_per_template"),
)

history_table = sa.Table(
    "template_activation_history",
    _metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("activation_id", _Id, nullable=False),
    sa.Column("tenant", _Id, nullable=False),
    sa.Column("template", _Id, nullable=False),
    sa.Column("from_version", _Id, nullable=True),
    sa.Column("version", _Id, nullable=False),
    sa.Column("content_hash", sa.String(128), nullable=False),
    sa.Column("automatic", sa.Boolean, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),
    sa.Index("template_activation_history_by_tenant", "tenant", "activation_id", "seq"),
)

notices_table = sa.Table(
    "template_notices",
    _metadata,
    sa.Column("activation_id", _Id, primary_key=True),
    sa.Column("sunset_at", UtcDateTime, primary_key=True),
    sa.Column("tenant", _Id, nullable=False),
    sa.Column("template", _Id, nullable=False),
    sa.Column("version", _Id, nullable=False),
    sa.Column("notice", sa.String(32), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),
)

_SQLITE_APPEND_ONLY = [
    f"""CREATE TRIGGER IF NOT EXISTS template_activation_history_no_{op.lower()}
    BEFORE {op} ON template_activation_history
    BEGIN SELECT RAISE(ABORT, 'template_activation_history is append-only: {op} refused'); END"""
    for op in ("UPDATE", "DELETE")
]


class ActivationStoreError(TemplateError):
    """The activation database refused or failed an operation."""


class CorruptActivation(ActivationStoreError):
    """A stored row that cannot be what corral wrote; ``table`` and ``row`` name it."""

    def __init__(self, table: str, row: str, problem: str) -> None:
        super().__init__(f"{table} row {row}: {problem}")
        self.table = table
        self.row = row


class ActivationConflict(ActivationStoreError):
    """Another writer changed the activation first; nothing was written. Read and try again."""


@dataclass(frozen=True)
class Activation:
    """A tenant pinned to one exact version of one template."""

    activation_id: str
    tenant: str
    template: str
    version: str
    content_hash: str
    automatic: bool
    """The current version was applied automatically (a security patch)."""
    activated_at: datetime
    updated_at: datetime
    revision: int
    entry: TemplateActivated
    """The audit entry that put the current version in force."""

    @property
    def semver(self) -> Version:
        return Version.parse(self.version)


@dataclass(frozen=True)
class HistoryRecord:
    """One change of one activation: its first version, or an upgrade."""

    seq: int
    activation_id: str
    tenant: str
    template: str
    from_version: str | None
    version: str
    content_hash: str
    automatic: bool
    at: datetime
    entry: TemplateActivated


@dataclass(frozen=True)
class NoticeRecord:
    """Notice given, once, that an activation's version sunsets (or has sunset) at
    ``sunset_at``."""

    activation_id: str
    tenant: str
    template: str
    version: str
    notice: str
    """``sunsetting`` (given before the date) or ``sunset`` (given after it)."""
    sunset_at: datetime
    at: datetime
    entry: TemplateNotice
    """The ``template.notice`` audit entry that gave it."""


def _parsed(table: str, row: str, text: Any) -> Entry:
    if not isinstance(text, str):
        raise CorruptActivation(table, row, "entry is not text")
    try:
        return parse_entry(text.encode("utf-8"))
    except (EntryError, UnicodeError) as exc:
        raise CorruptActivation(table, row, f"entry is not a valid audit entry: {exc}") from None


def _entry(table: str, row: str, text: Any) -> TemplateActivated:
    entry = _parsed(table, row, text)
    if not isinstance(entry, TemplateActivated):
        raise CorruptActivation(table, row, f"entry is a {entry.kind!r}, not template.activated")
    return entry


def _check(table: str, row: str, entry: TemplateActivated, **columns: Any) -> None:
    """The entry must say what the row's columns say: either one changed means corruption."""
    try:
        Version.parse(columns["version"])
    except VersionError as exc:
        raise CorruptActivation(table, row, f"version: {exc}") from None
    said = {"tenant": entry.tenant, **entry.data.model_dump()}
    for key, value in columns.items():
        if said[key] != value:
            raise CorruptActivation(
                table, row, f"{key} is {value!r} but its audit entry {entry.id} says {said[key]!r}"
            )


def _activation(row: sa.Row[Any]) -> Activation:
    name = f"{row.activation_id!r} (tenant {row.tenant!r})"
    entry = _entry("template_activations", name, row.entry)
    _check(
        "template_activations",
        name,
        entry,
        tenant=row.tenant,
        activation_id=row.activation_id,
        template=row.template,
        version=row.version,
        content_hash=row.content_hash,
        automatic=row.automatic,
    )
    return Activation(
        activation_id=row.activation_id,
        tenant=row.tenant,
        template=row.template,
        version=row.version,
        content_hash=row.content_hash,
        automatic=row.automatic,
        activated_at=row.activated_at,
        updated_at=row.updated_at,
        revision=row.revision,
        entry=entry,
    )


def _record(row: sa.Row[Any]) -> HistoryRecord:
    name = f"seq {row.seq} (activation {row.activation_id!r})"
    entry = _entry("template_activation_history", name, row.entry)
    _check(
        "template_activation_history",
        name,
        entry,
        tenant=row.tenant,
        activation_id=row.activation_id,
        template=row.template,
        version=row.version,
        content_hash=row.content_hash,
        automatic=row.automatic,
    )
    return HistoryRecord(
        seq=row.seq,
        activation_id=row.activation_id,
        tenant=row.tenant,
        template=row.template,
        from_version=row.from_version,
        version=row.version,
        content_hash=row.content_hash,
        automatic=row.automatic,
        at=row.at,
        entry=entry,
    )


def _notice(row: sa.Row[Any]) -> NoticeRecord:
    name = f"{row.activation_id!r} (tenant {row.tenant!r}, sunset_at {row.sunset_at})"
    entry = _parsed("template_notices", name, row.entry)
    if not isinstance(entry, TemplateNotice):
        raise CorruptActivation(
            "template_notices", name, f"entry is a {entry.kind!r}, not template.notice"
        )
    data = entry.data
    said = {
        "tenant": entry.tenant,
        "activation_id": data.activation_id,
        "template": data.template,
        "version": data.version,
        "notice": data.notice,
        "sunset_at": data.sunset_at,
    }
    columns = {
        "tenant": row.tenant,
        "activation_id": row.activation_id,
        "template": row.template,
        "version": row.version,
        "notice": row.notice,
        "sunset_at": row.sunset_at,
    }
    for key, value in columns.items():
        if said[key] != value:
            raise CorruptActivation(
                "template_notices",
                name,
                f"{key} is {value!r} but its audit entry {entry.id} says {said[key]!r}",
            )
    return NoticeRecord(
        activation_id=row.activation_id,
        tenant=row.tenant,
        template=row.template,
        version=row.version,
        notice=row.notice,
        sunset_at=row.sunset_at,
        at=row.at,
        entry=entry,
    )


def _row(activation: Activation) -> dict[str, Any]:
    return {
        "activation_id": activation.activation_id,
        "tenant": activation.tenant,
        "template": activation.template,
        "version": activation.version,
        "content_hash": activation.content_hash,
        "automatic": activation.automatic,
        "activated_at": activation.activated_at,
        "updated_at": activation.updated_at,
        "revision": activation.revision,
        "entry": activation.entry.leaf().decode("utf-8"),
    }


class Change:
    """One write transaction (see :meth:`ActivationStore.change`); rows read here are locked."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _one(self, *where: sa.ColumnElement[bool]) -> Activation | None:
        query = activations_table.select().where(*where)
        if self._conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = self._conn.execute(query).one_or_none()
        return None if row is None else _activation(row)

    def get(self, activation_id: str) -> Activation | None:
        return self._one(activations_table.c.activation_id == activation_id)

    def find(self, tenant: str, template: str) -> Activation | None:
        """The tenant's activation of ``template``, if it has one."""
        return self._one(
            activations_table.c.tenant == tenant, activations_table.c.template == template
        )

    def insert(self, activation: Activation) -> None:
        """A new activation, and its first history record."""
        try:
            self._conn.execute(activations_table.insert().values(_row(activation)))
        except sa.exc.IntegrityError:
            raise ActivationConflict(
                f"tenant {activation.tenant!r} already has an activation of "
                f"{activation.template!r} (or id {activation.activation_id!r} is taken)"
            ) from None
        self._history(activation, None)

    def replace(self, old: Activation, new: Activation) -> None:
        """Move ``old`` to ``new`` (``new.revision`` must be ``old.revision + 1``)."""
        assert new.activation_id == old.activation_id and new.revision == old.revision + 1
        done = self._conn.execute(
            activations_table.update()
            .where(
                activations_table.c.activation_id == old.activation_id,
                activations_table.c.revision == old.revision,
            )
            .values(_row(new))
        )
        if done.rowcount != 1:
            raise ActivationConflict(
                f"activation {old.activation_id!r} changed while this change was decided"
            )
        self._history(new, old.version)

    def notice(self, activation_id: str, sunset_at: datetime) -> NoticeRecord | None:
        """The notice already given of the activation's sunset at ``sunset_at``, if any."""
        query = notices_table.select().where(
            notices_table.c.activation_id == activation_id,
            notices_table.c.sunset_at == sunset_at,
        )
        row = self._conn.execute(query).one_or_none()
        return None if row is None else _notice(row)

    def insert_notice(self, record: NoticeRecord) -> None:
        """Record that notice was given; one given meanwhile is :class:`ActivationConflict`."""
        try:
            self._conn.execute(
                notices_table.insert().values(
                    activation_id=record.activation_id,
                    sunset_at=record.sunset_at,
                    tenant=record.tenant,
                    template=record.template,
                    version=record.version,
                    notice=record.notice,
                    at=record.at,
                    entry=record.entry.leaf().decode("utf-8"),
                )
            )
        except sa.exc.IntegrityError:
            raise ActivationConflict(
                f"notice of activation {record.activation_id!r}'s sunset at "
                f"{record.sunset_at} was already given"
            ) from None

    def _history(self, activation: Activation, from_version: str | None) -> None:
        self._conn.execute(
            history_table.insert().values(
                activation_id=activation.activation_id,
                tenant=activation.tenant,
                template=activation.template,
                from_version=from_version,
                version=activation.version,
                content_hash=activation.content_hash,
                automatic=activation.automatic,
                at=activation.updated_at,
                entry=activation.entry.leaf().decode("utf-8"),
            )
        )


class ActivationStore:
    """Every tenant's activations and their history, on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> ActivationStore:
        engine = open_engine(
            url, what="template activation store", schema=schema, explicit_begin=True
        )
        return cls(engine)

    def create_schema(self) -> None:
        """Create the tables and the history's append-only triggers (idempotent)."""
        with self._write("create schema") as conn:
            create_tables(conn, _metadata)
            if conn.dialect.name == "sqlite":
                for statement in _SQLITE_APPEND_ONLY:
                    conn.exec_driver_sql(statement)
            else:
                self._postgres_append_only(conn)

    @staticmethod
    def _postgres_append_only(conn: Connection) -> None:
        quote = conn.dialect.identifier_preparer
        schema = (conn.get_execution_options().get("schema_translate_map") or {}).get(None)
        prefix = "" if schema is None else f"{quote.quote_schema(schema)}."
        function = f"{prefix}template_activation_history_append_only"
        conn.execute(  # sa.text: the driver would read RAISE's '%' as a placeholder
            sa.text(
                f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'template_activation_history is append-only: % refused', "
                "TG_OP; END $$"
            )
        )
        conn.exec_driver_sql(
            "CREATE OR REPLACE TRIGGER template_activation_history_append_only "
            f"BEFORE UPDATE OR DELETE OR TRUNCATE ON {prefix}template_activation_history "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _fail(what: str) -> Callable[[sa.exc.SQLAlchemyError], Exception]:
        def fail(exc: sa.exc.SQLAlchemyError) -> ActivationStoreError:
            return ActivationStoreError(f"template activation store: {what} failed: {exc}")

        return fail

    def _write(self, what: str) -> AbstractContextManager[Connection]:
        engine = self.engine.execution_options(sqlite_immediate=True)
        return connected(engine, self._fail(what), begin=True)

    @contextmanager
    def change(self) -> Iterator[Change]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        On SQLite it holds the write lock from the start (``BEGIN IMMEDIATE``); on PostgreSQL
        the rows it reads are locked (``FOR UPDATE``). Either way two changes of one
        activation never interleave.
        """
        with self._write("change an activation") as conn:
            yield Change(conn)

    # -------------------------------------------------------------------------- reading

    def activations(self, tenant: str | None = None) -> list[Activation]:
        """Activations (of one tenant, or all), by tenant then template."""
        query = activations_table.select().order_by(
            activations_table.c.tenant, activations_table.c.template
        )
        if tenant is not None:
            query = query.where(activations_table.c.tenant == tenant)
        with connected(self.engine, self._fail("read activations"), begin=False) as conn:
            rows = conn.execute(query).all()
        return [_activation(row) for row in rows]

    def get(self, activation_id: str) -> Activation | None:
        query = activations_table.select().where(activations_table.c.activation_id == activation_id)
        with connected(self.engine, self._fail("read an activation"), begin=False) as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _activation(row)

    def notices(self, tenant: str | None = None) -> list[NoticeRecord]:
        """Notices given (of one tenant, or all), by tenant, activation and date; each checked."""
        query = notices_table.select().order_by(
            notices_table.c.tenant, notices_table.c.activation_id, notices_table.c.sunset_at
        )
        if tenant is not None:
            query = query.where(notices_table.c.tenant == tenant)
        with connected(self.engine, self._fail("read notices"), begin=False) as conn:
            rows = conn.execute(query).all()
        return [_notice(row) for row in rows]

    def history(self, tenant: str, activation_id: str | None = None) -> list[HistoryRecord]:
        """The tenant's changes (of one activation, or all), oldest first."""
        query = history_table.select().where(history_table.c.tenant == tenant)
        if activation_id is not None:
            query = query.where(history_table.c.activation_id == activation_id)
        with connected(self.engine, self._fail("read history"), begin=False) as conn:
            rows = conn.execute(query.order_by(history_table.c.seq)).all()
        return [_record(row) for row in rows]
