"""HighLevel (GoHighLevel, LeadConnector) API 2.0: message a contact, upsert a contact, book an
appointment (``TOOLS.md``), over OAuth 2.0.

Sources: ``specs/gohighlevel/highlevel_conversations.trimmed.json``
(``POST /conversations/messages``), ``highlevel_contacts.trimmed.json``
(``POST /contacts/upsert``), ``highlevel_calendars.trimmed.json``
(``POST /calendars/events/appointments``, ``GET /calendars/{calendarId}/free-slots``) and
``highlevel_oauth.trimmed.json`` (``POST /oauth/token``); the narrative facts are in
``specs/NOTES.md`` ("HighLevel").

Why it is built this way:

- Every call carries the ``Version`` header its operation declares: ``2021-07-28`` for
  contacts, ``2021-04-15`` for conversations and calendars.
- Every write names the connection's sub-account, the ``location_id`` credential field.
- HighLevel has no idempotency key. ``upsert_contact`` is idempotent by nature (the location
  matches the contact by email or phone and updates it), so repeating it is safe:
  ``native``. A message or an appointment sent twice is two, so those are ``intent_log``.
- Settling an unknown outcome: a message cannot be looked up without its id, which only the
  lost answer held (``reconcile=None``). An appointment cannot be found either, but its
  start can be proven free: if ``free-slots`` still offers a slot at ``start``, nothing was
  booked there (``None``); otherwise it cannot tell (:class:`OutcomeUnknown`).
- Refresh tokens rotate: each refresh returns a new one and a used one is refused with
  ``400 "Invalid grant: refresh token is invalid"`` (``highlevel_oauth_token_errors.
  v3_examples.json``); client credentials go in the form body.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, model_validator

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
    TokenGrant,
    Tool,
)
from corral.connectors._fields import Email, NonEmpty, PhoneNumber, Timestamp, email_key
from corral.connectors._http import Edge

__all__ = [
    "BOOK_APPOINTMENT",
    "PROVIDER",
    "SEND_MESSAGE",
    "UPSERT_CONTACT",
    "BookAppointmentArgs",
    "SendMessageArgs",
    "UpsertContactArgs",
]

_NAME = "ghl"
_CONTACTS_VERSION = "2021-07-28"
_MESSAGES_VERSION = "2021-04-15"
_CALENDARS_VERSION = "2021-04-15"


# --- arguments ----------------------------------------------------------------------------------


class SendMessageArgs(Arguments):
    """``ghl.send_message``: an SMS or an email to a contact, through its conversation."""

    contact_id: NonEmpty
    type: Literal["SMS", "Email"]
    message: Annotated[str, Field(min_length=1, max_length=10000)]


class UpsertContactArgs(Arguments):
    """``ghl.upsert_contact``: create or update the location's contact with this phone/email."""

    phone: PhoneNumber | None = None
    email: Email | None = None
    first_name: NonEmpty | None = None
    last_name: NonEmpty | None = None

    @model_validator(mode="after")
    def _phone_or_email(self) -> UpsertContactArgs:
        if self.phone is None and self.email is None:
            raise ValueError("at least one of phone and email is required")
        return self


class BookAppointmentArgs(Arguments):
    """``ghl.book_appointment``: the contact's appointment on a calendar over ``[start, end)``."""

    calendar_id: NonEmpty
    contact_id: NonEmpty
    start: Timestamp
    end: Timestamp
    title: NonEmpty | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> BookAppointmentArgs:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


# --- effects ------------------------------------------------------------------------------------


def _message_effect(args: SendMessageArgs) -> Effect:
    return Effect(EffectKind.MESSAGE, recipient=f"ghl_contact:{args.contact_id}", body=args.message)


def _upsert_effect(args: UpsertContactArgs) -> Effect:
    """The contact is named by what HighLevel matches it on: its phone, else its email."""
    target = args.phone if args.phone is not None else email_key(str(args.email))
    return Effect(EffectKind.CONTACT_UPDATE, target=target)


def _appointment_effect(args: BookAppointmentArgs) -> Effect:
    return Effect(
        EffectKind.BOOKING, resource=f"{_NAME}:{args.calendar_id}", start=args.start, end=args.end
    )


# --- the HTTP edge ------------------------------------------------------------------------------

_EDGE = Edge(_NAME, "HighLevel")


def _envelope(response: httpx.Response) -> tuple[str | None, str]:
    """``(error, message)`` of HighLevel's NestJS ``{statusCode, message, error}``; a 422's
    ``message`` is a list of strings."""
    try:
        body = response.json()
        message = body["message"]
        text = "; ".join(map(str, message)) if isinstance(message, list) else str(message)
        error = body.get("error")
        return (str(error) if error else None), text
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"HTTP {response.status_code}"


def _refusal(response: httpx.Response, credential: Credential) -> ConnectorError:
    code, message = _envelope(response)
    return _EDGE.refusal(response.status_code, message, credential, code=code)


async def _call(
    ctx: CallContext, method: str, path: str, *, version: str, **kwargs: Any
) -> httpx.Response:
    """:meth:`Edge.call` with the access token as bearer, the operation's ``Version`` and
    HighLevel's refusals."""
    headers = {"Authorization": f"Bearer {ctx.credential.access_token}", "Version": version}
    return await _EDGE.call(ctx, method, path, headers=headers, refusal=_refusal, **kwargs)


def _location(ctx: CallContext) -> str:
    return ctx.credential.fields["location_id"]


# --- send_message -------------------------------------------------------------------------------


async def _send_message(ctx: CallContext, args: SendMessageArgs) -> dict[str, JSON]:
    """``POST /conversations/messages`` in the contact's conversation."""
    body = {"type": args.type, "contactId": args.contact_id, "message": args.message}
    response = await _call(
        ctx, "POST", "/conversations/messages", version=_MESSAGES_VERSION, json=body
    )
    return _EDGE.read(
        response,
        lambda sent: {
            "message_id": str(sent["messageId"]),
            "conversation_id": str(sent["conversationId"]),
        },
    )


# --- upsert_contact -----------------------------------------------------------------------------


def _contact_body(ctx: CallContext, args: UpsertContactArgs) -> dict[str, JSON]:
    given = {
        "phone": args.phone,
        "email": args.email,
        "firstName": args.first_name,
        "lastName": args.last_name,
    }
    return {"locationId": _location(ctx), **{k: v for k, v in given.items() if v is not None}}


async def _upsert_contact(ctx: CallContext, args: UpsertContactArgs) -> dict[str, JSON]:
    """``POST /contacts/upsert``: ``new`` says whether HighLevel created the contact."""
    body = _contact_body(ctx, args)
    response = await _call(ctx, "POST", "/contacts/upsert", version=_CONTACTS_VERSION, json=body)
    return _EDGE.read(
        response,
        lambda saved: {"contact_id": str(saved["contact"]["id"]), "new": bool(saved["new"])},
    )


# --- book_appointment ---------------------------------------------------------------------------


async def _book_appointment(ctx: CallContext, args: BookAppointmentArgs) -> dict[str, JSON]:
    """``POST /calendars/events/appointments``; the appointment id is the booking's event id."""
    body: dict[str, JSON] = {
        "calendarId": args.calendar_id,
        "locationId": _location(ctx),
        "contactId": args.contact_id,
        "startTime": args.start.isoformat(),
        "endTime": args.end.isoformat(),
    }
    if args.title is not None:
        body["title"] = args.title
    path = "/calendars/events/appointments"
    response = await _call(ctx, "POST", path, version=_CALENDARS_VERSION, json=body)
    return _EDGE.read(
        response,
        lambda booked: {
            "event_id": str(booked["id"]),
            "status": str(booked.get("appointmentStatus", "confirmed")),
        },
    )


def _epoch_ms(when: datetime) -> str:
    return str(int(when.timestamp() * 1000))


async def _prove_not_booked(ctx: CallContext, args: BookAppointmentArgs) -> dict[str, JSON] | None:
    """``None`` when ``free-slots`` still offers ``start`` (no appointment holds it, so this
    one was not made); otherwise :class:`OutcomeUnknown`: HighLevel's description offers no
    way to find an appointment without its id."""
    day = datetime.combine(args.start.astimezone(UTC).date(), time(), tzinfo=UTC)
    params = {
        "startDate": _epoch_ms(day),
        "endDate": _epoch_ms(day + timedelta(days=1)),
        "timezone": "UTC",
    }
    path = f"/calendars/{quote(args.calendar_id, safe='')}/free-slots"
    days = (await _call(ctx, "GET", path, version=_CALENDARS_VERSION, params=params)).json()
    free = {datetime.fromisoformat(slot) for listed in days.values() for slot in listed["slots"]}
    if args.start in free:
        return None
    raise OutcomeUnknown(
        _NAME, "the start is not free: an appointment holds it, which may or may not be this one"
    )


# --- OAuth refresh ------------------------------------------------------------------------------


async def _refresh(
    http: httpx.AsyncClient, endpoints: Endpoints, credential: Credential
) -> TokenGrant:
    """``POST /oauth/token`` (``GetAccessCodebodyDto``): client credentials in the form, for a
    sub-account (``user_type=Location``); the answer's ``refresh_token`` replaces the old one."""
    form = {
        "client_id": credential.fields["client_id"],
        "client_secret": credential.fields["client_secret"],
        "grant_type": "refresh_token",
        "refresh_token": credential.fields["refresh_token"],
        "user_type": "Location",
    }
    return await _EDGE.refresh(http, endpoints, credential, form=form, refused=_token_refusal)


def _token_refusal(response: httpx.Response, credential: Credential) -> ConnectorError:
    """HighLevel says ``invalid_grant`` in words: ``"Invalid grant: refresh token is invalid"``
    (invalid, expired or already used)."""
    _code, message = _envelope(response)
    if message.lower().startswith("invalid grant"):
        return _EDGE.token_refusal(response.status_code, message, credential, code="invalid_grant")
    return _refusal(response, credential)


# --- declarations -------------------------------------------------------------------------------

SEND_MESSAGE: Tool[SendMessageArgs] = Tool(
    name="ghl.send_message",
    operation="POST /conversations/messages",
    args=SendMessageArgs,
    effect=_message_effect,
    execute=_send_message,
    reconcile=None,
    idempotency="intent_log",
)

UPSERT_CONTACT: Tool[UpsertContactArgs] = Tool(
    name="ghl.upsert_contact",
    operation="POST /contacts/upsert",
    args=UpsertContactArgs,
    effect=_upsert_effect,
    execute=_upsert_contact,
    reconcile=None,
    idempotency="native",
)

BOOK_APPOINTMENT: Tool[BookAppointmentArgs] = Tool(
    name="ghl.book_appointment",
    operation="POST /calendars/events/appointments",
    args=BookAppointmentArgs,
    effect=_appointment_effect,
    execute=_book_appointment,
    reconcile=_EDGE.reconciler(_prove_not_booked),
    idempotency="intent_log",
)

PROVIDER = Provider(
    name=_NAME,
    auth="oauth",
    fields=("client_id", "client_secret", "refresh_token", "location_id"),
    endpoints=Endpoints(
        api="https://services.leadconnectorhq.com",
        token="https://services.leadconnectorhq.com/oauth/token",  # noqa: S106 (a URL)
    ),
    tools=(SEND_MESSAGE, UPSERT_CONTACT, BOOK_APPOINTMENT),
    refresh=_refresh,
    rotates_refresh_token=True,
)
