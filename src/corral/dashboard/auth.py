"""Owners, sessions, CSRF tokens and the sign-in rate limit of the dashboard.

- **Owners** belong to exactly one tenant (``dashboard_owners``: tenant, email, opaque owner id,
  argon2id hash from ``argon2-cffi`` with its RFC 9106 defaults). The password itself is never
  stored or logged. :meth:`OwnerStore.create_owner` is what a CLI calls.
- **Sessions** are server-side (``dashboard_sessions``): the cookie holds 32 random bytes; the
  table holds only their SHA-256, so a copy of the database opens no session. Each session has
  an absolute expiry, its tenant and owner, and its own CSRF token.
- **Rate limit**: failed sign-ins per (tenant, client address) in a sliding window, kept in
  memory (one control replica answers a tenant's dashboard; a restart forgets the count).

The cookie's attributes (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over TLS, ``Max-Age``)
are set by :mod:`corral.dashboard.pages`, which also checks the CSRF token on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from base64 import urlsafe_b64encode
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Engine

from corral.core.clock import Clock
from corral.core.db import UtcDateTime, connected, create_tables, open_engine
from corral.core.entropy import urandom
from corral.core.errors import CorralError
from corral.core.ids import check_id

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "AuthError",
    "LoginLimiter",
    "Owner",
    "OwnerExists",
    "OwnerStore",
    "Session",
    "same_token",
]

MIN_PASSWORD_LENGTH = 12
_metadata = sa.MetaData()
owners_table = sa.Table(
    "dashboard_owners",
    _metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("email", sa.String(320), primary_key=True),
    sa.Column("owner_id", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
sessions_table = sa.Table(
    "dashboard_sessions",
    _metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("owner_id", sa.String(64), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
)


class AuthError(CorralError, ValueError):
    """A refused owner (bad email, short password): the message says which."""


class OwnerExists(AuthError):
    pass


@dataclass(frozen=True, slots=True)
class Owner:
    tenant: str
    email: str
    owner_id: str


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in owner. ``tenant`` is the only tenant any page of this session may touch."""

    tenant: str
    owner_id: str
    email: str
    csrf: str
    expires_at: datetime


def _token(entropy: Callable[[int], bytes]) -> str:
    return urlsafe_b64encode(entropy(32)).decode("ascii").rstrip("=")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing value never matches."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _email(email: str) -> str:
    value = email.strip().lower()
    local, at, domain = value.partition("@")
    if not (local and at and "." in domain) or len(value) > 320 or any(c.isspace() for c in value):
        raise AuthError("an owner needs a valid email address")
    return value


class OwnerStore:
    """Owners and their sessions in one SQLite or PostgreSQL database; thread-safe."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock,
        session_ttl: timedelta = timedelta(hours=8),
        hasher: PasswordHasher | None = None,
        entropy: Callable[[int], bytes] = urandom,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self.session_ttl = session_ttl
        self._hasher = hasher or PasswordHasher()
        self._entropy = entropy
        self._dummy: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock,
        session_ttl: timedelta = timedelta(hours=8),
        hasher: PasswordHasher | None = None,
    ) -> OwnerStore:
        return cls(
            open_engine(url, what="dashboard database"),
            clock=clock,
            session_ttl=session_ttl,
            hasher=hasher,
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> None:
        with connected(self._engine, _failed("create schema"), begin=True) as conn:
            create_tables(conn, _metadata)

    def close(self) -> None:
        self._engine.dispose()

    # ---------------------------------------------------------------------------- owners

    def create_owner(self, tenant: str, email: str, password: str) -> Owner:
        """Add an owner of ``tenant``; refuses a short password or an email already there."""
        check_id(tenant, "tenant")
        address = _email(email)
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AuthError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        owner = Owner(tenant, address, "owner-" + self._entropy(6).hex())
        hashed = self._hasher.hash(password)
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    owners_table.insert().values(
                        tenant=tenant,
                        email=address,
                        owner_id=owner.owner_id,
                        password_hash=hashed,
                        created_at=self._clock.now(),
                    )
                )
        except sa.exc.IntegrityError:
            raise OwnerExists(f"{address} is already an owner of tenant {tenant!r}") from None
        return owner

    def authenticate(self, tenant: str, email: str, password: str) -> Owner | None:
        """The owner if the password is right, else None (as slow for an unknown email)."""
        try:
            address = _email(email)
        except AuthError:
            address = ""
        with connected(self._engine, _failed("read owner"), begin=False) as conn:
            row = conn.execute(
                sa.select(owners_table).where(
                    owners_table.c.tenant == tenant, owners_table.c.email == address
                )
            ).first()
        if row is None:
            self._verify(self._dummy_hash(), password)
            return None
        if not self._verify(row.password_hash, password):
            return None
        if self._hasher.check_needs_rehash(row.password_hash):
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(owners_table)
                    .where(owners_table.c.owner_id == row.owner_id)
                    .values(password_hash=self._hasher.hash(password))
                )
        return Owner(row.tenant, row.email, row.owner_id)

    def _verify(self, hashed: str, password: str) -> bool:
        try:
            return self._hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(self._entropy(16).hex())
        return self._dummy

    # -------------------------------------------------------------------------- sessions

    def open_session(self, owner: Owner) -> tuple[str, Session]:
        """A new session (never a reused id): the cookie value and the session."""
        token = _token(self._entropy)
        now = self._clock.now()
        session = Session(
            owner.tenant, owner.owner_id, owner.email, _token(self._entropy), now + self.session_ttl
        )
        with self._engine.begin() as conn:
            conn.execute(sa.delete(sessions_table).where(sessions_table.c.expires_at <= now))
            conn.execute(
                sessions_table.insert().values(
                    token_hash=_digest(token),
                    tenant=session.tenant,
                    owner_id=session.owner_id,
                    email=session.email,
                    csrf=session.csrf,
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return token, session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie value; an expired one is deleted and gives None."""
        if not token or len(token) > 128:
            return None
        key = _digest(token)
        with connected(self._engine, _failed("read session"), begin=False) as conn:
            row = conn.execute(
                sa.select(sessions_table).where(sessions_table.c.token_hash == key)
            ).first()
        if row is None:
            return None
        if row.expires_at <= self._clock.now():
            self.close_session(token)
            return None
        return Session(row.tenant, row.owner_id, row.email, row.csrf, row.expires_at)

    def close_session(self, token: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                sa.delete(sessions_table).where(sessions_table.c.token_hash == _digest(token))
            )


def _failed(what: str) -> Callable[[sa.exc.SQLAlchemyError], Exception]:
    return lambda exc: CorralError(f"dashboard database: {what} failed: {type(exc).__name__}")


class LoginLimiter:
    """At most ``attempts`` failed sign-ins per key (tenant, address) in ``window``."""

    def __init__(
        self, clock: Clock, *, attempts: int = 5, window: timedelta = timedelta(minutes=15)
    ):
        self._clock = clock
        self.attempts = attempts
        self.window = window
        self._failures: dict[tuple[str, str], deque[datetime]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> deque[datetime]:
        failures = self._failures.setdefault(key, deque())
        cutoff = self._clock.now() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures

    def retry_after(self, key: tuple[str, str]) -> float | None:
        """Seconds until the next attempt is allowed, or None if it is allowed now."""
        with self._lock:
            failures = self._recent(key)
            if not failures:
                del self._failures[key]  # keys of old failures do not pile up
                return None
            if len(failures) < self.attempts:
                return None
            return max(1.0, (failures[0] + self.window - self._clock.now()).total_seconds())

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._recent(key).append(self._clock.now())

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)
