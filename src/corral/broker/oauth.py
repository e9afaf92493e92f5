"""OAuth access tokens with rotating refresh tokens: one refresh at a time, nothing lost.

Google keeps a refresh token; Calendly's is single-use; QuickBooks rotates it about daily;
HighLevel issues a new pair on every refresh, and all three refuse a used one
(``fakes/specs/NOTES.md``). The protocol, per connection:

1. Take the connection's **refresh lease** in the database (one refresh at a time across broker
   replicas; a lease expires, so a crashed holder blocks nobody for long). A replica that finds
   the lease taken waits for the holder's result instead of refreshing too.
2. Re-read the connection: if another replica already stored a fresh access token, use it.
3. Send the current refresh token to the token endpoint.
4. **Store before use**: the new refresh token becomes a new credential version by
   compare-and-swap on the connection's version, together with the sealed access token, in
   one transaction; only then is the access token handed to a provider call.
5. On ``invalid_grant``, re-read the connection and retry once if another writer moved it to a
   newer version; otherwise mark it ``needs_reconnect`` (its owner must connect it again).

**Crashes.** A SIGKILL before step 3 or after step 4 loses nothing (the lease expires; the
stored version is whole). The one window no client can close is between the provider's
rotation and our commit (the provider answered, the process died before one fsync): the
provider then holds a refresh token nobody stored. The next refresh gets ``invalid_grant`` and
the connection says ``needs_reconnect``: visible, never silently broken.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from corral.broker._store import ConnectionRow, ConnectionStatus
from corral.broker.vault import ConnectionUnusable, Vault
from corral.connectors import Credential, Endpoints, InvalidGrant, ProviderRejected
from corral.core.clock import format_time
from corral.core.errors import BrokerError

EARLY_REFRESH_S = 60
"""An access token with less than this left is refreshed before use, not mid-call."""


class RefreshBusy(BrokerError):
    """Another broker replica holds the refresh lease and produced no token in time."""


@dataclass
class AuditEvents:
    """Audit events the broker produced during one request, for its caller to append."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, at: datetime, data: dict[str, Any]) -> None:
        self.items.append(
            {"kind": kind, "at": format_time(at), "actor": {"kind": "broker", "id": "broker"},
             "data": data}
        )  # fmt: skip


Step = Callable[[str], None]
"""An observer of the refresh protocol's steps: ``leased``, ``requesting`` (about to send),
``received`` (the provider answered; nothing stored yet), ``stored`` (committed)."""


class TokenSource:
    """Valid access tokens for OAuth connections, refreshed under the protocol above."""

    def __init__(
        self,
        vault: Vault,
        http: httpx.AsyncClient,
        *,
        lease_s: float = 30.0,
        holder: str | None = None,
        on_step: Step | None = None,
    ) -> None:
        self.vault = vault
        self.http = http
        self.lease_s = lease_s
        self.holder = holder or uuid.uuid4().hex
        self._on_step = on_step or (lambda _step: None)

    async def access_token(
        self, row: ConnectionRow, events: AuditEvents, *, refused: str | None = None
    ) -> tuple[ConnectionRow, str]:
        """A usable access token and the row it belongs to.

        ``refused`` is a token the provider just answered 401 to: it is not reused even if its
        stored expiry says it is still valid.
        """
        current = self._fresh(row, refused)
        if current is not None:
            return row, current
        return await self.refresh(row, events, refused=refused)

    def _fresh(self, row: ConnectionRow, refused: str | None) -> str | None:
        stored = self.vault.read_access_token(row)
        if stored is None:
            return None
        token, expires_at = stored
        if token == refused:
            return None
        if expires_at - self.vault.clock.now() < timedelta(seconds=EARLY_REFRESH_S):
            return None
        return token

    async def refresh(
        self, row: ConnectionRow, events: AuditEvents, *, refused: str | None = None
    ) -> tuple[ConnectionRow, str]:
        store, clock = self.vault.store, self.vault.clock
        deadline = clock.now() + timedelta(seconds=self.lease_s)
        delay = 0.01
        while not store.acquire_lease(
            row.tenant, row.connection_id, self.holder, clock.now(), self.lease_s
        ):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
            row = self.vault.connection(row.tenant, row.connection_id)
            token = self._fresh(row, refused)
            if token is not None:
                return row, token
            if clock.now() >= deadline:
                raise RefreshBusy(
                    f"connection {row.connection_id!r} of tenant {row.tenant!r} is being "
                    "refreshed by another broker; try again"
                )
        try:
            self._on_step("leased")
            return await self._refresh_leased(row, events, refused)
        finally:
            store.release_lease(row.tenant, row.connection_id, self.holder)

    async def _refresh_leased(
        self, row: ConnectionRow, events: AuditEvents, refused: str | None
    ) -> tuple[ConnectionRow, str]:
        row = self.vault.connection(row.tenant, row.connection_id)
        token = self._fresh(row, refused)
        if token is not None:
            return row, token
        for attempt in (1, 2):
            if row.status is not ConnectionStatus.ACTIVE:
                raise ConnectionUnusable(row)
            try:
                return await self._exchange(row, events)
            except InvalidGrant:
                again = self.vault.connection(row.tenant, row.connection_id)
                if attempt == 1 and again.version != row.version:
                    row = again  # another writer stored a newer refresh token: use it once
                    continue
                reason = "the provider refused the refresh token (invalid_grant)"
                marked = self.vault.mark_needs_reconnect(again, reason)
                events.add(
                    "credential.revoked",
                    self.vault.clock.now(),
                    {"connection_id": row.connection_id, "provider": row.provider,
                     "reason": f"needs_reconnect: {reason}"},
                )  # fmt: skip
                raise ConnectionUnusable(marked) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, row: ConnectionRow, events: AuditEvents) -> tuple[ConnectionRow, str]:
        provider = self.vault.provider(row.provider)
        if provider.refresh is None:
            raise ProviderRejected(row.provider, "this provider does not use OAuth")
        version, fields = self.vault.read_fields(row)
        try:
            self._on_step("requesting")
            endpoints = Endpoints(api=row.api_url, token=row.token_url)
            grant = await provider.refresh(self.http, endpoints, Credential(fields=fields))
            self._on_step("received")
            now = self.vault.clock.now()
            expires_at = now + timedelta(seconds=max(grant.expires_in, 0))
            sealed_token = self.vault.seal_token(row, grant.access_token)
            rotated = grant.refresh_token is not None and grant.refresh_token != fields.get(
                "refresh_token"
            )
            if rotated:
                assert grant.refresh_token is not None
                fields["refresh_token"] = grant.refresh_token
                sealed = self.vault.seal_fields(row, fields)
                if not self.vault.store.swap_credential(
                    row.tenant, row.connection_id, version, sealed, now,
                    access=(sealed_token, expires_at),
                ):  # fmt: skip
                    raise RefreshBusy(
                        f"connection {row.connection_id!r} of tenant {row.tenant!r} moved "
                        "during a refresh (lease expired?): the new token could not be stored"
                    )
            else:
                self.vault.store.put_access_token(
                    row.tenant, row.connection_id, version, sealed_token, expires_at
                )
            self._on_step("stored")
        finally:
            fields.clear()
        events.add(
            "credential.rotated",
            now,
            {"connection_id": row.connection_id, "provider": row.provider,
             "reason": "access token refreshed" + ("; refresh token rotated" if rotated else "")},
        )  # fmt: skip
        return self.vault.connection(row.tenant, row.connection_id), grant.access_token
