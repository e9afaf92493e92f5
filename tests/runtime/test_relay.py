"""The host's relay to ``corral control``, against the real control app (a :class:`Control` with
its ledger and audit chain) served by uvicorn on a Unix socket: verdicts, deferral, refusals,
idempotent retries, problems, an unreachable control plane and sandbox events."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from corral.audit.chain import AuditChain, open_chain
from corral.audit.entries import parse_entry
from corral.core.clock import ManualClock
from corral.core.ids import SequentialIds
from corral.core.settings import load_settings
from corral.guest import wire
from corral.runtime.channel import ChannelRefusal
from corral.runtime.relay import ControlRelay, ControlUnreachable, derive_call_id, explain
from corral.runtime.sandbox import Identity, IsolationLevel
from corral.supervisor.app import create_app
from corral.supervisor.dispatch import Dispatcher, Execution
from corral.supervisor.policy import load_policy
from corral.supervisor.service import Control
from corral.supervisor.store import LedgerStore

T0 = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)  # 09:00 in Los Angeles
TENANT = "brightsmile"
POLICY = {
    "timezone": "America/Los_Angeles",
    "refunds": {"escalate_above": {"amount": 20000, "currency": "usd"}},
}
WHO = Identity(TENANT, "receptionist-1", "sbx-1")


def booking(start: str, end: str) -> dict[str, Any]:
    return {"calendar_id": "lee", "start": start, "end": end, "summary": "Cleaning"}


class FakeBroker(Dispatcher):
    """The broker behind control, as far as control can tell: runs what it is asked to (the
    ``fail`` recipient fails) and mints a token for any delegation request."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, str, str, str]] = []
        self.minted: list[dict[str, Any]] = []

    async def execute(
        self, tenant: str, agent: str, sandbox: str, call_id: str, tool: str,
        args: Mapping[str, Any], delegation: str,
    ) -> Execution:  # fmt: skip
        self.executed.append((agent, sandbox, call_id, delegation))
        if args.get("body") == "fail":
            return Execution("failed", error={"code": "provider_rejected", "message": "blocked"})
        return Execution("succeeded", result={"sid": "SM1", "status": "queued"})

    async def delegate(
        self, tenant: str, agent: str, sandbox: str, request: Mapping[str, Any], key: str
    ) -> dict[str, Any]:
        self.minted.append({"agent": agent, "sandbox": sandbox, "key": key, **request})
        return {"delegation": "dlg-token", "id": "dlg_1", "expires_at": "2026-03-03T17:05:00Z",
                "scope": {"tools": request["tools"]}, "events": []}  # fmt: skip


class ServedControl:
    """``corral control``'s app over a real Control, served on a 0600 Unix socket in a thread."""

    def __init__(self, tmp: Path, broker: Dispatcher | None = None) -> None:
        self.clock = ManualClock(T0)
        self.chain: AuditChain = open_chain(load_settings(data_dir=tmp / "audit"), self.clock)
        self.store = LedgerStore.from_url(f"sqlite:///{tmp / 'control.db'}")
        self.store.create_schema()
        self.control = Control(self.store, self.clock, SequentialIds(),
                               sequencer=self.chain.sequencer, dispatcher=broker,
                               policies={TENANT: load_policy(POLICY)})  # fmt: skip
        self.ids = SequentialIds()  # the host's call ids, shared by every relay of a test
        self.socket = tmp / "control.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket))
        os.chmod(self.socket, 0o600)
        app = create_app(self.control, reconsider_every_s=3600)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [listener]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "control did not start"
            time.sleep(0.01)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://control") as client:
            return client.post(path, json=body)

    def kinds(self) -> list[str]:
        store = self.chain.store
        return [parse_entry(e.leaf).kind for e in store.entries(TENANT, 0, store.log_size(TENANT))]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.chain.close()
        self.store.close()


@pytest.fixture(name="served")
def served_fixture(tmp_path: Path) -> Iterator[ServedControl]:
    served = ServedControl(tmp_path)
    try:
        yield served
    finally:
        served.close()


def relay_to(served: ServedControl, **options: Any) -> ControlRelay:
    return ControlRelay(served.socket, ids=served.ids, **options)


def call(relay: ControlRelay, tool: str, args: dict[str, Any], key: str | None = None,
         who: Identity = WHO) -> dict[str, Any]:  # fmt: skip
    params: dict[str, Any] = {"tool": tool, "args": args}
    if key is not None:
        params["idempotency_key"] = key

    async def go() -> dict[str, Any]:
        try:
            return await relay.call(who, params)
        finally:
            await relay.aclose()

    return asyncio.run(go())


def refusal(relay: ControlRelay, tool: str, args: dict[str, Any]) -> ChannelRefusal:
    with pytest.raises(ChannelRefusal) as caught:
        call(relay, tool, args)
    return caught.value


def test_an_allowed_call_is_answered_with_the_hosts_call_id(served: ServedControl) -> None:
    slot = booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00")
    answer = call(relay_to(served), "google_calendar.insert_event", slot)
    assert answer == {"call_id": "call_0000000001", "verdict": "allow", "explanation": "allowed"}
    assert served.kinds() == ["action.requested", "action.verdict"]
    requested = parse_entry(served.chain.store.entries(TENANT, 0, 1)[0].leaf).model_dump()
    assert requested["actor"]["id"] == "receptionist-1"  # the channel's identity reached control
    assert requested["data"]["call_id"] == "call_0000000001"


def test_a_denied_call_is_a_refusal_naming_the_rule(served: ServedControl) -> None:
    refused = refusal(relay_to(served), "twilio.send_sms", {"to": "not a number", "body": "x"})
    assert refused.code == wire.REFUSED
    assert refused.data["verdict"] == "deny"
    assert refused.data["rules"] == ["invalid_arguments"]
    assert refused.data["call_id"] == "call_0000000001"
    assert refused.data["explanation"].startswith("denied by rule invalid_arguments: ")
    assert refused.message == f"call {refused.data['explanation']}"


def test_an_escalated_call_waits_for_the_owner_up_to_its_limit(served: ServedControl) -> None:
    refund = {"payment_intent": "pi_1", "amount": 25000, "currency": "usd"}
    refused = refusal(relay_to(served, max_escalation_s=0.3), "stripe.create_refund", refund)
    assert refused.data["verdict"] == "escalate"
    assert refused.data["rules"] == ["refund_above_threshold"]
    assert "has not run" in refused.data["explanation"]
    assert "still escalated after 0.3 s" in refused.data["explanation"]


def test_an_escalated_call_runs_once_the_owner_approves(tmp_path: Path) -> None:
    broker = FakeBroker()
    served = ServedControl(tmp_path, broker)
    refund = {"payment_intent": "pi_1", "amount": 25000, "currency": "usd"}
    params = {"tool": "stripe.create_refund", "args": refund, "delegation": "dlg-token"}

    async def call_while_the_owner_approves() -> dict[str, Any]:
        relay = relay_to(served, wait_s=0.2)
        try:
            waiting = asyncio.ensure_future(relay.call(WHO, params))
            while not served.control.escalations:
                await asyncio.sleep(0.02)
            assert not waiting.done() and broker.executed == []  # held for the owner
            ((_, call_id),) = served.control.escalations
            decided = await asyncio.to_thread(
                served.post, f"/escalations/{TENANT}/{call_id}/decision",
                {"decision": "approve", "operator": "owner"},
            )  # fmt: skip
            assert decided.status_code == 200
            return await asyncio.wait_for(waiting, 10)
        finally:
            await relay.aclose()

    try:
        answer = asyncio.run(call_while_the_owner_approves())
        assert answer["verdict"] == "allow"
        assert answer["result"] == {"sid": "SM1", "status": "queued"}
        assert len(broker.executed) == 1
        assert served.kinds()[-2:] == ["operator.decision", "action.executed"]
    finally:
        served.close()


def test_a_conflict_names_the_call_it_conflicts_with(served: ServedControl) -> None:
    charge = {"amount": 9000, "currency": "usd", "customer": "cus_1"}
    first = call(relay_to(served), "stripe.create_payment_intent", charge)
    refused = refusal(relay_to(served, max_escalation_s=0.3), "stripe.create_payment_intent",
                      charge)  # fmt: skip
    assert refused.data["conflicts_with"] == [first["call_id"]]
    assert first["call_id"] in refused.data["explanation"]


def test_a_deferred_call_waits_until_control_decides_it_again(served: ServedControl) -> None:
    relay = relay_to(served, wait_s=0.2)
    first = call(relay_to(served), "google_calendar.insert_event",
                 booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00"))  # fmt: skip
    overlapping = booking("2026-03-04T10:15:00-08:00", "2026-03-04T10:45:00-08:00")

    async def scenario() -> dict[str, Any]:
        pending = asyncio.create_task(
            relay.call(WHO, {"tool": "google_calendar.insert_event", "args": overlapping})
        )
        while served.kinds().count("action.verdict") < 2:  # the defer is recorded
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # a few long polls come back still deferred
        assert not pending.done()
        freed = await asyncio.to_thread(
            served.post, f"/calls/{TENANT}/{first['call_id']}/outcome", {"status": "failed"}
        )
        assert freed.status_code == 200
        try:
            return await asyncio.wait_for(pending, 10)
        finally:
            await relay.aclose()

    answer = asyncio.run(scenario())
    assert answer["verdict"] == "allow" and answer["call_id"] == "call_0000000002"
    assert served.kinds().count("action.verdict") == 3  # allow, defer, then allow


def test_a_deferred_call_gives_up_after_max_defer(served: ServedControl) -> None:
    call(relay_to(served), "google_calendar.insert_event",
         booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00"))  # fmt: skip
    relay = relay_to(served, wait_s=0.1, max_defer_s=0.3)
    same = booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00")
    refused = refusal(relay, "google_calendar.insert_event", same)
    assert refused.data["verdict"] == "defer"
    assert "still deferred after 0.3 s" in refused.data["explanation"]


def test_a_retry_with_the_same_idempotency_key_is_the_same_call(served: ServedControl) -> None:
    slot = booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00")
    first = call(relay_to(served), "google_calendar.insert_event", slot, key="book-ana-1")
    again = call(relay_to(served), "google_calendar.insert_event", slot, key="book-ana-1")
    assert first == again
    assert first["call_id"] == derive_call_id(WHO, "book-ana-1")
    assert served.kinds() == ["action.requested", "action.verdict"]  # decided once
    other = Identity(TENANT, "scheduler-2", "sbx-2")
    later = booking("2026-03-04T11:00:00-08:00", "2026-03-04T11:30:00-08:00")
    elsewhere = call(relay_to(served), "google_calendar.insert_event", later, "book-ana-1", other)
    assert elsewhere["call_id"] == derive_call_id(other, "book-ana-1") != first["call_id"]
    assert served.kinds().count("action.verdict") == 2  # another agent's key: another call


def test_controls_problems_become_refusals_with_their_detail(served: ServedControl) -> None:
    refused = refusal(relay_to(served), "x" * 200, {})
    assert refused.code == wire.REFUSED
    assert refused.data == {"status": 400, "problem": "bad_request"}
    assert "tool" in refused.message and "128" in refused.message
    assert served.kinds() == []  # nothing was decided


def test_bad_params_are_invalid_params_before_control_is_asked(served: ServedControl) -> None:
    with pytest.raises(ValueError, match="args"):
        call(relay_to(served), "twilio.send_sms", "not an object")  # type: ignore[arg-type]
    assert served.kinds() == []


def test_an_unreachable_control_plane_is_a_clear_error(tmp_path: Path) -> None:
    relay = ControlRelay(tmp_path / "nobody.sock")
    with pytest.raises(ControlUnreachable) as caught:
        call(relay, "twilio.send_sms", {"to": "+13105550123", "body": "hi"})
    assert caught.value.code == wire.INTERNAL_ERROR
    assert caught.value.message == "the control plane is unreachable; the call was not decided"
    assert str(tmp_path / "nobody.sock") in str(caught.value)  # the host's log says where


def delegate(relay: ControlRelay, params: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        try:
            return await relay.delegation(WHO, params)
        finally:
            await relay.aclose()

    return asyncio.run(go())


def test_delegation_requests_are_refused_by_a_control_without_broker(
    served: ServedControl,
) -> None:
    with pytest.raises(ChannelRefusal) as caught:
        delegate(relay_to(served), {"tool": "twilio.send_sms"})
    assert caught.value.code == wire.REFUSED
    assert caught.value.data == {"status": 503, "problem": "no_broker"}
    assert "no broker" in caught.value.message


def test_delegations_and_executed_calls_through_controls_broker(tmp_path: Path) -> None:
    broker = FakeBroker()
    served = ServedControl(tmp_path, broker)
    try:
        only_ana = {"recipients": ["+13105550123"]}
        ask = {"tool": "twilio.send_sms", "ttl_s": 60, "constraints": only_ana}
        minted = delegate(relay_to(served), ask)
        assert minted["token"] == "dlg-token" and minted["expires_at"] == "2026-03-03T17:05:00Z"
        (request,) = broker.minted
        assert request["tools"] == ["twilio.send_sms"] and request["recipients"] == ["+13105550123"]
        assert (request["agent"], request["sandbox"], request["ttl_s"]) == (
            "receptionist-1",
            "sbx-1",
            60,
        )
        sms = {"to": "+13105550123", "body": "See you at 10"}
        params = {"tool": "twilio.send_sms", "args": sms, "delegation": minted["token"]}
        relay = relay_to(served)

        async def go(p: dict[str, Any]) -> dict[str, Any]:
            return await relay.call(WHO, p)

        sent = asyncio.run(go(params))
        assert sent["verdict"] == "allow" and sent["result"] == {"sid": "SM1", "status": "queued"}
        assert broker.executed == [("receptionist-1", "sbx-1", sent["call_id"], "dlg-token")]
        with pytest.raises(ChannelRefusal) as caught:
            asyncio.run(go({**params, "args": {**sms, "body": "fail"}}))
        assert caught.value.code == wire.REFUSED
        assert caught.value.message == "allowed, but it failed: blocked"
        assert caught.value.data["execution"]["status"] == "failed"
        assert "action.executed" in served.kinds() and "action.failed" in served.kinds()
    finally:
        served.close()


def test_sandbox_events_reach_the_audit_chain(served: ServedControl) -> None:
    relay = relay_to(served)

    async def go() -> None:
        try:
            await relay.sandbox_event(WHO, "sandbox.started", "bwrap", IsolationLevel.NAMESPACES)
            await relay.sandbox_event(WHO, "sandbox.stopped", "bwrap", IsolationLevel.NAMESPACES,
                                      exit_code=1, reason="crashed (exit 1)")  # fmt: skip
        finally:
            await relay.aclose()

    asyncio.run(go())
    assert served.kinds() == ["sandbox.started", "sandbox.stopped"]
    entries = served.chain.store.entries(TENANT, 0, 2)
    started, stopped = (parse_entry(e.leaf).model_dump() for e in entries)
    assert started["data"]["sandbox_id"] == "sbx-1" and started["data"]["isolation"] == "namespaces"
    assert started["data"]["agent"] == "receptionist-1" and started["actor"]["kind"] == "host"
    assert stopped["data"]["exit_code"] == 1 and stopped["data"]["reason"] == "crashed (exit 1)"


def test_explanations() -> None:
    assert explain({"verdict": "allow", "observed": ["quiet_hours"]}) == (
        "allowed (observed, not enforced: quiet_hours)"
    )
    assert explain({"verdict": "deny", "rules": ["slot_conflict"], "conflicts_with": ["c1"]}) == (
        "denied by rule slot_conflict; conflicts with c1"
    )


def test_a_relay_needs_exactly_one_way_to_control(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ControlRelay(tmp_path / "c.sock", url="https://control:8444")
    settings = load_settings(data_dir=tmp_path, host={"control_url": "https://ctl:8444"})
    assert ControlRelay.from_settings(settings).where == "https://ctl:8444"
    assert ControlRelay.from_settings(load_settings(data_dir=tmp_path)).where == str(
        tmp_path / "control" / "control.sock"
    )
