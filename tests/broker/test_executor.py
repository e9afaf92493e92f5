"""The broker end to end over its HTTP API, against the six provider fakes.

Every catalog tool runs through ``POST /execute``; without control's approval, with another
sandbox, after a revocation or past ``max_uses`` nothing reaches a provider; retries never act
twice; OAuth tokens refresh and rotate; a refused refresh token marks the connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.broker._store import ConnectionStatus, RevocationKind
from corral.broker.delegation import MAX_TTL_S, verify
from corral.connectors import catalog
from corral.fakes import combined_app
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
