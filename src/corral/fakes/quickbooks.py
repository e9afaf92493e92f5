"""A local QuickBooks Online company API and Intuit OAuth token endpoint, kept in memory.

It serves, at its root, the operations of ``specs/quickbooks/qbo_v3.supplement.openapi.json``:
``qbo.invoice.create`` (``POST /v3/company/{realmId}/invoice``), ``qbo.query`` (``GET
/v3/company/{realmId}/query``, for ``Customer`` and ``Invoice``), ``intuit.oauth2.token``
(``POST /oauth2/v1/tokens/bearer``) and ``intuit.oauth2.revoke`` (``POST
/v2/oauth2/tokens/revoke``), with the facts of ``specs/NOTES.md`` ("QuickBooks Online"):

- API calls take a Bearer access token valid for 3600 s (or until
  :meth:`QuickBooksFake.expire_access_tokens`) and for its own company only; a bad one is 401
  with code 3200, another company's is 403 with code 3100;
- the token endpoint takes Basic client authentication and rotates refresh tokens: every
  refresh returns a new one, and the used one then answers 400 ``invalid_grant`` (the body of
  ``intuit_oauth_jsclient_token_fixtures.json`` ``errorResponse``, with an ``intuit_tid``);
- errors are ``FaultEnvelope``: 2020 for a missing ``CustomerRef`` or ``Line``, 2010 for a
  malformed field, 610 for a customer or item the company does not have, 4000 for a query
  that does not parse;
- ``requestid`` (at most 50 characters) replays the first answer to that id in that company;
- amounts are exact: JSON numbers are read as :class:`~decimal.Decimal` and written back with
  every digit, ``TotalAmt`` is the sum of the item lines, and unknown invoice fields are echoed.

Each company starts as an Intuit sandbox company does: the item "Services" (Id 1) and three
sample customers.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.connectors._base import Endpoints
from corral.core.clock import Clock, SystemClock
from corral.fakes._common import ASGIApp, Faults, OAuthAuthority, recorded
from corral.fakes._contract import Exchange

__all__ = ["QuickBooksFake"]

_TOKEN_PATH = "/oauth2/v1/tokens/bearer"  # noqa: S105 (a path, not a secret)
_ACCESS_TTL_S = 3600
_REFRESH_TTL_S = 8726400
_MAX_REQUEST_ID = 50
_SAMPLE_CUSTOMERS = ("Amy's Bird Sanctuary", "Bill's Windsurf Shop", "Cool Cars")
_LINE_TYPES = ("SalesItemLineDetail", "DescriptionOnly")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_QUERY = re.compile(
    r"\s*select\s+\*\s+from\s+(?P<entity>\w+)"
    r"(?:\s+where\s+(?P<field>\w+)\s*=\s*'(?P<value>(?:[^'\\]|\\.)*)')?"
    r"(?:\s+startposition\s+(?P<start>\d+))?"
    r"(?:\s+maxresults\s+(?P<max>\d+))?\s*\Z",
    re.IGNORECASE,
)


class _Refused(Exception):
    """An error answer, raised from deep in a handler and rendered as is."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _fault(
    status: int, code: str, message: str, detail: str = "", element: str = "", kind: str = ""
) -> _Refused:
    """A ``FaultEnvelope`` (``time`` is added when rendered)."""
    error = {"Message": message, "Detail": detail, "code": code, "element": element}
    return _Refused(status, {"Fault": {"Error": [error], "type": kind or "ValidationFault"}})


def _missing(name: str) -> _Refused:
    return _fault(
        400,
        "2020",
        "Required param missing, need to supply the required value for the API",
        f"Required parameter {name} is missing in the request",
        name,
    )


def _malformed(name: str, why: str) -> _Refused:
    return _fault(400, "2010", "Request has invalid or unsupported property", why, name)


def _not_found(name: str) -> _Refused:
    return _fault(
        400,
        "610",
        "Object Not Found",
        f"Something you're trying to use has been made inactive. Check the {name} field.",
        name,
    )


def _json_text(value: Any) -> str:
    """JSON text of ``value``, with each :class:`Decimal` written as its exact number."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        members = (f"{json.dumps(key)}:{_json_text(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(item) for item in value) + "]"
    return json.dumps(value)


def _qbo_time(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


@dataclass
class _Company:
    realm_id: str
    items: dict[str, str] = field(default_factory=lambda: {"1": "Services"})
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """The first answer to each ``requestid``."""
    last_id: int = 0
    last_doc_number: int = 1000

    def new_id(self) -> str:
        self.last_id += 1
        return str(self.last_id)


class QuickBooksFake:
    """QuickBooks Online for tests: each :meth:`new_connection` is an OAuth app authorized for a
    new company (``realm_id``)."""

    name = "quickbooks"

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.exchanges: list[Exchange] = []
        self.faults = Faults()
        self.oauth = OAuthAuthority(
            rotate=True,
            access_ttl_s=_ACCESS_TTL_S,
            clock=self.clock,
            access_prefix="eyJ",
            refresh_prefix="AB11",
        )
        self._companies: dict[str, _Company] = {}
        self._lock = threading.Lock()

    # --- the Fake protocol and state ------------------------------------------------------------

    def endpoints(self, root: str) -> Endpoints:
        return Endpoints(api=root, token=root + _TOKEN_PATH)

    def new_connection(self) -> dict[str, str]:
        """A new company with its sample data, and an app's consent to it."""
        realm_id = str(9130350000000000 + secrets.randbelow(10**15))
        company = _Company(realm_id)
        for name in _SAMPLE_CUSTOMERS:
            self._add_customer(company, name)
        with self._lock:
            self._companies[realm_id] = company
        client_id, client_secret = self.oauth.new_client()
        refresh_token = self.oauth.grant(client_id, realm_id)
        return {
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
            "realm_id": realm_id,
        }

    def add_customer(self, realm_id: str, display_name: str) -> str:
        """A new customer of the company; its ``Id``."""
        with self._lock:
            return self._add_customer(self._companies[realm_id], display_name)

    def _add_customer(self, company: _Company, display_name: str) -> str:
        customer_id = company.new_id()
        company.customers[customer_id] = {
            "Id": customer_id,
            "SyncToken": "0",
            "DisplayName": display_name,
            "FullyQualifiedName": display_name,
            "Active": True,
            "Balance": Decimal(0),
            "MetaData": self._metadata(),
            "domain": "QBO",
            "sparse": False,
        }
        return customer_id

    def invoices(self, realm_id: str) -> list[dict[str, Any]]:
        """Every invoice of the company, oldest first (to check the fake's state)."""
        with self._lock:
            return copy.deepcopy(list(self._companies[realm_id].invoices.values()))

    def expire_access_tokens(self) -> None:
        self.oauth.expire_access_tokens()

    def app(self) -> ASGIApp:
        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        api.add_exception_handler(_Refused, self._render_refusal)
        api.add_exception_handler(StarletteHTTPException, self._render_http_error)
        api.post(_TOKEN_PATH)(self._token)
        api.post("/v2/oauth2/tokens/revoke")(self._revoke)
        api.post("/v3/company/{realmId}/invoice")(self._create_invoice)
        api.get("/v3/company/{realmId}/query")(self._query)
        return recorded(self, api)

    # --- rendering ------------------------------------------------------------------------------

    def _json(self, status: int, body: Mapping[str, Any]) -> Response:
        return self._raw(status, _json_text(dict(body)).encode("utf-8"))

    def _raw(self, status: int, content: bytes) -> Response:
        headers = {"intuit_tid": f"1-{secrets.token_hex(12)}"}
        return Response(content, status_code=status, media_type="application/json", headers=headers)

    def _metadata(self) -> dict[str, str]:
        now = _qbo_time(self.clock.now())
        return {"CreateTime": now, "LastUpdatedTime": now}

    async def _render_refusal(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        body = dict(exc.body)
        if "Fault" in body:
            body["time"] = _qbo_time(self.clock.now())
        return self._json(exc.status, body)

    async def _render_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        refused = _fault(exc.status_code, "4000", "Unsupported Operation", request.url.path)
        return await self._render_refusal(request, refused)

    # --- OAuth ----------------------------------------------------------------------------------

    def _client(self, request: Request) -> str:
        """The client of the request's Basic authentication (``clientBasic``)."""
        client_id, secret = _basic(request.headers.get("authorization", ""))
        if not self.oauth.client_ok(client_id, secret):
            raise _Refused(401, {"error": "invalid_client"})
        return client_id

    async def _token(self, request: Request) -> Response:
        """``intuit.oauth2.token``, refresh grant: a new access token and refresh token."""
        client_id = self._client(request)
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if form.get("grant_type") != "refresh_token":
            raise _Refused(400, {"error": "unsupported_grant_type"})
        if not form.get("refresh_token"):
            raise _Refused(400, {"error": "invalid_request"})
        granted = self.oauth.refresh(client_id, form["refresh_token"])
        if granted is None:
            raise _Refused(400, {"error_description": "Token invalid", "error": "invalid_grant"})
        access, refresh = granted
        body = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": _ACCESS_TTL_S,
            "x_refresh_token_expires_in": _REFRESH_TTL_S,
        }
        return self._json(200, body)

    async def _revoke(self, request: Request) -> Response:
        """``intuit.oauth2.revoke``: the refresh token ``{"token": ...}`` stops working."""
        self._client(request)
        body = _json_object(await request.body())
        if not isinstance(body.get("token"), str):
            raise _missing("token")
        self.oauth.revoke(body["token"])
        return Response(status_code=200)

    def _company(self, request: Request) -> _Company:
        """The path's company, if the Bearer access token is valid for it."""
        scheme, _, access = request.headers.get("authorization", "").partition(" ")
        realm_id = self.oauth.subject(access) if scheme.lower() == "bearer" else None
        if realm_id is None:
            raise _fault(
                401,
                "3200",
                "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                kind="AUTHENTICATION",
            )
        if realm_id != request.path_params["realmId"]:
            raise _fault(
                403,
                "3100",
                "message=ApplicationAuthorizationFailed; errorCode=003100; statusCode=403",
                kind="AuthorizationFault",
            )
        _minor_version(request.query_params.get("minorversion"))
        with self._lock:
            return self._companies[realm_id]

    # --- invoices -------------------------------------------------------------------------------

    async def _create_invoice(self, request: Request) -> Response:
        """``qbo.invoice.create``, once per ``requestid``."""
        company = self._company(request)
        request_id = request.query_params.get("requestid")
        if request_id is not None and not 0 < len(request_id) <= _MAX_REQUEST_ID:
            raise _malformed("requestid", f"requestid must be 1 to {_MAX_REQUEST_ID} characters")
        body = await request.body()
        with self._lock:
            if request_id is not None and request_id in company.answers:
                return self._raw(*company.answers[request_id])
            answer = self._answer_invoice(company, body)
            if request_id is not None:
                company.answers[request_id] = answer
        return self._raw(*answer)

    def _answer_invoice(self, company: _Company, body: bytes) -> tuple[int, bytes]:
        """The status and body of a create, a fault included (so that ``requestid`` keeps it)."""
        try:
            invoice = self._new_invoice(company, _json_object(body))
        except _Refused as refused:
            time = _qbo_time(self.clock.now())
            return refused.status, _json_text({**refused.body, "time": time}).encode("utf-8")
        company.invoices[invoice["Id"]] = invoice
        answer = {"Invoice": invoice, "time": _qbo_time(self.clock.now())}
        return 200, _json_text(answer).encode("utf-8")

    def _new_invoice(self, company: _Company, body: dict[str, Any]) -> dict[str, Any]:
        customer = _customer(company, body.get("CustomerRef"))
        lines = [_line(company, line) for line in _lines(body.get("Line"))]
        for name in ("DueDate", "TxnDate"):
            if name in body and not _is_day(body[name]):
                raise _malformed(name, f"{name} must be a date as YYYY-MM-DD")
        total = sum(
            (line["Amount"] for line in lines if line["DetailType"] != "DescriptionOnly"),
            Decimal(0),
        )
        for number, line in enumerate(lines, start=1):
            line |= {"Id": str(number), "LineNum": number}
        company.last_doc_number += 1
        invoice = dict(body)  # unknown fields are echoed (supplement, info.description)
        invoice |= {
            "Id": company.new_id(),
            "SyncToken": "0",
            "MetaData": self._metadata(),
            "DocNumber": body.get("DocNumber", str(company.last_doc_number)),
            "TxnDate": body.get("TxnDate", self.clock.now().date().isoformat()),
            "CustomerRef": {"value": customer["Id"], "name": customer["DisplayName"]},
            "CurrencyRef": {"value": "USD", "name": "United States Dollar"},
            "Line": [
                *lines,
                {"Amount": total, "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}},
            ],
            "TotalAmt": total,
            "Balance": total,
            "Deposit": Decimal(0),
            "EmailStatus": body.get("EmailStatus", "NotSet"),
            "domain": "QBO",
            "sparse": False,
        }
        return invoice

    # --- query ----------------------------------------------------------------------------------

    async def _query(self, request: Request) -> Response:
        """``qbo.query``: ``select * from Customer|Invoice [where F = 'v'] [STARTPOSITION n]
        [MAXRESULTS m]``; no hits is an empty ``QueryResponse``."""
        company = self._company(request)
        parsed = _QUERY.match(request.query_params.get("query", ""))
        entity = parsed["entity"].capitalize() if parsed else ""
        if parsed is None or entity not in ("Customer", "Invoice"):
            raise _fault(400, "4000", "Error parsing query", "QueryParserError: unsupported query")
        start, most = int(parsed["start"] or 1), min(int(parsed["max"] or 100), 1000)
        with self._lock:
            rows = list((company.customers if entity == "Customer" else company.invoices).values())
            if parsed["field"]:
                value = parsed["value"].replace("\\'", "'")
                rows = [r for r in rows if str(r.get(parsed["field"])) == value]
            page = copy.deepcopy(rows[max(start - 1, 0) : max(start - 1, 0) + most])
        found = {entity: page, "startPosition": start, "maxResults": len(page)} if page else {}
        return self._json(200, {"QueryResponse": found, "time": _qbo_time(self.clock.now())})


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


def _json_object(body: bytes) -> dict[str, Any]:
    """A JSON object with exact numbers, or a 2010 fault."""
    try:
        value = json.loads(body, parse_float=Decimal)
    except ValueError:
        raise _malformed("", "the request body is not JSON") from None
    if not isinstance(value, dict):
        raise _malformed("", "the request body is not a JSON object")
    return value


def _minor_version(text: str | None) -> None:
    """Any integer minor version is served as 75 or later (``parameters.minorversion``)."""
    if text is not None and not text.isdigit():
        raise _malformed("minorversion", f"minorversion must be an integer, not {text!r}")


def _is_day(value: Any) -> bool:
    if not isinstance(value, str) or not _DAY.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _reference(value: Any, name: str) -> str:
    """The ``value`` of a ``ReferenceType``."""
    if value is None:
        raise _missing(name)
    if not isinstance(value, dict) or not isinstance(value.get("value"), str):
        raise _malformed(name, f"{name} must be an object with a string value")
    return str(value["value"])


def _customer(company: _Company, reference: Any) -> dict[str, Any]:
    customer = company.customers.get(_reference(reference, "CustomerRef"))
    if customer is None or not customer["Active"]:
        raise _not_found("CustomerRef")
    return customer


def _lines(value: Any) -> list[Any]:
    if value is None or value == []:
        raise _missing("Line")
    if not isinstance(value, list):
        raise _malformed("Line", "Line must be a list")
    return value


def _line(company: _Company, line: Any) -> dict[str, Any]:
    """One invoice line, checked: a known detail type, a non-negative amount, a known item."""
    if not isinstance(line, dict):
        raise _malformed("Line", "each Line must be an object")
    amount, kind = line.get("Amount"), line.get("DetailType")
    if kind not in _LINE_TYPES:
        raise _malformed("Line.DetailType", f"DetailType must be one of {', '.join(_LINE_TYPES)}")
    if isinstance(amount, bool) or not isinstance(amount, int | Decimal) or amount < 0:
        raise _malformed("Line.Amount", "Amount must be a non-negative number")
    if kind == "SalesItemLineDetail":
        detail = line.get("SalesItemLineDetail")
        if not isinstance(detail, dict):
            raise _missing("SalesItemLineDetail")
        if _reference(detail.get("ItemRef"), "ItemRef") not in company.items:
            raise _not_found("ItemRef")
    return {**line, "Amount": Decimal(amount)}
