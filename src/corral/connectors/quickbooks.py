"""QuickBooks Online: create an invoice (``TOOLS.md``), over OAuth 2.0 with rotating refresh.

Intuit publishes no OpenAPI for QBO; the truth here is the hand-authored
``specs/quickbooks/qbo_v3.supplement.openapi.json`` over Intuit's XSD: ``qbo.invoice.create``
(``POST /v3/company/{realmId}/invoice``, schema ``InvoiceCreate``, answering
``{"Invoice": ..., "time": ...}`` or a ``FaultEnvelope``), the parameters ``minorversion``
(75 or later) and ``requestid``, and ``intuit.oauth2.token`` for the refresh. ``specs/NOTES.md``
("QuickBooks Online") adds the facts: a 200 may still carry a ``Fault``; a 401's keys may be
lower-case, so faults are read case-insensitively; a refresh may return a new refresh token,
and the old one is then dead (``rotates_refresh_token=True``).

Why the idempotency is ``native``: ``requestid=ctx.idempotency_key`` makes QBO return the first
answer to a repeated id instead of creating a second invoice, so reconciling an unknown outcome
is resending the same request.

Why amounts are written by hand: ``Line.Amount`` is a JSON number, and :mod:`json` can only
write a ``float``. A line's decimal string is sent as exactly that number, and the answer's
``TotalAmt`` is read back as a :class:`~decimal.Decimal`, so no cent is lost either way.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal, localcontext
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
from pydantic import BeforeValidator, Field, field_validator

from corral.connectors._base import (
    JSON,
    Arguments,
    AuthRejected,
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
from corral.connectors._fields import DecimalAmount, NonEmpty
from corral.connectors._http import Edge, json_object

__all__ = [
    "CREATE_INVOICE",
    "MINOR_VERSION",
    "PROVIDER",
    "SERVICES_ITEM",
    "CreateInvoiceArgs",
    "InvoiceLine",
    "invoice_total",
]

_NAME = "quickbooks"

MINOR_VERSION = "75"
"""The oldest minor version QBO still serves (``components.parameters.minorversion``)."""

SERVICES_ITEM = {"value": "1", "name": "Services"}
"""The ``ItemRef`` of every line: QBO's default "Services" item, which a company starts with.

A ``SalesItemLineDetail`` line needs an item (``specs/NOTES.md``); the catalog's lines carry only
an amount and a description."""

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


# --- arguments and effect -----------------------------------------------------------------------


def _day(value: Any) -> date:
    if not isinstance(value, str) or not _DAY.match(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return date.fromisoformat(value)


class InvoiceLine(Arguments):
    """One line: a positive decimal ``amount`` (``"120.50"``) and its ``description``."""

    amount: DecimalAmount
    description: NonEmpty = Field(max_length=4000)

    @field_validator("amount")
    @classmethod
    def _positive(cls, amount: str) -> str:
        if Decimal(amount) <= 0:
            raise ValueError("must be greater than zero")
        return amount


class CreateInvoiceArgs(Arguments):
    """``quickbooks.create_invoice``: ``customer_id``, at least one line, ``due_date``."""

    customer_id: NonEmpty
    lines: list[InvoiceLine] = Field(min_length=1)
    due_date: Annotated[date, BeforeValidator(_day)] | None = None


def invoice_total(lines: list[InvoiceLine]) -> str:
    """The exact decimal sum of ``lines`` (``"10.50"`` + ``"0.25"`` is ``"10.75"``)."""
    with localcontext() as exact:
        exact.prec = 100  # far beyond any sum of 21-digit amounts: no rounding happens
        total = sum((Decimal(line.amount) for line in lines), Decimal(0))
    return format(total, "f")


def _effect(args: CreateInvoiceArgs) -> Effect:
    return Effect(EffectKind.INVOICE, target=args.customer_id, total=invoice_total(args.lines))


# --- JSON with exact decimals -------------------------------------------------------------------


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


def _invoice_body(args: CreateInvoiceArgs) -> dict[str, Any]:
    lines = [
        {
            "Amount": Decimal(line.amount),
            "Description": line.description,
            "DetailType": "SalesItemLineDetail",
            "SalesItemLineDetail": {"ItemRef": dict(SERVICES_ITEM)},
        }
        for line in args.lines
    ]
    body: dict[str, Any] = {"CustomerRef": {"value": args.customer_id}, "Line": lines}
    if args.due_date is not None:
        body["DueDate"] = args.due_date.isoformat()
    return body


# --- the HTTP edge ------------------------------------------------------------------------------

_EDGE = Edge(_NAME, "QuickBooks")


def _member(obj: Any, name: str) -> Any:
    """``obj[name]`` with the key matched case-insensitively (``Fault`` or ``fault``)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and key.lower() == name:
                return value
    return None


def _fault(body: dict[str, Any] | None) -> tuple[str | None, str] | None:
    """``(code, message)`` of the first error of a ``FaultEnvelope``, or ``None`` if no fault."""
    fault = _member(body, "fault")
    if fault is None:
        return None
    errors = _member(fault, "error")
    first = errors[0] if isinstance(errors, list) and errors else {}
    code, message, detail = (_member(first, key) for key in ("code", "message", "detail"))
    text = message if isinstance(message, str) else "no error message"
    if isinstance(detail, str) and detail:
        text = f"{text}: {detail}"
    return (str(code) if code is not None else None), text


def _answer(credential: Credential, response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a fault-free 2xx, its numbers exact; anything else raises its
    :class:`ConnectorError`."""
    fault = _fault(json_object(response, parse_float=Decimal))
    if response.is_success and fault is None:
        return _EDGE.body(response, parse_float=Decimal)
    code, message = fault or (None, "no error details")
    status = response.status_code
    raise _EDGE.refusal(status, f"HTTP {status}: {message}", credential, code=code)


# --- execution ----------------------------------------------------------------------------------


def _invoice_url(ctx: CallContext) -> str:
    realm = quote(ctx.credential.fields["realm_id"], safe="")
    return f"{ctx.endpoints.api}/v3/company/{realm}/invoice"


async def _create_invoice(ctx: CallContext, args: CreateInvoiceArgs) -> dict[str, JSON]:
    if not ctx.credential.access_token:
        raise AuthRejected(_NAME, "no access token yet: refresh first")
    headers = {
        "Authorization": f"Bearer {ctx.credential.access_token}",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    params = {"minorversion": MINOR_VERSION, "requestid": ctx.idempotency_key}
    content = _json_text(_invoice_body(args)).encode("utf-8")
    response = await _EDGE.send(
        ctx.http, "POST", _invoice_url(ctx), params=params, headers=headers, content=content
    )
    return _result(_answer(ctx.credential, response))


def _result(body: dict[str, Any]) -> dict[str, JSON]:
    """The allow-listed fields of the created ``Invoice``."""
    invoice = body.get("Invoice")
    invoice_id = _member(invoice, "id")
    total = _member(invoice, "totalamt")
    if not isinstance(invoice_id, str) or not isinstance(total, int | Decimal):
        raise OutcomeUnknown(_NAME, "QuickBooks' answer names no invoice Id or TotalAmt")
    doc_number = _member(invoice, "docnumber")
    return {
        "invoice_id": invoice_id,
        "doc_number": doc_number if isinstance(doc_number, str) else None,
        "total": format(Decimal(total), "f"),
    }


# --- OAuth refresh ------------------------------------------------------------------------------


async def _refresh(
    http: httpx.AsyncClient, endpoints: Endpoints, credential: Credential
) -> TokenGrant:
    """``grant_type=refresh_token`` at ``endpoints.token`` with Basic client authentication
    (``intuit.oauth2.token``); the answer always carries the refresh token to store next."""
    if endpoints.token is None:
        raise ConnectorError(_NAME, "this connection has no token endpoint")
    fields = credential.fields
    response = await _EDGE.send(
        http,
        "POST",
        endpoints.token,
        auth=(fields["client_id"], fields["client_secret"]),
        data={"grant_type": "refresh_token", "refresh_token": fields["refresh_token"]},
        headers={"Accept": "application/json"},
    )
    body = json_object(response) or {}
    if response.status_code == 200:
        return _grant(body)
    _refused(credential, response.status_code, body)


def _grant(body: dict[str, Any]) -> TokenGrant:
    """``IntuitTokenResponse`` as a :class:`TokenGrant`."""
    access, expires = body.get("access_token"), body.get("expires_in")
    refresh, refresh_expires = body.get("refresh_token"), body.get("x_refresh_token_expires_in")
    if not isinstance(access, str) or not isinstance(expires, int):
        raise OutcomeUnknown(_NAME, "the token endpoint's answer has no access token")
    return TokenGrant(
        access_token=access,
        expires_in=expires,
        refresh_token=refresh if isinstance(refresh, str) else None,
        refresh_token_expires_in=refresh_expires if isinstance(refresh_expires, int) else None,
    )


def _refused(credential: Credential, status: int, body: dict[str, Any]) -> NoReturn:
    """Raise the error of a token endpoint's refusal (``OAuthError``, RFC 6749 §5.2)."""
    error = body.get("error")
    code = error if isinstance(error, str) else None
    description = body.get("error_description")
    text = f"HTTP {status}: {description or code or 'no error details'}"
    raise _EDGE.token_refusal(status, text, credential, code=code)


# --- declarations -------------------------------------------------------------------------------

CREATE_INVOICE: Tool[CreateInvoiceArgs] = Tool(
    name="quickbooks.create_invoice",
    operation="POST /v3/company/{realmId}/invoice",
    args=CreateInvoiceArgs,
    effect=_effect,
    execute=_create_invoice,
    reconcile=_EDGE.replayed(_create_invoice),
    idempotency="native",
)

PROVIDER = Provider(
    name=_NAME,
    auth="oauth",
    fields=("client_id", "client_secret", "refresh_token", "realm_id"),
    endpoints=Endpoints(
        api="https://quickbooks.api.intuit.com",
        token="https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer",  # noqa: S106 (a URL)
    ),
    tools=(CREATE_INVOICE,),
    refresh=_refresh,
    rotates_refresh_token=True,
)
