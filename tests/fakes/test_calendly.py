"""The Calendly fake on its own: token rotation and client auth, auth refusals, booking rules,
listing and cancellation, as the descriptions and NOTES.md give them; every answer it gives, to
good and bad requests alike, fits the description."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.fakes.calendly import CalendlyFake
from tests.connectors._harness import calendly_contract, clock

INVITEE = {"name": "Ana Ruiz", "email": "ana@example.com", "timezone": "America/Los_Angeles"}


@pytest.fixture
def fake() -> Iterator[CalendlyFake]:
    fake = CalendlyFake(clock())
    yield fake
    problems = [p for e in fake.exchanges for p in calendly_contract().response_problems(e)]
    assert problems == []


@pytest.fixture
def client(fake: CalendlyFake) -> TestClient:
    return TestClient(fake.app())


def basic(fields: dict[str, str]) -> dict[str, str]:
    pair = f"{fields['client_id']}:{fields['client_secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def refresh(client: TestClient, fields: dict[str, str], refresh_token: str) -> Any:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return client.post("/oauth/token", data=form, headers=basic(fields))


def authorized(client: TestClient, fields: dict[str, str]) -> dict[str, str]:
    answer = refresh(client, fields, fields["refresh_token"])
    assert answer.status_code == 200
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def booking(event_type: str, start: str = "2026-03-04T18:00:00.000000Z", **changes: Any) -> Any:
    return {"event_type": event_type, "start_time": start, "invitee": INVITEE, **changes}


def details(answer: Any) -> list[tuple[str, str | None]]:
    body = answer.json()
    assert body["title"] == "Invalid Argument"
    return [(d["parameter"], d.get("code")) for d in body["details"]]


# --- token endpoint -----------------------------------------------------------------------------


def test_refresh_tokens_are_single_use(fake: CalendlyFake, client: TestClient) -> None:
    fields = fake.new_connection()
    first = refresh(client, fields, fields["refresh_token"])
    assert first.status_code == 200
    body = first.json()
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 7200)
    assert body["owner"].startswith("https://api.calendly.com/users/")
    reused = refresh(client, fields, fields["refresh_token"])
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    assert refresh(client, fields, body["refresh_token"]).status_code == 200


def test_native_clients_may_send_their_credentials_in_the_form(
    fake: CalendlyFake, client: TestClient
) -> None:
    fields = fake.new_connection()
    answer = client.post("/oauth/token", data={**fields, "grant_type": "refresh_token"})
    assert answer.status_code == 200


def test_token_refusals(fake: CalendlyFake, client: TestClient) -> None:
    fields = fake.new_connection()
    wrong = refresh(client, {**fields, "client_secret": "x"}, fields["refresh_token"])
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    no_grant = client.post("/oauth/token", data={"refresh_token": "x"}, headers=basic(fields))
    assert (no_grant.status_code, no_grant.json()["error"]) == (400, "invalid_request")


# --- auth and reads -----------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer rt_unknown", "Basic eDp5"])
def test_api_calls_without_a_valid_token_are_401(
    fake: CalendlyFake, client: TestClient, header: str | None
) -> None:
    fake.new_connection()
    answer = client.get("/users/me", headers={} if header is None else {"Authorization": header})
    assert answer.status_code == 401
    assert answer.json() == {"title": "Unauthenticated", "message": "The access token is invalid"}


def test_expired_access_tokens_are_401(fake: CalendlyFake, client: TestClient) -> None:
    headers = authorized(client, fake.new_connection())
    assert client.get("/users/me", headers=headers).status_code == 200
    fake.expire_access_tokens()
    assert client.get("/users/me", headers=headers).status_code == 401


def test_a_connection_comes_with_a_listed_event_type(
    fake: CalendlyFake, client: TestClient
) -> None:
    headers = authorized(client, fake.new_connection())
    me = client.get("/users/me", headers=headers).json()["resource"]
    listed = client.get("/event_types", params={"user": me["uri"]}, headers=headers).json()
    [event_type] = listed["collection"]
    assert (event_type["duration"], event_type["kind"]) == (30, "solo")
    assert event_type["profile"]["owner"] == me["uri"]
    assert details(client.get("/event_types", headers=headers)) == [("user", None)]
    other = client.get("/event_types", params={"user": "https://x/users/NOPE"}, headers=headers)
    assert (other.status_code, other.json()["title"]) == (403, "Permission Denied")


def test_another_users_event_type_is_not_found(fake: CalendlyFake, client: TestClient) -> None:
    theirs = fake.add_event_type(fake.new_connection())
    headers = authorized(client, fake.new_connection())
    uuid = theirs.rsplit("/", 1)[1]
    answer = client.get(f"/event_types/{uuid}", headers=headers)
    assert (answer.status_code, answer.json()["title"]) == (404, "Resource Not Found")
    refused = client.post("/invitees", json=booking(theirs), headers=headers)
    assert refused.status_code == 404


# --- booking ------------------------------------------------------------------------------------


def test_booking_takes_the_duration_and_refuses_an_overlap(
    fake: CalendlyFake, client: TestClient
) -> None:
    fields = fake.new_connection()
    hour, half = fake.add_event_type(fields, duration=60), fake.add_event_type(fields, duration=30)
    headers = authorized(client, fields)
    made = client.post("/invitees", json=booking(hour), headers=headers)
    assert made.status_code == 201
    [event] = fake.scheduled_events()
    assert (event["start_time"], event["end_time"]) == (
        "2026-03-04T18:00:00.000000Z",
        "2026-03-04T19:00:00.000000Z",
    )
    assert made.json()["resource"]["event"] == event["uri"]
    overlap = client.post("/invitees", json=booking(half, "2026-03-04T18:30:00Z"), headers=headers)
    assert (overlap.status_code, details(overlap)) == (400, [("start_time", "already_filled")])
    touching = client.post("/invitees", json=booking(half, "2026-03-04T19:00:00Z"), headers=headers)
    assert touching.status_code == 201


@pytest.mark.parametrize(
    ("changes", "parameter"),
    [
        ({"start_time": "2026-02-01T10:00:00Z"}, "start_time"),
        ({"start_time": "tomorrow"}, "start_time"),
        ({"invitee": {**INVITEE, "timezone": "Mars/Olympus"}}, "invitee.timezone"),
        ({"invitee": {**INVITEE, "email": "ana"}}, "invitee.email"),
        ({"invitee": {"email": "ana@example.com", "timezone": "UTC"}}, "invitee.name"),
        ({"invitee": None}, "invitee"),
        ({"event_type": "ET1"}, "event_type"),
    ],
    ids=["past", "not-a-time", "bad-zone", "bad-email", "no-name", "no-invitee", "not-a-uri"],
)
def test_booking_refuses_bad_requests(
    fake: CalendlyFake, client: TestClient, changes: dict[str, Any], parameter: str
) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields)
    answer = client.post(
        "/invitees", json={**booking(event_type), **changes}, headers=authorized(client, fields)
    )
    assert (answer.status_code, details(answer)[0][0]) == (400, parameter)
    assert fake.scheduled_events() == []


def test_a_first_name_is_enough_for_a_name(fake: CalendlyFake, client: TestClient) -> None:
    fields = fake.new_connection()
    invitee = {"first_name": "Ana", "last_name": "Ruiz", "email": "a@b.co", "timezone": "UTC"}
    body = booking(fake.add_event_type(fields), invitee=invitee)
    answer = client.post("/invitees", json=body, headers=authorized(client, fields))
    assert answer.json()["resource"]["name"] == "Ana Ruiz"


# --- scheduled events ---------------------------------------------------------------------------


def test_scheduled_events_filter_by_time_and_email_and_page(
    fake: CalendlyFake, client: TestClient
) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields)
    headers = authorized(client, fields)
    for hour, email in ((17, "ana@example.com"), (18, "bo@example.com"), (19, "ana@example.com")):
        invitee = {**INVITEE, "email": email}
        start = f"2026-03-04T{hour}:00:00Z"
        client.post("/invitees", json=booking(event_type, start, invitee=invitee), headers=headers)
    user = client.get("/users/me", headers=headers).json()["resource"]["uri"]
    query = {
        "user": user,
        "invitee_email": "ANA@example.com",
        "count": "1",
        "min_start_time": "2026-03-04T17:00:00.000000Z",
        "max_start_time": "2026-03-04T19:00:00.000001Z",
    }
    first = client.get("/scheduled_events", params=query, headers=headers).json()
    assert [e["start_time"][11:13] for e in first["collection"]] == ["17"]
    token = first["pagination"]["next_page_token"]
    assert first["pagination"]["next_page"].startswith("https://api.calendly.com/scheduled_events?")
    second = client.get("/scheduled_events", params={**query, "page_token": token}, headers=headers)
    assert [e["start_time"][11:13] for e in second.json()["collection"]] == ["19"]
    assert second.json()["pagination"]["next_page_token"] is None
    narrow = {**query, "max_start_time": "2026-03-04T19:00:00.000000Z", "count": "10"}
    only = client.get("/scheduled_events", params=narrow, headers=headers).json()["collection"]
    assert [e["start_time"][11:13] for e in only] == ["17"]
    assert details(client.get("/scheduled_events", headers=headers)) == [("user", None)]
    too_many = client.get("/scheduled_events", params={**query, "count": "101"}, headers=headers)
    assert details(too_many) == [("count", None)]


def test_cancellation_once_then_already_canceled(fake: CalendlyFake, client: TestClient) -> None:
    fields = fake.new_connection()
    headers = authorized(client, fields)
    made = client.post("/invitees", json=booking(fake.add_event_type(fields)), headers=headers)
    uuid = made.json()["resource"]["event"].rsplit("/", 1)[1]
    path = f"/scheduled_events/{uuid}/cancellation"
    first = client.post(path, json={"reason": "Ill"}, headers=headers)
    assert (first.status_code, first.json()["resource"]) == (
        201,
        {"canceled_by": "Dana Lee", "reason": "Ill", "canceler_type": "host"},
    )
    again = client.post(path, headers=headers)
    assert (again.status_code, again.json()["message"]) == (403, "Event is already canceled")
    invitees = client.get(f"/scheduled_events/{uuid}/invitees", headers=headers).json()
    assert [i["status"] for i in invitees["collection"]] == ["canceled"]
    assert (
        client.get(f"/scheduled_events/{uuid}", headers=headers).json()["resource"]["status"]
        == "canceled"
    )
    assert client.post("/scheduled_events/NOPE/cancellation", headers=headers).status_code == 404
