"""A local Google Calendar v3 and Google OAuth token endpoint, kept in memory.

It follows the discovery document ``specs/google-calendar/calendar.v3.discovery.trimmed.json``
(``calendar.events.insert``, ``.get``, ``.list``, ``.delete``; schemas ``Event`` and
``Events``) and the hand-authored ``google_oauth_token_and_errors.supplement.openapi.json``
(``POST /token``, ``OAuthError``, ``GoogleApiError``), with the facts of ``specs/NOTES.md``:

- errors are Google's ``{"error": {code, message, errors[{domain, reason, message}], status}}``
  with the reasons Calendar uses (``required``, ``invalid``, ``timeRangeEmpty``, ``authError``,
  ``notFound``, ``duplicate``, ``deleted``);
- a client-chosen ``Event.id`` must be base32hex, 5–1024 characters, unique per calendar, and a
  second insert with the same id answers ``409 duplicate`` (also once the event is deleted);
- deleting a deleted event answers ``410``, and ``events.get`` still returns it, ``cancelled``;
- overlapping events are accepted, as a real calendar does (conflicts are the supervisor's);
- refresh tokens are not rotated; access tokens last 3599 s (or until
  :meth:`expire_access_tokens`).

It serves ``/calendar/v3/...`` and ``/token`` at its root (:meth:`GoogleCalendarFake.endpoints`).
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from corral.connectors._base import Endpoints
from corral.core.clock import Clock, SystemClock
from corral.fakes._common import ASGIApp, Faults, OAuthAuthority, recorded, token
from corral.fakes._contract import Exchange

__all__ = ["GoogleCalendarFake"]

_EVENT_ID = re.compile(r"[a-v0-9]{5,1024}\Z")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?\Z")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
}
_SCOPE = "https://www.googleapis.com/auth/calendar.events"
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)


class _Refused(Exception):
    """An error answer, raised from deep in a handler and rendered as is."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _error(status: int, reason: str, message: str, location: str | None = None) -> _Refused:
    """Google's JSON error envelope (``GoogleApiError`` in the supplement)."""
    detail: dict[str, str] = {"domain": "global", "reason": reason, "message": message}
    if location is not None:
        detail |= {"location": location, "locationType": "parameter"}
    error: dict[str, Any] = {"code": status, "message": message, "errors": [detail]}
    if status in _STATUS_NAMES:
        error["status"] = _STATUS_NAMES[status]
    return _Refused(JSONResponse({"error": error}, status_code=status))


def _oauth_error(status: int, error: str, description: str) -> _Refused:
    """RFC 6749 §5.2, as Google's token endpoint answers."""
    body = {"error": error, "error_description": description}
    return _Refused(JSONResponse(body, status_code=status))


async def _render(request: Request, exc: Exception) -> Response:
    if isinstance(exc, _Refused):
        return exc.response
    raise exc


def _rfc3339(when: datetime) -> str:
    """Google's spelling of its own timestamps: UTC with milliseconds (``...T17:00:00.000Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _parse_instant(text: Any, zone: Any = None) -> datetime | None:
    """An RFC 3339 ``dateTime``; a local time needs ``timeZone`` (an IANA name)."""
    if not isinstance(text, str) or not _RFC3339.match(text):
        return None
    parsed = datetime.fromisoformat(text.replace("z", "Z"))
    if parsed.tzinfo is not None:
        return parsed
    try:
        return parsed.replace(tzinfo=ZoneInfo(zone)) if isinstance(zone, str) else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _event_time(value: Any, which: str) -> datetime:
    """An ``EventDateTime`` (``dateTime`` or all-day ``date``) as an instant, else a 400."""
    if not isinstance(value, dict) or not (value.get("dateTime") or value.get("date")):
        raise _error(400, "required", f"Missing {which} time.")
    if value.get("date"):
        try:
            return datetime.combine(date.fromisoformat(value["date"]), time(), tzinfo=UTC)
        except (TypeError, ValueError):
            raise _error(400, "invalid", f"Invalid {which} time.") from None
    instant = _parse_instant(value["dateTime"], value.get("timeZone"))
    if instant is None:
        raise _error(400, "invalid", f"Invalid {which} time.")
    return instant


@dataclass
class _Event:
    """One stored event; :meth:`resource` is its ``Event`` as Calendar shows it."""

    id: str
    organizer: str
    summary: str | None
    start: dict[str, Any]
    end: dict[str, Any]
    start_at: datetime
    end_at: datetime
    attendees: list[str]
    created: datetime
    updated: datetime
    status: str = "confirmed"
    sequence: int = 0
    etag: str = field(default_factory=lambda: f'"{secrets.randbelow(10**15):015d}"')

    def resource(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "kind": "calendar#event",
            "etag": self.etag,
            "id": self.id,
            "status": self.status,
            "htmlLink": "https://www.google.com/calendar/event?eid=" + self.id,
            "created": _rfc3339(self.created),
            "updated": _rfc3339(self.updated),
            "creator": {"email": self.organizer, "self": True},
            "organizer": {"email": self.organizer, "self": True},
            "start": self.start,
            "end": self.end,
            "iCalUID": f"{self.id}@google.com",
            "sequence": self.sequence,
            "reminders": {"useDefault": True},
            "eventType": "default",
        }
        if self.summary is not None:
            event["summary"] = self.summary
        if self.attendees:
            event["attendees"] = [
                {"email": email, "responseStatus": "needsAction"} for email in self.attendees
            ]
        return event


@dataclass
class _Calendar:
    id: str
    owner: str
    events: dict[str, _Event] = field(default_factory=dict)


class GoogleCalendarFake:
    """Google Calendar for tests: calendars owned by OAuth users, events kept in memory.

    ``new_connection(calendar_id)`` makes a user who owns that calendar (``primary`` names it
    too) and returns the connection's ``client_id``, ``client_secret`` and ``refresh_token``.
    """

    name = "google_calendar"

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.exchanges: list[Exchange] = []
        self.faults = Faults()
        self.oauth = OAuthAuthority(
            rotate=False, access_ttl_s=3599, clock=self.clock, access_prefix="ya29."
        )
        self._calendars: dict[str, _Calendar] = {}
        self._primary: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- the Fake protocol ----------------------------------------------------------------------

    def endpoints(self, root: str) -> Endpoints:
        return Endpoints(api=root + "/calendar/v3", token=root + "/token")

    def new_connection(self, calendar_id: str | None = None) -> dict[str, str]:
        """A user owning a new calendar, ``calendar_id`` (default: named by their address)."""
        client_id, client_secret = self.oauth.new_client()
        user = token("user-").lower() + "@corral.example"
        calendar = calendar_id or user
        with self._lock:
            if calendar in self._calendars:
                raise ValueError(f"calendar {calendar!r} already exists in this fake")
            self._calendars[calendar] = _Calendar(id=calendar, owner=user)
            self._primary[user] = calendar
        refresh = self.oauth.grant(client_id, user)
        return {"client_id": client_id, "client_secret": client_secret, "refresh_token": refresh}

    def expire_access_tokens(self) -> None:
        self.oauth.expire_access_tokens()

    def events(self, calendar_id: str) -> list[dict[str, Any]]:
        """Every event of a calendar, deleted ones included (to check the fake's state)."""
        with self._lock:
            return [e.resource() for e in self._calendars[calendar_id].events.values()]

    def app(self) -> ASGIApp:
        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        api.add_exception_handler(_Refused, _render)
        api.post("/token")(self._token)
        base = "/calendar/v3/calendars/{calendar_id}/events"
        api.post(base)(self._insert)
        api.get(base)(self._list)
        api.get(base + "/{event_id}")(self._get)
        api.delete(base + "/{event_id}")(self._delete)
        return recorded(self, api)

    # --- OAuth ------------------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        """``POST /token`` (refresh grant): client credentials in the form body."""
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        missing = [k for k in ("client_id", "refresh_token", "grant_type") if not values.get(k)]
        if missing:
            raise _oauth_error(400, "invalid_request", f"Missing required parameter: {missing[0]}")
        if values["grant_type"] != "refresh_token":
            raise _oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
        if not self.oauth.client_ok(values["client_id"], values.get("client_secret", "")):
            raise _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        granted = self.oauth.refresh(values["client_id"], values["refresh_token"])
        if granted is None:
            raise _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        body = {
            "access_token": granted[0],
            "expires_in": self.oauth.access_ttl_s,
            "scope": _SCOPE,
            "token_type": "Bearer",
        }
        return JSONResponse(body)

    def _user(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        user = self.oauth.subject(credential) if scheme.lower() == "bearer" else None
        if user is None:
            refused = _error(401, "authError", _UNAUTHENTICATED, location="Authorization")
            refused.response.headers["WWW-Authenticate"] = (
                'Bearer realm="https://accounts.google.com/"'
            )
            raise refused
        return user

    def _calendar(self, request: Request, calendar_id: str) -> _Calendar:
        """The calendar, if the caller may see it (``primary`` is the caller's own)."""
        user = self._user(request)
        calendar = self._calendars.get(
            self._primary.get(user, "") if calendar_id == "primary" else calendar_id
        )
        if calendar is None or calendar.owner != user:
            raise _error(404, "notFound", "Not Found")
        return calendar

    # --- events ---------------------------------------------------------------------------------

    async def _insert(self, request: Request, calendar_id: str) -> Response:
        """``calendar.events.insert``."""
        calendar = self._calendar(request, calendar_id)
        body = await _json_object(request)
        event = self._new_event(calendar, body)
        with self._lock:
            if event.id in calendar.events:
                raise _error(409, "duplicate", "The requested identifier already exists.")
            calendar.events[event.id] = event
        return JSONResponse(event.resource())

    def _new_event(self, calendar: _Calendar, body: dict[str, Any]) -> _Event:
        event_id = body.get("id")
        if event_id is None:
            event_id = base64.b32hexencode(secrets.token_bytes(15)).decode().lower()
        if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
            raise _error(400, "invalid", "Invalid resource id value.")
        start = _event_time(body.get("start"), "start")
        end = _event_time(body.get("end"), "end")
        if end < start:
            raise _error(400, "timeRangeEmpty", "The specified time range is empty.")
        now = self.clock.now()
        return _Event(
            id=event_id,
            organizer=calendar.owner,
            summary=body.get("summary") if isinstance(body.get("summary"), str) else None,
            start=body["start"],
            end=body["end"],
            start_at=start,
            end_at=end,
            attendees=_attendees(body.get("attendees")),
            created=now,
            updated=now,
        )

    async def _get(self, request: Request, calendar_id: str, event_id: str) -> Response:
        """``calendar.events.get``: deleted events too, ``cancelled``."""
        event = self._calendar(request, calendar_id).events.get(event_id)
        if event is None:
            raise _error(404, "notFound", "Not Found")
        return JSONResponse(event.resource())

    async def _delete(self, request: Request, calendar_id: str, event_id: str) -> Response:
        """``calendar.events.delete``: ``204``; ``410`` when it was deleted already."""
        calendar = self._calendar(request, calendar_id)
        with self._lock:
            event = calendar.events.get(event_id)
            if event is None:
                raise _error(404, "notFound", "Not Found")
            if event.status == "cancelled":
                raise _error(410, "deleted", "Resource has been deleted")
            event.status, event.updated = "cancelled", self.clock.now()
            event.sequence += 1
        return Response(status_code=204)

    async def _list(self, request: Request, calendar_id: str) -> Response:
        """``calendar.events.list``: ``timeMin`` bounds an event's end and ``timeMax`` its
        start, both exclusive; ``orderBy=startTime`` needs ``singleEvents=true``; pages of
        ``maxResults`` (default 250) linked by ``nextPageToken``."""
        calendar = self._calendar(request, calendar_id)
        query = request.query_params
        low, high = _time_bound(query, "timeMin"), _time_bound(query, "timeMax")
        if low is not None and high is not None and high <= low:
            raise _error(400, "timeRangeEmpty", "The specified time range is empty.", "timeMax")
        if query.get("orderBy") == "startTime" and query.get("singleEvents") != "true":
            raise _error(
                400,
                "badRequest",
                "The requested ordering is not available for the particular query.",
            )
        shown = [
            e
            for e in calendar.events.values()
            if (low is None or e.end_at > low)
            and (high is None or e.start_at < high)
            and (e.status != "cancelled" or query.get("showDeleted") == "true")
        ]
        shown.sort(key=lambda e: (e.start_at, e.id))
        offset, size = _page_token(query.get("pageToken")), _max_results(query.get("maxResults"))
        body: dict[str, Any] = {
            "kind": "calendar#events",
            "etag": f'"p{len(calendar.events):014d}"',
            "summary": calendar.id,
            "updated": _rfc3339(self.clock.now()),
            "timeZone": "UTC",
            "accessRole": "owner",
            "defaultReminders": [],
            "items": [e.resource() for e in shown[offset : offset + size]],
        }
        if offset + size < len(shown):
            body["nextPageToken"] = base64.urlsafe_b64encode(f"o{offset + size}".encode()).decode()
        return JSONResponse(body)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _error(400, "parseError", "Parse Error")
    return body


def _attendees(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(a, dict) and isinstance(a.get("email"), str) and "@" in a["email"] for a in value
    ):
        raise _error(400, "invalid", "Invalid attendee email.")
    return [a["email"] for a in value]


def _time_bound(query: Any, name: str) -> datetime | None:
    text = query.get(name)
    if text is None:
        return None
    instant = _parse_instant(text)
    if instant is None:
        raise _error(400, "badRequest", "Bad Request", name)
    return instant


def _page_token(text: str | None) -> int:
    """Offsets are this fake's page tokens, opaque to clients (``o<offset>`` in base64)."""
    if text is None:
        return 0
    try:
        decoded = base64.urlsafe_b64decode(text.encode()).decode()
    except ValueError:
        decoded = ""
    if not decoded.startswith("o") or not decoded[1:].isdigit():
        raise _error(400, "invalid", "Invalid page token value.", "pageToken")
    return int(decoded[1:])


def _max_results(text: str | None) -> int:
    if text is None:
        return 250
    if not text.isdigit() or not 1 <= int(text) <= 2500:
        raise _error(400, "invalid", "Invalid value for maxResults.", "maxResults")
    return int(text)
