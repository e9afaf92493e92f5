"""``stripe.create_refund`` and ``stripe.create_payment_intent`` against the Stripe fake; every
test's exchanges must fit the description."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from corral.connectors._base import (
    AuthRejected,
    Credential,
    EffectKind,
    InvalidArguments,
    OutcomeUnknown,
    ProviderRejected,
    Tool,
)
from corral.connectors.stripe import API_VERSION, CREATE_PAYMENT_INTENT, CREATE_REFUND, PROVIDER
from corral.fakes.stripe import StripeFake
from tests.connectors._harness import (
    STRIPE,
    call,
    checked,
    clock,
    leaked,
    problems_sending,
    run,
)


@pytest.fixture
def fake() -> Iterator[StripeFake]:
    with checked(StripeFake(clock=clock()), STRIPE, check_written=True) as fake:
        yield fake


@pytest.fixture
def connection(fake: StripeFake) -> dict[str, str]:
    return fake.new_connection()


@pytest.fixture
def paid(fake: StripeFake, connection: dict[str, str]) -> str:
    """A succeeded PaymentIntent of 5000 usd (confirmed with the test card ``pm_card_visa``)."""

    async def pay(http: httpx.AsyncClient) -> str:
        response = await http.post(
            "http://stripe.fake/v1/payment_intents",
            data={
                "amount": "5000",
                "currency": "usd",
                "confirm": "true",
                "payment_method": "pm_card_visa",
            },
            headers={"Authorization": f"Bearer {connection['api_key']}"},
        )
        assert response.json()["status"] == "succeeded"
        return str(response.json()["id"])

    return run(fake, pay)


def _call(
    fake: StripeFake, tool: Tool[Any], fields: dict[str, str], raw: dict[str, Any], **options: Any
) -> dict[str, Any] | None:
    return call(fake, tool, raw, Credential(fields), **options)


def _stripe_error(kind: str, message: str, code: str | None = None) -> bytes:
    error = {"type": kind, "message": message} | ({"code": code} if code else {})
    return json.dumps({"error": error}).encode()


def _refund(intent: str, amount: object = 1500, **more: Any) -> dict[str, Any]:
    return {"payment_intent": intent, "amount": amount, "currency": "usd", **more}


# --- declaration and arguments ------------------------------------------------------------------


def test_the_provider_declares_the_catalog_tools() -> None:
    assert (PROVIDER.name, PROVIDER.auth, PROVIDER.fields) == ("stripe", "api_key", ("api_key",))
    assert [t.name for t in PROVIDER.tools] == [
        "stripe.create_refund",
        "stripe.create_payment_intent",
    ]
    assert all(t.idempotency == "native" and t.reconcile is not None for t in PROVIDER.tools)
    assert set(CREATE_REFUND.json_schema()["properties"]) == {
        "payment_intent",
        "amount",
        "currency",
        "reason",
    }
    assert set(CREATE_PAYMENT_INTENT.json_schema()["properties"]) == {
        "amount",
        "currency",
        "customer",
        "description",
    }


def test_the_effects_carry_target_amount_and_currency() -> None:
    refund = CREATE_REFUND.effect(CREATE_REFUND.parse_args(_refund("pi_123", 4500)))
    assert (refund.kind, refund.target, refund.amount, refund.currency) == (
        EffectKind.REFUND,
        "pi_123",
        4500,
        "usd",
    )
    charge = CREATE_PAYMENT_INTENT.effect(
        CREATE_PAYMENT_INTENT.parse_args({"amount": 700, "currency": "eur", "customer": "cus_9"})
    )
    assert (charge.kind, charge.target, charge.amount, charge.currency) == (
        EffectKind.CHARGE,
        "cus_9",
        700,
        "eur",
    )
    anonymous = CREATE_PAYMENT_INTENT.parse_args({"amount": 700, "currency": "eur"})
    assert CREATE_PAYMENT_INTENT.effect(anonymous).target is None


@pytest.mark.parametrize(
    "raw",
    [
        _refund("pi_1", refund_reason="duplicate"),
        _refund("pi_1", currency="USD"),
        _refund("pi_1", currency="xyz"),
        _refund("pi_1", amount=0),
        _refund("pi_1", amount=-100),
        _refund("pi_1", amount=True),
        _refund("pi_1", amount="100"),
        _refund("pi_1", reason="changed_mind"),
        _refund("ch_1"),
        {"amount": 100, "currency": "usd"},
    ],
    ids=[
        "unknown-name",
        "upper-currency",
        "unknown-currency",
        "zero",
        "negative",
        "bool",
        "string-amount",
        "bad-reason",
        "not-a-payment-intent",
        "no-payment-intent",
    ],
)
def test_bad_refund_arguments_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidArguments):
        CREATE_REFUND.parse_args(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"amount": 0, "currency": "usd"},
        {"amount": 100, "currency": "dollars"},
        {"amount": 100, "currency": "usd", "customer": "someone"},
        {"amount": 100, "currency": "usd", "description": ""},
        {"amount": 100, "currency": "usd", "metadata": {"a": "b"}},
    ],
    ids=["zero", "bad-currency", "bad-customer", "empty-description", "unknown-name"],
)
def test_bad_payment_intent_arguments_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidArguments):
        CREATE_PAYMENT_INTENT.parse_args(raw)


# --- execution ----------------------------------------------------------------------------------


def test_create_refund_refunds_the_payment(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    result = _call(fake, CREATE_REFUND, connection, _refund(paid, reason="duplicate"))
    [refund] = fake.refunds(connection["api_key"])
    assert result == {
        "refund_id": refund["id"],
        "status": "succeeded",
        "amount": 1500,
        "currency": "usd",
    }
    assert (refund["payment_intent"], refund["reason"]) == (paid, "duplicate")


def test_create_refund_sends_the_version_and_the_idempotency_key(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    _call(fake, CREATE_REFUND, connection, _refund(paid), key="key-7")
    sent = fake.exchanges[-1].headers
    assert (sent["stripe-version"], sent["idempotency-key"]) == (API_VERSION, "key-7")
    assert sent["authorization"] == f"Bearer {connection['api_key']}"


def test_create_payment_intent_never_returns_the_client_secret(
    fake: StripeFake, connection: dict[str, str]
) -> None:
    customer = fake.add_customer(connection["api_key"])
    raw = {"amount": 12000, "currency": "usd", "customer": customer, "description": "Crown"}
    result = _call(fake, CREATE_PAYMENT_INTENT, connection, raw)
    [intent] = fake.payment_intents(connection["api_key"])
    assert result == {
        "payment_intent_id": intent["id"],
        "status": "requires_payment_method",
        "amount": 12000,
        "currency": "usd",
    }
    assert (intent["customer"], intent["description"]) == (customer, "Crown")
    assert intent["client_secret"] not in json.dumps(result)


def test_a_wrong_key_is_auth_rejected(fake: StripeFake, paid: str) -> None:
    with pytest.raises(AuthRejected) as caught:
        _call(fake, CREATE_REFUND, {"api_key": "sk_test_wrong"}, _refund(paid))
    assert caught.value.status == 401


def test_a_refund_too_large_is_provider_rejected_with_stripe_code(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        _call(fake, CREATE_REFUND, connection, _refund(paid, 5001))
    assert type(caught.value) is ProviderRejected
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        400,
        "amount_too_large",
        False,
    )
    assert fake.refunds(connection["api_key"]) == []


def test_a_refund_in_another_currency_is_refused(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    with pytest.raises(ProviderRejected):
        _call(fake, CREATE_REFUND, connection, _refund(paid, currency="eur"))
    assert fake.refunds(connection["api_key"]) == []


def test_too_many_requests_is_retryable(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    body = _stripe_error("invalid_request_error", "Too many requests.", "rate_limit")
    fake.faults.fail("/v1/refunds", 429, body)
    with pytest.raises(ProviderRejected) as caught:
        _call(fake, CREATE_REFUND, connection, _refund(paid))
    assert (caught.value.code, caught.value.retryable) == ("rate_limit", True)
    assert fake.refunds(connection["api_key"]) == []


def test_a_server_error_is_an_unknown_outcome(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    fake.faults.fail("/v1/refunds", 500, _stripe_error("api_error", "Something went wrong."))
    with pytest.raises(OutcomeUnknown):
        _call(fake, CREATE_REFUND, connection, _refund(paid))


# --- idempotency and reconciling ----------------------------------------------------------------


def test_a_retry_with_the_same_key_refunds_once(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    first = _call(fake, CREATE_REFUND, connection, _refund(paid))
    again = _call(fake, CREATE_REFUND, connection, _refund(paid))
    assert first == again
    assert len(fake.refunds(connection["api_key"])) == 1
    assert fake.exchanges[-1].response_headers["idempotent-replayed"] == "true"


def test_the_same_key_with_other_arguments_is_an_idempotency_error(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    _call(fake, CREATE_REFUND, connection, _refund(paid))
    with pytest.raises(ProviderRejected) as caught:
        _call(fake, CREATE_REFUND, connection, _refund(paid, 1600))
    assert caught.value.code == "idempotency_error"
    assert len(fake.refunds(connection["api_key"])) == 1


def test_a_lost_refund_answer_is_unknown_and_reconcile_finds_the_refund(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    fake.faults.lose_answer("/v1/refunds")
    with pytest.raises(OutcomeUnknown):
        _call(fake, CREATE_REFUND, connection, _refund(paid))
    [refund] = fake.refunds(connection["api_key"])
    found = _call(fake, CREATE_REFUND, connection, _refund(paid), reconcile=True)
    assert found is not None and found["refund_id"] == refund["id"]
    assert len(fake.refunds(connection["api_key"])) == 1


def test_a_lost_payment_intent_answer_is_reconciled_once(
    fake: StripeFake, connection: dict[str, str]
) -> None:
    raw = {"amount": 900, "currency": "usd"}
    fake.faults.lose_answer("/v1/payment_intents")
    with pytest.raises(OutcomeUnknown):
        _call(fake, CREATE_PAYMENT_INTENT, connection, raw)
    found = _call(fake, CREATE_PAYMENT_INTENT, connection, raw, reconcile=True)
    [intent] = fake.payment_intents(connection["api_key"])
    assert found is not None and found["payment_intent_id"] == intent["id"]


def test_reconcile_is_none_when_the_refund_was_refused(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    raw = _refund(paid, 9999)
    assert _call(fake, CREATE_REFUND, connection, raw, reconcile=True) is None
    assert fake.refunds(connection["api_key"]) == []


def test_reconcile_cannot_tell_while_rate_limited(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    body = _stripe_error("invalid_request_error", "Too many requests.", "rate_limit")
    fake.faults.fail("/v1/refunds", 429, body)
    with pytest.raises(OutcomeUnknown) as caught:
        _call(fake, CREATE_REFUND, connection, _refund(paid), reconcile=True)
    assert caught.value.retryable


# --- secrets and the contract -------------------------------------------------------------------


def test_no_credential_value_reaches_a_result_or_an_error(
    fake: StripeFake, connection: dict[str, str], paid: str
) -> None:
    texts = [json.dumps(_call(fake, CREATE_REFUND, connection, _refund(paid)))]
    echo = f"Invalid API Key provided: {connection['api_key']}"
    fake.faults.fail("/v1/refunds", 401, _stripe_error("invalid_request_error", echo))
    with pytest.raises(AuthRejected) as caught:
        _call(fake, CREATE_REFUND, connection, _refund(paid), key="call-2")
    texts.append(str(caught.value))
    assert "[redacted]" in texts[1]
    assert leaked(texts, Credential(connection)) == []


def test_the_contract_check_reports_a_malformed_exchange() -> None:
    fake = StripeFake()
    problems = problems_sending(
        fake,
        STRIPE,
        "POST",
        "/v1/refunds",
        data={"payment_intent": "pi_1", "amount": "ten"},
        headers={"Authorization": f"Bearer {fake.new_connection()['api_key']}"},
    )
    assert any("amount" in problem or "integer" in problem for problem in problems)
