"""The Twilio fake, over HTTP: auth refusals, validation codes, magic numbers, list and fetch."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.core.clock import ManualClock
from corral.fakes._contract import spec_json
from corral.fakes.twilio import TwilioFake
from tests.connectors._harness import FAKES_START as START
from tests.connectors._harness import TWILIO, contract_problems

TO = "+14155550123"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def fake(clock: ManualClock) -> TwilioFake:
    return TwilioFake(clock=clock)


@pytest.fixture
def conn(fake: TwilioFake) -> dict[str, str]:
    return fake.new_connection()


@pytest.fixture
def http(fake: TwilioFake) -> TestClient:
    return TestClient(fake.app(), base_url="http://twilio.fake")


def _messages(conn: dict[str, str]) -> str:
    return f"/2010-04-01/Accounts/{conn['account_sid']}/Messages.json"


def _send(http: TestClient, conn: dict[str, str], **form: str) -> Any:
    body = {"To": TO, "From": conn["from_number"], "Body": "hi"} | form
    return http.post(_messages(conn), data=body, auth=(conn["account_sid"], conn["auth_token"]))


def _get(http: TestClient, conn: dict[str, str], path: str, **params: str) -> Any:
    return http.get(path, params=params or None, auth=(conn["account_sid"], conn["auth_token"]))


def test_a_new_connection_is_an_account_with_its_own_number(fake: TwilioFake) -> None:
    first, second = fake.new_connection(), fake.new_connection()
    assert set(first) == {"account_sid", "auth_token", "from_number"}
    assert first["account_sid"].startswith("AC") and len(first["account_sid"]) == 34
    assert first["from_number"] != second["from_number"]


@pytest.mark.parametrize("auth", ["none", "wrong-token", "other-account"])
def test_bad_credentials_are_401_code_20003(
    fake: TwilioFake, http: TestClient, conn: dict[str, str], auth: str
) -> None:
    other = fake.new_connection()
    form = {"To": TO, "From": conn["from_number"], "Body": "hi"}
    if auth == "none":
        response = http.post(_messages(conn), data=form)
    else:
        user = conn["account_sid"] if auth == "wrong-token" else other["account_sid"]
        password = other["auth_token"] if auth == "wrong-token" else conn["auth_token"]
        response = http.post(_messages(conn), data=form, auth=(user, password))
    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert fake.messages(conn["account_sid"]) == []


def test_another_account_in_the_path_is_not_found(
    fake: TwilioFake, http: TestClient, conn: dict[str, str]
) -> None:
    other = fake.new_connection()
    response = _get(http, conn, _messages(other))
    assert (response.status_code, response.json()["code"]) == (404, 20404)


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"To": ""}, 21604),
        ({"From": ""}, 21603),
        ({"Body": ""}, 21602),
        ({"Body": "x" * 1601}, 21617),
        ({"To": "415-555-0123"}, 21211),
        ({"From": "+14155550100"}, 21606),
        ({"MessagingServiceSid": "MG" + "a" * 32}, 21701),
    ],
    ids=["no-to", "no-from", "no-body", "long-body", "national-to", "not-owned", "service"],
)
def test_bad_requests_are_400_with_twilio_codes(
    fake: TwilioFake, http: TestClient, conn: dict[str, str], form: dict[str, str], code: int
) -> None:
    response = _send(http, conn, **form)
    assert (response.status_code, response.json()["code"], response.json()["status"]) == (
        400,
        code,
        400,
    )
    assert fake.messages(conn["account_sid"]) == []


def _magic(direction: str) -> list[tuple[str, int]]:
    table = spec_json("twilio", "twilio.supplement.json")["test_credentials"]
    entries = table[f"sms_{direction}_magic_numbers"].items()
    return [(number, e["error_code"]) for number, e in entries if number != "*" and e["error_code"]]


@pytest.mark.parametrize(("number", "code"), _magic("to"))
def test_the_magic_to_numbers_fail_with_their_codes(
    http: TestClient, conn: dict[str, str], number: str, code: int
) -> None:
    assert _send(http, conn, To=number).json()["code"] == code


@pytest.mark.parametrize(("number", "code"), _magic("from"))
def test_the_magic_from_numbers_fail_with_their_codes(
    http: TestClient, conn: dict[str, str], number: str, code: int
) -> None:
    assert _send(http, conn, From=number).json()["code"] == code


def test_a_message_is_created_fetched_and_listed(
    fake: TwilioFake, http: TestClient, conn: dict[str, str]
) -> None:
    created = _send(http, conn, Body="See you at 10 👍")
    assert created.status_code == 201
    message = created.json()
    assert (message["to"], message["from"], message["status"]) == (
        TO,
        conn["from_number"],
        "queued",
    )
    assert (message["num_segments"], message["direction"]) == ("1", "outbound-api")
    path = f"/2010-04-01/Accounts/{conn['account_sid']}/Messages/{message['sid']}.json"
    assert _get(http, conn, path).json() == message
    assert _get(http, conn, _messages(conn)).json()["messages"] == [message]
    assert created.headers["date"] == format_datetime(START)


def test_sending_twice_sends_twice(
    fake: TwilioFake, http: TestClient, conn: dict[str, str]
) -> None:
    first, second = _send(http, conn).json(), _send(http, conn).json()
    assert first["sid"] != second["sid"]
    assert [m["sid"] for m in fake.messages(conn["account_sid"])] == [second["sid"], first["sid"]]


def test_long_bodies_count_their_segments(http: TestClient, conn: dict[str, str]) -> None:
    assert _send(http, conn, Body="x" * 161).json()["num_segments"] == "2"
    assert _send(http, conn, Body="é" * 160).json()["num_segments"] == "1"
    assert _send(http, conn, Body="👍" * 71).json()["num_segments"] == "2"


def test_an_unknown_message_is_404(http: TestClient, conn: dict[str, str]) -> None:
    path = f"/2010-04-01/Accounts/{conn['account_sid']}/Messages/SM{'0' * 32}.json"
    response = _get(http, conn, path)
    assert (response.status_code, response.json()["code"]) == (404, 20404)


def test_the_list_filters_and_pages_newest_first(
    http: TestClient, conn: dict[str, str], clock: ManualClock
) -> None:
    _send(http, conn, Body="old")
    clock.advance(timedelta(days=2))
    for n in range(3):
        _send(http, conn, Body=f"new {n}")
    _send(http, conn, To="+14155550199", Body="elsewhere")
    page = _get(http, conn, _messages(conn), To=TO, PageSize="2").json()
    assert [m["body"] for m in page["messages"]] == ["new 2", "new 1"]
    assert (page["page"], page["start"], page["end"], page["previous_page_uri"]) == (0, 0, 1, None)
    following = _get(http, conn, page["next_page_uri"]).json()
    assert [m["body"] for m in following["messages"]] == ["new 0", "old"]
    assert following["next_page_uri"] is None
    today = clock.now().date().isoformat()
    assert len(_get(http, conn, _messages(conn), DateSent=today).json()["messages"]) == 4
    assert [
        m["body"]
        for m in _get(http, conn, _messages(conn), **{"DateSent<": "2026-03-05"}).json()["messages"]
    ] == ["old"]
    assert len(_get(http, conn, _messages(conn), **{"DateSent>": today}).json()["messages"]) == 4


@pytest.mark.parametrize("params", [{"PageSize": "0"}, {"Page": "-1"}, {"DateSent": "yesterday"}])
def test_bad_list_parameters_are_400(
    http: TestClient, conn: dict[str, str], params: dict[str, str]
) -> None:
    response = _get(http, conn, _messages(conn), **params)
    assert (response.status_code, response.json()["code"]) == (400, 20001)


def test_unknown_paths_answer_in_twilio_envelope(http: TestClient, conn: dict[str, str]) -> None:
    response = _get(http, conn, f"/2010-04-01/Accounts/{conn['account_sid']}/Calls.json")
    assert (response.status_code, response.json()["code"]) == (404, 20404)


def test_answers_fit_the_description_and_never_carry_the_auth_token(
    fake: TwilioFake, http: TestClient, conn: dict[str, str]
) -> None:
    sid = _send(http, conn).json()["sid"]
    _send(http, conn, To="+15005550001")
    _get(http, conn, _messages(conn))
    _get(http, conn, f"/2010-04-01/Accounts/{conn['account_sid']}/Messages/{sid}.json")
    http.post(_messages(conn), data={"To": TO, "Body": "hi"}, auth=(conn["account_sid"], "bad"))
    assert contract_problems(TWILIO, fake.exchanges) == []
    assert all(conn["auth_token"].encode() not in e.response_body for e in fake.exchanges)
