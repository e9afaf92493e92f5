"""The edge the connectors share (``corral.connectors._http``): directly, and through every
connector that makes the same promise: a transport failure says whether anything was sent; a
refused client is no invalid grant; a rotating refresh refuses the refresh token it replaced."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from corral.connectors import calendly, ghl, google_calendar, providers, quickbooks, stripe, twilio
from corral.connectors._base import (
    AuthRejected,
    CallContext,
    ConnectorError,
    Credential,
    InvalidGrant,
    OutcomeUnknown,
    ProviderRejected,
    TokenGrant,
    Tool,
)
from corral.connectors._http import REDACTED, TEXT_LIMIT, Edge, redact
from corral.core.clock import Clock
from corral.fakes._common import Fake
from corral.fakes._contract import Contract
from corral.fakes.calendly import CalendlyFake
from corral.fakes.ghl import GhlFake
from corral.fakes.google_calendar import GoogleCalendarFake
from corral.fakes.quickbooks import QuickBooksFake
from tests.connectors._harness import (
    QUICKBOOKS,
    calendly_contract,
    checked,
    clock,
    connect,
    failing_client,
    ghl_contract,
    google_contract,
    root,
    run,
)

EDGE = Edge("example", "Example")


# --- directly -----------------------------------------------------------------------------------


def test_redact_blanks_every_credential_value_then_bounds_the_text() -> None:
    credential = Credential({"account_sid": "AC1", "auth_token": "s3cr3t"}, access_token="at-9")
    text = redact("sid AC1, token s3cr3t, bearer at-9: " + "x" * TEXT_LIMIT, credential)
    assert text.startswith(f"sid {REDACTED}, token {REDACTED}, bearer {REDACTED}: x")
    assert len(text) == TEXT_LIMIT


@pytest.mark.parametrize(
    ("status", "try_later", "outcome", "retryable"),
    [
        (500, False, OutcomeUnknown, False),
        (503, True, OutcomeUnknown, False),
        (401, False, AuthRejected, False),
        (400, False, ProviderRejected, False),
        (429, False, ProviderRejected, True),
        (409, True, ProviderRejected, True),
    ],
)
def test_a_refusal_is_classed_by_its_status(
    status: int, try_later: bool, outcome: type[ConnectorError], retryable: bool
) -> None:
    error = EDGE.refusal(status, "no", Credential({}), code="c", retryable=try_later)
    assert type(error) is outcome
    assert (error.provider, error.status, error.code, error.retryable) == (
        "example",
        status,
        "c",
        retryable,
    )


@pytest.mark.parametrize(
    ("status", "code", "outcome", "retryable"),
    [
        (400, "invalid_grant", InvalidGrant, False),
        (401, "invalid_client", ProviderRejected, False),
        (429, None, ProviderRejected, True),
        (503, None, OutcomeUnknown, False),
    ],
)
def test_a_token_refusal_is_never_auth_rejected(
    status: int, code: str | None, outcome: type[ConnectorError], retryable: bool
) -> None:
    error = EDGE.token_refusal(status, "no", Credential({}), code=code)
    assert type(error) is outcome
    assert (error.status, error.code, error.retryable) == (status, code, retryable)


# --- through every connector --------------------------------------------------------------------

CALLS: dict[str, tuple[Tool[Any], dict[str, Any], Credential]] = {
    "twilio": (
        twilio.SEND_SMS,
        {"to": "+14155550123", "body": "hi"},
        Credential({"account_sid": "AC1", "auth_token": "t", "from_number": "+15005550006"}),
    ),
    "stripe": (
        stripe.CREATE_REFUND,
        {"payment_intent": "pi_1", "amount": 1500, "currency": "usd"},
        Credential({"api_key": "sk_test_x"}),
    ),
    "quickbooks": (
        quickbooks.CREATE_INVOICE,
        {"customer_id": "1", "lines": [{"amount": "180.00", "description": "Crown"}]},
        Credential({"realm_id": "1"}, access_token="at"),
    ),
    "google_calendar": (
        google_calendar.INSERT_EVENT,
        {
            "calendar_id": "lee@brightsmile.example",
            "start": "2026-03-04T10:00:00-08:00",
            "end": "2026-03-04T10:30:00-08:00",
            "summary": "Cleaning",
        },
        Credential({}, "ya29.token"),
    ),
    "calendly": (
        calendly.CANCEL_EVENT,
        {"event_uuid": "EV1", "reason": "Patient is ill"},
        Credential({}, "token"),
    ),
    "ghl": (
        ghl.SEND_MESSAGE,
        {"contact_id": "C1", "type": "SMS", "message": "Hi"},
        Credential({"location_id": "L1"}, "token"),
    ),
}
"""One state-changing call per connector, with a credential enough to send it."""


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (httpx.ConnectError, ProviderRejected),
        (httpx.ConnectTimeout, ProviderRejected),
        (httpx.PoolTimeout, ProviderRejected),
        (httpx.UnsupportedProtocol, ProviderRejected),
        (httpx.ReadTimeout, OutcomeUnknown),
        (httpx.WriteTimeout, OutcomeUnknown),
        (httpx.ReadError, OutcomeUnknown),
        (httpx.WriteError, OutcomeUnknown),
        (httpx.RemoteProtocolError, OutcomeUnknown),
        (httpx.DecodingError, OutcomeUnknown),
    ],
    ids=lambda value: value.__name__,
)
@pytest.mark.parametrize("provider", sorted(CALLS))
def test_transport_failures_say_whether_anything_was_sent(
    provider: str, error: type[httpx.RequestError], outcome: type[ConnectorError]
) -> None:
    tool, raw, credential = CALLS[provider]

    async def attempt() -> None:
        async with failing_client(error) as http:
            ctx = CallContext(http, providers()[provider].endpoints, credential, "k")
            await tool.execute(ctx, tool.parse_args(raw))

    with pytest.raises(ConnectorError) as raised:
        asyncio.run(attempt())
    assert type(raised.value) is outcome
    assert raised.value.provider == provider
    assert raised.value.retryable is (outcome is ProviderRejected)


REFUSED_CLIENTS: dict[str, tuple[Callable[[Clock], Fake], Callable[[], Contract], str]] = {
    "google_calendar": (GoogleCalendarFake, google_contract, "invalid_client"),
    "quickbooks": (QuickBooksFake, lambda: QUICKBOOKS, "invalid_client"),
    "ghl": (GhlFake, ghl_contract, "Unauthorized"),
}
"""Each OAuth provider whose fake tells a wrong client secret, and the code it answers with."""


@pytest.mark.parametrize("provider", sorted(REFUSED_CLIENTS))
def test_a_wrong_client_secret_is_refused_but_not_as_an_invalid_grant(provider: str) -> None:
    fake_for, contract, code = REFUSED_CLIENTS[provider]
    with checked(fake_for(clock()), contract()) as fake:
        fields = {**fake.new_connection(), "client_secret": "wrong"}
        with pytest.raises(ProviderRejected) as refused:
            run(fake, lambda http: connect(http, fake, providers()[provider], fields))
    assert (refused.value.status, refused.value.code) == (401, code)


ROTATING: dict[str, tuple[Callable[[Clock], Fake], Callable[[], Contract], int]] = {
    "calendly": (CalendlyFake, calendly_contract, 7200),
    "ghl": (GhlFake, ghl_contract, 86399),
    "quickbooks": (QuickBooksFake, lambda: QUICKBOOKS, 3600),
}
"""Each provider whose refresh rotates the refresh token, and its access tokens' lifetime."""


@pytest.mark.parametrize("provider", sorted(ROTATING))
def test_a_rotating_refresh_replaces_the_refresh_token_and_refuses_the_used_one(
    provider: str,
) -> None:
    fake_for, contract, expires_in = ROTATING[provider]
    declared = providers()[provider]
    assert declared.refresh is not None and declared.rotates_refresh_token
    refresh = declared.refresh
    with checked(fake_for(clock()), contract()) as fake:
        fields = fake.new_connection()
        endpoints = fake.endpoints(root(fake))

        async def scenario(http: httpx.AsyncClient) -> TokenGrant:
            grant = await refresh(http, endpoints, Credential(fields))
            assert grant.refresh_token not in (None, fields["refresh_token"])
            assert grant.expires_in == expires_in
            with pytest.raises(InvalidGrant) as refused:
                await refresh(http, endpoints, Credential(fields))
            assert (refused.value.status, refused.value.code) == (400, "invalid_grant")
            rotated = {**fields, "refresh_token": str(grant.refresh_token)}
            return await refresh(http, endpoints, Credential(rotated))

        assert run(fake, scenario).access_token
