"""The broker end to end over its HTTP API, against the six provider fakes.

Every catalog tool runs through ``POST /execute``; without control's approval, with another
sandbox, after a revocation or past ``max_uses`` nothing reaches a provider; retries never act
twice; OAuth tokens refresh and rotate; a refused refresh token marks the connection.

Accounts are connected, replaced and disconnected over ``POST /connections``,
``…/{id}/rotate`` and ``…/{id}/disconnect`` with control's approval; the credential is the one
the next call uses; every refusal (bad input, another tenant's connection, a bad approval)
names what is wrong, repeats no secret and changes nothing.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.broker._store import (
    ConnectionStatus,
    RevocationKind,
    access_tokens,
    connections,
    credentials,
    intents,
    revocations,
)
from corral.broker.client import connect_call, disconnect_call, rotate_call
from corral.broker.delegation import MAX_TTL_S, verify
from corral.broker.events import to_entries
from corral.connectors import catalog, providers
from corral.core.ids import SequentialIds
from corral.fakes import combined_app, fake_endpoints
from tests.broker._world import START, TENANT, World, build_world, catalog_calls, run


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    try:
        yield world
    finally:
        world.close()


def _sent(world: World) -> int:
    return sum(len(fake.exchanges) for fake in world.fakes.values())


def test_every_catalog_tool_runs_through_the_broker(world: World) -> None:
    results: dict[str, dict[str, Any]] = {}
    for tool, args in catalog_calls(world):
        response = run(world.execute(tool, args))
        assert response.status_code == 200, (tool, response.text)
        body = response.json()
        assert body["status"] == "succeeded", (tool, body)
        results[tool] = body["result"]
    follow_ups = [
        ("stripe.create_refund",
         {"payment_intent": world.seeds["stripe_paid"],
          "amount": 5000, "currency": "usd", "reason": "requested_by_customer"}),
        ("google_calendar.delete_event",
         {"calendar_id": "primary",
          "event_id": results["google_calendar.insert_event"]["event_id"]}),
        ("calendly.cancel_event",
         {"event_uuid": results["calendly.book"]["event_id"], "reason": "patient asked"}),
    ]  # fmt: skip
    for tool, args in follow_ups:
        body = run(world.execute(tool, args)).json()
        assert body["status"] == "succeeded", (tool, body)
        results[tool] = body["result"]
    assert set(results) == set(catalog())


def test_without_control_approval_nothing_runs(world: World) -> None:
    call = world.call("twilio.send_sms", {"to": "+13105550123", "body": "hi"})
    token = world.delegate(["twilio.send_sms"])
    other = world.approve({**call, "args": {"to": "+13105550123", "body": "HI"}})
    for approval in ["", "garbage", other]:
        response = run(world.post("/execute", {"delegation": token, "approval": approval or "x",
                                               "call": call}))  # fmt: skip
        assert response.status_code == 403
        assert response.json()["type"].endswith("approval_refused")
    assert _sent(world) == 0


def test_a_delegation_is_bound_to_its_sandbox_agent_and_tools(world: World) -> None:
    token = world.delegate(["twilio.send_sms"], sandbox="sbx-1")
    args = {"to": "+13105550123", "body": "hi"}
    stolen = run(world.execute("twilio.send_sms", args, delegation=token, sandbox="sbx-2"))
    assert stolen.status_code == 403 and "sandbox" in stolen.json()["detail"]
    other_agent = run(world.execute("twilio.send_sms", args, delegation=token, agent="agent-2"))
    assert other_agent.status_code == 403
    message = {"contact_id": "c", "type": "SMS", "message": "x"}
    other_tool = run(world.execute("ghl.send_message", message, delegation=token))
    assert other_tool.status_code == 403 and other_tool.json()["type"].endswith("not_delegated")
    assert _sent(world) == 0


def test_argument_constraints_hold(world: World) -> None:
    token = world.delegate(["twilio.send_sms"], recipients=["+13105550123"])
    ok = run(world.execute("twilio.send_sms", {"to": "(310) 555-0123", "body": "a"},
                           delegation=token))  # fmt: skip
    assert ok.json()["status"] == "succeeded"
    refused = run(world.execute("twilio.send_sms", {"to": "+13105550124", "body": "a"},
                                delegation=token))  # fmt: skip
    assert refused.status_code == 403


def test_ttl_is_capped_at_300_seconds_whatever_is_asked(world: World) -> None:
    for asked in [1, 299.5, 300, 301, 86_400, 10**12]:
        minted, events = world.broker.mint(tenant=TENANT, agent="a", sandbox="s",
                                           tools=["twilio.send_sms"], ttl_s=asked)  # fmt: skip
        assert minted.expires_at - START <= timedelta(seconds=MAX_TTL_S)
        assert minted.expires_at - START == timedelta(seconds=min(asked, MAX_TTL_S))
        assert events[0]["kind"] == "delegation.minted"


def test_an_expired_delegation_is_refused(world: World) -> None:
    token = world.delegate(["twilio.send_sms"], ttl_s=10)
    world.clock.advance(timedelta(seconds=10))
    response = run(world.execute("twilio.send_sms", {"to": "+13105550123", "body": "a"},
                                 delegation=token))  # fmt: skip
    assert response.status_code == 403 and "expired" in response.json()["detail"]
    assert response.json()["type"].endswith("/delegation_expired")  # the SDK renews on it


@pytest.mark.parametrize("kind", list(RevocationKind))
def test_revocation_takes_effect_on_the_next_call(world: World, kind: RevocationKind) -> None:
    token = world.delegate(["twilio.send_sms"])
    args = {"to": "+13105550123", "body": "first"}
    assert run(world.execute("twilio.send_sms", args, delegation=token)).json()["status"] == (
        "succeeded"
    )
    grant = verify(token, world.broker.delegation_keys, tenant=TENANT, agent="agent-1",
                   sandbox="sbx-1", now=world.clock.now())  # fmt: skip
    value = {
        RevocationKind.DELEGATION: grant.id, RevocationKind.AGENT: "agent-1",
        RevocationKind.TENANT: TENANT, RevocationKind.CONNECTION: "twilio-1",
    }[kind]  # fmt: skip
    world.broker.revoke(TENANT, kind, value, "test")
    before = _sent(world)
    response = run(world.execute("twilio.send_sms", {**args, "body": "second"}, delegation=token))
    assert response.status_code == 403 and response.json()["type"].endswith("revoked")
    assert _sent(world) == before
    world.clock.advance(timedelta(milliseconds=1))
    fresh = world.delegate(["twilio.send_sms"])  # minted after the revocation: not affected
    again = run(world.execute("twilio.send_sms", {**args, "body": "third"}, delegation=fresh))
    assert again.status_code == 200, again.text


def test_max_uses_is_enforced_across_calls(world: World) -> None:
    token = world.delegate(["twilio.send_sms"], max_uses=2)
    codes = [
        run(world.execute("twilio.send_sms", {"to": "+13105550123", "body": f"n{i}"},
                          delegation=token)).status_code
        for i in range(3)
    ]  # fmt: skip
    assert codes == [200, 200, 403]


def test_a_retry_with_the_same_key_replays_the_outcome(world: World) -> None:
    call = world.call("twilio.send_sms", {"to": "+13105550123", "body": "once"})
    token = world.delegate(["twilio.send_sms"])
    body = {"delegation": token, "approval": world.approve(call), "call": call}
    first = run(world.post("/execute", body)).json()
    second = run(world.post("/execute", body)).json()
    assert first["status"] == second["status"] == "succeeded"
    assert second["replayed"] and second["result"] == first["result"]
    fake: Any = world.fakes["twilio"]
    assert len(fake.messages(world.fields["twilio"]["account_sid"])) == 1
    changed = {**call, "args": {"to": "+13105550123", "body": "twice"}}
    conflict = run(world.post("/execute", {"delegation": token, "approval": world.approve(changed),
                                           "call": changed}))  # fmt: skip
    assert conflict.status_code == 409


def test_a_lost_answer_is_unknown_then_reconciled_without_acting_twice(world: World) -> None:
    world.fakes["twilio"].faults.lose_answer("/Messages.json")
    call = world.call("twilio.send_sms", {"to": "+13105550123", "body": "did it go?"})
    token = world.delegate(["twilio.send_sms"])
    body = {"delegation": token, "approval": world.approve(call), "call": call}
    first = run(world.post("/execute", body)).json()
    assert first["status"] == "unknown"
    second = run(world.post("/execute", body)).json()
    assert second["status"] == "succeeded" and second["result"]["message_sid"]
    fake: Any = world.fakes["twilio"]
    assert len(fake.messages(world.fields["twilio"]["account_sid"])) == 1


def test_a_lost_stripe_answer_is_settled_by_the_idempotency_key(world: World) -> None:
    world.fakes["stripe"].faults.lose_answer("/v1/payment_intents")
    call = world.call("stripe.create_payment_intent", {"amount": 900, "currency": "usd"})
    token = world.delegate(["stripe.*"])
    body = {"delegation": token, "approval": world.approve(call), "call": call}
    assert run(world.post("/execute", body)).json()["status"] == "unknown"
    settled = run(world.post("/execute", body)).json()
    assert settled["status"] == "succeeded"
    fake: Any = world.fakes["stripe"]
    made = [
        pi for pi in fake.payment_intents(world.fields["stripe"]["api_key"]) if pi["amount"] == 900
    ]
    assert len(made) == 1


def test_oauth_tokens_refresh_and_rotated_refresh_tokens_are_stored(world: World) -> None:
    args = {"contact_id": "", "type": "SMS", "message": "hello"}
    args["contact_id"] = world.seeds["ghl_contact"]
    first = run(world.execute("ghl.send_message", args)).json()
    assert first["status"] == "succeeded"
    assert [e["kind"] for e in first["events"]] == ["credential.rotated"]
    row = world.broker.vault.connection(TENANT, "ghl-1")
    assert row.version == 2  # HighLevel rotates: a new credential version
    world.fakes["ghl"].expire_access_tokens()  # type: ignore[attr-defined]
    second = run(world.execute("ghl.send_message", {**args, "message": "again"})).json()
    assert second["status"] == "succeeded"
    assert world.broker.vault.connection(TENANT, "ghl-1").version == 3
    world.clock.advance(timedelta(minutes=5))
    third = run(world.execute("ghl.send_message", {**args, "message": "third"})).json()
    assert third["status"] == "succeeded" and third["events"] == []  # the stored token is reused


def test_google_keeps_its_refresh_token(world: World) -> None:
    args = {"calendar_id": "primary", "time_min": START.isoformat(),
            "time_max": (START + timedelta(days=1)).isoformat()}  # fmt: skip
    assert run(world.execute("google_calendar.list_events", args)).json()["status"] == "succeeded"
    assert world.broker.vault.connection(TENANT, "google_calendar-1").version == 1


def test_a_refused_refresh_token_marks_the_connection_needs_reconnect(world: World) -> None:
    fake: Any = world.fakes["calendly"]
    fake.oauth.revoke(world.fields["calendly"]["refresh_token"])
    args = {"event_uuid": "00000000-0000-0000-0000-000000000000"}
    body = run(world.execute("calendly.cancel_event", args)).json()
    assert body["status"] == "failed"
    kinds = [(e["kind"], e["data"].get("reason", "")) for e in body["events"]]
    assert kinds and kinds[0][0] == "credential.revoked" and "needs_reconnect" in kinds[0][1]
    row = world.broker.vault.connection(TENANT, "calendly-1")
    assert row.status is ConnectionStatus.NEEDS_RECONNECT
    again = run(world.execute("calendly.cancel_event", args))
    assert again.status_code == 409 and "needs_reconnect" in again.json()["detail"]


def test_bad_input_gets_a_problem_naming_the_field(world: World) -> None:
    response = run(world.post("/execute", {"delegation": "x", "approval": "y"}))
    assert response.status_code == 400 and "call" in response.json()["detail"]
    unknown = world.call("twilio.teleport", {})
    response = run(world.post("/execute", {"delegation": "x", "approval": world.approve(unknown),
                                           "call": unknown}))  # fmt: skip
    assert response.status_code == 400 and "unknown tool" in response.json()["detail"]
    token = world.delegate(["twilio.send_sms"])
    bad = world.call("twilio.send_sms", {"to": "+13105550123", "body": "x", "cc": "me"})
    response = run(world.post("/execute", {"delegation": token, "approval": world.approve(bad),
                                           "call": bad}))  # fmt: skip
    assert response.status_code == 400 and "cc" in response.json()["detail"]


def test_health_and_metrics(world: World) -> None:
    assert run(world.get("/healthz")).json()["status"] == "ok"
    response = run(world.execute("twilio.send_sms", {"to": "+13105550123", "body": "m"}))
    timing = dict(
        part.strip().split(";dur=") for part in response.headers["server-timing"].split(",")
    )
    assert float(timing["broker"]) > 0 and float(timing["provider"]) > 0
    text = run(world.get("/metrics")).text
    assert 'corral_broker_executions_total{outcome="succeeded",tool="twilio.send_sms"}' in text


def test_key_rotation_rewraps_every_data_key_and_keeps_serving(world: World) -> None:
    keys: Any = world.broker.vault.keys
    old = keys.key_id
    new = keys.rotate()
    assert new != old
    count = world.broker.vault.rotate_key()
    assert count >= 6
    for row in world.broker.vault.store.connections(TENANT):
        blob = world.broker.vault.store.credential(TENANT, row.connection_id, row.version)
        assert blob is not None and new.encode() in blob
    body = run(world.execute("twilio.send_sms", {"to": "+13105550123", "body": "after"})).json()
    assert body["status"] == "succeeded"


def test_combined_app_mounts_every_fake(world: World) -> None:
    app = combined_app(world.fakes)
    paths = sorted(route.path for route in app.routes)  # type: ignore[attr-defined]
    assert paths == sorted(f"/{name}" for name in world.fakes)


def test_a_refusal_while_reconciling_keeps_the_outcome_unknown(world: World) -> None:
    world.fakes["twilio"].faults.lose_answer("/Messages.json")
    call = world.call("twilio.send_sms", {"to": "+13105550123", "body": "did it go?"})
    body = {
        "delegation": world.delegate(["twilio.*"]),
        "approval": world.approve(call),
        "call": call,
    }
    assert run(world.post("/execute", body)).json()["status"] == "unknown"
    world.fakes["twilio"].faults.fail(
        "/Messages.json", 429, b'{"code": 20429, "message": "Too Many Requests", "status": 429}'
    )
    retry = run(world.post("/execute", body)).json()
    assert retry["status"] == "unknown"  # never "failed": the first send may have gone out
    settled = run(world.post("/execute", body)).json()
    assert settled["status"] == "succeeded"
    fake: Any = world.fakes["twilio"]
    assert len(fake.messages(world.fields["twilio"]["account_sid"])) == 1


def test_reconcile_turns_a_refusal_into_unknown_never_failed(world: World) -> None:
    from dataclasses import replace

    from corral.broker.scrub import Scrubber
    from corral.connectors import OutcomeUnknown, ProviderRejected

    async def refuses(_ctx: Any, _args: Any) -> dict[str, Any] | None:
        raise ProviderRejected("twilio", "could not reach twilio", retryable=True)

    tool = replace(catalog()["twilio.send_sms"], reconcile=refuses)
    args = tool.parse_args({"to": "+13105550123", "body": "x"})
    with pytest.raises(OutcomeUnknown, match="could not ask the provider"):
        run(world.broker._reconcile(tool, args, None, None, Scrubber()))  # type: ignore[arg-type]


# ------------------------------------------------------------ connect, rotate, disconnect

OPERATOR = "own_lee"


def _request(world: World, **fields: Any) -> dict[str, Any]:
    return {"tenant": TENANT, "operator": OPERATOR, "idempotency_key": world.key(), **fields}


def _connect(world: World, request: dict[str, Any]) -> httpx.Response:
    approval = world.approve(connect_call(request))
    return run(world.post("/connections", {"approval": approval, "request": request}))


def _rotate(world: World, cid: str, request: dict[str, Any]) -> httpx.Response:
    approval = world.approve(rotate_call(cid, request))
    return run(world.post(f"/connections/{cid}/rotate", {"approval": approval, "request": request}))


def _disconnect(world: World, cid: str, request: dict[str, Any]) -> httpx.Response:
    body = {"approval": world.approve(disconnect_call(cid, request)), "request": request}
    return run(world.post(f"/connections/{cid}/disconnect", body))


def _state(world: World) -> list[list[tuple[Any, ...]]]:
    """Every table a connection change could touch, whole."""
    store = world.broker.vault.store
    with store.read("test") as conn:
        return [
            [tuple(row) for row in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
            for t in (connections, credentials, access_tokens, revocations, intents)
        ]


def _pay(world: World, amount: int, connection_id: str | None) -> httpx.Response:
    call = world.call("stripe.create_payment_intent", {"amount": amount, "currency": "usd"})
    call["connection_id"] = connection_id
    body = {"delegation": world.delegate(["stripe.*"]), "approval": world.approve(call),
            "call": call}  # fmt: skip
    return run(world.post("/execute", body))


def test_connect_rotate_and_disconnect_over_the_api(world: World) -> None:
    fake: Any = world.fakes["stripe"]
    vault, store = world.broker.vault, world.broker.vault.store
    api = fake_endpoints(world.fakes)["stripe"].api
    first, second = fake.new_connection(), fake.new_connection()
    events: list[dict[str, Any]] = []

    response = _connect(world, _request(world, provider="stripe", fields=first, api_url=api))
    assert response.status_code == 201, response.text
    body = response.json()
    row = body["connection"]
    assert row["connection_id"] == "stripe-2"  # stripe-1 exists: the next free id
    assert (row["status"], row["credential_version"], row["api_url"]) == ("active", 1, api)
    assert [(e["kind"], e["actor"], e["data"]) for e in body["events"]] == [
        ("credential.connected", {"kind": "operator", "id": OPERATOR},
         {"connection_id": "stripe-2", "provider": "stripe"}),
    ]  # fmt: skip
    assert body["replayed"] is False
    events += body["events"]
    assert vault.read_fields(vault.connection(TENANT, "stripe-2")) == (1, first)
    # Two Stripe accounts now: a call names the one it uses.
    assert _pay(world, 700, None).json()["type"].endswith("ambiguous_connection")
    assert _pay(world, 700, "stripe-2").json()["status"] == "succeeded"

    rotate = _request(world, fields=second)
    approval = world.approve(rotate_call("stripe-2", rotate))
    sent = {"approval": approval, "request": rotate}
    body = run(world.post("/connections/stripe-2/rotate", sent)).json()
    assert body["connection"]["credential_version"] == 2
    assert [(e["kind"], e["data"]["reason"]) for e in body["events"]] == [
        ("credential.rotated", "credential replaced (version 2)")
    ]
    events += body["events"]
    assert _pay(world, 800, "stripe-2").json()["status"] == "succeeded"
    assert [pi["amount"] for pi in fake.payment_intents(first["api_key"])] == [700]
    assert [pi["amount"] for pi in fake.payment_intents(second["api_key"])] == [800]
    # The same request again: the first answer, nothing done twice.
    again = run(world.post("/connections/stripe-2/rotate", sent)).json()
    assert again == {**body, "events": [], "replayed": True}
    assert vault.connection(TENANT, "stripe-2").version == 2
    # Its key for another request: refused.
    reused = _rotate(world, "stripe-2", {**rotate, "fields": first})
    assert reused.status_code == 409 and reused.json()["type"].endswith("idempotency_conflict")
    recorded = store.intent(TENANT, rotate["idempotency_key"])
    assert recorded is not None and recorded.result is not None
    assert second["api_key"] not in recorded.result and "sk_test_" not in recorded.result

    body = _disconnect(world, "stripe-2", _request(world, reason="moved processors")).json()
    assert body["connection"]["status"] == "revoked"
    assert [(e["kind"], e["data"]) for e in body["events"]] == [
        ("credential.revoked",
         {"connection_id": "stripe-2", "provider": "stripe", "reason": "moved processors"}),
    ]  # fmt: skip
    events += body["events"]
    assert [store.credential(TENANT, "stripe-2", v) for v in (1, 2)] == [None, None]
    assert store.revoked(TENANT, [(RevocationKind.CONNECTION, "stripe-2")])
    refused = _pay(world, 900, "stripe-2")
    assert refused.status_code == 409 and refused.json()["type"].endswith("connection_revoked")
    assert _pay(world, 900, None).json()["status"] == "succeeded"  # stripe-1 is the only one
    # The events are audit entries naming the operator, as the CLI's are.
    entries = to_entries(events, TENANT, SequentialIds())
    assert [e.kind for e, _ in entries] == [
        "credential.connected", "credential.rotated", "credential.revoked"]  # fmt: skip
    assert {(e.actor.kind, e.actor.id) for e, _ in entries} == {("operator", OPERATOR)}
    text = run(world.get("/metrics")).text
    assert 'corral_broker_connection_changes_total{action="rotate"} 1.0' in text


def test_rotating_reconnects_a_connection_the_provider_refused(world: World) -> None:
    fake: Any = world.fakes["calendly"]
    fake.oauth.revoke(world.fields["calendly"]["refresh_token"])
    args = {"event_uuid": "00000000-0000-0000-0000-000000000000"}
    assert run(world.execute("calendly.cancel_event", args)).json()["status"] == "failed"
    assert world.broker.vault.connection(TENANT, "calendly-1").status.value == "needs_reconnect"
    fresh = fake.new_connection()
    body = _rotate(world, "calendly-1", _request(world, fields=fresh)).json()
    assert body["connection"]["status"] == "active" and body["connection"]["status_reason"] is None
    book = dict(catalog_calls(world))["calendly.book"]
    book = {**book, "event_type": fake.add_event_type(fresh, duration=30)}
    booked = run(world.execute("calendly.book", book)).json()
    assert booked["status"] == "succeeded", booked


SECRET = "sk_test_REFUSEDcanary0123456789"
Build = Callable[[World], tuple[str, dict[str, Any]]]


def _connect_body(
    world: World, approve_instead: dict[str, Any] | None = None, **request: Any
) -> tuple[str, dict[str, Any]]:
    sent = _request(world, **request)
    document = connect_call({**sent, **(approve_instead or {})})
    return "/connections", {"approval": world.approve(document), "request": sent}


def _rotate_body(world: World, cid: str, **request: Any) -> tuple[str, dict[str, Any]]:
    sent = _request(world, **request)
    approval = world.approve(rotate_call(cid, sent))
    return f"/connections/{cid}/rotate", {"approval": approval, "request": sent}


def _disconnect_body(world: World, cid: str, **request: Any) -> tuple[str, dict[str, Any]]:
    sent = _request(world, **request)
    approval = world.approve(disconnect_call(cid, sent))
    return f"/connections/{cid}/disconnect", {"approval": approval, "request": sent}


def _rotate_approved_for_disconnect(world: World) -> tuple[str, dict[str, Any]]:
    sent = _request(world)
    approval = world.approve(rotate_call("stripe-1", {**sent, "fields": {"api_key": SECRET}}))
    return "/connections/stripe-1/disconnect", {"approval": approval, "request": sent}


REFUSALS: list[tuple[str, Build, int, str, str]] = [
    ("unknown provider",
     lambda w: _connect_body(w, provider="paypal", fields={"api_key": SECRET}),
     400, "invalid_connection", "unknown provider 'paypal'"),
    ("missing field",
     lambda w: _connect_body(w, provider="twilio", fields={"account_sid": "AC1"}),
     400, "invalid_connection", "twilio credential: missing auth_token"),
    ("empty field",
     lambda w: _connect_body(w, provider="stripe", fields={"api_key": ""}),
     400, "invalid_connection", "missing api_key"),
    ("unknown field, a pasted key as its name",
     lambda w: _connect_body(w, provider="stripe", fields={"api_key": "k", SECRET: "v"}),
     400, "invalid_connection", "1 unknown field (it takes api_key)"),
    ("a value that is not a string",
     lambda w: _connect_body(w, provider="stripe", fields={"api_key": 12345}),
     400, "bad_request", "request.fields: Value error, credential values must be strings"),
    ("an id already taken",
     lambda w: _connect_body(w, provider="stripe", connection_id="stripe-1",
                             fields={"api_key": SECRET}),
     409, "connection_exists", "tenant 'brightsmile' already has connection 'stripe-1'"),
    ("a tenant that is not an id",
     lambda w: _connect_body(w, tenant="bright smile", provider="stripe",
                             fields={"api_key": SECRET}),
     400, "bad_request", "request.tenant"),
    ("an endpoint that is not a URL",
     lambda w: _connect_body(w, provider="stripe", fields={"api_key": SECRET},
                             api_url="file:///etc/passwd"),
     400, "bad_request", "request.api_url"),
    ("no operator",
     lambda w: _connect_body(w, provider="stripe", fields={"api_key": SECRET}, operator=None),
     400, "bad_request", "request.operator"),
    ("an idempotency key that is not one",
     lambda w: _connect_body(w, provider="stripe", fields={"api_key": SECRET},
                             idempotency_key="short"),
     400, "bad_request", "request.idempotency_key"),
    ("an approval of other fields",
     lambda w: _connect_body(w, {"fields": {"api_key": SECRET + "x"}}, provider="stripe",
                             fields={"api_key": SECRET}),
     403, "approval_refused", "approval is for another call"),
    ("an approval of another tenant",
     lambda w: _connect_body(w, {"tenant": "quickfix"}, provider="stripe",
                             fields={"api_key": SECRET}),
     403, "approval_refused", "approval is for another tenant"),
    ("an approval of another connection id",
     lambda w: _connect_body(w, {"connection_id": "stripe-7"}, provider="stripe",
                             fields={"api_key": SECRET}),
     403, "approval_refused", "approval is for another call"),
    ("no approval",
     lambda w: ("/connections", {**_connect_body(w, provider="stripe",
                                                fields={"api_key": SECRET})[1], "approval": ""}),
     403, "approval_refused", "no approval"),
    ("rotate: another tenant's connection",
     lambda w: _rotate_body(w, "stripe-1", tenant="quickfix", fields={"api_key": SECRET}),
     404, "unknown_connection", "tenant 'quickfix' has no connection 'stripe-1'"),
    ("rotate: an unknown connection",
     lambda w: _rotate_body(w, "stripe-9", fields={"api_key": SECRET}),
     404, "unknown_connection", "has no connection 'stripe-9'"),
    ("rotate: another provider's fields",
     lambda w: _rotate_body(w, "stripe-1", fields={"account_sid": "AC1", "auth_token": SECRET}),
     400, "invalid_connection", "stripe credential: missing api_key; 2 unknown fields"),
    ("rotate: a connection id that is not one",
     lambda w: _rotate_body(w, "stripe 1", fields={"api_key": SECRET}),
     400, "bad_request", "path.connection_id"),
    ("disconnect: another tenant's connection",
     lambda w: _disconnect_body(w, "stripe-1", tenant="quickfix"),
     404, "unknown_connection", "tenant 'quickfix' has no connection 'stripe-1'"),
    ("disconnect: approved as a rotation",
     _rotate_approved_for_disconnect,
     403, "approval_refused", "approval is for another call"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "status", "code", "detail"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_a_refused_connection_change_names_the_problem_and_changes_nothing(
    world: World, build: Build, status: int, code: str, detail: str
) -> None:
    path, body = build(world)
    body["request"] = {k: v for k, v in body["request"].items() if v is not None}
    before = _state(world)
    response = run(world.post(path, body))
    problem = response.json()
    assert (response.status_code, problem["type"].rsplit("/", 1)[-1]) == (status, code)
    assert detail in problem["detail"], problem["detail"]
    assert SECRET not in response.text and "REFUSED" not in response.text
    assert _state(world) == before


def test_a_disconnected_connection_is_neither_rotated_nor_disconnected_again(
    world: World,
) -> None:
    assert _disconnect(world, "twilio-1", _request(world)).status_code == 200
    before = _state(world)
    for response in (
        _disconnect(world, "twilio-1", _request(world)),
        _rotate(world, "twilio-1", _request(world, fields=world.fields["twilio"])),
    ):
        assert response.status_code == 409
        assert response.json()["type"].endswith("connection_revoked")
    assert _state(world) == before
    # Connecting the provider again picks a new id; the old one stays, revoked, as the record.
    body = _connect(world, _request(world, provider="twilio", fields=world.fields["twilio"]))
    assert body.status_code == 201 and body.json()["connection"]["connection_id"] == "twilio-2"


_TWILIO = providers()["twilio"]
_ALLOWED = {*_TWILIO.fields, *_TWILIO.optional_fields}
_NAMES = st.sampled_from(sorted(_ALLOWED)) | st.from_regex(r"zz[a-z]{8}", fullmatch=True)
_VALUES = st.text(string.ascii_uppercase + string.digits, max_size=24)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=st.dictionaries(_NAMES, _VALUES, max_size=5))
def test_connect_takes_exactly_a_credential_and_never_repeats_one(
    world: World, fields: dict[str, str]
) -> None:
    valid = set(fields) <= _ALLOWED and all(fields.get(name) for name in _TWILIO.fields)
    before = _state(world)
    response = _connect(world, _request(world, provider="twilio", fields=fields))
    unknown = [name for name in fields if name not in _ALLOWED]
    assert not [s for s in [*unknown, *fields.values()] if len(s) >= 8 and s in response.text]
    if not valid:
        assert response.status_code == 400, response.text
        assert _state(world) == before
        return
    assert response.status_code == 201, response.text
    row = world.broker.vault.connection(TENANT, response.json()["connection"]["connection_id"])
    assert world.broker.vault.read_fields(row) == (1, fields)
