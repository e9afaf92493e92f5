"""Control executes what it allowed through the real broker (DESIGN.md, "One tool call", step 4).

A whole broker (its real app, vault and connectors) against the provider fakes, in-process;
control with a real audit chain. An allowed call with a delegation runs at once; a deferred or
escalated one runs when it is allowed; a denied one never runs; what the broker refuses is a
``failed`` outcome naming its reason; delegations are minted through control and recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from corral.audit.chain import AuditChain, open_chain
from corral.audit.entries import parse_entry
from corral.broker.client import BrokerClient
from corral.core.ids import SequentialIds
from corral.core.settings import load_settings
from corral.supervisor.app import create_app
from corral.supervisor.dispatch import Dispatcher
from corral.supervisor.policy import load_policy
from corral.supervisor.service import Control
from corral.supervisor.store import LedgerStore
from tests.broker._world import TENANT, World, build_world

T = TypeVar("T")
POLICY = {
    "timezone": "America/Los_Angeles",
    "refunds": {"escalate_above": {"amount": 5000, "currency": "usd"}},
}
PATIENT = "+13105550123"


class Stack:
    """Control (audit chain, ledger, dispatcher) in front of a whole broker and the fakes."""

    def __init__(self, tmp: Path) -> None:
        self.world: World = build_world(tmp / "broker")
        self.clock = self.world.clock
        self.chain: AuditChain = open_chain(load_settings(data_dir=tmp / "audit"), self.clock)
        self.store = LedgerStore.from_url(f"sqlite:///{tmp / 'control.db'}")
        self.store.create_schema()
        broker = BrokerClient(transport=httpx.ASGITransport(app=self.world.app))
        self.control = Control(
            self.store, self.clock, SequentialIds(), sequencer=self.chain.sequencer,
            policies={TENANT: load_policy(POLICY)},
            dispatcher=Dispatcher(broker, self.world.control, self.clock),
        )  # fmt: skip
        self.app = create_app(self.control, reconsider_every_s=3600)
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
            response: httpx.Response = await client.request(method, path, json=body)
            return response

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.run(self._request(method, path, body))

    def delegation(self, tools: list[str], sandbox: str = "sbx-1", **kw: Any) -> str:
        body = {"tenant": TENANT, "agent": "agent-1", "sandbox": sandbox,
                "request_id": f"req-{len(tools)}-{sandbox}", "tools": tools, **kw}  # fmt: skip
        response = self.request("POST", "/delegations", body)
        assert response.status_code == 201, response.text
        token: str = response.json()["delegation"]
        return token

    def call(self, call_id: str, tool: str, args: dict[str, Any], token: str | None,
             sandbox: str = "sbx-1") -> dict[str, Any]:  # fmt: skip
        body = {"tenant": TENANT, "agent": "agent-1", "sandbox": sandbox, "call_id": call_id,
                "tool": tool, "args": args, "delegation": token}  # fmt: skip
        response = self.request("POST", "/calls", body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def kinds(self) -> list[str]:
        store = self.chain.store
        return [parse_entry(e.leaf).kind for e in store.entries(TENANT, 0, store.log_size(TENANT))]

    def texts_sent(self) -> int:
        fake: Any = self.world.fakes["twilio"]
        return sum(1 for x in fake.exchanges if x.method == "POST")

    def refunds(self) -> int:
        fake: Any = self.world.fakes["stripe"]
        return len(fake.refunds(self.world.fields["stripe"]["api_key"]))

    def close(self) -> None:
        self.loop.close()
        self.chain.close()
        self.store.close()
        self.world.close()


@pytest.fixture(name="stack")
def stack_fixture(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.close()


def test_an_allowed_call_runs_through_the_broker_and_its_outcome_is_recorded(
    stack: Stack,
) -> None:
    token = stack.delegation(["twilio.send_sms"])
    assert stack.kinds() == ["delegation.minted"]
    answer = stack.call("c1", "twilio.send_sms", {"to": PATIENT, "body": "See you at 10"}, token)
    assert answer["verdict"] == "allow"
    assert answer["execution"]["status"] == "succeeded"
    assert answer["execution"]["result"]["message_sid"].startswith("SM")
    assert stack.texts_sent() == 1
    assert stack.kinds()[1:] == ["action.requested", "action.verdict", "action.executed"]


def test_a_denied_call_never_reaches_the_broker(stack: Stack) -> None:
    token = stack.delegation(["twilio.send_sms"])
    body = {"to": PATIENT, "body": "Your cleaning is confirmed"}
    assert stack.call("c1", "twilio.send_sms", body, token)["execution"]["status"] == "succeeded"
    again = stack.call("c2", "twilio.send_sms", body, token)  # the same text again: duplicate
    assert again["verdict"] == "deny" and "execution" not in again
    assert stack.texts_sent() == 1


def test_a_call_the_broker_refuses_is_failed_with_its_reason(stack: Stack) -> None:
    token = stack.delegation(["twilio.send_sms"], sandbox="sbx-1")
    answer = stack.call("c1", "twilio.send_sms", {"to": PATIENT, "body": "Hi"}, token,
                        sandbox="sbx-2")  # fmt: skip
    assert answer["verdict"] == "allow"
    assert answer["execution"]["status"] == "failed"
    assert answer["execution"]["error"]["code"]  # the broker's problem code
    assert stack.texts_sent() == 0
    assert stack.kinds()[-1] == "action.failed"


def test_a_deferred_call_runs_when_quiet_hours_end(stack: Stack) -> None:
    stack.clock.set(datetime(2026, 3, 4, 15, 58, tzinfo=UTC))  # 07:58 in Los Angeles
    token = stack.delegation(["twilio.send_sms"], ttl_s=300)
    answer = stack.call("c1", "twilio.send_sms", {"to": PATIENT, "body": "Reminder"}, token)
    assert answer["verdict"] == "defer" and answer["rules"] == ["quiet_hours"]
    assert "execution" not in answer and stack.texts_sent() == 0
    stack.clock.advance(timedelta(seconds=60))  # 07:59: still quiet, nothing runs
    assert stack.run(stack.control.reconsider()) == 0 and stack.texts_sent() == 0
    stack.clock.advance(timedelta(seconds=61))  # 08:00:01: released, and run

    async def release_then_wait() -> dict[str, Any]:
        assert await stack.control.reconsider() == 1
        answer: dict[str, Any] = (await stack._request("GET", f"/calls/{TENANT}/c1?wait=5")).json()
        return answer

    released = stack.run(release_then_wait())
    assert released["verdict"] == "allow"
    assert released["execution"]["status"] == "succeeded"
    assert stack.texts_sent() == 1
    assert stack.kinds()[-2:] == ["action.verdict", "action.executed"]


def test_an_approved_escalation_runs_and_a_denied_one_does_not(stack: Stack) -> None:
    paid = stack.world.seeds["stripe_paid"]
    token = stack.delegation(["stripe.create_refund"],
                             max_amount={"amount": 20000, "currency": "usd"})  # fmt: skip
    refund = {"payment_intent": paid, "amount": 6000, "currency": "usd"}
    first = stack.call("r1", "stripe.create_refund", refund, token)
    assert first["verdict"] == "escalate"
    pending = stack.request("GET", f"/calls/{TENANT}/r1?wait=0.05").json()
    assert pending["verdict"] == "escalate" and "execution" not in pending

    async def approve_then_wait() -> dict[str, Any]:
        waiter = asyncio.ensure_future(stack._request("GET", f"/calls/{TENANT}/r1?wait=5"))
        await asyncio.sleep(0.05)
        decided = await stack._request("POST", f"/escalations/{TENANT}/r1/decision",
                                       {"decision": "approve", "operator": "owner"})  # fmt: skip
        assert decided.status_code == 200
        answer: dict[str, Any] = (await waiter).json()
        return answer

    approved = stack.run(approve_then_wait())
    assert approved["verdict"] == "allow" and approved["execution"]["status"] == "succeeded"
    assert stack.refunds() == 1
    assert stack.kinds()[-2:] == ["operator.decision", "action.executed"]

    second = stack.call("r2", "stripe.create_refund", {**refund, "amount": 5500}, token)
    assert second["verdict"] == "escalate"
    denied = stack.request("POST", f"/escalations/{TENANT}/r2/decision",
                           {"decision": "deny", "operator": "owner"})  # fmt: skip
    assert denied.status_code == 200
    final = stack.request("GET", f"/calls/{TENANT}/r2?wait=1").json()
    assert final["verdict"] == "deny" and "execution" not in final
    assert stack.refunds() == 1


def test_without_a_broker_delegations_are_refused_clearly(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.control.dispatcher = None
        body = {"tenant": TENANT, "agent": "a", "sandbox": "s", "request_id": "r",
                "tools": ["twilio.send_sms"]}  # fmt: skip
        response = stack.request("POST", "/delegations", body)
        assert response.status_code == 503 and "no broker" in response.json()["detail"]
    finally:
        stack.close()


def test_a_retried_call_id_gets_its_decision_again_and_runs_once(stack: Stack) -> None:
    token = stack.delegation(["twilio.send_sms"])
    body = {"to": PATIENT, "body": "See you at 10"}
    first = stack.call("c1", "twilio.send_sms", body, token)
    again = stack.call("c1", "twilio.send_sms", body, token)
    assert first["verdict"] == again["verdict"] == "allow"
    assert again["execution"] == first["execution"]
    assert stack.texts_sent() == 1
    assert stack.kinds().count("action.requested") == 1
    reused = stack.request("POST", "/calls", {
        "tenant": TENANT, "agent": "agent-1", "sandbox": "sbx-1", "call_id": "c1",
        "tool": "twilio.send_sms", "args": {"to": PATIENT, "body": "Another text"}})  # fmt: skip
    assert reused.status_code == 409 and "different call" in reused.json()["detail"]


def test_pruning_forgets_what_control_remembered_of_a_call(stack: Stack) -> None:
    token = stack.delegation(["twilio.send_sms"])
    stack.call("c1", "twilio.send_sms", {"to": PATIENT, "body": "See you at 10"}, token)
    assert (TENANT, "c1") in stack.control.executions and (TENANT, "c1") in stack.control.last
    stack.clock.advance(timedelta(hours=1))
    stack.control.prune()  # still within every rule's window: kept
    assert (TENANT, "c1") in stack.control.executions
    stack.clock.advance(timedelta(days=3))
    assert stack.control.prune() >= 1
    assert (TENANT, "c1") not in stack.control.executions
    assert (TENANT, "c1") not in stack.control.last
    deadline = time.monotonic() + 10  # the store forgets it too, on its writer thread
    while stack.control.store.load(TENANT) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stack.control.store.load(TENANT) == []


def test_each_decision_forgets_a_few_of_the_oldest_calls(stack: Stack) -> None:
    """No periodic walk of the whole ledger: deciding a call forgets old ones as it goes."""
    token = stack.delegation(["twilio.send_sms"])
    for n in range(3):
        stack.call(f"old-{n}", "twilio.send_sms", {"to": PATIENT, "body": f"Text {n}"}, token)
    stack.clock.advance(timedelta(days=3))
    token = stack.delegation(["twilio.send_sms"])
    stack.call("new-1", "twilio.send_sms", {"to": PATIENT, "body": "Later"}, token)
    ledger = stack.control.supervisor(TENANT).ledger
    assert list(ledger.calls) == ["old-2", "new-1"]  # two forgotten per decision
    assert (TENANT, "old-0") not in stack.control.last
    assert (TENANT, "old-1") not in stack.control.executions
    assert (TENANT, "old-2") in stack.control.last
