"""Twilio Programmable Messaging: send one SMS (``TOOLS.md``), over HTTP Basic auth.

The provider's truth is ``specs/twilio/twilio_api_v2010.messages.json``: ``CreateMessage``
(``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``, a form body with ``To``, ``From``
and ``Body``, answering 201 with ``api.v2010.account.message``) and the list operation on the
same path that reconciling reads. Error bodies follow ``components.schemas.twilio.error``
(``{code, message, more_info, status}``); the facts about codes 20003 (bad credentials) and
20429 (too many requests, "never processed and always safe to retry") are in
``specs/twilio/twilio.supplement.json`` and ``specs/NOTES.md`` ("Twilio").

Why the idempotency is ``intent_log``: Messages has no idempotency key, so a retried ``POST``
may text twice. The broker records its intent, and :func:`_reconcile` settles an unknown outcome
by listing this connection's recent messages to the same number and looking for the same body.
The search window is :data:`RECONCILE_WINDOW`, measured on Twilio's own clock (the ``Date``
header of the list answer): a connector has no clock of its own, and ``DateSent`` is no help
because a message still queued has no ``date_sent`` yet (and the description types that filter
as ``date-time`` while its text asks for ``YYYY-MM-DD``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ConfigDict, Field

from corral.connectors._base import (
    JSON,
    Arguments,
    AuthRejected,
    CallContext,
    Effect,
    EffectKind,
    Endpoints,
    InvalidArguments,
    OutcomeUnknown,
    Provider,
    ProviderRejected,
    Tool,
)
from corral.connectors._fields import PhoneNumber
from corral.connectors._http import Edge, json_object

__all__ = ["PROVIDER", "RECONCILE_WINDOW", "SEND_SMS", "SendSmsArgs"]

_NAME = "twilio"
_TOO_MANY_REQUESTS = 20429
_PAGE_SIZE = 100
_MAX_PAGES = 50
"""List pages read at most while reconciling: the search always ends."""

RECONCILE_WINDOW = timedelta(hours=24)
"""How far back, on Twilio's clock, a lost send is looked for.

The same as the default ``messages.dedupe_window_s`` (``TOOLS.md``): inside it the supervisor
lets no second identical text to the same number through, so a match is this call's message.
"""


# --- arguments and effect -----------------------------------------------------------------------


class SendSmsArgs(Arguments):
    """``twilio.send_sms``: ``to``, ``body`` and, optionally, ``from``.

    Only the catalog's names are accepted (``from``, never the Python name ``from_``).
    """

    model_config = ConfigDict(validate_by_name=False)

    to: PhoneNumber
    body: str = Field(min_length=1, max_length=1600)
    from_: PhoneNumber | None = Field(default=None, alias="from")


def _effect(args: SendSmsArgs) -> Effect:
    return Effect(EffectKind.MESSAGE, recipient=args.to, body=args.body)


def _sender(ctx: CallContext, args: SendSmsArgs) -> str:
    """The ``From`` number: the call's own, else the connection's default."""
    sender = args.from_ or ctx.credential.fields.get("from_number")
    if not sender:
        raise InvalidArguments(
            "twilio.send_sms", ["from: required, this connection has no default number"]
        )
    return sender


# --- the HTTP edge ------------------------------------------------------------------------------

_EDGE = Edge(_NAME, "Twilio")


async def _send(ctx: CallContext, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request with the connection's HTTP Basic auth (account SID and auth token)."""
    auth = (ctx.credential.fields["account_sid"], ctx.credential.fields["auth_token"])
    return await _EDGE.send(ctx.http, method, url, auth=auth, **kwargs)


def _answer(ctx: CallContext, response: httpx.Response) -> dict[str, JSON]:
    """The JSON body of a 2xx answer; any other answer raised as its :class:`ConnectorError`
    (Twilio's code 20429, "too many requests", is retryable as a 429 is)."""
    if response.is_success:
        return _EDGE.body(response)
    status = response.status_code
    code, message = _error(json_object(response))
    retryable = code == str(_TOO_MANY_REQUESTS)
    raise _EDGE.refusal(
        status, f"HTTP {status}: {message}", ctx.credential, code=code, retryable=retryable
    )


def _error(body: dict[str, JSON] | None) -> tuple[str | None, str]:
    """``(code, message)`` from Twilio's error envelope (``components.schemas.twilio.error``)."""
    if body is None:
        return None, "no error details"
    code = body.get("code")
    message = body.get("message")
    return (
        str(code) if isinstance(code, int) else None,
        message if isinstance(message, str) else "no error message",
    )


def _messages_url(endpoints: Endpoints, account_sid: str) -> str:
    return f"{endpoints.api}/2010-04-01/Accounts/{quote(account_sid, safe='')}/Messages.json"


def _result(message: dict[str, JSON]) -> dict[str, JSON]:
    """What an agent may see of a Message resource."""
    sid, status = message.get("sid"), message.get("status")
    if not isinstance(sid, str) or not isinstance(status, str):
        raise OutcomeUnknown(_NAME, "Twilio's answer names no message sid or status")
    return {"message_sid": sid, "status": status}


# --- execution ----------------------------------------------------------------------------------


async def _execute(ctx: CallContext, args: SendSmsArgs) -> dict[str, JSON]:
    form = {"To": args.to, "From": _sender(ctx, args), "Body": args.body}
    url = _messages_url(ctx.endpoints, ctx.credential.fields["account_sid"])
    return _result(_answer(ctx, await _send(ctx, "POST", url, data=form)))


async def _reconcile(ctx: CallContext, args: SendSmsArgs) -> dict[str, JSON] | None:
    """The message this call sent, if Twilio lists one; ``None`` if provably none was sent.

    Reads ``GET Messages.json?To=&From=`` newest first, page by page, until a message older than
    :data:`RECONCILE_WINDOW` (on Twilio's clock) or the last page. A list Twilio will not give
    (an error, no ``Date``) leaves the outcome unknown.
    """
    sender = _sender(ctx, args)
    url: str | None = _messages_url(ctx.endpoints, ctx.credential.fields["account_sid"])
    params: dict[str, str | int] | None = {"To": args.to, "From": sender, "PageSize": _PAGE_SIZE}
    for _ in range(_MAX_PAGES):
        if url is None:
            return None
        response = await _send(ctx, "GET", url, params=params)
        page = _readable(ctx, response)
        oldest = _twilio_now(response) - RECONCILE_WINDOW
        for message in _list(page):
            if _created(message) < oldest:
                return None
            if _is_this_call(message, args, sender):
                return _result(message)
        url, params = _next_page(ctx.endpoints, page), None
    raise OutcomeUnknown(_NAME, "too many messages to search; the outcome stays unknown")


def _readable(ctx: CallContext, response: httpx.Response) -> dict[str, JSON]:
    """A list page, or :class:`OutcomeUnknown`: a list that cannot be read proves nothing."""
    try:
        return _answer(ctx, response)
    except AuthRejected:
        raise
    except ProviderRejected as exc:
        raise OutcomeUnknown(
            _NAME, f"cannot list messages ({exc.message})", status=exc.status, code=exc.code
        ) from None


def _instant(text: JSON, what: str) -> datetime:
    """An RFC 2822 date (``Thu, 24 Aug 2023 05:01:45 +0000``) as an aware datetime."""
    try:
        when = parsedate_to_datetime(text) if isinstance(text, str) else None
    except (TypeError, ValueError):
        when = None
    if when is None:
        raise OutcomeUnknown(_NAME, f"Twilio's list answer has no readable {what}")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _twilio_now(response: httpx.Response) -> datetime:
    return _instant(response.headers.get("date"), "Date header")


def _list(page: dict[str, JSON]) -> list[dict[str, JSON]]:
    messages = page.get("messages")
    if not isinstance(messages, list):
        raise OutcomeUnknown(_NAME, "Twilio's list answer has no messages")
    return [m for m in messages if isinstance(m, dict)]


def _created(message: dict[str, JSON]) -> datetime:
    return _instant(message.get("date_created"), "date_created")


def _is_this_call(message: dict[str, JSON], args: SendSmsArgs, sender: str) -> bool:
    return (
        message.get("direction") == "outbound-api"
        and message.get("to") == args.to
        and message.get("from") == sender
        and message.get("body") == args.body
    )


def _next_page(endpoints: Endpoints, page: dict[str, JSON]) -> str | None:
    """The next page's absolute URL; Twilio gives it relative to its own host."""
    relative = page.get("next_page_uri")
    if relative is None:
        return None
    if not isinstance(relative, str) or not relative.startswith("/"):
        raise OutcomeUnknown(_NAME, "Twilio's list answer has an unusable next_page_uri")
    return endpoints.api + relative


# --- declarations -------------------------------------------------------------------------------

SEND_SMS: Tool[SendSmsArgs] = Tool(
    name="twilio.send_sms",
    operation="POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
    args=SendSmsArgs,
    effect=_effect,
    execute=_execute,
    reconcile=_reconcile,
    idempotency="intent_log",
)

PROVIDER = Provider(
    name=_NAME,
    auth="api_key",
    fields=("account_sid", "auth_token"),
    optional_fields=("from_number",),
    endpoints=Endpoints(api="https://api.twilio.com"),
    tools=(SEND_SMS,),
)
