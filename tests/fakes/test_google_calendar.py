"""The Google Calendar fake on its own: auth refusals, ids, deletion, listing and the token
endpoint, as the discovery document and NOTES.md describe them; every answer it gives, to good
and bad requests alike, fits the description."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.fakes.google_calendar import GoogleCalendarFake
from tests.connectors._harness import clock, google_contract

CALENDAR = "lee@brightsmile.example"
EVENTS = f"/calendar/v3/calendars/{CALENDAR}/events"


@pytest.fixture
def fake() -> Iterator[GoogleCalendarFake]:
    fake = GoogleCalendarFake(clock())
    yield fake
    problems = [p for e in fake.exchanges for p in google_contract().response_problems(e)]
    assert problems == []


@pytest.fixture
def client(fake: GoogleCalendarFake) -> TestClient:
    return TestClient(fake.app())


def authorized(client: TestClient, fields: dict[str, str]) -> dict[str, str]:
    answer = client.post("/token", data={**fields, "grant_type": "refresh_token"})
    assert answer.status_code == 200
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def event(**changes: Any) -> dict[str, Any]:
    return {
        "summary": "Cleaning",
        "start": {"dateTime": "2026-03-04T10:00:00-08:00"},
        "end": {"dateTime": "2026-03-04T10:30:00-08:00"},
        **changes,
    }


def reason(answer: Any) -> tuple[int, str]:
    error = answer.json()["error"]
    assert error["code"] == answer.status_code
    return answer.status_code, error["errors"][0]["reason"]


# --- token endpoint -----------------------------------------------------------------------------


def test_refresh_does_not_rotate(fake: GoogleCalendarFake, client: TestClient) -> None:
    fields = fake.new_connection(CALENDAR)
    answers = [client.post("/token", data={**fields, "grant_type": "refresh_token"}) for _ in "ab"]
    assert [a.status_code for a in answers] == [200, 200]
    assert all("refresh_token" not in a.json() for a in answers)
    assert answers[0].json()["token_type"] == "Bearer"
    assert answers[0].json()["access_token"] != answers[1].json()["access_token"]


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"grant_type": "authorization_code"}, 400, "unsupported_grant_type"),
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"refresh_token": "1//unknown"}, 400, "invalid_grant"),
        ({"refresh_token": ""}, 400, "invalid_request"),
    ],
)
def test_token_refusals_are_rfc6749_errors(
    fake: GoogleCalendarFake,
    client: TestClient,
    change: dict[str, str],
    status: int,
    error: str,
) -> None:
    fields = {**fake.new_connection(CALENDAR), "grant_type": "refresh_token", **change}
    answer = client.post("/token", data=fields)
    assert (answer.status_code, answer.json()["error"]) == (status, error)


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer ya29.unknown", "Basic dXNlcjpwYXNz"])
def test_api_calls_without_a_valid_token_are_401(
    fake: GoogleCalendarFake, client: TestClient, header: str | None
) -> None:
    fake.new_connection(CALENDAR)
    headers = {} if header is None else {"Authorization": header}
    answer = client.get(EVENTS, headers=headers)
    assert reason(answer) == (401, "authError")
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_expired_access_tokens_are_401(fake: GoogleCalendarFake, client: TestClient) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    assert client.get(EVENTS, headers=headers).status_code == 200
    fake.expire_access_tokens()
    assert reason(client.get(EVENTS, headers=headers)) == (401, "authError")


def test_another_users_calendar_is_not_found(fake: GoogleCalendarFake, client: TestClient) -> None:
    fake.new_connection(CALENDAR)
    headers = authorized(client, fake.new_connection("other@clinic.example"))
    assert reason(client.get(EVENTS, headers=headers)) == (404, "notFound")
    mine = client.post("/calendar/v3/calendars/primary/events", json=event(), headers=headers)
    assert mine.status_code == 200
    assert fake.events("other@clinic.example")[0]["id"] == mine.json()["id"]


# --- insert -------------------------------------------------------------------------------------


def test_a_client_chosen_id_is_kept_and_a_second_use_is_409(
    fake: GoogleCalendarFake, client: TestClient
) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    first = client.post(EVENTS, json=event(id="corral0123v"), headers=headers)
    assert (first.status_code, first.json()["id"], first.json()["status"]) == (
        200,
        "corral0123v",
        "confirmed",
    )
    assert reason(client.post(EVENTS, json=event(id="corral0123v"), headers=headers)) == (
        409,
        "duplicate",
    )
    client.delete(f"{EVENTS}/corral0123v", headers=headers)
    assert reason(client.post(EVENTS, json=event(id="corral0123v"), headers=headers)) == (
        409,
        "duplicate",
    )
    assert len(fake.events(CALENDAR)) == 1


def test_the_server_chooses_a_valid_id_when_none_is_given(
    fake: GoogleCalendarFake, client: TestClient
) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    ids = [client.post(EVENTS, json=event(), headers=headers).json()["id"] for _ in "ab"]
    assert all(re.fullmatch(r"[a-v0-9]{5,1024}", i) for i in ids)
    assert ids[0] != ids[1]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (event(id="UPPER0"), (400, "invalid")),
        (event(id="abcd"), (400, "invalid")),
        (event(id="wxyz01"), (400, "invalid")),
        ({"summary": "x", "start": {"dateTime": "2026-03-04T10:00:00Z"}}, (400, "required")),
        (event(end={"dateTime": "2026-03-04T09:00:00-08:00"}), (400, "timeRangeEmpty")),
        (event(start={"dateTime": "2026-03-04T10:00:00"}), (400, "invalid")),
        (event(start={"dateTime": "soon"}), (400, "invalid")),
        (event(attendees=[{"email": "nobody"}]), (400, "invalid")),
    ],
    ids=[
        "upper-case",
        "too-short",
        "not-base32hex",
        "no-end",
        "end-first",
        "no-zone",
        "not-a-time",
        "bad-attendee",
    ],
)
def test_insert_refuses_bad_events_in_googles_envelope(
    fake: GoogleCalendarFake, client: TestClient, body: dict[str, Any], expected: tuple[int, str]
) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    assert reason(client.post(EVENTS, json=body, headers=headers)) == expected
    assert fake.events(CALENDAR) == []


def test_insert_takes_a_local_time_with_a_zone_and_all_day_dates(
    fake: GoogleCalendarFake, client: TestClient
) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    zoned = {"dateTime": "2026-03-04T10:00:00", "timeZone": "America/Los_Angeles"}
    assert client.post(EVENTS, json=event(start=zoned), headers=headers).status_code == 200
    day = event(start={"date": "2026-03-05"}, end={"date": "2026-03-06"})
    assert client.post(EVENTS, json=day, headers=headers).json()["start"] == {"date": "2026-03-05"}
    assert reason(client.post(EVENTS, content=b"{", headers=headers)) == (400, "parseError")


# --- get, delete, list --------------------------------------------------------------------------


def test_a_deleted_event_is_gone_once_and_still_readable(
    fake: GoogleCalendarFake, client: TestClient
) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    created = client.post(EVENTS, json=event(id="tobedeleted"), headers=headers).json()
    assert client.delete(f"{EVENTS}/tobedeleted", headers=headers).status_code == 204
    assert reason(client.delete(f"{EVENTS}/tobedeleted", headers=headers)) == (410, "deleted")
    read = client.get(f"{EVENTS}/tobedeleted", headers=headers).json()
    assert (read["status"], read["created"]) == ("cancelled", created["created"])
    assert reason(client.delete(f"{EVENTS}/nosuchevent", headers=headers)) == (404, "notFound")
    assert reason(client.get(f"{EVENTS}/nosuchevent", headers=headers)) == (404, "notFound")


def test_list_bounds_are_exclusive_and_deleted_events_are_hidden(
    fake: GoogleCalendarFake, client: TestClient
) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    for n, (start, end) in enumerate([("09:00", "10:00"), ("10:00", "11:00"), ("11:00", "12:00")]):
        body = event(
            id=f"event{n}",
            start={"dateTime": f"2026-03-04T{start}:00Z"},
            end={"dateTime": f"2026-03-04T{end}:00Z"},
        )
        client.post(EVENTS, json=body, headers=headers)
    client.delete(f"{EVENTS}/event1", headers=headers)
    window = {"timeMin": "2026-03-04T10:00:00Z", "timeMax": "2026-03-04T11:00:00Z"}
    listed = client.get(EVENTS, params=window, headers=headers).json()
    assert [e["id"] for e in listed["items"]] == []
    shown = client.get(EVENTS, params={**window, "showDeleted": "true"}, headers=headers).json()
    assert [e["id"] for e in shown["items"]] == ["event1"]
    wide = {"timeMin": "2026-03-04T09:59:00Z", "timeMax": "2026-03-04T11:01:00Z"}
    assert [e["id"] for e in client.get(EVENTS, params=wide, headers=headers).json()["items"]] == [
        "event0",
        "event2",
    ]


def test_list_pages_with_next_page_tokens(fake: GoogleCalendarFake, client: TestClient) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    for n in range(5):
        when = f"2026-03-04T1{n}:00:00Z"
        body = event(start={"dateTime": when}, end={"dateTime": when.replace(":00:00", ":30:00")})
        client.post(EVENTS, json=body, headers=headers)
    query = {"maxResults": "2", "singleEvents": "true", "orderBy": "startTime"}
    starts: list[str] = []
    while True:
        page = client.get(EVENTS, params=query, headers=headers).json()
        starts += [e["start"]["dateTime"] for e in page["items"]]
        if "nextPageToken" not in page:
            break
        query["pageToken"] = page["nextPageToken"]
    assert starts == [f"2026-03-04T1{n}:00:00Z" for n in range(5)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"orderBy": "startTime"}, (400, "badRequest")),
        (
            {"timeMin": "2026-03-05T00:00:00Z", "timeMax": "2026-03-04T00:00:00Z"},
            (400, "timeRangeEmpty"),
        ),
        ({"timeMin": "yesterday"}, (400, "badRequest")),
        ({"pageToken": "nonsense"}, (400, "invalid")),
        ({"maxResults": "0"}, (400, "invalid")),
    ],
    ids=["order-needs-single-events", "empty-range", "bad-time", "bad-page-token", "bad-max"],
)
def test_list_refuses_bad_queries(
    fake: GoogleCalendarFake, client: TestClient, query: dict[str, str], expected: tuple[int, str]
) -> None:
    headers = authorized(client, fake.new_connection(CALENDAR))
    assert reason(client.get(EVENTS, params=query, headers=headers)) == expected
