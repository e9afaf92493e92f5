"""A call's effect in the supervisor's words: what it touches, for whom, when, for how much.

The connector's tool declaration gives the business keys (:class:`corral.connectors.Effect`,
from validated arguments); this module adds what depends on the tenant's policy and on
``SUPERVISOR.md``'s definitions:

- the **normalized body** of a message: Unicode NFKC, case-folded, runs of white space
  collapsed to one space, trimmed;
- the **recipient key**: E.164 as the connector normalized it (with the tenant's country), an
  email case-folded, or ``ghl_contact:<id>``;
- the booking **resource**: its calendar key, or the policy's group that contains it;
- the **local day** of the call, in the tenant's time zone;
- the **canonical arguments** (RFC 8785 of the arguments *as given*), for ``retry_storm``;
- the exact decimal **total** of an invoice.

:func:`derive` never raises for a bad call: an unknown tool or arguments that do not fit the
schema come back as :class:`InvalidCall`, which the classifier turns into ``unknown_tool`` and
``invalid_arguments``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from corral.connectors import Effect, EffectKind, InvalidArguments, catalog
from corral.connectors._fields import email_key
from corral.core.canonical import canonicalize
from corral.core.errors import CanonicalizationError
from corral.supervisor.policy import TenantPolicy

_SPACES = re.compile(r"\s+")


def normalize_body(text: str) -> str:
    """``SUPERVISOR.md``: NFKC, case-folded, white space collapsed, trimmed."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def recipient_key(recipient: str) -> str:
    """Emails compare case-insensitively; E.164 numbers and contact ids exactly."""
    return (
        email_key(recipient)
        if "@" in recipient and not recipient.startswith("ghl_contact:")
        else recipient
    )


@dataclass(frozen=True, slots=True)
class CallEffect:
    """A valid call's effect, ready for the rules."""

    tool: str
    kind: EffectKind
    at: datetime
    local_day: date
    args_key: str
    recipient: str | None = None
    body: str | None = None
    resource: str | None = None
    calendar: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    target: str | None = None
    amount: int | None = None
    currency: str | None = None
    customer: str | None = None
    total: Decimal | None = None


@dataclass(frozen=True, slots=True)
class InvalidCall:
    """A call the catalog cannot take: ``rule`` is ``unknown_tool`` or ``invalid_arguments``."""

    tool: str
    rule: str
    reason: str
    args_key: str


def args_key(args: Any) -> str:
    """SHA-256 of the RFC 8785 form of the arguments as given (``retry_storm``'s identity)."""
    try:
        return hashlib.sha256(canonicalize(args)).hexdigest()
    except (CanonicalizationError, TypeError, ValueError):
        return hashlib.sha256(repr(args).encode()).hexdigest()


def derive(
    tool: str, args: Mapping[str, Any], at: datetime, policy: TenantPolicy
) -> CallEffect | InvalidCall:
    """The effect of calling ``tool`` with ``args`` at ``at`` for a tenant with ``policy``."""
    key = args_key(args)
    declaration = catalog().get(tool)
    if declaration is None:
        return InvalidCall(tool, "unknown_tool", f"{tool!r} is not in the catalog", key)
    try:
        parsed = declaration.parse_args(args, country=policy.country)
        effect: Effect = declaration.effect(parsed)
    except InvalidArguments as exc:
        return InvalidCall(tool, "invalid_arguments", "; ".join(exc.errors), key)
    if effect.start is not None and effect.end is not None and effect.end <= effect.start:
        return InvalidCall(tool, "invalid_arguments", "end must be after start", key)
    return _from(tool, effect, at, policy, key)


def _from(tool: str, effect: Effect, at: datetime, policy: TenantPolicy, key: str) -> CallEffect:
    recipient = recipient_key(effect.recipient) if effect.recipient else None
    calendar = None
    if effect.resource is not None and effect.kind in (EffectKind.BOOKING, EffectKind.READ):
        calendar = policy.calendar_group(effect.resource)
    return CallEffect(
        tool=tool,
        kind=effect.kind,
        at=at,
        local_day=policy.local_day(at),
        args_key=key,
        recipient=recipient,
        body=normalize_body(effect.body) if effect.body is not None else None,
        resource=effect.resource,
        calendar=calendar,
        start=effect.start,
        end=effect.end,
        target=effect.target,
        amount=effect.amount,
        currency=effect.currency,
        customer=effect.target if effect.kind in (EffectKind.CHARGE, EffectKind.INVOICE) else None,
        total=Decimal(effect.total).normalize() if effect.total is not None else None,
    )


def booked_event(effect: CallEffect, event_id: str) -> str:
    """The event key a booking's ``result.event_id`` names, in the form cancellations target:
    ``google_calendar:<calendar>/<event>``, ``calendly:<uuid>``, ``ghl:<calendar>/<id>``."""
    resource = effect.resource or ""
    if resource.startswith("calendly:"):
        return f"calendly:{event_id}"
    return f"{resource}/{event_id}"
