"""Turn the audit events the broker reports into audit-chain entries for its caller to append.

The broker does not write the audit chain (it has no access to it); it returns the events it
produced with each answer: ``delegation.minted``, ``credential.rotated`` (an access token
refreshed, maybe a refresh token rotated), ``credential.revoked`` (a connection revoked, or
marked ``needs_reconnect`` when the provider refused its credential) and
``credential.connected``. The caller (control, or the CLI) appends them with :func:`to_entries`.

Personal data stays erasable: a delegation's ``recipients`` go to the entry's personal payload,
not its public leaf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corral.audit.entries import (
    Actor,
    CredentialConnected,
    CredentialData,
    CredentialRevoked,
    CredentialRotated,
    DelegationMinted,
    DelegationMintedData,
    KnownEntry,
    PersonalPayload,
    seal,
)
from corral.core.clock import parse_time
from corral.core.errors import BrokerError
from corral.core.ids import IdSource

_CREDENTIAL_KINDS: dict[str, type[CredentialConnected | CredentialRotated | CredentialRevoked]] = {
    "credential.connected": CredentialConnected,
    "credential.rotated": CredentialRotated,
    "credential.revoked": CredentialRevoked,
}


def to_entries(
    events: Iterable[Mapping[str, Any]], tenant: str, ids: IdSource
) -> list[tuple[KnownEntry, PersonalPayload | None]]:
    """Entries (with their personal payloads) for the broker's ``events`` of ``tenant``."""
    out: list[tuple[KnownEntry, PersonalPayload | None]] = []
    for event in events:
        kind, data = event.get("kind"), dict(event.get("data") or {})
        actor = Actor(**event.get("actor", {"kind": "broker", "id": "broker"}))
        base = {
            "id": ids.new("ent"),
            "tenant": tenant,
            "at": parse_time(event["at"]),
            "actor": actor,
        }
        entry: KnownEntry
        personal: dict[str, Any] | None = None
        if kind == "delegation.minted":
            constraints = dict(data.pop("constraints", {}) or {})
            recipients = constraints.pop("recipients", None)
            if recipients:
                personal = {"recipients": recipients}
            data["expires_at"] = parse_time(data["expires_at"])
            entry = DelegationMinted(
                **base, data=DelegationMintedData(**data, constraints=constraints)
            )
        elif kind in _CREDENTIAL_KINDS:
            entry = _CREDENTIAL_KINDS[kind](**base, data=CredentialData(**data))
        else:
            raise BrokerError(f"the broker reported an event of unknown kind {kind!r}")
        out.append(seal(entry, personal))
    return out
