"""``quickbooks.create_invoice`` and the OAuth refresh against the QuickBooks fake; every test's
exchanges must fit the description."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.connectors._base import (
    AuthRejected,
    CallContext,
    Credential,
    EffectKind,
    Endpoints,
    InvalidArguments,
    InvalidGrant,
    OutcomeUnknown,
    ProviderRejected,
    TokenGrant,
)
from corral.connectors.quickbooks import CREATE_INVOICE, MINOR_VERSION, PROVIDER
from corral.fakes.quickbooks import QuickBooksFake
from tests.connectors._harness import (
    QUICKBOOKS,
    call,
    checked,
    clock,
    leaked,
    problems_sending,
    run,
)

ENDPOINTS = Endpoints(
    api="http://quickbooks.fake", token="http://quickbooks.fake/oauth2/v1/tokens/bearer"
)
LINES = [
    {"amount": "180.00", "description": "Crown, part 1"},
    {"amount": "0.10", "description": "Floss"},
    {"amount": "0.20", "description": "Brush"},
]


@pytest.fixture
def fake() -> Iterator[QuickBooksFake]:
    with checked(QuickBooksFake(clock=clock()), QUICKBOOKS, check_written=True) as fake:
        yield fake


@pytest.fixture
def connection(fake: QuickBooksFake) -> dict[str, str]:
    return fake.new_connection()


def _refresh(fake: QuickBooksFake, fields: dict[str, str]) -> TokenGrant:
    refresh = PROVIDER.refresh
    assert refresh is not None
    return run(fake, lambda http: refresh(http, ENDPOINTS, Credential(fields)))


@pytest.fixture
def credential(fake: QuickBooksFake, connection: dict[str, str]) -> Credential:
    """The connection after its first refresh, as the broker would store it."""
    grant = _refresh(fake, connection)
    assert grant.refresh_token is not None
    fields = connection | {"refresh_token": grant.refresh_token}
    return Credential(fields, access_token=grant.access_token)


def _call(
    fake: QuickBooksFake, credential: Credential, raw: dict[str, Any], **options: Any
) -> dict[str, Any] | None:
    return call(fake, CREATE_INVOICE, raw, credential, **options)


def _fault(status_code: str, message: str, kind: str = "ValidationFault") -> bytes:
    error = {"Message": message, "Detail": "", "code": status_code, "element": ""}
    return json.dumps(
        {"Fault": {"Error": [error], "type": kind}, "time": "2026-03-04T09:00:00.000-08:00"}
    ).encode()


# --- declaration and arguments ------------------------------------------------------------------


def test_the_provider_declares_the_catalog_tool_and_rotation() -> None:
    assert (PROVIDER.name, PROVIDER.auth) == ("quickbooks", "oauth")
    assert PROVIDER.fields == ("client_id", "client_secret", "refresh_token", "realm_id")
    assert PROVIDER.endpoints.token == "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"
    assert PROVIDER.rotates_refresh_token and PROVIDER.refresh is not None
    assert [t.name for t in PROVIDER.tools] == ["quickbooks.create_invoice"]
    assert CREATE_INVOICE.idempotency == "native"
    assert set(CREATE_INVOICE.json_schema()["properties"]) == {"customer_id", "lines", "due_date"}


def test_the_effect_is_an_invoice_for_the_exact_total() -> None:
    effect = CREATE_INVOICE.effect(CREATE_INVOICE.parse_args({"customer_id": "58", "lines": LINES}))
    assert (effect.kind, effect.target, effect.total) == (EffectKind.INVOICE, "58", "180.30")


_AMOUNTS = st.decimals(
    min_value=Decimal("0.000001"), max_value=Decimal("999999999999999"), places=6
)


@settings(max_examples=80, derandomize=True, deadline=None)
@given(
    amounts=st.lists(_AMOUNTS.map(lambda d: format(d.normalize(), "f")), min_size=1, max_size=30)
)
def test_the_total_is_the_exact_sum_of_the_lines(amounts: list[str]) -> None:
    lines = [{"amount": amount, "description": "work"} for amount in amounts]
    effect = CREATE_INVOICE.effect(CREATE_INVOICE.parse_args({"customer_id": "1", "lines": lines}))
    assert effect.total is not None
    assert Fraction(effect.total) == sum(Fraction(amount) for amount in amounts)
    assert "e" not in effect.total.lower()


@pytest.mark.parametrize(
    "raw",
    [
        {"customer_id": "1", "lines": []},
        {"customer_id": "1", "lines": LINES, "memo": "x"},
        {"customer_id": "1", "lines": [{"amount": "1.00", "description": "x", "qty": 2}]},
        {"customer_id": "1", "lines": [{"amount": "0", "description": "x"}]},
        {"customer_id": "1", "lines": [{"amount": "-1.00", "description": "x"}]},
        {"customer_id": "1", "lines": [{"amount": "1e3", "description": "x"}]},
        {"customer_id": "1", "lines": [{"amount": 10, "description": "x"}]},
        {"customer_id": "1", "lines": [{"amount": "1.00", "description": ""}]},
        {"customer_id": "1", "lines": LINES, "due_date": "04/01/2026"},
        {"customer_id": "1", "lines": LINES, "due_date": "2026-13-01"},
        {"customer_id": "", "lines": LINES},
    ],
    ids=[
        "no-lines",
        "unknown-name",
        "unknown-line-name",
        "zero-amount",
        "negative-amount",
        "exponent",
        "number-amount",
        "empty-description",
        "us-date",
        "no-such-month",
        "empty-customer",
    ],
)
def test_bad_arguments_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidArguments):
        CREATE_INVOICE.parse_args(raw)


# --- refresh ------------------------------------------------------------------------------------


def test_refresh_says_how_long_the_new_refresh_token_lives(
    fake: QuickBooksFake, connection: dict[str, str]
) -> None:
    """Rotation itself is ``test_http.test_a_rotating_refresh_...``; the lifetime is Intuit's."""
    grant = _refresh(fake, connection)
    assert (grant.expires_in, grant.refresh_token_expires_in) == (3600, 8726400)


# --- execution ----------------------------------------------------------------------------------


def test_create_invoice_makes_one_invoice_for_the_exact_total(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    raw = {"customer_id": "1", "lines": LINES, "due_date": "2026-04-01"}
    result = _call(fake, credential, raw)
    [invoice] = fake.invoices(connection["realm_id"])
    assert result == {
        "invoice_id": invoice["Id"],
        "doc_number": invoice["DocNumber"],
        "total": "180.30",
    }
    assert (invoice["TotalAmt"], invoice["DueDate"]) == (Decimal("180.30"), "2026-04-01")
    assert [line["Description"] for line in invoice["Line"][:3]] == [
        line["description"] for line in LINES
    ]
    assert fake.exchanges[-1].query == {"minorversion": MINOR_VERSION, "requestid": "call-1"}


def test_amounts_past_float_precision_stay_exact(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    lines = [
        {"amount": "123456789012345.123456", "description": "a"},
        {"amount": "0.000001", "description": "b"},
    ]
    result = _call(fake, credential, {"customer_id": "2", "lines": lines})
    assert result is not None and result["total"] == "123456789012345.123457"
    assert b"123456789012345.123456" in fake.exchanges[-1].body


def test_an_expired_access_token_is_auth_rejected_until_refreshed(
    fake: QuickBooksFake, credential: Credential
) -> None:
    fake.expire_access_tokens()
    with pytest.raises(AuthRejected) as caught:
        _call(fake, credential, {"customer_id": "1", "lines": LINES})
    assert (caught.value.status, caught.value.code) == (401, "3200")
    grant = _refresh(fake, dict(credential.fields))
    fresh = Credential(credential.fields, access_token=grant.access_token)
    assert _call(fake, fresh, {"customer_id": "1", "lines": LINES}, key="call-2") is not None


def test_no_access_token_is_auth_rejected_without_a_request(
    fake: QuickBooksFake, connection: dict[str, str]
) -> None:
    with pytest.raises(AuthRejected):
        _call(fake, Credential(connection), {"customer_id": "1", "lines": LINES})
    assert fake.exchanges == []


def test_an_unknown_customer_is_provider_rejected_with_the_fault_code(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        _call(fake, credential, {"customer_id": "404", "lines": LINES})
    assert type(caught.value) is ProviderRejected
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (400, "610", False)
    assert fake.invoices(connection["realm_id"]) == []


def test_throttling_is_retryable(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    fake.faults.fail("/invoice", 429, _fault("3001", "ThrottleExceeded", "ThrottlingFault"))
    with pytest.raises(ProviderRejected) as caught:
        _call(fake, credential, {"customer_id": "1", "lines": LINES})
    assert (caught.value.code, caught.value.retryable) == ("3001", True)
    assert fake.invoices(connection["realm_id"]) == []


def test_a_system_fault_is_an_unknown_outcome(fake: QuickBooksFake, credential: Credential) -> None:
    fake.faults.fail(
        "/invoice", 500, _fault("10000", "An application error has occurred", "SystemFault")
    )
    with pytest.raises(OutcomeUnknown) as caught:
        _call(fake, credential, {"customer_id": "1", "lines": LINES})
    assert (caught.value.status, caught.value.code) == (500, "10000")


def test_a_fault_in_a_200_and_lower_case_keys_are_read() -> None:
    bodies = [
        (200, _fault("6000", "A business validation error has occurred")),
        (401, json.dumps({"fault": {"error": [{"message": "expired", "code": "3200"}]}}).encode()),
    ]

    async def execute(status: int, body: bytes) -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
        async with httpx.AsyncClient(transport=transport) as http:
            ctx = CallContext(
                http, ENDPOINTS, Credential({"realm_id": "1"}, access_token="at"), "k"
            )
            await CREATE_INVOICE.execute(
                ctx, CREATE_INVOICE.parse_args({"customer_id": "1", "lines": LINES})
            )

    with pytest.raises(ProviderRejected) as refused:
        asyncio.run(execute(*bodies[0]))
    assert (type(refused.value), refused.value.code) == (ProviderRejected, "6000")
    with pytest.raises(AuthRejected) as expired:
        asyncio.run(execute(*bodies[1]))
    assert expired.value.code == "3200" and "expired" in expired.value.message


# --- idempotency and reconciling ----------------------------------------------------------------


def test_a_retry_with_the_same_requestid_invoices_once(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    raw = {"customer_id": "3", "lines": LINES}
    assert _call(fake, credential, raw) == _call(fake, credential, raw)
    assert len(fake.invoices(connection["realm_id"])) == 1


def test_a_lost_answer_is_unknown_and_reconcile_finds_the_invoice(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    raw = {"customer_id": "1", "lines": LINES}
    fake.faults.lose_answer("/invoice")
    with pytest.raises(OutcomeUnknown):
        _call(fake, credential, raw)
    [invoice] = fake.invoices(connection["realm_id"])
    found = _call(fake, credential, raw, reconcile=True)
    assert found == {
        "invoice_id": invoice["Id"],
        "doc_number": invoice["DocNumber"],
        "total": "180.30",
    }
    assert len(fake.invoices(connection["realm_id"])) == 1


def test_reconcile_is_none_when_the_invoice_was_refused(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    assert _call(fake, credential, {"customer_id": "404", "lines": LINES}, reconcile=True) is None
    assert fake.invoices(connection["realm_id"]) == []


def test_reconcile_with_an_expired_token_is_auth_rejected(
    fake: QuickBooksFake, credential: Credential
) -> None:
    fake.expire_access_tokens()
    with pytest.raises(AuthRejected):
        _call(fake, credential, {"customer_id": "1", "lines": LINES}, reconcile=True)


# --- secrets and the contract -------------------------------------------------------------------


def test_no_credential_value_reaches_a_result_or_an_error(
    fake: QuickBooksFake, connection: dict[str, str], credential: Credential
) -> None:
    texts = [json.dumps(_call(fake, credential, {"customer_id": "1", "lines": LINES}))]
    echo = f"token {credential.access_token} for realm {connection['realm_id']} is not valid"
    fake.faults.fail("/invoice", 400, _fault("2050", echo))
    with pytest.raises(ProviderRejected) as caught:
        _call(fake, credential, {"customer_id": "1", "lines": LINES}, key="call-2")
    texts.append(str(caught.value))
    with pytest.raises(InvalidGrant) as refused:
        _refresh(fake, connection)
    texts.append(str(refused.value))
    assert "[redacted]" in texts[1]
    assert leaked(texts, Credential(connection, access_token=credential.access_token)) == []


def test_the_contract_check_reports_a_malformed_exchange() -> None:
    fake = QuickBooksFake()
    problems = problems_sending(
        fake,
        QUICKBOOKS,
        "POST",
        f"/v3/company/{fake.new_connection()['realm_id']}/invoice",
        json={"Line": [{"Amount": 1, "DetailType": "SalesItemLineDetail"}]},
        headers={"Authorization": "Bearer whatever"},
    )
    assert any("CustomerRef" in problem for problem in problems)
