"""``twilio.send_sms`` against the Twilio fake; every test's exchanges must fit the description."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.connectors import twilio
from corral.connectors._base import (
    AuthRejected,
    Credential,
    EffectKind,
    InvalidArguments,
    OutcomeUnknown,
    ProviderRejected,
)
from corral.connectors.twilio import PROVIDER, SEND_SMS
from corral.core.clock import ManualClock
from corral.fakes.twilio import TwilioFake
from tests.connectors._harness import (
    START,
    TWILIO,
    call,
    checked,
    leaked,
    problems_sending,
)

TO = "+14155550123"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[TwilioFake]:
    with checked(TwilioFake(clock=clock), TWILIO, check_written=True) as fake:
        yield fake


@pytest.fixture
def connection(fake: TwilioFake) -> dict[str, str]:
    return fake.new_connection()


def _send(fake: TwilioFake, fields: dict[str, str], **raw: str) -> dict[str, object] | None:
    return call(fake, SEND_SMS, raw, Credential(fields))


def _reconcile(fake: TwilioFake, fields: dict[str, str], **raw: str) -> object:
    return call(fake, SEND_SMS, raw, Credential(fields), reconcile=True)


def _twilio_error(code: int, message: str, status: int) -> bytes:
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    return json.dumps(
        {"code": code, "message": message, "more_info": more_info, "status": status}
    ).encode()


# --- declaration and arguments ------------------------------------------------------------------


def test_the_provider_declares_the_catalog_tool() -> None:
    assert PROVIDER.name == "twilio" and PROVIDER.auth == "api_key"
    assert PROVIDER.fields == ("account_sid", "auth_token")
    assert PROVIDER.optional_fields == ("from_number",)
    assert [tool.name for tool in PROVIDER.tools] == ["twilio.send_sms"]
    assert SEND_SMS.idempotency == "intent_log" and SEND_SMS.reconcile is not None
    assert set(SEND_SMS.json_schema()["properties"]) == {"to", "body", "from"}


def test_the_effect_is_a_message_to_the_e164_recipient() -> None:
    args = SEND_SMS.parse_args({"to": "(415) 555-0123", "body": "See you at 10"})
    effect = SEND_SMS.effect(args)
    assert (effect.kind, effect.recipient, effect.body) == (EffectKind.MESSAGE, TO, "See you at 10")


@pytest.mark.parametrize(
    "raw",
    [
        {"to": TO, "body": "hi", "sender": "+15005550006"},
        {"to": TO, "body": "hi", "from_": "+15005550006"},
        {"to": TO, "body": ""},
        {"to": TO, "body": "x" * 1601},
        {"to": "not a number", "body": "hi"},
        {"body": "hi"},
    ],
    ids=["unknown-name", "python-name", "empty-body", "long-body", "bad-to", "no-to"],
)
def test_bad_arguments_are_refused(raw: dict[str, str]) -> None:
    with pytest.raises(InvalidArguments):
        SEND_SMS.parse_args(raw)


def test_from_is_accepted_by_its_catalog_name() -> None:
    args = SEND_SMS.parse_args({"to": TO, "body": "x" * 1600, "from": "(415) 555-0100"})
    assert args.from_ == "+14155550100"


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    area=st.integers(200, 999),
    exchange=st.integers(200, 999),
    line=st.integers(0, 9999),
    style=st.sampled_from(["({a}) {e}-{n}", "{a}-{e}-{n}", "{a}.{e}.{n}", "1 {a} {e} {n}"]),
)
def test_national_numbers_become_e164_with_the_tenant_country(
    area: int, exchange: int, line: int, style: str
) -> None:
    national = style.format(a=area, e=exchange, n=f"{line:04d}")
    args = SEND_SMS.parse_args({"to": national, "body": "hi"}, country="US")
    assert args.to == f"+1{area}{exchange}{line:04d}"


def test_the_tenant_country_decides_a_national_number() -> None:
    args = SEND_SMS.parse_args({"to": "020 7946 0018", "body": "hi"}, country="GB")
    assert args.to == "+442079460018"


# --- execution ----------------------------------------------------------------------------------


def test_send_sms_texts_from_the_connection_number(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    result = _send(fake, connection, to="(415) 555-0123", body="See you at 10")
    [message] = fake.messages(connection["account_sid"])
    assert result == {"message_sid": message["sid"], "status": "queued"}
    assert (message["to"], message["from"], message["body"]) == (
        TO,
        connection["from_number"],
        "See you at 10",
    )


def test_from_overrides_the_connection_number(fake: TwilioFake, connection: dict[str, str]) -> None:
    _send(fake, connection, to=TO, body="hi", **{"from": "+15005550006"})
    assert fake.messages(connection["account_sid"])[0]["from"] == "+15005550006"


def test_without_any_from_number_nothing_is_sent(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    fields = {k: v for k, v in connection.items() if k != "from_number"}
    with pytest.raises(InvalidArguments, match="from"):
        _send(fake, fields, to=TO, body="hi")
    assert fake.exchanges == []


def test_a_wrong_auth_token_is_auth_rejected(fake: TwilioFake, connection: dict[str, str]) -> None:
    fields = connection | {"auth_token": "0" * 32}
    with pytest.raises(AuthRejected) as caught:
        _send(fake, fields, to=TO, body="hi")
    assert (caught.value.status, caught.value.code) == (401, "20003")


def test_a_refused_number_is_provider_rejected_with_twilio_code(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        _send(fake, connection, to="+15005550001", body="hi")
    assert type(caught.value) is ProviderRejected
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (400, "21211", False)
    assert fake.messages(connection["account_sid"]) == []


def test_too_many_requests_is_retryable(fake: TwilioFake, connection: dict[str, str]) -> None:
    fake.faults.fail("/Messages.json", 429, _twilio_error(20429, "Too Many Requests", 429))
    with pytest.raises(ProviderRejected) as caught:
        _send(fake, connection, to=TO, body="hi")
    assert (caught.value.code, caught.value.retryable) == ("20429", True)
    assert fake.messages(connection["account_sid"]) == []


def test_a_server_error_is_an_unknown_outcome(fake: TwilioFake, connection: dict[str, str]) -> None:
    fake.faults.fail("/Messages.json", 503, _twilio_error(20500, "Service Unavailable", 503))
    with pytest.raises(OutcomeUnknown):
        _send(fake, connection, to=TO, body="hi")


# --- reconciling --------------------------------------------------------------------------------


def test_a_lost_answer_is_unknown_and_reconcile_finds_the_message(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    fake.faults.lose_answer("/Messages.json")
    with pytest.raises(OutcomeUnknown):
        _send(fake, connection, to=TO, body="Your cleaning is tomorrow")
    [message] = fake.messages(connection["account_sid"])
    found = _reconcile(fake, connection, to=TO, body="Your cleaning is tomorrow")
    assert found == {"message_sid": message["sid"], "status": message["status"]}


def test_reconcile_is_none_when_nothing_was_sent(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    _send(fake, connection, to=TO, body="a different text")
    _send(fake, connection, to="+14155550199", body="the text")
    assert _reconcile(fake, connection, to=TO, body="the text") is None


def test_reconcile_looks_back_one_day_on_twilio_clock(
    fake: TwilioFake, connection: dict[str, str], clock: ManualClock
) -> None:
    _send(fake, connection, to=TO, body="hi")
    clock.advance(twilio.RECONCILE_WINDOW - timedelta(seconds=1))
    assert _reconcile(fake, connection, to=TO, body="hi") is not None
    clock.advance(timedelta(seconds=2))
    assert _reconcile(fake, connection, to=TO, body="hi") is None


def test_reconcile_reads_every_page(
    fake: TwilioFake, connection: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(twilio, "_PAGE_SIZE", 2)
    first = _send(fake, connection, to=TO, body="first")
    for n in range(4):
        _send(fake, connection, to=TO, body=f"later {n}")
    assert _reconcile(fake, connection, to=TO, body="first") == first
    pages = [e for e in fake.exchanges if e.method == "GET"]
    assert [e.query.get("Page") for e in pages] == [None, "1", "2"]


def test_reconcile_is_unknown_when_the_list_cannot_be_read(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    fake.faults.fail("/Messages.json", 404, _twilio_error(20404, "Not Found", 404))
    with pytest.raises(OutcomeUnknown):
        _reconcile(fake, connection, to=TO, body="hi")


def test_reconcile_with_a_wrong_token_is_auth_rejected(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    with pytest.raises(AuthRejected):
        _reconcile(fake, connection | {"auth_token": "0" * 32}, to=TO, body="hi")


# --- secrets and the contract -------------------------------------------------------------------


def test_no_credential_value_reaches_a_result_or_an_error(
    fake: TwilioFake, connection: dict[str, str]
) -> None:
    texts = [json.dumps(_send(fake, connection, to=TO, body="hi"))]
    echo = f"Account {connection['account_sid']} token {connection['auth_token']} refused"
    fake.faults.fail("/Messages.json", 400, _twilio_error(21606, echo, 400))
    for fields in (connection, connection | {"auth_token": "0" * 32}):
        with pytest.raises(ProviderRejected) as caught:
            _send(fake, fields, to=TO, body="hi")
        texts.append(str(caught.value))
    assert "[redacted]" in texts[1]
    assert leaked(texts, Credential(connection)) == []


def test_the_contract_check_reports_a_malformed_exchange() -> None:
    fake = TwilioFake()
    path = f"/2010-04-01/Accounts/{fake.new_connection()['account_sid']}/Messages.json"
    unauthenticated = problems_sending(fake, TWILIO, "POST", path, data={"To": TO, "Body": "hi"})
    assert any("Security" in problem for problem in unauthenticated)
