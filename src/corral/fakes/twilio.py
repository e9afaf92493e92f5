"""A local Twilio Messages API (2010-04-01): accounts, their numbers and messages, in memory.

It serves the three operations ``specs/twilio/twilio_api_v2010.messages.json`` keeps, at its
root: ``CreateMessage`` (``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``, 201),
the list on the same path (``To``/``From``/``DateSent`` filters, ``PageSize``/``Page``, newest
first) and the fetch of ``/Messages/{Sid}.json``, with the facts of ``specs/NOTES.md``
("Twilio") and ``specs/twilio/twilio.supplement.json``:

- HTTP Basic ``AccountSid:AuthToken``; a wrong or missing credential is 401, code 20003;
- errors are ``{code, message, more_info, status}`` (``components.schemas.twilio.error``):
  21604/21603/21602 for a missing ``To``/``From``/``Body``, 21617 past 1,600 characters, 21211
  for a ``To`` that is not E.164, 21606 for a ``From`` the account does not own;
- the magic test numbers of ``test_credentials.sms_to_magic_numbers`` and
  ``sms_from_magic_numbers`` fail with their codes (``+15005550006`` is a valid sender for
  every account);
- there is no idempotency: every accepted ``POST`` is one more message;
- dates are RFC 2822 and every answer carries a ``Date`` header from the injected clock.

The account SID appears in message resources and their URIs, as on the real API; the auth
token never appears in an answer.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.connectors._base import Endpoints
from corral.core.clock import Clock, SystemClock
from corral.fakes._common import ASGIApp, Faults, recorded
from corral.fakes._contract import Exchange, spec_json

__all__ = ["TwilioFake"]

_BASE = "/2010-04-01/Accounts/{AccountSid}"
_E164 = re.compile(r"\+[1-9]\d{1,14}\Z")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MAX_BODY = 1600
_ALWAYS_VALID_FROM = "+15005550006"
_MESSAGES = {
    20001: "Invalid parameter",
    20003: "Authenticate",
    20004: "Method not allowed",
    20404: "The requested resource was not found",
    21211: "Invalid 'To' Phone Number",
    21212: "Invalid 'From' Phone Number",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the "
    "'To' number",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone "
    "number for this destination/account.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21612: "The 'To' phone number is not currently reachable via SMS",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21701: "The Messaging Service Sid is invalid.",
}
_GSM7 = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The GSM 03.38 basic character set: a body of only these is 160 characters a segment."""


class _Refused(Exception):
    """An error answer, raised from deep in a handler and rendered by :meth:`TwilioFake._render`."""

    def __init__(self, status: int, code: int, message: str | None = None) -> None:
        super().__init__(code)
        self.status = status
        self.body = {
            "code": code,
            "message": message or _MESSAGES[code],
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }


@cache
def _magic_numbers(direction: str) -> dict[str, int | None]:
    """The test numbers of ``twilio.supplement.json`` (``"to"`` or ``"from"``) and their codes."""
    table = spec_json("twilio", "twilio.supplement.json")["test_credentials"]
    numbers = table[f"sms_{direction}_magic_numbers"]
    return {number: entry["error_code"] for number, entry in numbers.items() if number != "*"}


def _segments(body: str) -> int:
    """How many SMS segments ``body`` takes: GSM-7 160/153 characters, else UCS-2 70/67."""
    single, multi = (160, 153) if all(ch in _GSM7 for ch in body) else (70, 67)
    return 1 if len(body) <= single else math.ceil(len(body) / multi)


def _rfc2822(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC))


@dataclass
class _Message:
    sent: date
    resource: dict[str, Any]


@dataclass
class _Account:
    sid: str
    auth_token: str
    numbers: set[str]
    messages: list[_Message] = field(default_factory=list)
    """Newest first, as Twilio lists them."""


class TwilioFake:
    """Twilio for tests: each :meth:`new_connection` is an account owning one phone number."""

    name = "twilio"

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.exchanges: list[Exchange] = []
        self.faults = Faults()
        self._accounts: dict[str, _Account] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    # --- the Fake protocol ----------------------------------------------------------------------

    def endpoints(self, root: str) -> Endpoints:
        return Endpoints(api=root)

    def new_connection(self) -> dict[str, str]:
        """A new account with one number (a fictional ``555-01xx`` one): its SID, auth token and
        that number as the connection's default sender."""
        sid, auth_token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
        with self._lock:
            n = next(self._numbers)
            number = f"+1{201 + n // 100}5550{100 + n % 100}"
            self._accounts[sid] = _Account(sid, auth_token, {number})
        return {"account_sid": sid, "auth_token": auth_token, "from_number": number}

    def messages(self, account_sid: str) -> list[dict[str, Any]]:
        """Every message the account sent, newest first (to check the fake's state)."""
        with self._lock:
            return [dict(m.resource) for m in self._accounts[account_sid].messages]

    def app(self) -> ASGIApp:
        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        api.add_exception_handler(_Refused, self._render_refusal)
        api.add_exception_handler(StarletteHTTPException, self._render_http_error)
        api.post(_BASE + "/Messages.json")(self._create)
        api.get(_BASE + "/Messages.json")(self._list)
        api.get(_BASE + "/Messages/{Sid}.json")(self._fetch)
        return recorded(self, api)

    # --- rendering ------------------------------------------------------------------------------

    def _json(self, status: int, body: Mapping[str, Any]) -> Response:
        return Response(
            json.dumps(body),
            status_code=status,
            media_type="application/json",
            headers={"Date": _rfc2822(self.clock.now())},
        )

    async def _render_refusal(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return self._json(exc.status, exc.body)

    async def _render_http_error(self, request: Request, exc: Exception) -> Response:
        """Unknown paths and methods, in Twilio's envelope rather than FastAPI's."""
        assert isinstance(exc, StarletteHTTPException)
        code = 20004 if exc.status_code == 405 else 20404
        return self._json(exc.status_code, _Refused(exc.status_code, code).body)

    # --- auth -----------------------------------------------------------------------------------

    def _account(self, request: Request) -> _Account:
        """The account in the path, if the Basic credentials are its SID and auth token."""
        user, password = _basic(request.headers.get("authorization", ""))
        account = self._accounts.get(user)
        if account is None or not secrets.compare_digest(account.auth_token, password):
            raise _Refused(401, 20003)
        if request.path_params["AccountSid"] != account.sid:
            raise _Refused(404, 20404)
        return account

    # --- operations -----------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        """``CreateMessage``: validate as Twilio does, then queue one more message."""
        account = self._account(request)
        form = dict(
            parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        )
        to, sender, body = _checked_message(form)
        with self._lock:
            _check_numbers(account, to, sender)
            message = self._new_message(account, to, sender, body)
            account.messages.insert(0, message)
        return self._json(201, message.resource)

    def _new_message(self, account: _Account, to: str, sender: str, body: str) -> _Message:
        now = self.clock.now()
        sid = "SM" + secrets.token_hex(16)
        uri = f"/2010-04-01/Accounts/{account.sid}/Messages/{sid}"
        resource = {
            "account_sid": account.sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": _rfc2822(now),
            "date_sent": _rfc2822(now),
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": uri + "/Media.json"},
            "to": to,
            "uri": uri + ".json",
        }
        return _Message(now.astimezone(UTC).date(), resource)

    async def _list(self, request: Request) -> Response:
        """The list operation: filtered, newest first, one page of ``PageSize`` at ``Page``."""
        account = self._account(request)
        query = request.query_params
        size = _integer(query.get("PageSize"), default=50, low=1, high=1000)
        page = _integer(query.get("Page"), default=0, low=0, high=None)
        wanted = _Filters.of(query)
        with self._lock:
            found = [m.resource for m in account.messages if wanted.match(m)]
        start = page * size
        items = found[start : start + size]
        filters = {k: v for k, v in query.items() if k in ("To", "From") or k.startswith("Date")}
        path = f"/2010-04-01/Accounts/{account.sid}/Messages.json"

        def uri(number: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': size, 'Page': number})}"

        body = {
            "end": start + max(len(items) - 1, 0),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if start + size < len(found) else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": uri(page),
            "messages": items,
        }
        return self._json(200, body)

    async def _fetch(self, request: Request) -> Response:
        account = self._account(request)
        sid = request.path_params["Sid"]
        with self._lock:
            found = [m.resource for m in account.messages if m.resource["sid"] == sid]
        if not found:
            raise _Refused(404, 20404)
        return self._json(200, found[0])


def _basic(header: str) -> tuple[str, str]:
    """``(user, password)`` of a Basic ``Authorization`` header; empty strings if there is none."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password


def _checked_message(form: Mapping[str, str]) -> tuple[str, str, str]:
    """``(To, From, Body)`` of a create request, in the order Twilio checks them."""
    to, sender, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
    if not to:
        raise _Refused(400, 21604)
    if form.get("MessagingServiceSid"):
        raise _Refused(400, 21701)
    if not sender:
        raise _Refused(400, 21603)
    if not body:
        raise _Refused(400, 21602)
    if len(body) > _MAX_BODY:
        raise _Refused(400, 21617)
    if not _E164.match(to):
        raise _Refused(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    return to, sender, body


def _check_numbers(account: _Account, to: str, sender: str) -> None:
    """The magic test numbers' failures, then a sender the account must own."""
    for number, direction in ((to, "to"), (sender, "from")):
        code = _magic_numbers(direction).get(number)
        if code is not None:
            raise _Refused(400, code)
    if sender != _ALWAYS_VALID_FROM and sender not in account.numbers:
        raise _Refused(400, 21606)


def _integer(text: str | None, *, default: int, low: int, high: int | None) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        raise _Refused(400, 20001, f"Invalid paging parameter: {text!r}")
    return int(text)


def _day(text: str) -> date:
    """A ``DateSent`` filter's day: ``YYYY-MM-DD`` (a longer date-time is cut to its day)."""
    try:
        if _DAY.match(text):
            return date.fromisoformat(text[:10])
    except ValueError:
        pass
    raise _Refused(400, 20001, f"Invalid DateSent filter: {text!r}")


@dataclass(frozen=True)
class _Filters:
    """The list operation's filters (``DateSent<`` and ``DateSent>`` are inclusive)."""

    to: str | None
    sender: str | None
    on: date | None
    until: date | None
    since: date | None

    @classmethod
    def of(cls, query: Mapping[str, str]) -> _Filters:
        def day(name: str) -> date | None:
            return _day(query[name]) if name in query else None

        return cls(
            query.get("To"), query.get("From"), day("DateSent"), day("DateSent<"), day("DateSent>")
        )

    def match(self, message: _Message) -> bool:
        resource, sent = message.resource, message.sent
        return (
            self.to in (None, resource["to"])
            and self.sender in (None, resource["from"])
            and self.on in (None, sent)
            and (self.until is None or sent <= self.until)
            and (self.since is None or sent >= self.since)
        )
