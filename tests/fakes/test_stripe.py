"""The Stripe fake, over HTTP: key refusals, idempotent replay, refunds that keep state."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.core.clock import ManualClock
from corral.fakes.stripe import StripeFake
from tests.connectors._harness import FAKES_START as START
from tests.connectors._harness import STRIPE, contract_problems


@pytest.fixture
def fake() -> StripeFake:
    return StripeFake(clock=ManualClock(START))


@pytest.fixture
def key(fake: StripeFake) -> str:
    return fake.new_connection()["api_key"]


@pytest.fixture
def http(fake: StripeFake) -> TestClient:
    return TestClient(fake.app(), base_url="http://stripe.fake")


def _headers(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", "Stripe-Version": "2023-08-16"}
    return headers | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})


def _pay(http: TestClient, key: str, amount: int = 5000, method: str = "pm_card_visa") -> Any:
    form = {"amount": str(amount), "currency": "usd", "confirm": "true", "payment_method": method}
    return http.post("/v1/payment_intents", data=form, headers=_headers(key))


def _refund(http: TestClient, key: str, idempotency_key: str | None = None, **form: str) -> Any:
    return http.post("/v1/refunds", data=form, headers=_headers(key, idempotency_key))


@pytest.mark.parametrize("header", [None, "Bearer sk_test_unknown", "Basic !!!", "Token x"])
def test_a_missing_or_unknown_key_is_401(
    fake: StripeFake, http: TestClient, key: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    response = http.post("/v1/payment_intents", data={"amount": "100"}, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "api key" in error["message"].lower()
    assert fake.payment_intents(key) == []


def test_basic_auth_with_the_key_as_user_is_accepted(http: TestClient, key: str) -> None:
    basic = base64.b64encode(f"{key}:".encode()).decode()
    response = http.get("/v1/refunds/re_none", headers={"Authorization": f"Basic {basic}"})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "resource_missing")


def test_another_api_version_is_refused(http: TestClient, key: str) -> None:
    headers = _headers(key) | {"Stripe-Version": "2020-08-27"}
    response = http.post("/v1/payment_intents", data={"amount": "100"}, headers=headers)
    assert response.status_code == 400 and "2020-08-27" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("form", "code", "param"),
    [
        ({"currency": "usd"}, "parameter_missing", "amount"),
        ({"amount": "ten", "currency": "usd"}, "parameter_invalid_integer", "amount"),
        ({"amount": "10", "currency": "usd"}, "amount_too_small", "amount"),
        ({"amount": "100", "currency": "zzz"}, None, "currency"),
        ({"amount": "100", "currency": "usd", "customer": "cus_x"}, "resource_missing", "customer"),
        ({"amount": "100", "currency": "usd", "confirm": "maybe"}, None, "confirm"),
    ],
    ids=["no-amount", "bad-amount", "too-small", "bad-currency", "no-customer", "bad-bool"],
)
def test_bad_payment_intents_are_400_naming_the_param(
    http: TestClient, key: str, form: dict[str, str], code: str | None, param: str
) -> None:
    response = http.post("/v1/payment_intents", data=form, headers=_headers(key))
    error = response.json()["error"]
    assert (response.status_code, error.get("code"), error["param"]) == (400, code, param)


def test_a_confirmed_test_card_succeeds_with_a_charge(http: TestClient, key: str) -> None:
    intent = _pay(http, key).json()
    assert (intent["status"], intent["amount_received"]) == ("succeeded", 5000)
    charge = http.get(f"/v1/charges/{intent['latest_charge']}", headers=_headers(key)).json()
    assert (charge["paid"], charge["payment_intent"], charge["amount"]) == (
        True,
        intent["id"],
        5000,
    )


def test_a_declining_test_card_is_402_and_the_intent_waits(
    fake: StripeFake, http: TestClient, key: str
) -> None:
    response = _pay(http, key, method="pm_card_chargeDeclinedInsufficientFunds")
    error = response.json()["error"]
    assert (response.status_code, error["type"], error["code"]) == (
        402,
        "card_error",
        "card_declined",
    )
    assert error["decline_code"] == "insufficient_funds"
    [intent] = fake.payment_intents(key)
    assert intent["status"] == "requires_payment_method"


def test_a_refund_is_kept_and_can_be_fetched(fake: StripeFake, http: TestClient, key: str) -> None:
    intent = _pay(http, key).json()
    created = _refund(http, key, payment_intent=intent["id"], amount="1200", reason="duplicate")
    assert created.status_code == 200
    refund = created.json()
    assert (refund["object"], refund["amount"], refund["currency"]) == ("refund", 1200, "usd")
    assert (refund["payment_intent"], refund["charge"]) == (intent["id"], intent["latest_charge"])
    assert http.get(f"/v1/refunds/{refund['id']}", headers=_headers(key)).json() == refund
    charge = http.get(f"/v1/charges/{intent['latest_charge']}", headers=_headers(key)).json()
    assert (charge["amount_refunded"], charge["refunded"]) == (1200, False)
    assert fake.refunds(key) == [refund]


def test_a_seeded_paid_intent_is_refundable(fake: StripeFake, http: TestClient, key: str) -> None:
    intent = fake.add_paid_payment_intent(key, 2500, "eur")
    [paid] = fake.payment_intents(key)
    assert (paid["id"], paid["status"], paid["amount"], paid["currency"]) == (
        intent,
        "succeeded",
        2500,
        "eur",
    )
    refund = _refund(http, key, payment_intent=intent).json()
    assert (refund["amount"], refund["currency"]) == (2500, "eur")


def test_refunds_stop_at_the_charge_amount(http: TestClient, key: str) -> None:
    intent = _pay(http, key).json()["id"]
    too_much = _refund(http, key, payment_intent=intent, amount="5001").json()["error"]
    assert (too_much["code"], too_much["param"]) == ("amount_too_large", "amount")
    rest = _refund(http, key, payment_intent=intent).json()
    assert rest["amount"] == 5000
    again = _refund(http, key, payment_intent=intent).json()["error"]
    assert again["code"] == "charge_already_refunded"


@pytest.mark.parametrize(
    ("form", "code", "param"),
    [
        ({}, "parameter_missing", None),
        ({"payment_intent": "pi_none"}, "resource_missing", "payment_intent"),
        ({"charge": "ch_none"}, "resource_missing", "charge"),
        ({"payment_intent": "PAID", "amount": "100", "currency": "eur"}, None, "currency"),
        ({"payment_intent": "PAID", "reason": "changed_mind"}, None, "reason"),
    ],
    ids=["nothing-to-refund", "no-intent", "no-charge", "other-currency", "bad-reason"],
)
def test_bad_refunds_are_400(
    http: TestClient, key: str, form: dict[str, str], code: str | None, param: str | None
) -> None:
    paid = _pay(http, key).json()["id"]
    response = _refund(http, key, **{k: paid if v == "PAID" else v for k, v in form.items()})
    error = response.json()["error"]
    assert (response.status_code, error.get("code"), error.get("param")) == (400, code, param)


def test_an_unpaid_intent_cannot_be_refunded(http: TestClient, key: str) -> None:
    form = {"amount": "700", "currency": "usd"}
    intent = http.post("/v1/payment_intents", data=form, headers=_headers(key)).json()["id"]
    error = _refund(http, key, payment_intent=intent).json()["error"]
    assert error["code"] == "payment_intent_unexpected_state"


def test_the_same_idempotency_key_replays_the_first_answer(
    fake: StripeFake, http: TestClient, key: str
) -> None:
    intent = _pay(http, key).json()["id"]
    first = _refund(http, key, "k-1", payment_intent=intent, amount="100")
    again = _refund(http, key, "k-1", payment_intent=intent, amount="100")
    assert again.json() == first.json()
    assert (first.headers.get("idempotent-replayed"), again.headers["idempotent-replayed"]) == (
        None,
        "true",
    )
    assert len(fake.refunds(key)) == 1


def test_the_same_key_with_other_parameters_is_an_idempotency_error(
    fake: StripeFake, http: TestClient, key: str
) -> None:
    intent = _pay(http, key).json()["id"]
    _refund(http, key, "k-1", payment_intent=intent, amount="100")
    response = _refund(http, key, "k-1", payment_intent=intent, amount="200")
    assert (response.status_code, response.json()["error"]["type"]) == (400, "idempotency_error")
    assert len(fake.refunds(key)) == 1


def test_a_key_is_saved_only_once_execution_began(http: TestClient, key: str) -> None:
    invalid = http.post(
        "/v1/payment_intents", data={"currency": "usd"}, headers=_headers(key, "k-2")
    )
    assert invalid.status_code == 400
    form = {"amount": "900", "currency": "usd"}
    valid = http.post("/v1/payment_intents", data=form, headers=_headers(key, "k-2"))
    assert valid.status_code == 200
    form |= {"confirm": "true", "payment_method": "pm_card_chargeDeclined"}
    declined = http.post("/v1/payment_intents", data=form, headers=_headers(key, "k-3"))
    replayed = http.post("/v1/payment_intents", data=form, headers=_headers(key, "k-3"))
    assert (declined.status_code, replayed.status_code) == (402, 402)
    assert replayed.json() == declined.json()


def test_keys_belong_to_their_account(fake: StripeFake, http: TestClient, key: str) -> None:
    other = fake.new_connection()["api_key"]
    intent = _pay(http, key).json()["id"]
    response = http.get(f"/v1/payment_intents/{intent}", headers=_headers(other))
    assert response.status_code == 404


def test_unknown_paths_answer_in_stripe_envelope(http: TestClient, key: str) -> None:
    response = http.get("/v1/customers", headers=_headers(key))
    assert response.status_code == 404
    assert "Unrecognized request URL" in response.json()["error"]["message"]


def test_answers_fit_the_description_and_never_carry_the_key(
    fake: StripeFake, http: TestClient, key: str
) -> None:
    intent = _pay(http, key).json()
    _pay(http, key, method="pm_card_chargeDeclined")
    refund = _refund(http, key, payment_intent=intent["id"], amount="100").json()
    _refund(http, key, payment_intent=intent["id"], amount="99999")
    for path in (
        f"/v1/refunds/{refund['id']}",
        f"/v1/payment_intents/{intent['id']}",
        f"/v1/charges/{intent['latest_charge']}",
        "/v1/refunds/re_none",
    ):
        http.get(path, headers=_headers(key))
    http.post("/v1/refunds", data={}, headers={"Authorization": "Bearer sk_test_nope"})
    assert contract_problems(STRIPE, fake.exchanges) == []
    assert all(key.encode() not in e.response_body for e in fake.exchanges)
    assert all(b"sk_test_nope" not in e.response_body for e in fake.exchanges)
