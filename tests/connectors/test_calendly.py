"""The Calendly connector against its fake, every exchange held to the trimmed Calendly API v2
description and its supplement (``specs/calendly/``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
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
from corral.connectors.calendly import BOOK, CANCEL_EVENT, PROVIDER
from corral.core.clock import ManualClock
from corral.fakes.calendly import CalendlyFake
from tests.connectors._harness import (
    calendly_contract,
    calendly_contract_as_published,
    checked,
    clock,
    connect,
    contract_problems,
    leaked,
    run,
)

INVITEE = {"name": "Ana Ruiz", "email": "ana@example.com", "timezone": "America/Los_Angeles"}
START, END = "2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00"


@pytest.fixture
def fake() -> Iterator[CalendlyFake]:
    """A fresh fake; after the test, every exchange it saw must fit the description."""
    with checked(CalendlyFake(clock()), calendly_contract()) as fake:
        yield fake


def book_args(event_type: str, **changes: Any) -> Any:
    raw = {"event_type": event_type, "start_time": START, "end_time": END, "invitee": INVITEE}
    return BOOK.parse_args({**raw, **changes})


def cancel_args(event_uuid: str, reason: str | None = "Patient is ill") -> Any:
    return CANCEL_EVENT.parse_args({"event_uuid": event_uuid, "reason": reason})


def calendly_error(status: int, title: str, message: str) -> bytes:
    return json.dumps({"title": title, "message": message}).encode()


# --- declarations and arguments -----------------------------------------------------------------


def test_the_provider_declares_the_catalog_tools_and_arguments() -> None:
    assert PROVIDER.name == "calendly"
    assert PROVIDER.fields == ("client_id", "client_secret", "refresh_token")
    assert PROVIDER.rotates_refresh_token is True
    schemas = {tool.name: set(tool.json_schema()["properties"]) for tool in PROVIDER.tools}
    assert schemas == {
        "calendly.book": {"event_type", "start_time", "end_time", "invitee"},
        "calendly.cancel_event": {"event_uuid", "reason"},
    }
    assert [t.idempotency for t in PROVIDER.tools] == ["intent_log", "intent_log"]


def test_effects_name_the_event_type_and_the_event() -> None:
    uri = "https://api.calendly.com/event_types/ET1"
    booking = BOOK.effect(book_args(uri))
    assert (booking.kind, booking.resource) == (EffectKind.BOOKING, f"calendly:{uri}")
    assert booking.end is not None and booking.end.isoformat() == END
    cancel = CANCEL_EVENT.effect(cancel_args("EV1"))
    assert (cancel.kind, cancel.target) == (EffectKind.CANCELLATION, "calendly:EV1")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"event_type": "ET1"}, "event_type"),
        ({"end_time": START}, "end_time"),
        ({"start_time": "2026-03-04 10:00"}, "start_time"),
        ({"invitee": {**INVITEE, "timezone": "Mars/Olympus"}}, "invitee.timezone"),
        ({"invitee": {**INVITEE, "email": "ana"}}, "invitee.email"),
        ({"invitee": {**INVITEE, "phone": "+15550100"}}, "invitee.phone"),
        ({"invitee": {"email": "ana@example.com", "timezone": "UTC"}}, "invitee.name"),
    ],
    ids=[
        "unknown-name",
        "not-a-uri",
        "empty-span",
        "no-offset",
        "bad-zone",
        "bad-email",
        "unknown-invitee-field",
        "no-name",
    ],
)
def test_book_refuses_bad_arguments(changes: dict[str, Any], field: str) -> None:
    event_type = "https://api.calendly.com/event_types/ET1"
    raw = {"event_type": event_type, "start_time": START, "end_time": END, "invitee": INVITEE}
    with pytest.raises(InvalidArguments) as refused:
        BOOK.parse_args({**raw, **changes})
    assert field in str(refused.value)


def test_cancel_refuses_bad_arguments() -> None:
    with pytest.raises(InvalidArguments, match="reason"):
        cancel_args("EV1", reason="x" * 10001)
    with pytest.raises(InvalidArguments, match="event_uuid"):
        cancel_args("../users/me")


# --- book ---------------------------------------------------------------------------------------


def test_book_creates_the_invitee_and_names_the_scheduled_event(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields, duration=30)

    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        return await BOOK.execute(
            await connect(http, fake, PROVIDER, fields), book_args(event_type)
        )

    result = run(fake, scenario)
    [event] = fake.scheduled_events()
    assert result["event_id"] == event["uri"].rsplit("/", 1)[1]
    assert result["invitee_uri"].startswith(event["uri"] + "/invitees/")
    assert result["status"] == "active"
    assert (event["start_time"], event["end_time"]) == (
        "2026-03-04T18:00:00.000000Z",
        "2026-03-04T18:30:00.000000Z",
    )
    assert [(e.method, e.path.split("/")[1]) for e in fake.exchanges[1:]] == [
        ("GET", "event_types"),
        ("POST", "invitees"),
    ]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(duration=st.sampled_from([15, 30, 45, 60]), span=st.integers(min_value=1, max_value=120))
def test_book_refuses_a_span_other_than_the_duration_and_sends_nothing(
    duration: int, span: int
) -> None:
    fake = CalendlyFake(clock())
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields, duration=duration)
    end = f"2026-03-04T{10 + span // 60:02d}:{span % 60:02d}:00-08:00"

    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        ctx = await connect(http, fake, PROVIDER, fields)
        return await BOOK.execute(ctx, book_args(event_type, end_time=end))

    if span == duration:
        assert run(fake, scenario)["status"] == "active"
    else:
        with pytest.raises(ProviderRejected) as refused:
            run(fake, scenario)
        assert refused.value.code == "duration_mismatch"
        assert not any(e.path == "/invitees" for e in fake.exchanges)
        assert fake.scheduled_events() == []
    assert contract_problems(calendly_contract(), fake.exchanges) == []


def test_a_taken_slot_is_refused_as_already_filled(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields, duration=30)
    other = {**INVITEE, "email": "bo@example.com", "name": "Bo Chen"}

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        await BOOK.execute(ctx, book_args(event_type))
        retry = dataclasses.replace(ctx, idempotency_key="call-2")
        await BOOK.execute(retry, book_args(event_type, invitee=other))

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (400, "already_filled")
    assert "no longer available" in refused.value.message
    assert len(fake.scheduled_events()) == 1


def test_a_lost_answer_is_unknown_and_reconcile_finds_the_booking(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields, duration=30)
    fake.faults.lose_answer("/invitees")

    async def scenario(http: httpx.AsyncClient) -> Any:
        ctx = await connect(http, fake, PROVIDER, fields)
        with pytest.raises(OutcomeUnknown) as unknown:
            await BOOK.execute(ctx, book_args(event_type))
        assert unknown.value.status == 504
        assert BOOK.reconcile is not None
        return await BOOK.reconcile(ctx, book_args(event_type))

    found = run(fake, scenario)
    [event] = fake.scheduled_events()
    assert found is not None
    assert found["event_id"] == event["uri"].rsplit("/", 1)[1]
    assert found["status"] == "active"
    assert found["invitee_uri"].startswith(event["uri"])


def test_reconcile_says_none_when_nothing_was_booked(fake: CalendlyFake) -> None:
    """Another invitee's event at the same time, and this invitee's event of another type or
    another time, are not this booking."""
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields, duration=30)
    other_type = fake.add_event_type(fields, duration=30, name="Consultation")
    later = {"start_time": "2026-03-04T11:00:00-08:00", "end_time": "2026-03-04T11:30:00-08:00"}

    async def scenario(http: httpx.AsyncClient) -> Any:
        ctx = await connect(http, fake, PROVIDER, fields)
        await BOOK.execute(ctx, book_args(other_type))
        await BOOK.execute(ctx, book_args(event_type, **later))
        bo = {**INVITEE, "email": "bo@example.com"}
        noon = {"start_time": "2026-03-04T12:00:00-08:00", "end_time": "2026-03-04T12:30:00-08:00"}
        await BOOK.execute(ctx, book_args(event_type, invitee=bo, **noon))
        assert BOOK.reconcile is not None
        return await BOOK.reconcile(ctx, book_args(event_type))

    assert run(fake, scenario) is None
    assert len(fake.scheduled_events()) == 3


# --- cancel_event -------------------------------------------------------------------------------


def test_cancel_then_cancel_again_counts_as_done(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields, duration=30)

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        ctx = await connect(http, fake, PROVIDER, fields)
        uuid = (await BOOK.execute(ctx, book_args(event_type)))["event_id"]
        assert CANCEL_EVENT.reconcile is not None
        before = await CANCEL_EVENT.reconcile(ctx, cancel_args(uuid))
        done = [await CANCEL_EVENT.execute(ctx, cancel_args(uuid)) for _ in range(2)]
        return [before, *done, await CANCEL_EVENT.reconcile(ctx, cancel_args(uuid))]

    before, first, again, after = run(fake, scenario)
    assert before is None
    assert first == again == after == {"event_id": first["event_id"], "status": "canceled"}
    [event] = fake.scheduled_events()
    assert event["status"] == "canceled"
    assert event["cancellation"]["reason"] == "Patient is ill"
    cancels = [e.status for e in fake.exchanges if e.path.endswith("/cancellation")]
    assert cancels == [201, 403]


def test_cancelling_an_unknown_event_is_rejected(fake: CalendlyFake) -> None:
    fields = fake.new_connection()

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        await CANCEL_EVENT.execute(ctx, cancel_args("NOSUCHEVENT", reason=None))

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (404, "Resource Not Found")


def test_cancelling_a_past_event_is_rejected(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields, duration=30)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        uuid = (await BOOK.execute(ctx, book_args(event_type)))["event_id"]
        assert isinstance(fake.clock, ManualClock)
        fake.clock.advance(timedelta(days=30))
        later = await connect(http, fake, PROVIDER, dict(ctx.credential.fields))
        await CANCEL_EVENT.execute(later, cancel_args(uuid))

    with pytest.raises(ProviderRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.message) == (403, "Event in the past")


# --- auth, refresh, errors ----------------------------------------------------------------------


def test_refresh_authenticates_the_client_in_a_header(fake: CalendlyFake) -> None:
    """Rotation itself is ``test_http.test_a_rotating_refresh_...``; Calendly's web clients
    authenticate with HTTP Basic, not in the form."""
    fields = fake.new_connection()
    run(fake, lambda http: connect(http, fake, PROVIDER, fields))
    assert "authorization" in {k.lower() for k in fake.exchanges[0].headers}


def test_an_expired_token_is_auth_rejected(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields)

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        fake.expire_access_tokens()
        await BOOK.execute(ctx, book_args(event_type))

    with pytest.raises(AuthRejected) as refused:
        run(fake, scenario)
    assert (refused.value.status, refused.value.code) == (401, "Unauthenticated")
    assert fake.scheduled_events() == []


@pytest.mark.parametrize(
    ("status", "outcome", "retryable"),
    [(429, ProviderRejected, True), (403, ProviderRejected, False), (500, OutcomeUnknown, False)],
)
def test_error_answers_keep_their_class(
    fake: CalendlyFake, status: int, outcome: type[ConnectorError], retryable: bool
) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields)
    fake.faults.fail("/invitees", status, calendly_error(status, "Refused", "Try later."))

    async def scenario(http: httpx.AsyncClient) -> None:
        await BOOK.execute(await connect(http, fake, PROVIDER, fields), book_args(event_type))

    with pytest.raises(outcome) as refused:
        run(fake, scenario)
    assert type(refused.value) is outcome
    assert (refused.value.status, refused.value.code, refused.value.retryable) == (
        status,
        "Refused",
        retryable,
    )
    assert fake.scheduled_events() == []


def test_no_credential_value_reaches_a_result_or_an_error(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields)
    texts: list[str] = []

    async def scenario(http: httpx.AsyncClient) -> CallContext:
        ctx = await connect(http, fake, PROVIDER, fields)
        texts.append(json.dumps(await BOOK.execute(ctx, book_args(event_type))))
        echo = calendly_error(400, "Invalid Argument", f"token {ctx.credential.access_token}")
        fake.faults.fail("/invitees", 400, echo)
        next_day = {"start_time": "2026-03-05T10:00:00Z", "end_time": "2026-03-05T10:30:00Z"}
        for args in (book_args(event_type, **next_day), book_args(event_type)):
            with pytest.raises(ConnectorError) as refused:
                await BOOK.execute(ctx, args)
            texts.extend([str(refused.value), repr(refused.value)])
        with pytest.raises(InvalidGrant) as refused_grant:
            await connect(http, fake, PROVIDER, fields)
        texts.append(str(refused_grant.value))
        return ctx

    ctx = run(fake, scenario)
    assert leaked(texts, ctx.credential) == []
    assert leaked(texts, Credential(fields)) == []
    assert "[redacted]" in texts[1]


def test_the_contract_check_reports_a_malformed_exchange(fake: CalendlyFake) -> None:
    fields = fake.new_connection()
    event_type = fake.add_event_type(fields)

    async def scenario(http: httpx.AsyncClient) -> None:
        await BOOK.execute(await connect(http, fake, PROVIDER, fields), book_args(event_type))

    run(fake, scenario)
    [booking] = [e for e in fake.exchanges if e.path == "/invitees"]
    no_invitee = json.dumps({"event_type": event_type, "start_time": "2026-03-04T18:00:00Z"})
    bad = dataclasses.replace(booking, body=no_invitee.encode())
    assert any("invitee" in p for p in calendly_contract().request_problems(bad))
    unsigned = dataclasses.replace(booking, headers={"content-type": "application/json"})
    assert calendly_contract().request_problems(unsigned) == [
        "request POST /invitees: no bearer token"
    ]
    [typed] = [e for e in fake.exchanges if e.path.startswith("/event_types/")]
    no_duration = json.loads(typed.response_body)
    del no_duration["resource"]["duration"]
    worse = dataclasses.replace(typed, response_body=json.dumps(no_duration).encode())
    assert any("duration" in p for p in calendly_contract().response_problems(worse))


def test_published_401_schema_refuses_its_own_message(fake: CalendlyFake) -> None:
    """Why ``calendly_contract`` corrects one schema: the fake's 401 carries exactly the
    message the trimmed file declares, and the file as published still refuses it."""
    fields = fake.new_connection()

    async def scenario(http: httpx.AsyncClient) -> None:
        ctx = await connect(http, fake, PROVIDER, fields)
        fake.expire_access_tokens()
        await CANCEL_EVENT.execute(ctx, cancel_args("EV1"))

    with pytest.raises(AuthRejected):
        run(fake, scenario)
    refused = fake.exchanges[-1]
    assert json.loads(refused.response_body) == {
        "title": "Unauthenticated",
        "message": "The access token is invalid",
    }
    [problem] = calendly_contract_as_published().response_problems(refused)
    assert "is not one of 'The access token is invalid'" in problem
    assert calendly_contract().response_problems(refused) == []
