"""The broker's own database: sealed credential versions and the state that makes calls safe.

Only the broker opens this database (its own SQLite file by default; in PostgreSQL its own
schema, reached with its own role). Nothing here is plaintext: credentials and access tokens
are :class:`~corral.broker.envelope.Sealed` blobs; the rest is bookkeeping.

Tables (all prefixed ``broker_``):

- ``connections``: one provider account of one tenant, its status (``active``,
  ``needs_reconnect``, ``revoked``), endpoints and ``version``, the current credential version.
  A new version is installed by compare-and-swap on ``version``: a refresh that lost a race
  writes nothing.
- ``credentials``: every sealed credential version (old ones kept until pruned, so a
  rotated-away refresh token is still readable for the record, never used). Revoking a
  connection deletes all of them: a disconnected account leaves no sealed secret behind.
- ``access_tokens``: the current sealed OAuth access token of a connection and its expiry.
- ``refresh_leases``: the database lock that allows one refresh at a time per connection across
  broker replicas; a lease expires, so a crashed holder blocks nobody for long.
- ``intents``: the intent log: one row per idempotency key, written *before* the provider is
  called and updated with the outcome, so a retry never acts twice.
- ``revocations`` and ``delegation_uses``: what makes revocation and ``max_uses`` hold on the
  next call, across replicas.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from corral.core.db import UtcDateTime, connected, create_tables, open_engine
from corral.core.errors import BrokerError, ConfigError


class BrokerStoreError(BrokerError):
    """The broker's database refused or failed an operation (the driver's error chained)."""


class ConnectionStatus(enum.StrEnum):
    ACTIVE = "active"
    NEEDS_RECONNECT = "needs_reconnect"
    REVOKED = "revoked"


class IntentState(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


class RevocationKind(enum.StrEnum):
    DELEGATION = "delegation"
    AGENT = "agent"
    TENANT = "tenant"
    CONNECTION = "connection"


_metadata = sa.MetaData()
_Id = sa.String(256)

connections = sa.Table(
    "broker_connections",
    _metadata,
    sa.Column("tenant", _Id, primary_key=True),
    sa.Column("connection_id", _Id, primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("api_url", sa.String(2048), nullable=False),
    sa.Column("token_url", sa.String(2048), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("status_reason", sa.String(512), nullable=True),
)
credentials = sa.Table(
    "broker_credentials",
    _metadata,
    sa.Column("tenant", _Id, primary_key=True),
    sa.Column("connection_id", _Id, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.ForeignKeyConstraint(
        ["tenant", "connection_id"],
        ["broker_connections.tenant", "broker_connections.connection_id"],
    ),
)
access_tokens = sa.Table(
    "broker_access_tokens",
    _metadata,
    sa.Column("tenant", _Id, primary_key=True),
    sa.Column("connection_id", _Id, primary_key=True),
    sa.Column("credential_version", sa.Integer, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
)
refresh_leases = sa.Table(
    "broker_refresh_leases",
    _metadata,
    sa.Column("tenant", _Id, primary_key=True),
    sa.Column("connection_id", _Id, primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
)
intents = sa.Table(
    "broker_intents",
    _metadata,
    sa.Column("tenant", _Id, primary_key=True),
    sa.Column("idempotency_key", sa.String(64), primary_key=True),
    sa.Column("call_hash", sa.String(64), nullable=False),
    sa.Column("tool", sa.String(128), nullable=False),
    sa.Column("connection_id", _Id, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)
revocations = sa.Table(
    "broker_revocations",
    _metadata,
    sa.Column("tenant", _Id, primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("value", _Id, primary_key=True),
    sa.Column("revoked_at", UtcDateTime, nullable=False),
    sa.Column("reason", sa.String(512), nullable=True),
)
delegation_uses = sa.Table(
    "broker_delegation_uses",
    _metadata,
    sa.Column("delegation_id", sa.String(64), primary_key=True),
    sa.Column("tenant", _Id, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
)


# The statements every call runs, built once with bind parameters: SQLAlchemy then reuses
# their compiled form (its cache key is memoized on the statement) instead of building and
# keying a new expression per call, about half of the store's time per call otherwise.
_bp = sa.bindparam
_CONNECTION = connections.select().where(
    connections.c.tenant == _bp("tenant"), connections.c.connection_id == _bp("connection_id")
)
_TENANT_CONNECTIONS = (
    connections.select()
    .where(connections.c.tenant == _bp("tenant"))
    .order_by(connections.c.connection_id)
)
_CREDENTIAL = sa.select(credentials.c.sealed).where(
    credentials.c.tenant == _bp("tenant"),
    credentials.c.connection_id == _bp("connection_id"),
    credentials.c.version == _bp("version"),
)
_ACCESS_TOKEN = access_tokens.select().where(
    access_tokens.c.tenant == _bp("tenant"), access_tokens.c.connection_id == _bp("connection_id")
)
_INTENT = intents.select().where(
    intents.c.tenant == _bp("tenant"), intents.c.idempotency_key == _bp("key")
)
_FINISH_INTENT = (  # an UPDATE's bind names must differ from its columns' names
    intents.update()
    .where(intents.c.tenant == _bp("b_tenant"), intents.c.idempotency_key == _bp("b_key"))
    .values(state=_bp("b_state"), result=_bp("b_result"), updated_at=_bp("b_at"))
)
_REVOKED = sa.select(revocations.c.kind, revocations.c.value, revocations.c.revoked_at).where(
    revocations.c.tenant == _bp("tenant"),
    sa.or_(
        *(
            sa.and_(revocations.c.kind == _bp(f"kind{i}"), revocations.c.value == _bp(f"value{i}"))
            for i in range(4)
        )
    ),
)
_USES = sa.select(delegation_uses.c.uses).where(delegation_uses.c.delegation_id == _bp("id"))
_COUNT_USE = (
    delegation_uses.update()
    .where(delegation_uses.c.delegation_id == _bp("id"))
    .values(uses=delegation_uses.c.uses + 1)
)
_COUNT_USE_BELOW = _COUNT_USE.where(delegation_uses.c.uses < _bp("max_uses"))


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """A connection as stored: no secret in it."""

    tenant: str
    connection_id: str
    provider: str
    status: ConnectionStatus
    api_url: str
    token_url: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    status_reason: str | None

    def public(self) -> dict[str, Any]:
        """What an operator or a dashboard may see."""
        return {
            "tenant": self.tenant,
            "connection_id": self.connection_id,
            "provider": self.provider,
            "status": self.status.value,
            "api_url": self.api_url,
            "token_url": self.token_url,
            "credential_version": self.version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "status_reason": self.status_reason,
        }


@dataclass(frozen=True, slots=True)
class DelegationUse:
    """One use of a delegation to count (``max_uses`` None: unlimited, counted anyway)."""

    delegation_id: str
    tenant: str
    max_uses: int | None
    expires_at: datetime


class UsesExhausted(BrokerStoreError):
    def __init__(self, delegation_id: str) -> None:
        super().__init__(f"delegation {delegation_id} has no uses left")
        self.delegation_id = delegation_id


@dataclass(frozen=True, slots=True)
class IntentRow:
    tenant: str
    idempotency_key: str
    call_hash: str
    tool: str
    connection_id: str
    state: IntentState
    result: str | None
    created_at: datetime
    updated_at: datetime


def _failed(what: str, exc: Exception) -> BrokerStoreError:
    # The error's type only: the driver's text can quote statement parameters (sealed blobs).
    return BrokerStoreError(f"broker store: {what} failed: {type(exc).__name__}")


class BrokerStore:
    """Every table of the broker, on SQLite or PostgreSQL; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(f"broker store supports SQLite and PostgreSQL, not {engine.url}")
        self._engine = engine
        self._writer = engine.execution_options(sqlite_immediate=True)

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> BrokerStore:
        """Open ``sqlite:///path`` or PostgreSQL (``schema``: the broker's own schema there).

        Several broker threads (and replicas) write: SQLite writers begin IMMEDIATE.
        """
        return cls(open_engine(url, what="broker store", schema=schema, explicit_begin=True))

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> None:
        """Create the tables (and the PostgreSQL schema) if missing; safe to repeat."""
        with self.write("create schema") as conn:
            create_tables(conn, _metadata)

    def close(self) -> None:
        self._engine.dispose()

    def read(self, what: str) -> AbstractContextManager[Connection]:
        return connected(self._engine, lambda exc: _failed(what, exc), begin=False)

    def write(self, what: str) -> AbstractContextManager[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        return connected(self._writer, lambda exc: _failed(what, exc), begin=True)

    # --------------------------------------------------------------------- connections

    def insert_connection(self, row: ConnectionRow, sealed: bytes) -> None:
        """A new connection and its credential version 1, in one transaction."""
        with self.write("add connection") as conn:
            conn.execute(
                connections.insert().values(
                    tenant=row.tenant,
                    connection_id=row.connection_id,
                    provider=row.provider,
                    status=row.status.value,
                    api_url=row.api_url,
                    token_url=row.token_url,
                    version=row.version,
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                    status_reason=row.status_reason,
                )
            )
            conn.execute(
                credentials.insert().values(
                    tenant=row.tenant,
                    connection_id=row.connection_id,
                    version=row.version,
                    sealed=sealed,
                    created_at=row.created_at,
                )
            )

    def connection(self, tenant: str, connection_id: str) -> ConnectionRow | None:
        with self.read("read connection") as conn:
            found = conn.execute(
                _CONNECTION, {"tenant": tenant, "connection_id": connection_id}
            ).one_or_none()
        return None if found is None else _connection(found)

    def connections(self, tenant: str | None = None) -> list[ConnectionRow]:
        with self.read("list connections") as conn:
            if tenant is not None:
                rows = conn.execute(_TENANT_CONNECTIONS, {"tenant": tenant})
            else:
                rows = conn.execute(
                    connections.select().order_by(connections.c.tenant, connections.c.connection_id)
                )
            return [_connection(row) for row in rows]

    def set_status(
        self,
        tenant: str,
        connection_id: str,
        status: ConnectionStatus,
        reason: str | None,
        at: datetime,
    ) -> bool:
        """Set a connection's status; :attr:`ConnectionStatus.REVOKED` also deletes its access
        token and every sealed credential version, in the same transaction (the row stays, as
        the record of the connection)."""
        with self.write("set connection status") as conn:
            done = conn.execute(
                connections.update()
                .where(connections.c.tenant == tenant, connections.c.connection_id == connection_id)
                .values(status=status.value, status_reason=reason, updated_at=at)
            )
            if status is ConnectionStatus.REVOKED and done.rowcount == 1:
                for table in (access_tokens, credentials):
                    conn.execute(
                        table.delete().where(
                            table.c.tenant == tenant, table.c.connection_id == connection_id
                        )
                    )
        return done.rowcount == 1

    def credential(self, tenant: str, connection_id: str, version: int) -> bytes | None:
        with self.read("read credential") as conn:
            found = conn.execute(
                _CREDENTIAL, {"tenant": tenant, "connection_id": connection_id, "version": version}
            ).scalar_one_or_none()
        return None if found is None else bytes(found)

    def swap_credential(
        self,
        tenant: str,
        connection_id: str,
        expected_version: int,
        sealed: bytes,
        at: datetime,
        *,
        status: ConnectionStatus = ConnectionStatus.ACTIVE,
        access: tuple[bytes, datetime] | None = None,
    ) -> bool:
        """Install credential version ``expected_version + 1`` if the connection is still at
        ``expected_version`` (compare-and-swap), with its access token, in one transaction.

        Returns False, writing nothing, when another writer got there first.
        """
        new_version = expected_version + 1
        with self.write("install credential version") as conn:
            moved = conn.execute(
                connections.update()
                .where(
                    connections.c.tenant == tenant,
                    connections.c.connection_id == connection_id,
                    connections.c.version == expected_version,
                    connections.c.status != ConnectionStatus.REVOKED.value,
                )
                .values(version=new_version, updated_at=at, status=status.value, status_reason=None)
            )
            if moved.rowcount != 1:
                return False  # nothing was written: the transaction commits empty
            conn.execute(
                credentials.insert().values(
                    tenant=tenant,
                    connection_id=connection_id,
                    version=new_version,
                    sealed=sealed,
                    created_at=at,
                )
            )
            if access is not None:
                self._put_access(conn, tenant, connection_id, new_version, *access)
        return True

    def replace_sealed(self, tenant: str, connection_id: str, version: int, sealed: bytes) -> None:
        """Rewrite one version's blob (a key rotation's rewrap: same plaintext, new wrapping)."""
        with self.write("rewrap credential") as conn:
            conn.execute(
                credentials.update()
                .where(
                    credentials.c.tenant == tenant,
                    credentials.c.connection_id == connection_id,
                    credentials.c.version == version,
                )
                .values(sealed=sealed)
            )

    def credential_keys(self) -> list[tuple[str, str, int]]:
        with self.read("list credential versions") as conn:
            rows = conn.execute(
                sa.select(
                    credentials.c.tenant, credentials.c.connection_id, credentials.c.version
                ).order_by(credentials.c.tenant, credentials.c.connection_id, credentials.c.version)
            )
            return [(r.tenant, r.connection_id, r.version) for r in rows]

    # ------------------------------------------------------------------- access tokens

    def _put_access(
        self,
        conn: Connection,
        tenant: str,
        connection_id: str,
        version: int,
        sealed: bytes,
        expires_at: datetime,
    ) -> None:
        key = {"tenant": tenant, "connection_id": connection_id}
        conn.execute(access_tokens.delete().filter_by(**key))
        conn.execute(
            access_tokens.insert().values(
                **key, credential_version=version, sealed=sealed, expires_at=expires_at
            )
        )

    def put_access_token(
        self, tenant: str, connection_id: str, version: int, sealed: bytes, expires_at: datetime
    ) -> None:
        with self.write("store access token") as conn:
            self._put_access(conn, tenant, connection_id, version, sealed, expires_at)

    def access_token(self, tenant: str, connection_id: str) -> tuple[int, bytes, datetime] | None:
        with self.read("read access token") as conn:
            row = conn.execute(
                _ACCESS_TOKEN, {"tenant": tenant, "connection_id": connection_id}
            ).one_or_none()
        if row is None:
            return None
        return row.credential_version, bytes(row.sealed), row.expires_at

    def access_token_keys(self) -> list[tuple[str, str]]:
        with self.read("list access tokens") as conn:
            rows = conn.execute(sa.select(access_tokens.c.tenant, access_tokens.c.connection_id))
            return [(r.tenant, r.connection_id) for r in rows]

    def replace_access_sealed(self, tenant: str, connection_id: str, sealed: bytes) -> None:
        with self.write("rewrap access token") as conn:
            conn.execute(
                access_tokens.update()
                .where(
                    access_tokens.c.tenant == tenant, access_tokens.c.connection_id == connection_id
                )
                .values(sealed=sealed)
            )

    # --------------------------------------------------------------------------- leases

    def acquire_lease(
        self, tenant: str, connection_id: str, holder: str, now: datetime, ttl_s: float
    ) -> bool:
        """Take the refresh lease of a connection if it is free or expired (a database lock that
        works the same on SQLite and PostgreSQL, and frees itself when a holder dies)."""
        until = now + timedelta(seconds=ttl_s)
        key = {"tenant": tenant, "connection_id": connection_id}
        with self.write("take refresh lease") as conn:
            taken = conn.execute(
                refresh_leases.update()
                .filter_by(**key)
                .where(
                    sa.or_(refresh_leases.c.expires_at <= now, refresh_leases.c.holder == holder)
                )
                .values(holder=holder, expires_at=until)
            )
            if taken.rowcount == 1:
                return True
            exists = conn.execute(
                sa.select(refresh_leases.c.holder).filter_by(**key)
            ).scalar_one_or_none()
            if exists is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        refresh_leases.insert().values(**key, holder=holder, expires_at=until)
                    )
            except sa.exc.IntegrityError:
                return False
        return True

    def release_lease(self, tenant: str, connection_id: str, holder: str) -> None:
        with self.write("release refresh lease") as conn:
            conn.execute(
                refresh_leases.delete().where(
                    refresh_leases.c.tenant == tenant,
                    refresh_leases.c.connection_id == connection_id,
                    refresh_leases.c.holder == holder,
                )
            )

    # ------------------------------------------------------------------------- intents

    def begin_intent(self, row: IntentRow, *, use: DelegationUse | None = None) -> IntentRow | None:
        """Record an intent before acting; return the existing row if the key was seen before.

        With ``use``, a new intent also counts one use of the delegation, in the same
        transaction: :class:`UsesExhausted` (and nothing written) when none is left. A key seen
        before counts nothing: a replay is not a use.
        """
        key = {"tenant": row.tenant, "key": row.idempotency_key}
        with self.write("record intent") as conn:
            existing = conn.execute(_INTENT, key).one_or_none()
            if existing is not None:
                return _intent(existing)
            if use is not None and self._count_use(conn, use) is None:
                raise UsesExhausted(use.delegation_id)
            try:
                with conn.begin_nested():
                    conn.execute(
                        intents.insert().values(
                            tenant=row.tenant,
                            idempotency_key=row.idempotency_key,
                            call_hash=row.call_hash,
                            tool=row.tool,
                            connection_id=row.connection_id,
                            state=row.state.value,
                            result=row.result,
                            created_at=row.created_at,
                            updated_at=row.updated_at,
                        )
                    )
            except sa.exc.IntegrityError:
                return _intent(conn.execute(_INTENT, key).one())
        return None

    def finish_intent(
        self, tenant: str, key: str, state: IntentState, result: str | None, at: datetime
    ) -> None:
        with self.write("record outcome") as conn:
            conn.execute(
                _FINISH_INTENT,
                {
                    "b_tenant": tenant,
                    "b_key": key,
                    "b_state": state.value,
                    "b_result": result,
                    "b_at": at,
                },
            )

    def intent(self, tenant: str, key: str) -> IntentRow | None:
        with self.read("read intent") as conn:
            row = conn.execute(_INTENT, {"tenant": tenant, "key": key}).one_or_none()
        return None if row is None else _intent(row)

    # ------------------------------------------------------------ revocations and uses

    def revoke(
        self, tenant: str, kind: RevocationKind, value: str, at: datetime, reason: str | None
    ) -> None:
        """Record a revocation (repeating one keeps the earliest time)."""
        with self.write("revoke") as conn:
            exists = conn.execute(
                sa.select(revocations.c.revoked_at).where(
                    revocations.c.tenant == tenant,
                    revocations.c.kind == kind.value,
                    revocations.c.value == value,
                )
            ).scalar_one_or_none()
            if exists is None:
                conn.execute(
                    revocations.insert().values(
                        tenant=tenant, kind=kind.value, value=value, revoked_at=at, reason=reason
                    )
                )

    def revoked(
        self, tenant: str, checks: list[tuple[RevocationKind, str]]
    ) -> list[tuple[RevocationKind, str, datetime]]:
        """The revocations among ``checks`` (at most four (kind, value) pairs) of this tenant, in
        one indexed query."""
        if not 0 < len(checks) <= 4:
            raise ValueError("revoked() checks one to four (kind, value) pairs")
        padded = [*checks, *[checks[0]] * (4 - len(checks))]
        params: dict[str, Any] = {"tenant": tenant}
        for i, (kind, value) in enumerate(padded):
            params[f"kind{i}"], params[f"value{i}"] = kind.value, value
        with self.read("check revocations") as conn:
            rows = conn.execute(_REVOKED, params)
            return [(RevocationKind(r.kind), r.value, r.revoked_at) for r in rows]

    def use_delegation(self, use: DelegationUse) -> int | None:
        """Count one use; return the new count, or None if ``max_uses`` is already reached."""
        with self.write("count delegation use") as conn:
            return self._count_use(conn, use)

    @staticmethod
    def _count_use(conn: Connection, use: DelegationUse) -> int | None:
        key = {"id": use.delegation_id}
        update, params = _COUNT_USE, dict[str, Any](key)
        if use.max_uses is not None:
            update, params = _COUNT_USE_BELOW, {**key, "max_uses": use.max_uses}
        for _attempt in range(2):
            if conn.execute(update, params).rowcount == 1:
                return int(conn.execute(_USES, key).scalar_one())
            if conn.execute(_USES, key).first() is not None:
                return None
            if use.max_uses is not None and use.max_uses < 1:
                return None
            try:
                with conn.begin_nested():
                    conn.execute(
                        delegation_uses.insert().values(
                            delegation_id=use.delegation_id,
                            tenant=use.tenant,
                            uses=1,
                            expires_at=use.expires_at,
                        )
                    )
            except sa.exc.IntegrityError:
                continue  # another replica counted the first use: count on top of it
            return 1
        return None

    def prune(self, now: datetime, keep_intents_s: float = 7 * 86400) -> int:
        """Forget use counters of expired delegations and finished intents past retention."""
        with self.write("prune") as conn:
            gone = conn.execute(delegation_uses.delete().where(delegation_uses.c.expires_at < now))
            old = now - timedelta(seconds=keep_intents_s)
            done = conn.execute(
                intents.delete().where(
                    intents.c.updated_at < old, intents.c.state != IntentState.STARTED.value
                )
            )
        return int(gone.rowcount) + int(done.rowcount)


def _connection(row: Any) -> ConnectionRow:
    return ConnectionRow(
        tenant=row.tenant,
        connection_id=row.connection_id,
        provider=row.provider,
        status=ConnectionStatus(row.status),
        api_url=row.api_url,
        token_url=row.token_url,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        status_reason=row.status_reason,
    )


def _intent(row: Any) -> IntentRow:
    return IntentRow(
        tenant=row.tenant,
        idempotency_key=row.idempotency_key,
        call_hash=row.call_hash,
        tool=row.tool,
        connection_id=row.connection_id,
        state=IntentState(row.state),
        result=row.result,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
