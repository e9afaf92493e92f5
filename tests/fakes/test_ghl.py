"""The HighLevel fake on its own: token rotation, auth and ``Version`` refusals, contact
upserts, messages, appointments and free slots, as the descriptions and NOTES.md give them;
every answer it gives, to good and bad requests alike, fits the description."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.core.clock import ManualClock
from corral.fakes.ghl import GhlFake
from tests.connectors._harness import START, ghl_contract

CONTACTS, CALENDARS = {"Version": "2021-07-28"}, {"Version": "2021-04-15"}


@pytest.fixture
def fake() -> Iterator[GhlFake]:
    fake = GhlFake(ManualClock(START))
    yield fake
    problems = [p for e in fake.exchanges for p in ghl_contract().response_problems(e)]
    assert problems == []


@pytest.fixture
def client(fake: GhlFake) -> TestClient:
    return TestClient(fake.app())


def refresh(client: TestClient, fields: dict[str, str], **changes: str) -> Any:
    form = {k: v for k, v in fields.items() if k != "location_id"}
    return client.post("/oauth/token", data={**form, "grant_type": "refresh_token", **changes})


def bearer(client: TestClient, fields: dict[str, str]) -> dict[str, str]:
    answer = refresh(client, fields)
    assert answer.status_code == 200
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def nest(answer: Any) -> tuple[int, Any]:
    body = answer.json()
    assert body["statusCode"] == answer.status_code
    return answer.status_code, body["message"]


def epoch_ms(text: str) -> str:
    return str(int(datetime.fromisoformat(text).timestamp() * 1000))


# --- token endpoint -----------------------------------------------------------------------------


def test_refresh_rotates_and_refuses_a_used_token(fake: GhlFake, client: TestClient) -> None:
    fields = fake.new_connection()
    first = refresh(client, fields)
    body = first.json()
    assert (first.status_code, body["userType"], body["locationId"]) == (
        200,
        "Location",
        fields["location_id"],
    )
    assert body["refresh_token"] != fields["refresh_token"]
    assert nest(refresh(client, fields)) == (400, "Invalid grant: refresh token is invalid")
    assert refresh(client, fields, refresh_token=body["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"client_id": ""}, (400, "Missing parameter: clientId")),
        ({"grant_type": "password"}, (400, "Invalid parameter: grantType")),
        ({"refresh_token": ""}, (400, "Missing parameter: refreshToken")),
        ({"client_secret": "wrong"}, (401, "Invalid client: client credentials are invalid")),
    ],
)
def test_token_refusals_use_the_published_messages(
    fake: GhlFake, client: TestClient, changes: dict[str, str], expected: tuple[int, str]
) -> None:
    assert nest(refresh(client, fake.new_connection(), **changes)) == expected


# --- auth and Version ---------------------------------------------------------------------------


def test_calls_need_a_valid_token_and_the_operations_version(
    fake: GhlFake, client: TestClient
) -> None:
    fields = fake.new_connection()
    body = {"locationId": fields["location_id"], "email": "ana@example.com"}
    unsigned = client.post("/contacts/upsert", json=body, headers=CONTACTS)
    assert nest(unsigned) == (401, "Invalid token: access token is invalid")
    assert unsigned.json()["error"] == "Unauthorized"
    headers = bearer(client, fields)
    assert nest(client.post("/contacts/upsert", json=body, headers=headers))[0] == 400
    wrong = client.post("/contacts/upsert", json=body, headers={**headers, **CALENDARS})
    assert nest(wrong) == (400, "Version header must be 2021-07-28")
    assert (
        client.post("/contacts/upsert", json=body, headers={**headers, **CONTACTS}).status_code
        == 200
    )
    fake.expire_access_tokens()
    assert (
        client.post("/contacts/upsert", json=body, headers={**headers, **CONTACTS}).status_code
        == 401
    )


def test_a_token_acts_for_its_own_location_only(fake: GhlFake, client: TestClient) -> None:
    other = fake.new_connection()["location_id"]
    headers = {**bearer(client, fake.new_connection()), **CONTACTS}
    answer = client.post(
        "/contacts/upsert", json={"locationId": other, "phone": "+14155550100"}, headers=headers
    )
    assert nest(answer) == (400, "The token does not have access to this location.")
    assert fake.contacts(other) == []


# --- contacts -----------------------------------------------------------------------------------


def test_upsert_matches_by_email_then_by_phone(fake: GhlFake, client: TestClient) -> None:
    fields = fake.new_connection()
    location = fields["location_id"]
    headers = {**bearer(client, fields), **CONTACTS}

    def upsert(**values: str) -> Any:
        return client.post(
            "/contacts/upsert", json={"locationId": location, **values}, headers=headers
        ).json()

    made = upsert(email="Ana@Example.com", firstName="Ana")
    by_email = upsert(email="ana@example.com", phone="+14155550100")
    by_phone = upsert(phone="+14155550100", lastName="Ruiz")
    assert (made["new"], by_email["new"], by_phone["new"]) == (True, False, False)
    assert made["contact"]["id"] == by_email["contact"]["id"] == by_phone["contact"]["id"]
    assert by_phone["contact"]["name"] == "Ana Ruiz"
    assert upsert(email="bo@example.com")["new"] is True
    assert len(fake.contacts(location)) == 2


def test_upsert_refuses_bad_contacts(fake: GhlFake, client: TestClient) -> None:
    fields = fake.new_connection()
    headers = {**bearer(client, fields), **CONTACTS}
    base = {"locationId": fields["location_id"]}
    assert nest(client.post("/contacts/upsert", json=base, headers=headers)) == (
        400,
        "Either email or phone is required",
    )
    bad_email = client.post("/contacts/upsert", json={**base, "email": "ana"}, headers=headers)
    assert nest(bad_email) == (422, ["email must be an email"])
    no_location = client.post("/contacts/upsert", json={"email": "a@b.co"}, headers=headers)
    assert nest(no_location) == (400, "locationId is required")


# --- conversations ------------------------------------------------------------------------------


def test_messages_need_a_channel_the_contact_has(fake: GhlFake, client: TestClient) -> None:
    fields = fake.new_connection()
    location = fields["location_id"]
    phone_only = fake.add_contact(location, phone="+14155550100")
    headers = {**bearer(client, fields), **CALENDARS}

    def send(**body: Any) -> Any:
        return client.post("/conversations/messages", json=body, headers=headers)

    sms = send(type="SMS", contactId=phone_only, message="Hi")
    assert (sms.status_code, sms.json()["status"]) == (200, "pending")
    assert nest(send(type="Email", contactId=phone_only, message="Hi")) == (
        400,
        "The contact has no email address",
    )
    assert nest(send(type="Fax", contactId=phone_only, message="Hi"))[0] == 400
    assert nest(send(type="SMS", contactId="nobody", message="Hi")) == (400, "Contact not found")
    assert nest(send(type="SMS", contactId=phone_only)) == (400, "message is required")
    assert [m["id"] for m in fake.messages(location)] == [sms.json()["messageId"]]


# --- calendars ----------------------------------------------------------------------------------


def test_appointments_overlap_and_default_to_one_slot(fake: GhlFake, client: TestClient) -> None:
    fields = fake.new_connection()
    location = fields["location_id"]
    contact = fake.add_contact(location, email="ana@example.com")
    calendar = fake.add_calendar(location, slot_minutes=45)
    headers = {**bearer(client, fields), **CALENDARS}
    body = {
        "calendarId": calendar,
        "locationId": location,
        "contactId": contact,
        "startTime": "2026-03-04T10:00:00-08:00",
    }
    first = client.post("/calendars/events/appointments", json=body, headers=headers).json()
    assert (first["endTime"], first["appointmentStatus"]) == (
        "2026-03-04T10:45:00-08:00",
        "confirmed",
    )
    again = client.post("/calendars/events/appointments", json=body, headers=headers)
    assert again.status_code == 200
    assert len(fake.appointments(location)) == 2
    for change, message in (
        ({"endTime": "2026-03-04T09:00:00-08:00"}, "endTime must be after startTime"),
        (
            {"startTime": "2026-03-04T10:00:00"},
            "startTime must be an ISO 8601 date and time with an offset",
        ),
        ({"calendarId": "nope"}, "Calendar not found"),
        ({"appointmentStatus": "maybe"}, None),
    ):
        refused = client.post(
            "/calendars/events/appointments", json={**body, **change}, headers=headers
        )
        assert refused.status_code == 400
        assert message is None or refused.json()["message"] == message
    assert len(fake.appointments(location)) == 2


def test_free_slots_leave_out_booked_and_past_slots(fake: GhlFake, client: TestClient) -> None:
    fields = fake.new_connection()
    location = fields["location_id"]
    contact = fake.add_contact(location, phone="+14155550100")
    calendar = fake.add_calendar(
        location, opens=time(9), closes=time(11), timezone="America/Los_Angeles"
    )
    tokens = refresh(client, fields).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}", **CALENDARS}
    client.post(
        "/calendars/events/appointments",
        json={
            "calendarId": calendar,
            "locationId": location,
            "contactId": contact,
            "startTime": "2026-03-04T09:30:00-08:00",
            "endTime": "2026-03-04T10:15:00-08:00",
        },
        headers=headers,
    )
    query = {
        "startDate": epoch_ms("2026-03-04T00:00:00-08:00"),
        "endDate": epoch_ms("2026-03-05T00:00:00-08:00"),
    }
    slots = client.get(f"/calendars/{calendar}/free-slots", params=query, headers=headers).json()
    assert slots == {
        "2026-03-04": {"slots": ["2026-03-04T09:00:00-08:00", "2026-03-04T10:30:00-08:00"]}
    }
    in_utc = client.get(
        f"/calendars/{calendar}/free-slots", params={**query, "timezone": "UTC"}, headers=headers
    )
    assert in_utc.json() == {
        "2026-03-04": {"slots": ["2026-03-04T17:00:00+00:00", "2026-03-04T18:30:00+00:00"]}
    }
    assert isinstance(fake.clock, ManualClock)
    fake.clock.advance(timedelta(days=3, hours=6))  # 2026-03-04T10:00-08:00
    renewed = refresh(client, fields, refresh_token=tokens["refresh_token"]).json()
    headers["Authorization"] = f"Bearer {renewed['access_token']}"
    later = client.get(f"/calendars/{calendar}/free-slots", params=query, headers=headers)
    assert later.json() == {"2026-03-04": {"slots": ["2026-03-04T10:30:00-08:00"]}}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            {"startDate": "0", "endDate": str(32 * 86_400_000)},
            "Date range cannot be more than 31 days",
        ),
        ({"startDate": "soon", "endDate": "0"}, "startDate must be a number"),
        (
            {"startDate": "0", "endDate": "1", "timezone": "Mars/Olympus"},
            "timezone must be an IANA time zone",
        ),
    ],
    ids=["too-long", "not-a-number", "bad-zone"],
)
def test_free_slots_refuse_bad_queries(
    fake: GhlFake, client: TestClient, query: dict[str, str], message: str
) -> None:
    fields = fake.new_connection()
    calendar = fake.add_calendar(fields["location_id"])
    answer = client.get(
        f"/calendars/{calendar}/free-slots",
        params=query,
        headers={**bearer(client, fields), **CALENDARS},
    )
    assert nest(answer) == (400, message)
