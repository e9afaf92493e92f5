"""A local Calendly API v2 and OAuth token endpoint, kept in memory.

It follows ``specs/calendly/calendly_api_v2.trimmed.json`` (``GET /users/me``,
``GET /event_types/{uuid}``, ``GET /scheduled_events``, ``GET /scheduled_events/{uuid}``,
``GET /scheduled_events/{uuid}/invitees``, ``POST /scheduled_events/{uuid}/cancellation``) and
the hand-authored ``calendly.supplement.openapi.json`` (``POST /invitees``,
``POST /oauth/token``), with the facts of ``specs/NOTES.md`` ("Calendly API v2"):

- errors are ``{title, message, details[{parameter, message, code}]}`` with the titles and
  messages of the trimmed file's ``components.responses``;
- ``POST /invitees`` books the event type's ``duration`` from ``start_time`` and refuses a
  start in the past or one the host is already booked at (``already_filled``): event types
  here are one-on-one (``kind: solo``), as the real service refuses a taken one-on-one slot;
- cancelling a canceled event is ``403 Event is already canceled``, a past one ``403 Event in
  the past``;
- refresh tokens are single-use (a refresh returns a new one and the used one then gets
  ``invalid_grant``); clients authenticate with HTTP Basic (or, for native clients, in the
  form); access tokens last 7200 s (or until :meth:`CalendlyFake.expire_access_tokens`).

Resource URIs use the real host (``https://api.calendly.com/...``), as a connection's stored
URIs would; the fake serves the paths at its own root whatever host a client uses.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from corral.connectors._base import Endpoints
from corral.core.clock import Clock, SystemClock, format_time
from corral.fakes._common import ASGIApp, Faults, OAuthAuthority, recorded, token
from corral.fakes._contract import Exchange

__all__ = ["CalendlyFake"]

API = "https://api.calendly.com"
"""The host in resource URIs."""

_EVENT_TYPE_PATH = re.compile(r"https?://[^/\s]+/event_types/([A-Za-z0-9-]+)\Z")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")
_UNAUTHENTICATED = "The access token is invalid"


class _Refused(Exception):
    """An error answer, raised from deep in a handler and rendered as is."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def _render(request: Request, exc: Exception) -> Response:
    if isinstance(exc, _Refused):
        return exc.response
    raise exc


def _error(
    status: int, title: str, message: str, details: list[dict[str, str]] | None = None
) -> _Refused:
    body: dict[str, Any] = {"title": title, "message": message}
    if details:
        body["details"] = details
    return _Refused(JSONResponse(body, status_code=status))


def _invalid(parameter: str, message: str, code: str | None = None) -> _Refused:
    """``400 Invalid Argument`` naming the parameter (``components.responses.INVALID_ARGUMENT``)."""
    detail = {"parameter": parameter, "message": message}
    if code is not None:
        detail["code"] = code
    return _error(400, "Invalid Argument", "The supplied parameters are invalid.", [detail])


def _not_found() -> _Refused:
    return _error(404, "Resource Not Found", "The server could not find the requested resource.")


def _denied(message: str) -> _Refused:
    return _error(403, "Permission Denied", message)


def _oauth_error(status: int, error: str, description: str) -> _Refused:
    body = {"error": error, "error_description": description}
    return _Refused(JSONResponse(body, status_code=status))


def _new_uuid() -> str:
    """Calendly's ids: 16 upper-case letters and digits (``GBGBDCAADAEDCRZ2``)."""
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or not _RFC3339.match(text):
        return None
    return datetime.fromisoformat(text)


@dataclass
class _User:
    uuid: str
    name: str
    email: str
    organization: str
    created: datetime

    @property
    def uri(self) -> str:
        return f"{API}/users/{self.uuid}"

    def resource(self) -> dict[str, Any]:
        slug = self.email.split("@", 1)[0]
        return {
            "uri": self.uri,
            "name": self.name,
            "slug": slug,
            "email": self.email,
            "scheduling_url": f"https://calendly.com/{slug}",
            "timezone": "America/New_York",
            "avatar_url": None,
            "created_at": format_time(self.created),
            "updated_at": format_time(self.created),
            "current_organization": f"{API}/organizations/{self.organization}",
        }


@dataclass
class _EventType:
    uuid: str
    host: _User
    name: str
    duration: int
    created: datetime
    active: bool = True

    @property
    def uri(self) -> str:
        return f"{API}/event_types/{self.uuid}"

    def resource(self) -> dict[str, Any]:
        slug = self.name.lower().replace(" ", "-")
        return {
            "uri": self.uri,
            "name": self.name,
            "active": self.active,
            "slug": slug,
            "scheduling_url": f"https://calendly.com/{self.host.email.split('@', 1)[0]}/{slug}",
            "duration": self.duration,
            "kind": "solo",
            "pooling_type": None,
            "type": "StandardEventType",
            "color": "#0069ff",
            "created_at": format_time(self.created),
            "updated_at": format_time(self.created),
            "internal_note": None,
            "description_plain": None,
            "description_html": None,
            "profile": {"type": "User", "name": self.host.name, "owner": self.host.uri},
            "secret": False,
            "booking_method": "instant",
            "custom_questions": [],
            "deleted_at": None,
            "kind_description": "One-on-One",
            "admin_managed": False,
        }


@dataclass
class _Invitee:
    uuid: str
    event_uuid: str
    name: str
    email: str
    timezone: str
    created: datetime
    updated: datetime
    status: str = "active"
    cancellation: dict[str, Any] | None = None

    @property
    def uri(self) -> str:
        return f"{API}/scheduled_events/{self.event_uuid}/invitees/{self.uuid}"

    def resource(self) -> dict[str, Any]:
        invitee: dict[str, Any] = {
            "uri": self.uri,
            "email": self.email,
            "first_name": None,
            "last_name": None,
            "name": self.name,
            "status": self.status,
            "questions_and_answers": [],
            "timezone": self.timezone,
            "event": f"{API}/scheduled_events/{self.event_uuid}",
            "created_at": format_time(self.created),
            "updated_at": format_time(self.updated),
            "tracking": dict.fromkeys(
                ("utm_campaign", "utm_source", "utm_medium", "utm_content", "utm_term"), None
            )
            | {"salesforce_uuid": None},
            "text_reminder_number": None,
            "rescheduled": False,
            "old_invitee": None,
            "new_invitee": None,
            "cancel_url": f"https://calendly.com/cancellations/{self.uuid}",
            "reschedule_url": f"https://calendly.com/reschedulings/{self.uuid}",
            "routing_form_submission": None,
            "payment": None,
            "no_show": None,
            "reconfirmation": None,
        }
        if self.cancellation is not None:
            invitee["cancellation"] = self.cancellation
        return invitee


@dataclass
class _ScheduledEvent:
    uuid: str
    event_type: _EventType
    start: datetime
    end: datetime
    created: datetime
    updated: datetime
    invitees: list[_Invitee] = field(default_factory=list)
    status: str = "active"
    cancellation: dict[str, Any] | None = None

    @property
    def uri(self) -> str:
        return f"{API}/scheduled_events/{self.uuid}"

    def resource(self) -> dict[str, Any]:
        active = sum(1 for i in self.invitees if i.status == "active")
        event: dict[str, Any] = {
            "uri": self.uri,
            "name": self.event_type.name,
            "status": self.status,
            "start_time": format_time(self.start),
            "end_time": format_time(self.end),
            "event_type": self.event_type.uri,
            "location": {"type": "physical", "location": "Office"},
            "invitees_counter": {"total": len(self.invitees), "active": active, "limit": 1},
            "created_at": format_time(self.created),
            "updated_at": format_time(self.updated),
            "event_memberships": [{"user": self.event_type.host.uri}],
            "event_guests": [],
            "calendar_event": None,
        }
        if self.cancellation is not None:
            event["cancellation"] = self.cancellation
        return event


class CalendlyFake:
    """Calendly for tests: users, one-on-one event types, scheduled events and invitees.

    ``new_connection()`` makes a user (with an organization and a "30 Minute Meeting" event
    type, listed by ``GET /event_types``) and returns the connection's ``client_id``,
    ``client_secret`` and ``refresh_token``; :meth:`add_event_type` gives that user another
    event type of a given ``duration`` and returns its URI.
    """

    name = "calendly"

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.exchanges: list[Exchange] = []
        self.faults = Faults()
        self.oauth = OAuthAuthority(rotate=True, access_ttl_s=7200, clock=self.clock)
        self._users: dict[str, _User] = {}
        self._by_client: dict[str, _User] = {}
        self._event_types: dict[str, _EventType] = {}
        self._events: dict[str, _ScheduledEvent] = {}
        self._lock = threading.Lock()

    # --- the Fake protocol and seeding --------------------------------------------------------

    def endpoints(self, root: str) -> Endpoints:
        return Endpoints(api=root, token=root + "/oauth/token")

    def new_connection(self) -> dict[str, str]:
        client_id, client_secret = self.oauth.new_client()
        user = _User(
            uuid=_new_uuid(),
            name="Dana Lee",
            email=token("host-").lower() + "@corral.example",
            organization=_new_uuid(),
            created=self.clock.now(),
        )
        with self._lock:
            self._users[user.uuid] = user
            self._by_client[client_id] = user
        connection = {
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": self.oauth.grant(client_id, user.uuid),
        }
        self.add_event_type(connection, duration=30)
        return connection

    def add_event_type(
        self, connection: dict[str, str], *, duration: int = 30, name: str | None = None
    ) -> str:
        """A one-on-one event type of ``duration`` minutes hosted by the connection's user."""
        host = self._by_client[connection["client_id"]]
        event_type = _EventType(
            _new_uuid(), host, name or f"{duration} Minute Meeting", duration, self.clock.now()
        )
        with self._lock:
            self._event_types[event_type.uuid] = event_type
        return event_type.uri

    def expire_access_tokens(self) -> None:
        self.oauth.expire_access_tokens()

    def scheduled_events(self) -> list[dict[str, Any]]:
        """Every scheduled event, canceled ones included (to check the fake's state)."""
        with self._lock:
            return [event.resource() for event in self._events.values()]

    def app(self) -> ASGIApp:
        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        api.add_exception_handler(_Refused, _render)
        api.post("/oauth/token")(self._token)
        api.get("/users/me")(self._me)
        api.get("/event_types")(self._list_event_types)
        api.get("/event_types/{uuid}")(self._event_type)
        api.post("/invitees")(self._create_invitee)
        api.get("/scheduled_events")(self._list_events)
        api.get("/scheduled_events/{uuid}")(self._get_event)
        api.get("/scheduled_events/{uuid}/invitees")(self._list_invitees)
        api.post("/scheduled_events/{uuid}/cancellation")(self._cancel)
        return recorded(self, api)

    # --- OAuth ----------------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        """``POST /oauth/token``: refresh grant, client by HTTP Basic or in the form."""
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        client_id, client_secret = _basic(request.headers.get("authorization", ""))
        client_id = client_id or form.get("client_id", "")
        client_secret = client_secret or form.get("client_secret", "")
        if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
            raise _oauth_error(
                400, "invalid_request", "grant_type=refresh_token and a refresh_token are required"
            )
        if not self.oauth.client_ok(client_id, client_secret):
            raise _oauth_error(401, "invalid_client", "Client authentication failed.")
        granted = self.oauth.refresh(client_id, form["refresh_token"])
        if granted is None:
            raise _oauth_error(
                400,
                "invalid_grant",
                "The provided authorization grant is invalid, expired, revoked, does not match "
                "the redirection URI used in the authorization request, or was issued to "
                "another client.",
            )
        user = self._by_client[client_id]
        return JSONResponse(
            {
                "token_type": "Bearer",
                "access_token": granted[0],
                "refresh_token": granted[1],
                "scope": "default",
                "created_at": int(self.clock.now().timestamp()),
                "expires_in": self.oauth.access_ttl_s,
                "owner": user.uri,
                "organization": f"{API}/organizations/{user.organization}",
            }
        )

    def _user(self, request: Request) -> _User:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        subject = self.oauth.subject(credential) if scheme.lower() == "bearer" else None
        if subject is None:
            raise _error(401, "Unauthenticated", _UNAUTHENTICATED)
        return self._users[subject]

    # --- users and event types ------------------------------------------------------------------

    async def _me(self, request: Request) -> Response:
        return JSONResponse({"resource": self._user(request).resource()})

    async def _list_event_types(self, request: Request) -> Response:
        """``GET /event_types``: ``user`` (the caller) or ``organization`` is required."""
        user = self._user(request)
        _only_own(request, user)
        shown = [
            t.resource()
            for t in self._event_types.values()
            if t.host is user
            and request.query_params.get("active") in (None, str(t.active).lower())
        ]
        return _collection(request, shown)

    async def _event_type(self, request: Request, uuid: str) -> Response:
        user = self._user(request)
        event_type = self._event_types.get(uuid)
        if event_type is None or event_type.host is not user:
            raise _not_found()
        return JSONResponse({"resource": event_type.resource()})

    # --- booking --------------------------------------------------------------------------------

    async def _create_invitee(self, request: Request) -> Response:
        """``POST /invitees``: books ``duration`` minutes from ``start_time`` (201)."""
        host = self._user(request)
        body = await _json_object(request)
        event_type = self._bookable(host, body.get("event_type"))
        start = _instant(body.get("start_time"))
        if start is None:
            raise _invalid("start_time", "start_time must be a date and time in UTC")
        invitee = _invitee_fields(body.get("invitee"))
        if start <= self.clock.now():
            raise _invalid("start_time", "start_time must be in the future")
        end = start + timedelta(minutes=event_type.duration)
        with self._lock:
            if any(self._busy(host, start, end)):
                raise _invalid(
                    "start_time", "The selected time is no longer available.", "already_filled"
                )
            booked = self._book(event_type, start, end, invitee)
        return JSONResponse({"resource": booked.resource()}, status_code=201)

    def _bookable(self, host: _User, uri: Any) -> _EventType:
        match = _EVENT_TYPE_PATH.match(uri) if isinstance(uri, str) else None
        if match is None:
            raise _invalid("event_type", "event_type must be an event type URI")
        event_type = self._event_types.get(match.group(1))
        if event_type is None or event_type.host is not host:
            raise _not_found()
        if not event_type.active:
            raise _invalid("event_type", "The event type is not active")
        return event_type

    def _busy(self, host: _User, start: datetime, end: datetime) -> list[_ScheduledEvent]:
        return [
            e
            for e in self._events.values()
            if e.status == "active"
            and e.event_type.host is host
            and e.start < end
            and start < e.end
        ]

    def _book(
        self, event_type: _EventType, start: datetime, end: datetime, who: dict[str, str]
    ) -> _Invitee:
        now = self.clock.now()
        event = _ScheduledEvent(_new_uuid(), event_type, start, end, now, now)
        invitee = _Invitee(
            _new_uuid(), event.uuid, who["name"], who["email"], who["timezone"], now, now
        )
        event.invitees.append(invitee)
        self._events[event.uuid] = event
        return invitee

    # --- scheduled events -----------------------------------------------------------------------

    async def _list_events(self, request: Request) -> Response:
        """``GET /scheduled_events``: ``user`` (the caller) or ``organization`` is required;
        ``min_start_time`` is inclusive and ``max_start_time`` exclusive."""
        user = self._user(request)
        query = request.query_params
        _only_own(request, user)
        low, high = _query_time(query, "min_start_time"), _query_time(query, "max_start_time")
        email = query.get("invitee_email")
        events = [
            e
            for e in self._events.values()
            if e.event_type.host is user
            and (low is None or e.start >= low)
            and (high is None or e.start < high)
            and query.get("status") in (None, e.status)
            and (email is None or any(i.email.casefold() == email.casefold() for i in e.invitees))
        ]
        events.sort(key=lambda e: e.start, reverse=query.get("sort") == "start_time:desc")
        return _collection(request, [e.resource() for e in events])

    def _event(self, request: Request, uuid: str) -> _ScheduledEvent:
        user = self._user(request)
        event = self._events.get(uuid)
        if event is None or event.event_type.host is not user:
            raise _not_found()
        return event

    async def _get_event(self, request: Request, uuid: str) -> Response:
        return JSONResponse({"resource": self._event(request, uuid).resource()})

    async def _list_invitees(self, request: Request, uuid: str) -> Response:
        event = self._event(request, uuid)
        query = request.query_params
        email = query.get("email")
        invitees = [
            i.resource()
            for i in event.invitees
            if (email is None or i.email.casefold() == email.casefold())
            and query.get("status") in (None, i.status)
        ]
        return _collection(request, invitees)

    async def _cancel(self, request: Request, uuid: str) -> Response:
        """``POST /scheduled_events/{uuid}/cancellation`` (201 with the ``Cancellation``)."""
        event = self._event(request, uuid)
        reason = (await _optional_json(request)).get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 10000):
            raise _invalid("reason", "reason must be a string of at most 10000 characters")
        with self._lock:
            if event.status == "canceled":
                raise _denied("Event is already canceled")
            if event.start <= self.clock.now():
                raise _denied("Event in the past")
            cancellation = {
                "canceled_by": event.event_type.host.name,
                "reason": reason,
                "canceler_type": "host",
            }
            event.status, event.cancellation, event.updated = (
                "canceled",
                cancellation,
                self.clock.now(),
            )
            for invitee in event.invitees:
                invitee.status, invitee.cancellation = "canceled", cancellation
                invitee.updated = event.updated
        return JSONResponse({"resource": cancellation}, status_code=201)


def _only_own(request: Request, user: _User) -> None:
    """Lists need ``user`` or ``organization``, and this fake shows only the caller's own."""
    query = request.query_params
    if not query.get("user") and not query.get("organization"):
        raise _invalid("user", "user or organization is required")
    organization = f"{API}/organizations/{user.organization}"
    if query.get("user") not in (None, user.uri) or query.get("organization") not in (
        None,
        organization,
    ):
        raise _denied("You do not have permission")


def _basic(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return user, password


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _invalid("body", "The request body must be a JSON object")
    return body


async def _optional_json(request: Request) -> dict[str, Any]:
    return await _json_object(request) if await request.body() else {}


def _invitee_fields(value: Any) -> dict[str, str]:
    """``invitee``: ``email``, ``timezone`` (IANA) and ``name`` (or ``first_name``)."""
    if not isinstance(value, dict):
        raise _invalid("invitee", "invitee is required")
    email, zone = value.get("email"), value.get("timezone")
    name = value.get("name") or " ".join(
        str(value[k]) for k in ("first_name", "last_name") if value.get(k)
    )
    if not isinstance(email, str) or not _EMAIL.match(email):
        raise _invalid("invitee.email", "invitee.email must be a valid email address")
    if not isinstance(name, str) or not name:
        raise _invalid("invitee.name", "invitee.name or invitee.first_name is required")
    if not isinstance(zone, str) or not _known_zone(zone):
        raise _invalid("invitee.timezone", "invitee.timezone must be an IANA time zone")
    return {"email": email, "timezone": str(zone), "name": name}


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _query_time(query: Any, name: str) -> datetime | None:
    text = query.get(name)
    if text is None:
        return None
    instant = _instant(text)
    if instant is None:
        raise _invalid(name, f"{name} must be a UTC time, e.g. 2020-01-02T03:04:05.678123Z")
    return instant


def _collection(request: Request, items: list[dict[str, Any]]) -> Response:
    """A page of ``items`` and its ``pagination``: ``count`` (1–100, default 20) rows from the
    offset named by ``page_token``."""
    query = request.query_params
    count_text, token_text = query.get("count", "20"), query.get("page_token", "0")
    if not count_text.isdigit() or not 1 <= int(count_text) <= 100:
        raise _invalid("count", "count must be between 1 and 100")
    if not token_text.isdigit():
        raise _invalid("page_token", "page_token is invalid")
    count, offset = int(count_text), int(token_text)
    following = str(offset + count) if offset + count < len(items) else None
    previous = str(max(offset - count, 0)) if offset > 0 else None
    here = request.url.replace(scheme="https", netloc=API.removeprefix("https://"))

    def page(token_value: str | None) -> str | None:
        return (
            None if token_value is None else str(here.include_query_params(page_token=token_value))
        )

    pagination = {
        "count": len(items[offset : offset + count]),
        "next_page": page(following),
        "previous_page": page(previous),
        "next_page_token": following,
        "previous_page_token": previous,
    }
    return JSONResponse({"collection": items[offset : offset + count], "pagination": pagination})
