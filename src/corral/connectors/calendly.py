"""Calendly API v2: book a meeting and cancel a scheduled event (``TOOLS.md``), over OAuth 2.0.

Sources: ``specs/calendly/calendly_api_v2.trimmed.json`` (``GET /users/me``,
``GET /event_types/{uuid}``, ``GET /scheduled_events``, ``GET /scheduled_events/{uuid}``,
``GET /scheduled_events/{uuid}/invitees``, ``POST /scheduled_events/{uuid}/cancellation``) and
the hand-authored ``calendly.supplement.openapi.json`` (``POST /invitees``, ``POST /oauth/token``).

Why the steps are what they are (``specs/NOTES.md``, "Calendly API v2"):

- ``POST /invitees`` books at ``start_time`` for the event type's own ``duration``; it takes no
  end. So ``book`` first reads the event type and refuses, sending nothing, when
  ``end_time - start_time`` is not that duration: the effect the supervisor checked
  (``[start_time, end_time)``) is then exactly what Calendly books.
- Calendly has no idempotency key: a retry of the same booking would meet
  ``already_filled``. Both tools are ``intent_log``: the broker records the intent, and an
  unknown outcome is settled by asking: ``book`` lists the connection user's scheduled events
  around ``start_time`` with the invitee's email and matches start time and event type;
  ``cancel_event`` reads the event's ``status``.
- Resources are named by full URIs (``https://api.calendly.com/event_types/…``), but every
  request goes to ``ctx.endpoints.api``: ids are taken from the URIs' last path segment.
- Refresh tokens are single-use: each refresh returns a new one and revokes the old
  (``rotates_refresh_token=True``); web clients authenticate with HTTP Basic.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import AfterValidator, Field, model_validator

from corral.connectors._base import (
    JSON,
    Arguments,
    CallContext,
    ConnectorError,
    Credential,
    Effect,
    EffectKind,
    Endpoints,
    OutcomeUnknown,
    Provider,
    ProviderRejected,
    TokenGrant,
    Tool,
)
from corral.connectors._fields import Email, NonEmpty, Timestamp, email_key
from corral.connectors._http import Edge

__all__ = [
    "BOOK",
    "CANCEL_EVENT",
    "PROVIDER",
    "BookArgs",
    "CancelEventArgs",
    "Invitee",
]

_NAME = "calendly"
_EVENT_TYPE_URI = re.compile(r"https?://[^/\s]+/event_types/([A-Za-z0-9-]{1,64})\Z")
_UUID = r"^[A-Za-z0-9-]{1,64}$"
_ALREADY_CANCELED = "Event is already canceled"
"""The 403 message of ``POST /scheduled_events/{uuid}/cancellation`` for a canceled event."""
_MAX_PAGES = 10


# --- arguments ----------------------------------------------------------------------------------


def _iana_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("must be an IANA time zone, e.g. America/New_York") from None
    return value


def _event_type_uri(value: str) -> str:
    if not _EVENT_TYPE_URI.match(value):
        raise ValueError("must be an event type URI, e.g. https://api.calendly.com/event_types/ET1")
    return value


class Invitee(Arguments):
    """Who books: ``name``, ``email`` and ``timezone`` (an IANA zone), as ``POST /invitees``."""

    name: NonEmpty
    email: Email
    timezone: Annotated[str, AfterValidator(_iana_zone)]


class BookArgs(Arguments):
    """``calendly.book``: ``invitee`` books ``event_type`` over ``[start_time, end_time)``."""

    event_type: Annotated[str, AfterValidator(_event_type_uri)]
    start_time: Timestamp
    end_time: Timestamp
    invitee: Invitee

    @model_validator(mode="after")
    def _ends_after_start(self) -> BookArgs:
        if self.end_time <= self.start_time:
            raise ValueError("end_time must be after start_time")
        return self

    @property
    def event_type_uuid(self) -> str:
        return self.event_type.rsplit("/", 1)[1]


class CancelEventArgs(Arguments):
    """``calendly.cancel_event``: the scheduled event's uuid and an optional reason."""

    event_uuid: Annotated[str, Field(pattern=_UUID)]
    reason: Annotated[str, Field(max_length=10000)] | None = None


# --- effects ------------------------------------------------------------------------------------


def _book_effect(args: BookArgs) -> Effect:
    return Effect(
        EffectKind.BOOKING,
        resource=f"{_NAME}:{args.event_type}",
        start=args.start_time,
        end=args.end_time,
    )


def _cancel_effect(args: CancelEventArgs) -> Effect:
    return Effect(EffectKind.CANCELLATION, target=f"{_NAME}:{args.event_uuid}")


# --- the HTTP edge ------------------------------------------------------------------------------

_EDGE = Edge(_NAME, "Calendly")


def _envelope(response: httpx.Response) -> tuple[str | None, str]:
    """``(code, message)`` of Calendly's ``{title, message, details[{parameter, message,
    code}]}``: the first detail's ``code`` (``already_filled``), else the ``title``."""
    try:
        body = response.json()
        details = [d for d in body.get("details") or [] if isinstance(d, dict)]
        code = next((d["code"] for d in details if d.get("code")), None) or body["title"]
        said = [f"{d.get('parameter', '')}: {d.get('message', '')}".strip(": ") for d in details]
        return str(code), " ".join([str(body["message"]), "; ".join(said)]).strip()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"HTTP {response.status_code}"


def _refusal(response: httpx.Response, credential: Credential) -> ConnectorError:
    code, message = _envelope(response)
    return _EDGE.refusal(response.status_code, message, credential, code=code)


async def _call(ctx: CallContext, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """:meth:`Edge.call` with the access token as bearer and Calendly's refusals."""
    bearer = {"Authorization": f"Bearer {ctx.credential.access_token}"}
    return await _EDGE.call(ctx, method, path, headers=bearer, refusal=_refusal, **kwargs)


def _utc(when: datetime) -> str:
    """Calendly's time format: UTC with microseconds (``2020-01-02T03:04:05.678123Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _uuid(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


# --- book ---------------------------------------------------------------------------------------


async def _check_duration(ctx: CallContext, args: BookArgs) -> None:
    """Refuse, before anything is sent, a span that is not the event type's ``duration``."""
    response = await _call(ctx, "GET", f"/event_types/{quote(args.event_type_uuid)}")
    try:
        minutes = float(_EDGE.body(response)["resource"]["duration"])
    except (KeyError, TypeError, ValueError):
        raise ProviderRejected(_NAME, "the event type has no readable duration") from None
    if args.end_time - args.start_time != timedelta(minutes=minutes):
        raise ProviderRejected(
            _NAME,
            f"the event type lasts {minutes:g} minutes, but end_time - start_time is "
            f"{(args.end_time - args.start_time).total_seconds() / 60:g} minutes",
            code="duration_mismatch",
        )


def _booked(body: Any) -> dict[str, JSON]:
    invitee = body["resource"]
    return {
        "event_id": _uuid(invitee["event"]),
        "invitee_uri": str(invitee["uri"]),
        "status": str(invitee["status"]),
    }


async def _book(ctx: CallContext, args: BookArgs) -> dict[str, JSON]:
    """``GET /event_types/{uuid}`` (duration check), then ``POST /invitees``."""
    await _check_duration(ctx, args)
    body = {
        "event_type": args.event_type,
        "start_time": _utc(args.start_time),
        "invitee": {
            "name": args.invitee.name,
            "email": args.invitee.email,
            "timezone": args.invitee.timezone,
        },
    }
    return _EDGE.read(await _call(ctx, "POST", "/invitees", json=body), _booked)


async def _scheduled_events(
    ctx: CallContext, params: dict[str, str]
) -> AsyncIterator[Mapping[str, Any]]:
    """Every event of ``GET /scheduled_events`` for ``params``, page by page."""
    for _ in range(_MAX_PAGES):
        body = _EDGE.body(await _call(ctx, "GET", "/scheduled_events", params=params))
        for event in body["collection"]:
            yield event
        token = body["pagination"].get("next_page_token")
        if not token:
            return
        params = {**params, "page_token": token}
    raise OutcomeUnknown(_NAME, "too many scheduled events to tell")


def _is_booking(event: Mapping[str, Any], args: BookArgs) -> bool:
    starts = datetime.fromisoformat(str(event["start_time"]))
    return starts == args.start_time and _uuid(event["event_type"]) == args.event_type_uuid


async def _find_booking(ctx: CallContext, args: BookArgs) -> dict[str, JSON] | None:
    """The connection user's scheduled event of this type at ``start_time`` with this invitee
    (an active one first), with the invitee's URI; ``None`` when there is none.

    ``min_start_time`` is a second early because the description says "after this time".
    """
    me = _EDGE.body(await _call(ctx, "GET", "/users/me"))["resource"]["uri"]
    params = {
        "user": str(me),
        "invitee_email": args.invitee.email,
        "min_start_time": _utc(args.start_time - timedelta(seconds=1)),
        "max_start_time": _utc(args.end_time),
        "count": "100",
    }
    found = [event async for event in _scheduled_events(ctx, params) if _is_booking(event, args)]
    if not found:
        return None
    event = min(found, key=lambda e: e["status"] != "active")
    return await _invitee_of(ctx, _uuid(event["uri"]), args.invitee.email)


async def _invitee_of(ctx: CallContext, event_uuid: str, email: str) -> dict[str, JSON]:
    path = f"/scheduled_events/{quote(event_uuid)}/invitees"
    body = _EDGE.body(await _call(ctx, "GET", path, params={"email": email}))
    invitees = [i for i in body["collection"] if email_key(i["email"]) == email_key(email)]
    if not invitees:
        raise OutcomeUnknown(_NAME, "the event exists but lists no such invitee")
    invitee = min(invitees, key=lambda i: i["status"] != "active")
    return {"event_id": event_uuid, "invitee_uri": invitee["uri"], "status": invitee["status"]}


# --- cancel_event -------------------------------------------------------------------------------


async def _cancel(ctx: CallContext, args: CancelEventArgs) -> dict[str, JSON]:
    """``POST /scheduled_events/{uuid}/cancellation``. A 403 "Event is already canceled" is
    the state asked for, so it counts as done (a retry after a lost answer meets it)."""
    path = f"/scheduled_events/{quote(args.event_uuid)}/cancellation"
    body = {"reason": args.reason} if args.reason is not None else {}
    response = await _call(ctx, "POST", path, json=body, accept=(403,))
    if response.status_code == 403 and _envelope(response)[1] != _ALREADY_CANCELED:
        raise _refusal(response, ctx.credential)
    return {"event_id": args.event_uuid, "status": "canceled"}


async def _find_cancellation(ctx: CallContext, args: CancelEventArgs) -> dict[str, JSON] | None:
    """The event's ``status``: ``canceled`` means the cancellation holds; a missing event was
    never cancelled by this call."""
    path = f"/scheduled_events/{quote(args.event_uuid)}"
    response = await _call(ctx, "GET", path, accept=(404,))
    if response.status_code == 404:
        return None
    status = _EDGE.body(response)["resource"]["status"]
    return {"event_id": args.event_uuid, "status": "canceled"} if status == "canceled" else None


# --- OAuth refresh ------------------------------------------------------------------------------


async def _refresh(
    http: httpx.AsyncClient, endpoints: Endpoints, credential: Credential
) -> TokenGrant:
    """RFC 6749 §6 at ``auth.calendly.com/oauth/token`` with HTTP Basic client authentication
    (supplement ``POST /oauth/token``); the answer's ``refresh_token`` replaces the old one, and
    ``invalid_grant`` names a used or revoked one."""
    form = {"grant_type": "refresh_token", "refresh_token": credential.fields["refresh_token"]}
    client = (credential.fields["client_id"], credential.fields["client_secret"])
    return await _EDGE.refresh(http, endpoints, credential, form=form, auth=client)


# --- declarations -------------------------------------------------------------------------------

BOOK: Tool[BookArgs] = Tool(
    name="calendly.book",
    operation="POST /invitees",
    args=BookArgs,
    effect=_book_effect,
    execute=_book,
    reconcile=_EDGE.reconciler(_find_booking),
    idempotency="intent_log",
)

CANCEL_EVENT: Tool[CancelEventArgs] = Tool(
    name="calendly.cancel_event",
    operation="POST /scheduled_events/{uuid}/cancellation",
    args=CancelEventArgs,
    effect=_cancel_effect,
    execute=_cancel,
    reconcile=_EDGE.reconciler(_find_cancellation),
    idempotency="intent_log",
)

PROVIDER = Provider(
    name=_NAME,
    auth="oauth",
    fields=("client_id", "client_secret", "refresh_token"),
    endpoints=Endpoints(
        api="https://api.calendly.com",
        token="https://auth.calendly.com/oauth/token",  # noqa: S106 (a URL, not a secret)
    ),
    tools=(BOOK, CANCEL_EVENT),
    refresh=_refresh,
    rotates_refresh_token=True,
)
