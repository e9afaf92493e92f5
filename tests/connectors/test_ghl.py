"""The HighLevel connector against its fake, every exchange held to the four trimmed HighLevel
API 2.0 descriptions (``specs/gohighlevel/``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.connectors._base import (
    AuthRejected,
    CallContext,
    ConnectorError,
    EffectKind,
    InvalidArguments,
    InvalidGrant,
    OutcomeUnknown,
    ProviderRejected,
)
from corral.connectors.ghl import BOOK_APPOINTMENT, PROVIDER, SEND_MESSAGE, UPSERT_CONTACT
from corral.fakes.ghl import GhlFake
from tests.connectors._harness import (
    checked,
    clock,
    connect,
    ghl_contract,
    ghl_contract_as_published,
    leaked,
    run,
)

SLOT = {"start": "2026-03-04T10:00:00-08:00", "end": "2026-03-04T10:30:00-08:00"}


@pytest.fixture
def fake() -> Iterator[GhlFake]:
    """A fresh fake; after the test, every exchange it saw must fit the description."""
    with checked(GhlFake(clock()), ghl_contract()) as fake:
        yield fake


@dataclasses.dataclass
class Clinic:
    """A connected location with a contact (phone and email) and a calendar open 09–17 in
    Los Angeles."""

    fields: dict[str, str]
    contact: str
    calendar: str


def clinic(fake: GhlFake) -> Clinic:
    fields = fake.new_connection()
    location = fields["location_id"]
    contact = fake.add_contact(location, phone="+14155550100", email="ana@example.com")
    return Clinic(fields, contact, fake.add_calendar(location, timezone="America/Los_Angeles"))


def appointment(place: Clinic, **changes: Any) -> Any:
    raw = {"calendar_id": place.calendar, "contact_id": place.contact, **SLOT, "title": "Cleaning"}
    return BOOK_APPOINTMENT.parse_args({**raw, **changes})


def nest_error(status: int, message: str | list[str], error: str) -> bytes:
    return json.dumps({"statusCode": status, "message": message, "error": error}).encode()


# --- declarations and arguments -----------------------------------------------------------------


def test_the_provider_declares_the_catalog_tools_and_arguments() -> None:
    assert PROVIDER.name == "ghl"
    assert PROVIDER.fields == ("client_id", "client_secret", "refresh_token", "location_id")
    assert PROVIDER.rotates_refresh_token is True
    schemas = {tool.name: set(tool.json_schema()["properties"]) for tool in PROVIDER.tools}
    assert schemas == {
        "ghl.send_message": {"contact_id", "type", "message"},
        "ghl.upsert_contact": {"phone", "email", "first_name", "last_name"},
        "ghl.book_appointment": {"calendar_id", "contact_id", "start", "end", "title"},
    }
    assert [t.idempotency for t in PROVIDER.tools] == ["intent_log", "native", "intent_log"]
    assert (SEND_MESSAGE.reconcile, UPSERT_CONTACT.reconcile) == (None, None)


def test_effects() -> None:
    message = SEND_MESSAGE.effect(
        SEND_MESSAGE.parse_args({"contact_id": "C1", "type": "Email", "message": "See you"})
    )
    assert (message.kind, message.recipient, message.body) == (
        EffectKind.MESSAGE,
        "ghl_contact:C1",
        "See you",
    )
    booking = BOOK_APPOINTMENT.effect(appointment(Clinic({}, "C1", "CAL1")))
    assert (booking.kind, booking.resource) == (EffectKind.BOOKING, "ghl:CAL1")
    contact = UPSERT_CONTACT.effect(UPSERT_CONTACT.parse_args({"email": "Ana@Example.com"}))
    assert (contact.kind, contact.target) == (EffectKind.CONTACT_UPDATE, "ana@example.com")


@pytest.mark.parametrize(
    ("tool", "raw", "field"),
    [
        (SEND_MESSAGE, {"contact_id": "C1", "type": "WhatsApp", "message": "hi"}, "type"),
        (SEND_MESSAGE, {"contact_id": "C1", "type": "SMS", "message": ""}, "message"),
        (SEND_MESSAGE, {"contactId": "C1", "type": "SMS", "message": "hi"}, "contactId"),
        (UPSERT_CONTACT, {"first_name": "Ana"}, "at least one of phone and email"),
        (UPSERT_CONTACT, {"phone": "12"}, "phone"),
        (UPSERT_CONTACT, {"email": "ana", "phone": "+14155550100"}, "email"),
        (
            BOOK_APPOINTMENT,
            {**SLOT, "calendar_id": "X", "contact_id": "C", "end": SLOT["start"]},
            "end must be after start",
        ),
        (BOOK_APPOINTMENT, {"calendar_id": "X", "contact_id": "C", **SLOT, "notes": "x"}, "notes"),
    ],
    ids=[
        "bad-type",
        "empty-message",
        "unknown-name",
        "neither-phone-nor-email",
        "bad-phone",
        "bad-email",
        "end-before-start",
        "unknown-name-booking",
    ],
)
def test_bad_arguments_are_refused(tool: Any, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArguments) as refused:
        tool.parse_args(raw)
    assert field in str(refused.value)


@given(
    phone=st.sampled_from([None, "(415) 555-0100", "+14155550100"]),
    email=st.sampled_from([None, "ana@example.com"]),
)
def test_upsert_needs_a_phone_or_an_email(phone: str | None, email: str | None) -> None:
    raw = {k: v for k, v in {"phone": phone, "email": email}.items() if v is not None}
    if phone is None and email is None:
        with pytest.raises(InvalidArguments):
            UPSERT_CONTACT.parse_args(raw)
    else:
        args = UPSERT_CONTACT.parse_args(raw)
        assert args.phone in (None, "+14155550100")


# --- send_message -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["SMS", "Email"])
def test_send_message_posts_in_the_contacts_conversation(fake: GhlFake, kind: str) -> None:
    place = clinic(fake)
    args = SEND_MESSAGE.parse_args({"contact_id": place.contact, "type": kind, "message": "Hi"})

    async def scenario(http: httpx.AsyncClient) -> list[dict[str, Any]]:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        return [await SEND_MESSAGE.execute(ctx, args) for _ in range(2)]

    first, second = run(fake, scenario)
    assert first["conversation_id"] == second["conversation_id"]
    assert first["message_id"] != second["message_id"]
    sent = fake.messages(place.fields["location_id"])
    assert [(m["id"], m["type"], m["message"]) for m in sent] == [
        (first["message_id"], kind, "Hi"),
        (second["message_id"], kind, "Hi"),
    ]
    versions = {e.headers.get("version") for e in fake.exchanges if e.path != "/oauth/token"}
    assert versions == {"2021-04-15"}


def test_an_sms_to_a_contact_without_a_phone_is_rejected(fake: GhlFake) -> None:
    place = clinic(fake)
    no_phone = fake.add_contact(place.fields["location_id"], email="bo@example.com")
    args = SEND_MESSAGE.parse_args({"contact_id": no_phone, "type": "SMS", "message": "Hi"})

    async def scenario(http: httpx.AsyncClient) -> None:
        await SEND_MESSAGE.execute(await connect(http, fake, PROVIDER, place.fields), args)

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (400, "Bad Request")
    assert refused.value.message == "The contact has no phone number"
    assert fake.messages(place.fields["location_id"]) == []


def test_published_send_message_schema_is_over_strict(fake: GhlFake) -> None:
    """Why ``ghl_contract`` corrects one schema: the published ``SendMessageBodyDto`` requires
    ``subType`` and ``status``, which a sent message has no value for (NOTES.md: over-strict);
    those two are the only problems it finds with the connector's request."""
    place = clinic(fake)
    args = SEND_MESSAGE.parse_args({"contact_id": place.contact, "type": "SMS", "message": "Hi"})

    async def scenario(http: httpx.AsyncClient) -> None:
        await SEND_MESSAGE.execute(await connect(http, fake, PROVIDER, place.fields), args)

    run(fake, scenario)
    sent = fake.exchanges[-1]
    [problem] = ghl_contract_as_published().request_problems(sent)
    assert "'subType' is a required property" in problem
    assert "'status' is a required property" in problem
    assert ghl_contract().request_problems(sent) == []


# --- upsert_contact -----------------------------------------------------------------------------


def test_upsert_creates_then_matches_the_contact(fake: GhlFake) -> None:
    fields = fake.new_connection()
    location = fields["location_id"]

    async def scenario(http: httpx.AsyncClient) -> list[dict[str, Any]]:
        ctx = await connect(http, fake, PROVIDER, fields)
        first = {"phone": "(415) 555-0111", "email": "Bo@Example.com", "first_name": "Bo"}
        second = {"email": "bo@example.com", "last_name": "Chen"}
        return [
            await UPSERT_CONTACT.execute(ctx, UPSERT_CONTACT.parse_args(raw))
            for raw in (first, second)
        ]

    created, matched = run(fake, scenario)
    assert (created["new"], matched["new"]) == (True, False)
    assert created["contact_id"] == matched["contact_id"]
    [contact] = fake.contacts(location)
    assert (contact["phone"], contact["firstName"], contact["lastName"]) == (
        "+14155550111",
        "Bo",
        "Chen",
    )
    [first_request] = [e for e in fake.exchanges if e.path == "/contacts/upsert"][:1]
    assert json.loads(first_request.body)["locationId"] == location
    assert first_request.headers["version"] == "2021-07-28"


# --- book_appointment ---------------------------------------------------------------------------


def test_book_appointment_books_even_over_another(fake: GhlFake) -> None:
    place = clinic(fake)

    async def scenario(http: httpx.AsyncClient) -> list[dict[str, Any]]:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        return [await BOOK_APPOINTMENT.execute(ctx, appointment(place)) for _ in range(2)]

    first, overlapping = run(fake, scenario)
    assert first["status"] == overlapping["status"] == "confirmed"
    stored = fake.appointments(place.fields["location_id"])
    assert [a["id"] for a in stored] == [first["event_id"], overlapping["event_id"]]
    assert stored[0]["startTime"] == SLOT["start"]
    assert stored[0]["title"] == "Cleaning"


def test_a_lost_booking_answer_cannot_be_settled_as_not_booked(fake: GhlFake) -> None:
    """The appointment was made, so its start is no longer free: reconcile cannot call it
    "not booked", and HighLevel offers no way to name it, so it stays unknown."""
    place = clinic(fake)
    fake.faults.lose_answer("/appointments")

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        with pytest.raises(OutcomeUnknown) as unknown:
            await BOOK_APPOINTMENT.execute(ctx, appointment(place))
        assert unknown.value.status == 504
        assert BOOK_APPOINTMENT.reconcile is not None
        await BOOK_APPOINTMENT.reconcile(ctx, appointment(place))

    with pytest.raises(OutcomeUnknown, match="start is not free"):
        run(fake, scenario)
    assert len(fake.appointments(place.fields["location_id"])) == 1


def test_a_booking_that_did_not_happen_is_settled_as_not_booked(fake: GhlFake) -> None:
    place = clinic(fake)
    fake.faults.fail("/appointments", 502, b"")

    async def scenario(http: httpx.AsyncClient) -> Any:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        with pytest.raises(OutcomeUnknown):
            await BOOK_APPOINTMENT.execute(ctx, appointment(place))
        assert BOOK_APPOINTMENT.reconcile is not None
        return await BOOK_APPOINTMENT.reconcile(ctx, appointment(place))

    assert run(fake, scenario) is None
    assert fake.appointments(place.fields["location_id"]) == []
    [asked] = [e for e in fake.exchanges if e.path.endswith("/free-slots")]
    assert asked.query["timezone"] == "UTC"
    assert int(asked.query["endDate"]) - int(asked.query["startDate"]) == 86_400_000


def test_an_unknown_calendar_is_rejected(fake: GhlFake) -> None:
    place = clinic(fake)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        await BOOK_APPOINTMENT.execute(ctx, appointment(place, calendar_id="nosuchcalendar"))

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.message) == (400, "Calendar not found")


# --- auth, refresh, errors ----------------------------------------------------------------------


def test_a_used_refresh_token_is_refused_in_words_and_a_grant_names_the_location(
    fake: GhlFake,
) -> None:
    """Rotation itself is ``test_http.test_a_rotating_refresh_...``; HighLevel's refusal says
    ``invalid_grant`` in words only."""
    fields = fake.new_connection()

    async def scenario(http: httpx.AsyncClient) -> None:
        await connect(http, fake, PROVIDER, fields)
        with pytest.raises(InvalidGrant) as refused:
            await connect(http, fake, PROVIDER, fields)
        assert (refused.value.status, refused.value.code) == (400, "invalid_grant")
        assert refused.value.message == "Invalid grant: refresh token is invalid"

    run(fake, scenario)
    assert json.loads(fake.exchanges[0].response_body)["locationId"] == fields["location_id"]


def test_an_expired_token_is_auth_rejected(fake: GhlFake) -> None:
    place = clinic(fake)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        fake.expire_access_tokens()
        await BOOK_APPOINTMENT.execute(ctx, appointment(place))

    with pytest.raises(AuthRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (401, "Unauthorized")
    assert fake.appointments(place.fields["location_id"]) == []


@pytest.mark.parametrize(
    ("status", "body", "outcome", "message", "retryable"),
    [
        (
            422,
            nest_error(422, ["email must be an email", "phone is bad"], "Unprocessable Entity"),
            ProviderRejected,
            "email must be an email; phone is bad",
            False,
        ),
        (
            429,
            nest_error(429, "Too many requests", "Too Many Requests"),
            ProviderRejected,
            "Too many requests",
            True,
        ),
        (
            500,
            nest_error(500, "Internal server error", "Internal Server Error"),
            OutcomeUnknown,
            "Internal server error",
            False,
        ),
    ],
    ids=["422-list", "429", "500"],
)
def test_error_answers_keep_their_class_and_message(
    fake: GhlFake,
    status: int,
    body: bytes,
    outcome: type[ConnectorError],
    message: str,
    retryable: bool,
) -> None:
    place = clinic(fake)
    fake.faults.fail("/contacts/upsert", status, body)
    args = UPSERT_CONTACT.parse_args({"email": "ana@example.com"})

    async def scenario(http: httpx.AsyncClient) -> None:
        await UPSERT_CONTACT.execute(await connect(http, fake, PROVIDER, place.fields), args)

    with pytest.raises(outcome) as refused:
        run(fake, scenario)
    assert type(refused.value) is outcome
    assert (refused.value.status, refused.value.message, refused.value.retryable) == (
        status,
        message,
        retryable,
    )


def test_no_credential_value_reaches_a_result_or_an_error(fake: GhlFake) -> None:
    place = clinic(fake)
    texts: list[str] = []

    async def scenario(http: httpx.AsyncClient) -> CallContext:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        texts.append(json.dumps(await BOOK_APPOINTMENT.execute(ctx, appointment(place))))
        echoed = f"Invalid token: {ctx.credential.access_token}"
        fake.faults.fail("/appointments", 400, nest_error(400, echoed, "Bad Request"))
        for args in (appointment(place), appointment(place, calendar_id="nope")):
            with pytest.raises(ConnectorError) as refused:
                await BOOK_APPOINTMENT.execute(ctx, args)
            texts.extend([str(refused.value), repr(refused.value)])
        return ctx

    ctx = run(fake, scenario)
    assert leaked(texts, ctx.credential) == []
    assert "[redacted]" in texts[1]


def test_the_contract_check_reports_a_malformed_exchange(fake: GhlFake) -> None:
    place = clinic(fake)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, place.fields)
        await BOOK_APPOINTMENT.execute(ctx, appointment(place))

    run(fake, scenario)
    booked = fake.exchanges[-1]
    no_version = {k: v for k, v in booked.headers.items() if k.lower() != "version"}
    unversioned = dataclasses.replace(booked, headers=no_version)
    assert any("Version" in p for p in ghl_contract().request_problems(unversioned))
    no_contact = {k: v for k, v in json.loads(booked.body).items() if k != "contactId"}
    bad = dataclasses.replace(booked, body=json.dumps(no_contact).encode())
    assert any("contactId" in p for p in ghl_contract().request_problems(bad))
    unsigned = {k: v for k, v in booked.headers.items() if k.lower() != "authorization"}
    assert ghl_contract().request_problems(dataclasses.replace(booked, headers=unsigned)) != []
    no_id = dataclasses.replace(booked, response_body=b'{"calendarId": "x"}')
    assert any("id" in p for p in ghl_contract().response_problems(no_id))
