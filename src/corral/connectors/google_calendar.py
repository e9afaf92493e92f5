"""Google Calendar v3: insert, delete and list events (``TOOLS.md``), over OAuth 2.0.

The provider's truth is the discovery document ``specs/google-calendar/
calendar.v3.discovery.trimmed.json`` (methods ``calendar.events.insert``, ``.delete``,
``.list``, ``.get``; schema ``Event``) and, for the token endpoint and the error envelope, the
hand-authored ``google_oauth_token_and_errors.supplement.openapi.json``.

Why the event id is chosen here: Calendar has no idempotency header, but ``Event.id`` may be
chosen by the client (base32hex ``[a-v0-9]``, 5–1024 characters, unique per calendar; see
``schemas.Event.properties.id``). :func:`event_id_for` derives it from the call's idempotency
key, so a retry of the same call gets ``409 duplicate`` instead of making a second event, and
the connector settles that by reading the event: idempotency is ``native``, and reconciling is
one ``GET`` of that id (``specs/NOTES.md``, "Idempotency").

Refresh tokens are not rotated (``rotates_refresh_token=False``): the token endpoint answers
without a ``refresh_token`` and the stored one stays valid.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import model_validator

from corral.connectors._base import (
    JSON,
    Arguments,
    CallContext,
    ConnectorError,
    Credential,
    Effect,
    EffectKind,
    Endpoints,
    Provider,
    ProviderRejected,
    TokenGrant,
    Tool,
)
from corral.connectors._fields import Email, NonEmpty, Timestamp
from corral.connectors._http import Edge

__all__ = [
    "DELETE_EVENT",
    "INSERT_EVENT",
    "LIST_EVENTS",
    "PROVIDER",
    "DeleteEventArgs",
    "InsertEventArgs",
    "ListEventsArgs",
    "event_id_for",
]

_NAME = "google_calendar"
_MAX_PAGES = 20
"""``events.list`` pages followed at most (250 events each by default)."""
_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"})
"""403/429 reasons that mean "slow down": nothing happened, a later retry may succeed."""


# --- arguments ----------------------------------------------------------------------------------


class InsertEventArgs(Arguments):
    """``google_calendar.insert_event``: a timed event over ``[start, end)``."""

    calendar_id: NonEmpty
    start: Timestamp
    end: Timestamp
    summary: NonEmpty
    attendees: list[Email] | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> InsertEventArgs:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class DeleteEventArgs(Arguments):
    """``google_calendar.delete_event``."""

    calendar_id: NonEmpty
    event_id: NonEmpty


class ListEventsArgs(Arguments):
    """``google_calendar.list_events``: events overlapping ``(time_min, time_max)``."""

    calendar_id: NonEmpty
    time_min: Timestamp
    time_max: Timestamp

    @model_validator(mode="after")
    def _range_not_empty(self) -> ListEventsArgs:
        if self.time_max <= self.time_min:
            raise ValueError("time_max must be after time_min")
        return self


def event_id_for(idempotency_key: str) -> str:
    """The client-chosen ``Event.id`` of the call with this idempotency key.

    The key's UTF-8 bytes in lowercase base32hex without padding (RFC 4648 §7), after the
    prefix ``corral``: only ``[a-v0-9]``, at least 8 characters, deterministic, and injective
    (distinct keys give distinct ids), as ``schemas.Event.properties.id`` asks.
    """
    encoded = base64.b32hexencode(idempotency_key.encode("utf-8")).decode("ascii")
    return "corral" + encoded.rstrip("=").lower()


# --- effects ------------------------------------------------------------------------------------


def _resource(calendar_id: str) -> str:
    return f"{_NAME}:{calendar_id}"


def _insert_effect(args: InsertEventArgs) -> Effect:
    return Effect(
        EffectKind.BOOKING, resource=_resource(args.calendar_id), start=args.start, end=args.end
    )


def _delete_effect(args: DeleteEventArgs) -> Effect:
    return Effect(EffectKind.CANCELLATION, target=f"{_resource(args.calendar_id)}/{args.event_id}")


def _list_effect(args: ListEventsArgs) -> Effect:
    return Effect(EffectKind.READ, resource=_resource(args.calendar_id))


# --- the HTTP edge ------------------------------------------------------------------------------

_EDGE = Edge(_NAME, "Google Calendar")


def _envelope(response: httpx.Response) -> tuple[str | None, str]:
    """``(reason, message)`` of Google's ``{"error": {code, message, errors[], status}}``."""
    try:
        error = response.json()["error"]
        reasons = [e.get("reason") for e in error.get("errors", []) if isinstance(e, dict)]
        code = next((r for r in reasons if r), None) or error.get("status")
        return (str(code) if code else None), str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"HTTP {response.status_code}"


def _refusal(response: httpx.Response, credential: Credential) -> ConnectorError:
    """The error for a non-2xx answer (``specs/NOTES.md``, "Errors"); a 403 with a rate reason
    is "try later" as a 429 is."""
    code, message = _envelope(response)
    retryable = response.status_code == 403 and code in _RATE_REASONS
    return _EDGE.refusal(response.status_code, message, credential, code=code, retryable=retryable)


async def _call(ctx: CallContext, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """:meth:`Edge.call` with the access token as bearer and Google's refusals."""
    bearer = {"Authorization": f"Bearer {ctx.credential.access_token}"}
    return await _EDGE.call(ctx, method, path, headers=bearer, refusal=_refusal, **kwargs)


def _events_path(calendar_id: str, event_id: str | None = None) -> str:
    path = f"/calendars/{quote(calendar_id, safe='')}/events"
    return path if event_id is None else f"{path}/{quote(event_id, safe='')}"


def _when(value: Mapping[str, Any]) -> str:
    """An ``EventDateTime`` as text: ``dateTime`` for timed events, ``date`` for all-day ones."""
    return str(value.get("dateTime") or value["date"])


# --- insert_event -------------------------------------------------------------------------------


def _inserted(event: Mapping[str, Any]) -> dict[str, JSON]:
    return {
        "event_id": str(event["id"]),
        "status": str(event.get("status", "confirmed")),
        "start": _when(event["start"]),
        "end": _when(event["end"]),
    }


def _event_body(args: InsertEventArgs, event_id: str) -> dict[str, JSON]:
    body: dict[str, JSON] = {
        "id": event_id,
        "summary": args.summary,
        "start": {"dateTime": args.start.isoformat()},
        "end": {"dateTime": args.end.isoformat()},
    }
    if args.attendees:
        body["attendees"] = [{"email": email} for email in args.attendees]
    return body


async def _insert(ctx: CallContext, args: InsertEventArgs) -> dict[str, JSON]:
    """``events.insert`` with the derived id; ``409 duplicate`` means an earlier try of this
    same call made the event, so the answer is that event (read back by id)."""
    event_id = event_id_for(ctx.idempotency_key)
    body = _event_body(args, event_id)
    response = await _call(ctx, "POST", _events_path(args.calendar_id), json=body, accept=(409,))
    if response.status_code == 409:
        response = await _call(ctx, "GET", _events_path(args.calendar_id, event_id))
    return _EDGE.read(response, _inserted)


async def _find_inserted(ctx: CallContext, args: InsertEventArgs) -> dict[str, JSON] | None:
    """The event this call's id names, or ``None`` when Calendar has no such event (404)."""
    path = _events_path(args.calendar_id, event_id_for(ctx.idempotency_key))
    response = await _call(ctx, "GET", path, accept=(404,))
    return None if response.status_code == 404 else _EDGE.read(response, _inserted)


# --- delete_event -------------------------------------------------------------------------------


async def _delete(ctx: CallContext, args: DeleteEventArgs) -> dict[str, JSON]:
    """``events.delete``; ``410 Gone`` (already deleted) is the state asked for, so it is done."""
    await _call(ctx, "DELETE", _events_path(args.calendar_id, args.event_id), accept=(410,))
    return {"event_id": args.event_id, "status": "cancelled"}


async def _find_deleted(ctx: CallContext, args: DeleteEventArgs) -> dict[str, JSON] | None:
    """``events.get`` returns deleted events too, with ``status: cancelled``; 404 means there
    was never such an event, so no delete of it happened."""
    response = await _call(ctx, "GET", _events_path(args.calendar_id, args.event_id), accept=(404,))
    if response.status_code == 404 or _EDGE.read(response, _inserted)["status"] != "cancelled":
        return None
    return {"event_id": args.event_id, "status": "cancelled"}


# --- list_events --------------------------------------------------------------------------------


def _listed(event: Mapping[str, Any]) -> dict[str, JSON]:
    return {**_inserted(event), "summary": str(event.get("summary", ""))}


def _page(body: Any) -> dict[str, JSON]:
    return {
        "events": [_listed(event) for event in body.get("items", [])],
        "next": body.get("nextPageToken"),
    }


async def _list(ctx: CallContext, args: ListEventsArgs) -> dict[str, JSON]:
    """``events.list`` with single events in start order, every page. A range with more than
    ``_MAX_PAGES`` pages is refused rather than cut short: a partial list reads as free time."""
    params = {
        "timeMin": args.time_min.isoformat(),
        "timeMax": args.time_max.isoformat(),
        "singleEvents": "true",
        "orderBy": "startTime",
    }
    events: list[JSON] = []
    for _ in range(_MAX_PAGES):
        response = await _call(ctx, "GET", _events_path(args.calendar_id), params=params)
        page = _EDGE.read(response, _page)
        events += page["events"]
        if not page["next"]:
            return {"events": events}
        params["pageToken"] = str(page["next"])
    raise ProviderRejected(
        _NAME, f"more than {len(events)} events in the range; ask for a narrower one"
    )


# --- OAuth refresh ------------------------------------------------------------------------------


async def _refresh(
    http: httpx.AsyncClient, endpoints: Endpoints, credential: Credential
) -> TokenGrant:
    """RFC 6749 §6 at Google's token endpoint: client credentials in the form body
    (``google_oauth_token_and_errors.supplement.openapi.json``, ``RefreshTokenRequest``); an
    ``invalid_grant`` needs a new consent."""
    form = {
        "client_id": credential.fields["client_id"],
        "client_secret": credential.fields["client_secret"],
        "refresh_token": credential.fields["refresh_token"],
        "grant_type": "refresh_token",
    }
    return await _EDGE.refresh(http, endpoints, credential, form=form)


# --- declarations -------------------------------------------------------------------------------

INSERT_EVENT: Tool[InsertEventArgs] = Tool(
    name="google_calendar.insert_event",
    operation="POST /calendars/{calendarId}/events",
    args=InsertEventArgs,
    effect=_insert_effect,
    execute=_insert,
    reconcile=_EDGE.reconciler(_find_inserted),
    idempotency="native",
)

DELETE_EVENT: Tool[DeleteEventArgs] = Tool(
    name="google_calendar.delete_event",
    operation="DELETE /calendars/{calendarId}/events/{eventId}",
    args=DeleteEventArgs,
    effect=_delete_effect,
    execute=_delete,
    reconcile=_EDGE.reconciler(_find_deleted),
    idempotency="native",
)

LIST_EVENTS: Tool[ListEventsArgs] = Tool(
    name="google_calendar.list_events",
    operation="GET /calendars/{calendarId}/events",
    args=ListEventsArgs,
    effect=_list_effect,
    execute=_list,
    reconcile=None,
    idempotency="read_only",
)

PROVIDER = Provider(
    name=_NAME,
    auth="oauth",
    fields=("client_id", "client_secret", "refresh_token"),
    endpoints=Endpoints(
        api="https://www.googleapis.com/calendar/v3",
        token="https://oauth2.googleapis.com/token",  # noqa: S106 (a URL, not a secret)
    ),
    tools=(INSERT_EVENT, DELETE_EVENT, LIST_EVENTS),
    refresh=_refresh,
    rotates_refresh_token=False,
)
