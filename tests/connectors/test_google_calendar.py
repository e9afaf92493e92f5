"""The Google Calendar connector against its fake, every exchange held to the discovery
document and the OAuth supplement (``specs/google-calendar/``)."""

from __future__ import annotations

import dataclasses
import json
import re
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
    Credential,
    EffectKind,
    InvalidArguments,
    InvalidGrant,
    OutcomeUnknown,
    ProviderRejected,
)
from corral.connectors.google_calendar import (
    DELETE_EVENT,
    INSERT_EVENT,
    LIST_EVENTS,
    PROVIDER,
    event_id_for,
)
from corral.fakes.google_calendar import GoogleCalendarFake
from tests.connectors._harness import checked, clock, connect, google_contract, leaked, root, run

CALENDAR = "lee@brightsmile.example"
SLOT = {"start": "2026-03-04T10:00:00-08:00", "end": "2026-03-04T10:30:00-08:00"}
BASE32HEX_ID = re.compile(r"[a-v0-9]{5,1024}\Z")  # discovery: schemas.Event.properties.id
KEYS = st.from_regex(r"[0-9A-Za-z_-]{1,50}", fullmatch=True)  # CallContext.idempotency_key


@pytest.fixture
def fake() -> Iterator[GoogleCalendarFake]:
    """A fresh fake; after the test, every exchange it saw must fit the description."""
    with checked(GoogleCalendarFake(clock()), google_contract()) as fake:
        yield fake


def insert_args(**changes: Any) -> Any:
    raw = {"calendar_id": CALENDAR, **SLOT, "summary": "Cleaning — Ana Ruiz", **changes}
    return INSERT_EVENT.parse_args(raw)


def google_error(status: int, reason: str, message: str) -> bytes:
    error = {"code": status, "message": message, "errors": [{"domain": "global", "reason": reason}]}
    return json.dumps({"error": error}).encode()


# --- declarations -------------------------------------------------------------------------------


def test_the_provider_declares_the_catalog_tools_and_arguments() -> None:
    assert PROVIDER.name == "google_calendar"
    assert PROVIDER.fields == ("client_id", "client_secret", "refresh_token")
    assert PROVIDER.rotates_refresh_token is False
    schemas = {tool.name: set(tool.json_schema()["properties"]) for tool in PROVIDER.tools}
    assert schemas == {
        "google_calendar.insert_event": {"calendar_id", "start", "end", "summary", "attendees"},
        "google_calendar.delete_event": {"calendar_id", "event_id"},
        "google_calendar.list_events": {"calendar_id", "time_min", "time_max"},
    }
    assert [t.idempotency for t in PROVIDER.tools] == ["native", "native", "read_only"]


def test_effects_name_the_calendar_key() -> None:
    booking = INSERT_EVENT.effect(insert_args())
    assert (booking.kind, booking.resource) == (EffectKind.BOOKING, f"google_calendar:{CALENDAR}")
    assert booking.start is not None and booking.start.isoformat() == SLOT["start"]
    cancel = DELETE_EVENT.effect(
        DELETE_EVENT.parse_args({"calendar_id": CALENDAR, "event_id": "e1"})
    )
    assert (cancel.kind, cancel.target) == (
        EffectKind.CANCELLATION,
        f"google_calendar:{CALENDAR}/e1",
    )
    read = LIST_EVENTS.effect(
        LIST_EVENTS.parse_args(
            {"calendar_id": CALENDAR, "time_min": SLOT["start"], "time_max": SLOT["end"]}
        )
    )
    assert (read.kind, read.resource) == (EffectKind.READ, f"google_calendar:{CALENDAR}")


@pytest.mark.parametrize(
    ("tool_args", "field"),
    [
        ({**SLOT, "calendar_id": CALENDAR, "summary": "x", "colour": "red"}, "colour"),
        (
            {"calendar_id": CALENDAR, "summary": "x", "start": SLOT["end"], "end": SLOT["start"]},
            "end",
        ),
        (
            {**SLOT, "calendar_id": CALENDAR, "summary": "x", "start": "2026-03-04T10:00:00"},
            "start",
        ),
        (
            {**SLOT, "calendar_id": CALENDAR, "summary": "x", "attendees": ["not-an-email"]},
            "attendees",
        ),
        ({**SLOT, "calendar_id": "", "summary": "x"}, "calendar_id"),
    ],
    ids=["unknown-name", "end-before-start", "no-offset", "bad-attendee", "empty-calendar"],
)
def test_insert_refuses_bad_arguments(tool_args: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArguments) as refused:
        INSERT_EVENT.parse_args(tool_args)
    assert field in str(refused.value)


def test_list_refuses_an_empty_range() -> None:
    with pytest.raises(InvalidArguments, match="time_max must be after time_min"):
        LIST_EVENTS.parse_args(
            {"calendar_id": CALENDAR, "time_min": SLOT["end"], "time_max": SLOT["start"]}
        )


@given(KEYS)
def test_event_ids_are_valid_and_deterministic(key: str) -> None:
    event_id = event_id_for(key)
    assert BASE32HEX_ID.match(event_id)
    assert event_id_for(key) == event_id


@given(KEYS, KEYS)
def test_distinct_keys_give_distinct_event_ids(one: str, other: str) -> None:
    assert (event_id_for(one) == event_id_for(other)) == (one == other)


# --- insert_event -------------------------------------------------------------------------------


def test_insert_event_books_the_slot(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)

    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        ctx = await connect(http, fake, PROVIDER, fields, key="book-ana")
        return await INSERT_EVENT.execute(ctx, insert_args(attendees=["ana@example.com"]))

    result = run(fake, scenario)
    assert result == {"event_id": event_id_for("book-ana"), "status": "confirmed", **SLOT}
    [stored] = fake.events(CALENDAR)
    assert stored["id"] == event_id_for("book-ana")
    assert stored["attendees"] == [{"email": "ana@example.com", "responseStatus": "needsAction"}]


def test_a_retry_with_the_same_key_makes_no_second_event(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)

    async def scenario(http: httpx.AsyncClient) -> list[dict[str, Any]]:
        ctx = await connect(http, fake, PROVIDER, fields, key="same-call")
        return [await INSERT_EVENT.execute(ctx, insert_args()) for _ in range(2)]

    first, retried = run(fake, scenario)
    assert first == retried
    assert len(fake.events(CALENDAR)) == 1
    assert [e.status for e in fake.exchanges if e.method == "POST" and "events" in e.path] == [
        200,
        409,
    ]


def test_overlapping_events_are_accepted(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        for key in ("one", "two"):
            await INSERT_EVENT.execute(dataclasses.replace(ctx, idempotency_key=key), insert_args())

    run(fake, scenario)
    assert len(fake.events(CALENDAR)) == 2


def test_a_lost_answer_is_unknown_and_reconcile_finds_the_event(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)
    fake.faults.lose_answer("/events")

    async def scenario(http: httpx.AsyncClient) -> Any:
        ctx = await connect(http, fake, PROVIDER, fields, key="lost")
        with pytest.raises(OutcomeUnknown) as unknown:
            await INSERT_EVENT.execute(ctx, insert_args())
        assert unknown.value.status == 504
        assert INSERT_EVENT.reconcile is not None
        return await INSERT_EVENT.reconcile(ctx, insert_args())

    assert run(fake, scenario) == {"event_id": event_id_for("lost"), "status": "confirmed", **SLOT}
    assert len(fake.events(CALENDAR)) == 1


def test_reconcile_says_none_when_nothing_was_inserted(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)
    fake.faults.fail("/events", 503, google_error(503, "backendError", "Backend Error"))

    async def scenario(http: httpx.AsyncClient) -> Any:
        ctx = await connect(http, fake, PROVIDER, fields)
        with pytest.raises(OutcomeUnknown):
            await INSERT_EVENT.execute(ctx, insert_args())
        assert INSERT_EVENT.reconcile is not None
        return await INSERT_EVENT.reconcile(ctx, insert_args())

    assert run(fake, scenario) is None
    assert fake.events(CALENDAR) == []


def test_an_unknown_calendar_is_rejected_with_googles_reason(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        await INSERT_EVENT.execute(ctx, insert_args(calendar_id="someone@else.example"))

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (404, "notFound")
    assert not refused.value.retryable


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [
        (400, "timeRangeEmpty", False),
        (429, "rateLimitExceeded", True),
        (403, "userRateLimitExceeded", True),
    ],
)
def test_refusals_keep_status_reason_and_retry_class(
    fake: GoogleCalendarFake, status: int, reason: str, retryable: bool
) -> None:
    fields = fake.new_connection(CALENDAR)
    fake.faults.fail("/events", status, google_error(status, reason, "Refused."))

    async def scenario(http: httpx.AsyncClient) -> None:
        await INSERT_EVENT.execute(await connect(http, fake, PROVIDER, fields), insert_args())

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert type(refused.value) is ProviderRejected
    assert (refused.value.status, refused.value.code, refused.value.retryable) == (
        status,
        reason,
        retryable,
    )
    assert refused.value.message == "Refused."
    assert fake.events(CALENDAR) == []


# --- delete_event and list_events ---------------------------------------------------------------


def test_delete_cancels_and_a_second_delete_counts_as_done(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)
    delete = DELETE_EVENT.parse_args({"calendar_id": CALENDAR, "event_id": event_id_for("e")})

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        ctx = await connect(http, fake, PROVIDER, fields, key="e")
        await INSERT_EVENT.execute(ctx, insert_args())
        assert DELETE_EVENT.reconcile is not None
        before = await DELETE_EVENT.reconcile(ctx, delete)
        return [before, *[await DELETE_EVENT.execute(ctx, delete) for _ in range(2)]]

    before, first, again = run(fake, scenario)
    done = {"event_id": event_id_for("e"), "status": "cancelled"}
    assert (before, first, again) == (None, done, done)
    assert [e.status for e in fake.exchanges if e.method == "DELETE"] == [204, 410]
    assert [e["status"] for e in fake.events(CALENDAR)] == ["cancelled"]


def test_reconcile_of_a_lost_delete_finds_it_done(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)
    delete = DELETE_EVENT.parse_args({"calendar_id": CALENDAR, "event_id": event_id_for("e")})

    async def scenario(http: httpx.AsyncClient) -> Any:
        ctx = await connect(http, fake, PROVIDER, fields, key="e")
        await INSERT_EVENT.execute(ctx, insert_args())
        fake.faults.lose_answer("/events/")
        with pytest.raises(OutcomeUnknown):
            await DELETE_EVENT.execute(ctx, delete)
        assert DELETE_EVENT.reconcile is not None
        return await DELETE_EVENT.reconcile(ctx, delete)

    assert run(fake, scenario) == {"event_id": event_id_for("e"), "status": "cancelled"}


def test_deleting_an_unknown_event_is_rejected(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        await DELETE_EVENT.execute(
            ctx, DELETE_EVENT.parse_args({"calendar_id": CALENDAR, "event_id": "nosuchevent"})
        )

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (404, "notFound")


def test_list_events_reads_every_page_in_start_order(fake: GoogleCalendarFake) -> None:
    """260 events make two pages of ``events.list`` (250 each); a deleted one is not listed."""
    fields = fake.new_connection(CALENDAR)
    day = {
        "calendar_id": CALENDAR,
        "time_min": "2026-03-04T00:00:00Z",
        "time_max": "2026-03-05T00:00:00Z",
    }

    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        ctx = await connect(http, fake, PROVIDER, fields)
        for n in reversed(range(260)):
            start = f"2026-03-04T{n // 60:02d}:{n % 60:02d}:00Z"
            args = insert_args(start=start, end=start.replace(":00Z", ":30Z"), summary=f"#{n}")
            await INSERT_EVENT.execute(dataclasses.replace(ctx, idempotency_key=f"k{n}"), args)
        outside = insert_args(start="2026-03-05T00:00:00Z", end="2026-03-05T00:30:00Z")
        await INSERT_EVENT.execute(dataclasses.replace(ctx, idempotency_key="outside"), outside)
        gone = {"calendar_id": CALENDAR, "event_id": event_id_for("k7")}
        await DELETE_EVENT.execute(ctx, DELETE_EVENT.parse_args(gone))
        return await LIST_EVENTS.execute(ctx, LIST_EVENTS.parse_args(day))

    events = run(fake, scenario)["events"]
    assert [e["summary"] for e in events] == [f"#{n}" for n in range(260) if n != 7]
    assert events[0] == {
        "event_id": event_id_for("k0"),
        "start": "2026-03-04T00:00:00+00:00",
        "end": "2026-03-04T00:00:30+00:00",
        "status": "confirmed",
        "summary": "#0",
    }
    assert sum(1 for e in fake.exchanges if e.method == "GET") == 2


# --- auth, refresh and transport ----------------------------------------------------------------


def test_an_expired_token_is_auth_rejected_and_the_same_refresh_token_keeps_working(
    fake: GoogleCalendarFake,
) -> None:
    fields = fake.new_connection(CALENDAR)

    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        ctx = await connect(http, fake, PROVIDER, fields)
        fake.expire_access_tokens()
        with pytest.raises(AuthRejected) as refused:
            await INSERT_EVENT.execute(ctx, insert_args())
        assert (refused.value.status, refused.value.code) == (401, "authError")
        again = await connect(http, fake, PROVIDER, fields)
        assert again.credential.fields["refresh_token"] == fields["refresh_token"]
        return await INSERT_EVENT.execute(again, insert_args())

    assert run(fake, scenario)["status"] == "confirmed"


def test_refresh_returns_no_new_refresh_token(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)
    endpoints = fake.endpoints(root(fake))

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        assert PROVIDER.refresh is not None
        return [await PROVIDER.refresh(http, endpoints, Credential(fields)) for _ in range(2)]

    first, second = run(fake, scenario)
    assert (first.refresh_token, second.refresh_token) == (None, None)
    assert first.access_token != second.access_token
    assert first.expires_in == 3599


def test_a_revoked_refresh_token_is_an_invalid_grant(fake: GoogleCalendarFake) -> None:
    fields = fake.new_connection(CALENDAR)
    fake.oauth.revoke(fields["refresh_token"])

    async def scenario(http: httpx.AsyncClient) -> None:
        await connect(http, fake, PROVIDER, fields)

    with pytest.raises(InvalidGrant) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (400, "invalid_grant")


def test_no_credential_value_reaches_a_result_or_an_error(fake: GoogleCalendarFake) -> None:
    """Results and errors of a whole session, including a provider message that echoes the
    access token, carry no credential value."""
    fields = fake.new_connection(CALENDAR)
    texts: list[str] = []

    async def scenario(http: httpx.AsyncClient) -> CallContext:
        ctx = await connect(http, fake, PROVIDER, fields)
        token = ctx.credential.access_token
        texts.append(json.dumps(await INSERT_EVENT.execute(ctx, insert_args())))
        fake.faults.fail("/events", 400, google_error(400, "invalid", f"bad token {token}"))
        for calendar in (CALENDAR, "x@y.example"):
            with pytest.raises(ConnectorError) as refused:
                await INSERT_EVENT.execute(ctx, insert_args(calendar_id=calendar))
            texts.extend([str(refused.value), repr(refused.value), refused.value.message])
        return ctx

    ctx = run(fake, scenario)
    assert leaked(texts, ctx.credential) == []
    assert "[redacted]" in texts[1]


def test_the_contract_check_reports_a_malformed_exchange(fake: GoogleCalendarFake) -> None:
    """The check used after every test can fail: a malformed request and response are named."""
    fields = fake.new_connection(CALENDAR)

    async def scenario(http: httpx.AsyncClient) -> None:
        await INSERT_EVENT.execute(await connect(http, fake, PROVIDER, fields), insert_args())

    run(fake, scenario)
    sent = fake.exchanges[-1]
    bad = dataclasses.replace(sent, body=json.dumps({"start": "tomorrow"}).encode())
    assert any("start" in p for p in google_contract().request_problems(bad))
    worse = dataclasses.replace(sent, response_body=json.dumps({"status": 7}).encode())
    assert any("status" in p for p in google_contract().response_problems(worse))
    unknown = dataclasses.replace(sent, query={"colour": "red"})
    assert any("colour" in p for p in google_contract().request_problems(unknown))
    unsigned = dataclasses.replace(sent, headers={"content-type": "application/json"})
    assert google_contract().request_problems(unsigned) == [
        f"request POST {sent.path}: no bearer token"
    ]
