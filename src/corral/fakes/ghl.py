"""A local HighLevel (GoHighLevel) API 2.0 and OAuth token endpoint, kept in memory.

It follows ``specs/gohighlevel/highlevel_contacts.trimmed.json`` (``POST /contacts/upsert``),
``highlevel_conversations.trimmed.json`` (``POST /conversations/messages``),
``highlevel_calendars.trimmed.json`` (``POST /calendars/events/appointments``,
``GET /calendars/{calendarId}/free-slots``) and ``highlevel_oauth.trimmed.json``
(``POST /oauth/token``), with the facts of ``specs/NOTES.md`` ("HighLevel"):

- errors are NestJS ``{statusCode, message, error}`` (a 422's ``message`` is a list);
- each operation needs its ``Version`` header (``2021-07-28`` contacts, ``2021-04-15``
  conversations and calendars): a missing or other value is a 400;
- a token acts for one sub-account (location); a body naming another location is refused. Real
  HighLevel answers that with 403, which the trimmed descriptions do not declare, so this fake
  answers 400 to stay inside them;
- ``POST /conversations/messages`` requires only ``type`` and ``contactId`` (the description
  also lists ``subType`` and ``status``, which NOTES.md calls over-strict), and the contact
  needs a phone for ``SMS`` and an email for ``Email``;
- a calendar accepts overlapping appointments (conflicts are the supervisor's business), and
  ``free-slots`` offers the future slots of its opening hours that no active appointment
  overlaps;
- refresh tokens rotate: each refresh returns a new one and a used one gets
  ``400 "Invalid grant: refresh token is invalid"``; access tokens last 86399 s (or until
  :meth:`GhlFake.expire_access_tokens`).
"""

from __future__ import annotations

import re
import secrets
import string
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from corral.connectors._base import Endpoints
from corral.core.clock import Clock, SystemClock
from corral.fakes._common import ASGIApp, Faults, OAuthAuthority, recorded
from corral.fakes._contract import Exchange

__all__ = ["GhlFake"]

_CONTACTS = "2021-07-28"
_CONVERSATIONS = "2021-04-15"
_CALENDARS = "2021-04-15"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_STATUSES = ("new", "confirmed", "cancelled", "showed", "noshow", "invalid")
_SCOPES = "contacts.write conversations/message.write calendars.readonly calendars/events.write"
_MAX_RANGE = timedelta(days=31)


class _Refused(Exception):
    """An error answer, raised from deep in a handler and rendered as is."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def _render(request: Request, exc: Exception) -> Response:
    if isinstance(exc, _Refused):
        return exc.response
    raise exc


def _bad_request(message: str) -> _Refused:
    body = {"statusCode": 400, "message": message, "error": "Bad Request"}
    return _Refused(JSONResponse(body, status_code=400))


def _unprocessable(*messages: str) -> _Refused:
    body = {"statusCode": 422, "message": list(messages), "error": "Unprocessable Entity"}
    return _Refused(JSONResponse(body, status_code=422))


def _unauthorized(message: str) -> _Refused:
    body = {"statusCode": 401, "message": message, "error": "Unauthorized"}
    return _Refused(JSONResponse(body, status_code=401))


def _new_id() -> str:
    """HighLevel's ids: 20 letters and digits (``ocQHyuzHvysMo5N5VsXc``)."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass
class _Contact:
    id: str
    location_id: str
    created: datetime
    updated: datetime
    phone: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None

    def resource(self) -> dict[str, Any]:
        """A ``GetContectByIdSchema``; absent values are left out (the schema has no nulls)."""
        name = " ".join(n for n in (self.first_name, self.last_name) if n)
        optional = {
            "firstName": self.first_name,
            "lastName": self.last_name,
            "name": name or None,
            "email": self.email,
            "emailLowerCase": self.email.lower() if self.email else None,
            "phone": self.phone,
        }
        return {
            "id": self.id,
            "locationId": self.location_id,
            **{k: v for k, v in optional.items() if v is not None},
            "dnd": False,
            "type": "lead",
            "source": "public api",
            "tags": [],
            "customFields": [],
            "dateAdded": _stamp(self.created),
            "dateUpdated": _stamp(self.updated),
        }


@dataclass
class _Calendar:
    id: str
    slot_minutes: int
    opens: time
    closes: time
    timezone: str


@dataclass
class _Appointment:
    id: str
    calendar_id: str
    contact_id: str
    start: datetime
    end: datetime
    start_text: str
    end_text: str
    title: str
    status: str

    def resource(self, location_id: str, user_id: str) -> dict[str, Any]:
        """An ``AppointmentSchemaResponse``."""
        return {
            "id": self.id,
            "calendarId": self.calendar_id,
            "locationId": location_id,
            "contactId": self.contact_id,
            "startTime": self.start_text,
            "endTime": self.end_text,
            "title": self.title,
            "meetingLocationType": "default",
            "appointmentStatus": self.status,
            "assignedUserId": user_id,
            "isRecurring": False,
        }


@dataclass
class _Message:
    id: str
    conversation_id: str
    contact_id: str
    type: str
    body: str
    created: datetime


@dataclass
class _Location:
    id: str
    company_id: str
    user_id: str
    contacts: dict[str, _Contact] = field(default_factory=dict)
    calendars: dict[str, _Calendar] = field(default_factory=dict)
    appointments: dict[str, _Appointment] = field(default_factory=dict)
    conversations: dict[str, str] = field(default_factory=dict)
    messages: dict[str, _Message] = field(default_factory=dict)


class GhlFake:
    """HighLevel for tests: sub-accounts (locations) with contacts, calendars, appointments and
    conversations.

    ``new_connection()`` makes a location with the app installed and returns ``client_id``,
    ``client_secret``, ``refresh_token`` and ``location_id``; :meth:`add_contact` and
    :meth:`add_calendar` seed it.
    """

    name = "ghl"

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.exchanges: list[Exchange] = []
        self.faults = Faults()
        self.oauth = OAuthAuthority(rotate=True, access_ttl_s=86399, clock=self.clock)
        self._locations: dict[str, _Location] = {}
        self._lock = threading.Lock()

    # --- the Fake protocol and seeding ----------------------------------------------------------

    def endpoints(self, root: str) -> Endpoints:
        return Endpoints(api=root, token=root + "/oauth/token")

    def new_connection(self) -> dict[str, str]:
        client_id, client_secret = self.oauth.new_client()
        location = _Location(id=_new_id(), company_id=_new_id(), user_id=_new_id())
        with self._lock:
            self._locations[location.id] = location
        return {
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": self.oauth.grant(client_id, location.id),
            "location_id": location.id,
        }

    def add_contact(
        self,
        location_id: str,
        *,
        phone: str | None = None,
        email: str | None = None,
        first_name: str | None = None,
    ) -> str:
        now = self.clock.now()
        contact = _Contact(_new_id(), location_id, now, now, phone, email, first_name)
        with self._lock:
            self._locations[location_id].contacts[contact.id] = contact
        return contact.id

    def add_calendar(
        self,
        location_id: str,
        *,
        slot_minutes: int = 30,
        opens: time = time(9),
        closes: time = time(17),
        timezone: str = "UTC",
    ) -> str:
        """A calendar open ``[opens, closes)`` every day in ``timezone``, in slots of
        ``slot_minutes``."""
        calendar = _Calendar(_new_id(), slot_minutes, opens, closes, timezone)
        with self._lock:
            self._locations[location_id].calendars[calendar.id] = calendar
        return calendar.id

    def expire_access_tokens(self) -> None:
        self.oauth.expire_access_tokens()

    def contacts(self, location_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c.resource() for c in self._locations[location_id].contacts.values()]

    def appointments(self, location_id: str) -> list[dict[str, Any]]:
        with self._lock:
            location = self._locations[location_id]
            return [
                a.resource(location.id, location.user_id) for a in location.appointments.values()
            ]

    def messages(self, location_id: str) -> list[dict[str, str]]:
        with self._lock:
            return [
                {"id": m.id, "contactId": m.contact_id, "type": m.type, "message": m.body}
                for m in self._locations[location_id].messages.values()
            ]

    def app(self) -> ASGIApp:
        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        api.add_exception_handler(_Refused, _render)
        api.post("/oauth/token")(self._token)
        api.post("/contacts/upsert")(self._upsert_contact)
        api.post("/conversations/messages")(self._send_message)
        api.post("/calendars/events/appointments")(self._create_appointment)
        api.get("/calendars/{calendar_id}/free-slots")(self._free_slots)
        return recorded(self, api)

    # --- OAuth ----------------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        """``POST /oauth/token`` (refresh grant); messages as ``oauth-v3.json``'s examples."""
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        for name, said in (("client_id", "clientId"), ("client_secret", "clientSecret")):
            if not form.get(name):
                raise _bad_request(f"Missing parameter: {said}")
        if form.get("grant_type") != "refresh_token":
            raise _bad_request("Invalid parameter: grantType")
        if not form.get("refresh_token"):
            raise _bad_request("Missing parameter: refreshToken")
        if not self.oauth.client_ok(form["client_id"], form["client_secret"]):
            raise _unauthorized("Invalid client: client credentials are invalid")
        granted = self.oauth.refresh(form["client_id"], form["refresh_token"])
        if granted is None:
            raise _bad_request("Invalid grant: refresh token is invalid")
        location = self._locations[self._subject_of(granted[0])]
        return JSONResponse(
            {
                "access_token": granted[0],
                "token_type": "Bearer",
                "expires_in": self.oauth.access_ttl_s,
                "refresh_token": granted[1],
                "scope": _SCOPES,
                "userType": "Location",
                "locationId": location.id,
                "companyId": location.company_id,
                "userId": location.user_id,
                "isBulkInstallation": False,
            }
        )

    def _subject_of(self, access_token: str) -> str:
        subject = self.oauth.subject(access_token)
        if subject is None:
            raise _unauthorized("Invalid token: access token is invalid")
        return subject

    def _location(self, request: Request, version: str) -> _Location:
        """The token's location, once the ``Version`` header is the operation's."""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("Invalid token: access token is invalid")
        location = self._locations[self._subject_of(credential)]
        if request.headers.get("version") != version:
            raise _bad_request(f"Version header must be {version}")
        return location

    # --- contacts -------------------------------------------------------------------------------

    async def _upsert_contact(self, request: Request) -> Response:
        """``POST /contacts/upsert``: matched by email (case-insensitive), else by phone."""
        location = self._location(request, _CONTACTS)
        body = await _json_object(request)
        _same_location(location, body)
        fields = {k: body.get(k) for k in ("phone", "email", "firstName", "lastName")}
        if any(v is not None and not isinstance(v, str) for v in fields.values()):
            raise _unprocessable("phone, email, firstName and lastName must be strings")
        if fields["email"] is not None and not _EMAIL.match(fields["email"]):
            raise _unprocessable("email must be an email")
        if not fields["email"] and not fields["phone"]:
            raise _bad_request("Either email or phone is required")
        with self._lock:
            contact = _match(location, fields["email"], fields["phone"])
            new = contact is None
            if contact is None:
                contact = _Contact(_new_id(), location.id, self.clock.now(), self.clock.now())
                location.contacts[contact.id] = contact
            _update(contact, fields, self.clock.now())
        trace = secrets.token_hex(16)
        return JSONResponse({"new": new, "contact": contact.resource(), "traceId": trace})

    # --- conversations --------------------------------------------------------------------------

    async def _send_message(self, request: Request) -> Response:
        """``POST /conversations/messages`` in the contact's conversation (created on first use)."""
        location = self._location(request, _CONVERSATIONS)
        body = await _json_object(request)
        kind, text = body.get("type"), body.get("message")
        if kind not in ("SMS", "Email"):
            raise _bad_request("type must be one of SMS, Email")
        contact = _contact(location, body.get("contactId"))
        if not isinstance(text, str) or not text:
            raise _bad_request("message is required")
        if kind == "SMS" and not contact.phone:
            raise _bad_request("The contact has no phone number")
        if kind == "Email" and not contact.email:
            raise _bad_request("The contact has no email address")
        with self._lock:
            conversation = location.conversations.setdefault(contact.id, _new_id())
            sent = _Message(_new_id(), conversation, contact.id, kind, text, self.clock.now())
            location.messages[sent.id] = sent
        answer = {
            "conversationId": conversation,
            "messageId": sent.id,
            "msg": "Message queued successfully.",
            "status": "pending",
        }
        if kind == "Email":
            answer["emailMessageId"] = sent.id
        return JSONResponse(answer)

    # --- calendars ------------------------------------------------------------------------------

    async def _create_appointment(self, request: Request) -> Response:
        """``POST /calendars/events/appointments``; overlapping appointments are accepted."""
        location = self._location(request, _CALENDARS)
        body = await _json_object(request)
        _same_location(location, body)
        calendar = _calendar(location, body.get("calendarId"))
        contact = _contact(location, body.get("contactId"))
        start = _instant(body.get("startTime"), "startTime")
        end_text = (
            body.get("endTime") or (start + timedelta(minutes=calendar.slot_minutes)).isoformat()
        )
        end = _instant(end_text, "endTime")
        if end <= start:
            raise _bad_request("endTime must be after startTime")
        status = body.get("appointmentStatus", "confirmed")
        if status not in _STATUSES:
            raise _bad_request(f"appointmentStatus must be one of {', '.join(_STATUSES)}")
        title = body.get("title")
        title = title if isinstance(title, str) else "Appointment"
        appointment = _Appointment(
            _new_id(),
            calendar.id,
            contact.id,
            start,
            end,
            body["startTime"],
            end_text,
            title,
            status,
        )
        with self._lock:
            location.appointments[appointment.id] = appointment
        return JSONResponse(appointment.resource(location.id, location.user_id))

    async def _free_slots(self, request: Request, calendar_id: str) -> Response:
        """``GET /calendars/{calendarId}/free-slots``: ``startDate``/``endDate`` in epoch ms (at
        most 31 days apart), answered per day in ``timezone`` (default: the calendar's)."""
        location = self._location(request, _CALENDARS)
        calendar = _calendar(location, calendar_id)
        low, high = _epoch(request, "startDate"), _epoch(request, "endDate")
        if not low < high <= low + _MAX_RANGE:
            raise _bad_request("Date range cannot be more than 31 days")
        zone = _zone(request.query_params.get("timezone", calendar.timezone))
        taken = [
            (a.start, a.end)
            for a in location.appointments.values()
            if a.calendar_id == calendar.id and a.status != "cancelled"
        ]
        days: dict[str, dict[str, list[str]]] = {}
        for slot in _slots(calendar, low, high):
            free = slot > self.clock.now() and not any(
                s < slot + timedelta(minutes=calendar.slot_minutes) and slot < e for s, e in taken
            )
            if free:
                local = slot.astimezone(zone)
                days.setdefault(local.date().isoformat(), {"slots": []})["slots"].append(
                    local.isoformat()
                )
        return JSONResponse(days)


def _same_location(location: _Location, body: dict[str, Any]) -> None:
    if not body.get("locationId"):
        raise _bad_request("locationId is required")
    if body["locationId"] != location.id:
        raise _bad_request("The token does not have access to this location.")


def _contact(location: _Location, contact_id: Any) -> _Contact:
    contact = location.contacts.get(contact_id) if isinstance(contact_id, str) else None
    if contact is None:
        raise _bad_request("Contact not found")
    return contact


def _calendar(location: _Location, calendar_id: Any) -> _Calendar:
    calendar = location.calendars.get(calendar_id) if isinstance(calendar_id, str) else None
    if calendar is None:
        raise _bad_request("Calendar not found")
    return calendar


def _match(location: _Location, email: str | None, phone: str | None) -> _Contact | None:
    for contact in location.contacts.values():
        if email and contact.email and contact.email.casefold() == email.casefold():
            return contact
    for contact in location.contacts.values():
        if phone and contact.phone == phone:
            return contact
    return None


def _update(contact: _Contact, fields: dict[str, Any], now: datetime) -> None:
    contact.phone = fields["phone"] or contact.phone
    contact.email = fields["email"] or contact.email
    contact.first_name = fields["firstName"] or contact.first_name
    contact.last_name = fields["lastName"] or contact.last_name
    contact.updated = now


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _bad_request("Bad Request")
    return body


def _instant(text: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise _bad_request(f"{name} must be an ISO 8601 date and time with an offset")
    return parsed


def _epoch(request: Request, name: str) -> datetime:
    text = request.query_params.get(name, "")
    try:
        return datetime.fromtimestamp(float(text) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        raise _bad_request(f"{name} must be a number") from None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _bad_request("timezone must be an IANA time zone") from None


def _slots(calendar: _Calendar, low: datetime, high: datetime) -> list[datetime]:
    """Every slot start of the calendar's opening hours in ``[low, high)``."""
    zone, step = ZoneInfo(calendar.timezone), timedelta(minutes=calendar.slot_minutes)
    day, found = low.astimezone(zone).date() - timedelta(days=1), []
    while datetime.combine(day, calendar.opens, tzinfo=zone) < high:
        slot = datetime.combine(day, calendar.opens, tzinfo=zone)
        while slot + step <= datetime.combine(day, calendar.closes, tzinfo=zone):
            if low <= slot < high:
                found.append(slot.astimezone(UTC))
            slot += step
        day += timedelta(days=1)
    return found
