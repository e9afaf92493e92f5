"""The vault: connections and their credential versions, sealed at rest, opened only for a call.

A credential version is the JSON object of a provider's credential fields (an API key; an
OAuth client id, client secret and refresh token; a QuickBooks realm id or a GoHighLevel
location id), sealed under its own data key with the encryption context
``{tenant_id, connection_id}`` (:mod:`corral.broker.envelope`). The access token of an OAuth
connection is sealed the same way, in its own row.

**Plaintext lifetime.** :meth:`Vault.open_credential` is a context manager: the plaintext
exists, as a :class:`~corral.connectors.Credential`, only inside the ``with`` block that makes
the provider call, and the decrypted buffers are zeroed on the way out. (Python ``str`` values
built from them cannot be zeroed; they become unreachable when the block ends.) There is **no
data-key cache**: every call unwraps its data key, which costs one AES-GCM operation with the
local key file and one ``kms:Decrypt`` with AWS KMS. A cache would keep keys in memory for
longer than a call; if KMS latency ever matters, a cache bounded in time and size belongs here
and in ``docs/broker.md``.

**Credential replacement and disconnection.** :meth:`Vault.replace_credential` installs new
fields as the connection's next version by compare-and-swap (an OAuth refresh racing it loses
cleanly) and makes a ``needs_reconnect`` connection usable again; :meth:`Vault.revoke` deletes
every sealed version and the access token, keeping the row as the record.

**Key rotation.** :meth:`Vault.rotate_key` rewraps every data key under the provider's current
master key, one row at a time: each row holds either the old or the new wrapping, both of which
open, so the broker keeps serving while it runs (``corral broker rotate-key``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson

from corral.broker._store import BrokerStore, ConnectionRow, ConnectionStatus
from corral.broker.envelope import Sealed, open_sealed, rewrap, seal
from corral.broker.keys import EncryptionContext, KeyProvider
from corral.connectors import Credential, Endpoints, Provider, providers
from corral.core.clock import Clock
from corral.core.errors import BrokerError

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z")


class VaultError(BrokerError):
    """A connection is unknown, unusable or asked for with bad input."""


class UnknownConnection(VaultError, LookupError):
    def __init__(self, tenant: str, what: str) -> None:
        super().__init__(f"tenant {tenant!r} has no {what}")
        self.tenant = tenant


class ConnectionUnusable(VaultError):
    """The connection is revoked or needs its owner to reconnect it."""

    def __init__(self, row: ConnectionRow) -> None:
        super().__init__(
            f"connection {row.connection_id!r} of tenant {row.tenant!r} is {row.status.value}"
            + (f": {row.status_reason}" if row.status_reason else "")
        )
        self.row = row


class InvalidConnection(VaultError, ValueError):
    """Bad input to :meth:`Vault.connect` or :meth:`Vault.replace_credential` (unknown provider,
    missing or unknown fields)."""


class InvalidCredential(InvalidConnection):
    """Fields that are not a credential of the provider. ``str()`` names every missing and
    unknown field (an operator at a prompt typed them); :attr:`redacted` counts the unknown
    ones instead, for an API's answer: a name the provider does not declare may be a pasted
    secret."""

    def __init__(
        self, provider: str, missing: list[str], unknown: list[str], allowed: tuple[str, ...]
    ) -> None:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        named, counted = list(problems), list(problems)
        if unknown:
            noun = "field" if len(unknown) == 1 else "fields"
            named.append(f"unknown {', '.join(unknown)}")
            counted.append(f"{len(unknown)} unknown {noun} (it takes {', '.join(allowed)})")
        super().__init__(f"{provider} credential: {'; '.join(named)}")
        self.provider = provider
        self.missing = missing
        self.redacted = f"{provider} credential: {'; '.join(counted)}"


class CredentialMoved(VaultError):
    """The connection got a new credential version (a token refresh, another replacement)
    between reading it and replacing it: nothing was written."""


def context_of(tenant: str, connection_id: str) -> EncryptionContext:
    return {"tenant_id": tenant, "connection_id": connection_id}


def check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidConnection(
            f"{what} must be 1-128 characters of letters, digits and ._:@- (got {value!r:.40})"
        )
    return value


class Vault:
    """Connections of every tenant: add, list, open a credential for one call, rotate, revoke."""

    def __init__(self, store: BrokerStore, keys: KeyProvider, clock: Clock) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock

    # ------------------------------------------------------------------ connections

    def connect(
        self,
        tenant: str,
        connection_id: str,
        provider: str,
        fields: dict[str, str],
        *,
        endpoints: Endpoints | None = None,
    ) -> ConnectionRow:
        """Add a connection with its first credential version (sealed before it is stored)."""
        check_id("tenant", tenant)
        check_id("connection id", connection_id)
        spec = self.check_fields(provider, fields)
        if self.store.connection(tenant, connection_id) is not None:
            raise InvalidConnection(f"tenant {tenant!r} already has connection {connection_id!r}")
        chosen = endpoints or spec.endpoints
        now = self.clock.now()
        row = ConnectionRow(
            tenant=tenant,
            connection_id=connection_id,
            provider=provider,
            status=ConnectionStatus.ACTIVE,
            api_url=chosen.api.rstrip("/"),
            token_url=chosen.token,
            version=1,
            created_at=now,
            updated_at=now,
            status_reason=None,
        )
        sealed = self._seal(
            orjson.dumps(fields, option=orjson.OPT_SORT_KEYS), tenant, connection_id
        )
        self.store.insert_connection(row, sealed)
        return row

    @classmethod
    def check_fields(cls, provider: str, fields: Mapping[str, Any]) -> Provider:
        """The provider's declaration if ``fields`` are a credential of it: every required field
        present and non-empty, no field it does not declare, strings only.

        :class:`InvalidCredential` otherwise (:class:`InvalidConnection` for an unknown provider
        or a value that is not a string).
        """
        spec = cls.provider(provider)
        missing = [name for name in spec.fields if not fields.get(name)]
        allowed = (*spec.fields, *spec.optional_fields)
        unknown = sorted(set(fields) - set(allowed))
        if missing or unknown:
            raise InvalidCredential(provider, missing, unknown, allowed)
        if any(not isinstance(value, str) for value in fields.values()):
            raise InvalidConnection(f"{provider} credential fields must be strings")
        return spec

    @staticmethod
    def provider(name: str) -> Provider:
        try:
            return providers()[name]
        except KeyError:
            known = ", ".join(sorted(providers()))
            raise InvalidConnection(f"unknown provider {name!r} (known: {known})") from None

    def connection(self, tenant: str, connection_id: str) -> ConnectionRow:
        row = self.store.connection(tenant, connection_id)
        if row is None:
            raise UnknownConnection(tenant, f"connection {connection_id!r}")
        return row

    def connection_for(
        self, tenant: str, provider: str, connection_id: str | None
    ) -> ConnectionRow:
        """The named connection, or the tenant's only non-revoked one for ``provider``."""
        if connection_id is not None:
            row = self.connection(tenant, connection_id)
            if row.provider != provider:
                raise VaultError(
                    f"connection {connection_id!r} of tenant {tenant!r} is {row.provider}, "
                    f"not {provider}"
                )
            return row
        rows = [
            r
            for r in self.store.connections(tenant)
            if r.provider == provider and r.status is not ConnectionStatus.REVOKED
        ]
        if not rows:
            raise UnknownConnection(tenant, f"{provider} connection")
        if len(rows) > 1:
            names = ", ".join(r.connection_id for r in rows)
            raise VaultError(
                f"tenant {tenant!r} has several {provider} connections ({names}): name one"
            )
        return rows[0]

    def replace_credential(
        self, tenant: str, connection_id: str, fields: dict[str, str]
    ) -> ConnectionRow:
        """Install ``fields`` (checked against the connection's provider) as the connection's next
        credential version, making it ``active`` again if it needed reconnecting.

        :class:`UnknownConnection`, :class:`ConnectionUnusable` (revoked),
        :class:`InvalidConnection` or :class:`CredentialMoved`, each writing nothing.
        """
        row = self.connection(tenant, connection_id)
        if row.status is ConnectionStatus.REVOKED:
            raise ConnectionUnusable(row)
        self.check_fields(row.provider, fields)
        sealed = self.seal_fields(row, fields)
        if not self.store.swap_credential(
            tenant, connection_id, row.version, sealed, self.clock.now()
        ):
            raise CredentialMoved(
                f"connection {connection_id!r} of tenant {tenant!r} changed while its credential "
                "was being replaced (a token refresh or another replacement): try again"
            )
        return self.connection(tenant, connection_id)

    def revoke(self, tenant: str, connection_id: str, reason: str | None = None) -> ConnectionRow:
        """Disconnect: no call uses this connection again; its access token and every sealed
        credential version are deleted (the row stays, ``revoked``, as the record)."""
        self.connection(tenant, connection_id)
        self.store.set_status(
            tenant, connection_id, ConnectionStatus.REVOKED, reason, self.clock.now()
        )
        return self.connection(tenant, connection_id)

    def mark_needs_reconnect(self, row: ConnectionRow, reason: str) -> ConnectionRow:
        self.store.set_status(
            row.tenant,
            row.connection_id,
            ConnectionStatus.NEEDS_RECONNECT,
            reason,
            self.clock.now(),
        )
        return self.connection(row.tenant, row.connection_id)

    # ------------------------------------------------------------------ plaintext

    def _seal(self, plaintext: bytes, tenant: str, connection_id: str) -> bytes:
        return seal(plaintext, context_of(tenant, connection_id), self.keys).to_bytes()

    def _open(self, blob: bytes, tenant: str, connection_id: str) -> bytearray:
        return open_sealed(Sealed.from_bytes(blob), context_of(tenant, connection_id), self.keys)

    def read_fields(self, row: ConnectionRow) -> tuple[int, dict[str, str]]:
        """The current version number and fields (callers keep them no longer than a call)."""
        blob = self.store.credential(row.tenant, row.connection_id, row.version)
        if blob is None:
            raise VaultError(
                f"connection {row.connection_id!r} of tenant {row.tenant!r} lost credential "
                f"version {row.version}"
            )
        plain = self._open(blob, row.tenant, row.connection_id)
        try:
            fields = orjson.loads(plain)
        finally:
            _zero(plain)
        return row.version, fields

    def read_access_token(self, row: ConnectionRow) -> tuple[str, datetime] | None:
        """The stored access token of the connection's current version, with its expiry."""
        found = self.store.access_token(row.tenant, row.connection_id)
        if found is None or found[0] != row.version:
            return None
        _version, blob, expires_at = found
        plain = self._open(blob, row.tenant, row.connection_id)
        try:
            return plain.decode("utf-8"), expires_at
        finally:
            _zero(plain)

    def seal_fields(self, row: ConnectionRow, fields: dict[str, str]) -> bytes:
        return self._seal(
            orjson.dumps(fields, option=orjson.OPT_SORT_KEYS), row.tenant, row.connection_id
        )

    def seal_token(self, row: ConnectionRow, token: str) -> bytes:
        return self._seal(token.encode("utf-8"), row.tenant, row.connection_id)

    @contextmanager
    def open_credential(self, row: ConnectionRow, access_token: str | None) -> Iterator[Credential]:
        """The connection's plaintext credential for the duration of one provider call."""
        if row.status is not ConnectionStatus.ACTIVE:
            raise ConnectionUnusable(row)
        _version, fields = self.read_fields(row)
        try:
            yield Credential(fields=fields, access_token=access_token)
        finally:
            fields.clear()

    # ------------------------------------------------------------------ rotation

    def rotate_key(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Rewrap every credential version and access token under the current master key.

        One row per transaction, so readers never wait and a crash leaves each row wrapped
        under the old key or the new one (both open). Returns the number of rows rewrapped.
        """
        versions = self.store.credential_keys()
        tokens = self.store.access_token_keys()
        total, done = len(versions) + len(tokens), 0
        for tenant, connection_id, version in versions:
            blob = self.store.credential(tenant, connection_id, version)
            if blob is not None:
                new = rewrap(Sealed.from_bytes(blob), context_of(tenant, connection_id), self.keys)
                self.store.replace_sealed(tenant, connection_id, version, new.to_bytes())
            done += 1
            if progress is not None:
                progress(done, total)
        for tenant, connection_id in tokens:
            found = self.store.access_token(tenant, connection_id)
            if found is not None:
                ctx = context_of(tenant, connection_id)
                new = rewrap(Sealed.from_bytes(found[1]), ctx, self.keys)
                self.store.replace_access_sealed(tenant, connection_id, new.to_bytes())
            done += 1
            if progress is not None:
                progress(done, total)
        return total


def _zero(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))
