"""``corral control``'s supervisor service over its HTTP API, with a real audit chain and ledger.

Verdicts reach the audit chain before the answer; deferred calls are held and decided again
when what they wait for resolves, when ``not_before`` passes, or escalated on timeout;
escalations wait for the operator; a restart (a new process, or after SIGKILL) loses no live
call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.audit.chain import AuditChain, open_chain
from corral.audit.entries import parse_entry
from corral.core.clock import ManualClock
from corral.core.ids import SequentialIds
from corral.core.settings import load_settings
from corral.supervisor.app import create_app
from corral.supervisor.policy import load_policy
from corral.supervisor.service import Control
from corral.supervisor.store import LedgerStore

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)  # 09:00 in Los Angeles
TENANT = "brightsmile"
POLICY = {
    "timezone": "America/Los_Angeles",
    "refunds": {"escalate_above": {"amount": 20000, "currency": "usd"}},
}


def booking(start: str, end: str) -> dict[str, Any]:
    return {"calendar_id": "lee", "start": start, "end": end, "summary": "Cleaning"}


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = ManualClock(T0)
        self.chain: AuditChain = open_chain(load_settings(data_dir=tmp / "audit"), self.clock)
        self.store = LedgerStore.from_url(f"sqlite:///{tmp / 'control.db'}")
        self.store.create_schema()
        self.control = Control(
            self.store,
            self.clock,
            SequentialIds(),
            sequencer=self.chain.sequencer,
            policies={TENANT: load_policy(POLICY)},
            defer_timeout_s=300,
        )
        self.app = create_app(self.control, reconsider_every_s=3600)

    async def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
            return await client.request(method, path, json=body)

    def call(self, call_id: str, tool: str, args: dict[str, Any], agent: str = "agent-1") -> Any:
        body = {
            "tenant": TENANT,
            "agent": agent,
            "sandbox": "sbx-1",
            "call_id": call_id,
            "tool": tool,
            "args": args,
        }
        return asyncio.run(self.request("POST", "/calls", body)).json()

    def outcome(self, call_id: str, status: str, result: dict[str, Any] | None = None) -> int:
        response = asyncio.run(
            self.request(
                "POST", f"/calls/{TENANT}/{call_id}/outcome", {"status": status, "result": result}
            )
        )
        return response.status_code

    def kinds(self) -> list[str]:
        store = self.chain.store
        return [parse_entry(e.leaf).kind for e in store.entries(TENANT, 0, store.log_size(TENANT))]

    def close(self) -> None:
        self.chain.close()
        self.store.close()


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    try:
        yield world
    finally:
        world.close()


def test_a_verdict_is_in_the_audit_chain_before_the_answer(world: World) -> None:
    answer = world.call(
        "c1",
        "google_calendar.insert_event",
        booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00"),
    )
    assert answer["verdict"] == "allow"
    assert world.kinds() == ["action.requested", "action.verdict"]  # durable already
    assert world.outcome("c1", "succeeded", {"event_id": "e1"}) == 200
    assert world.kinds()[-1] == "action.executed"


def test_the_host_reports_sandbox_starts_and_stops_to_the_audit_chain(world: World) -> None:
    body = {"tenant": TENANT, "agent": "booking", "sandbox": "sbx-9",
            "kind": "sandbox.started", "backend": "bwrap", "isolation": "namespaces"}  # fmt: skip
    started = asyncio.run(world.request("POST", "/sandbox-events", body))
    assert started.status_code == 201 and started.json()["index"] == 0
    stopped = {**body, "kind": "sandbox.stopped", "exit_code": -9, "reason": "memory limit"}
    assert asyncio.run(world.request("POST", "/sandbox-events", stopped)).status_code == 201
    assert world.kinds() == ["sandbox.started", "sandbox.stopped"]
    store = world.chain.store
    last = parse_entry(store.entries(TENANT, 1, 2)[0].leaf)
    assert last.model_dump()["data"]["exit_code"] == -9
    forged = {**body, "kind": "action.verdict"}
    refused = asyncio.run(world.request("POST", "/sandbox-events", forged))
    assert refused.status_code == 400 and "kind" in refused.json()["detail"]
    assert len(world.kinds()) == 2  # a refused event records nothing


def test_a_deferred_call_is_decided_again_when_what_it_waits_for_fails(world: World) -> None:
    world.call(
        "c1",
        "google_calendar.insert_event",
        booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00"),
    )
    second = world.call(
        "c2",
        "google_calendar.insert_event",
        booking("2026-03-04T10:15:00-08:00", "2026-03-04T10:45:00-08:00"),
    )
    assert second["verdict"] == "defer" and second["waits_for"] == ["c1"]
    world.outcome("c1", "failed")  # a failed booking frees its slot
    now = asyncio.run(world.request("GET", f"/calls/{TENANT}/c2?wait=1")).json()
    assert now["verdict"] == "allow"
    assert world.kinds().count("action.verdict") == 3


def test_a_call_still_rightly_waiting_is_not_decided_again_each_second(world: World) -> None:
    """The periodic pass decides a waiting call again only once what it waits for has left
    the states that hold it; an unchanged decision records nothing."""
    world.call("c1", "google_calendar.insert_event",
               booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00"))  # fmt: skip
    world.call("c2", "google_calendar.insert_event",
               booking("2026-03-04T10:15:00-08:00", "2026-03-04T10:45:00-08:00"))  # fmt: skip
    before = world.kinds()
    for _ in range(5):
        assert asyncio.run(world.control.reconsider()) == 0
    assert world.kinds() == before  # c1 still in flight: c2 rightly waits, nothing recorded
    # c1 leaves "in flight" by a way that wakes nobody (as after a restart, or a reconciliation
    # recorded straight in the ledger): the periodic pass notices and decides c2 again.
    world.control.supervisor(TENANT).outcome("c1", "failed")
    assert asyncio.run(world.control.reconsider()) == 1
    assert world.control.last[(TENANT, "c2")].verdict.value == "allow"


def test_quiet_hours_release_at_not_before_and_a_long_defer_escalates(world: World) -> None:
    world.clock.set(datetime(2026, 3, 4, 5, 0, tzinfo=UTC))  # 21:00 in Los Angeles
    quiet = world.call("m1", "twilio.send_sms", {"to": "+13105550123", "body": "Reminder"})
    assert quiet["verdict"] == "defer" and quiet["rules"] == ["quiet_hours"]
    not_before = datetime.fromisoformat(quiet["not_before"])
    world.clock.set(not_before)
    asyncio.run(world.control.reconsider())
    assert asyncio.run(world.request("GET", f"/calls/{TENANT}/m1")).json()["verdict"] == "allow"
    world.call(
        "c1",
        "google_calendar.insert_event",
        booking("2026-03-05T10:00:00-08:00", "2026-03-05T10:30:00-08:00"),
    )
    held = world.call(
        "c2",
        "google_calendar.insert_event",
        booking("2026-03-05T10:00:00-08:00", "2026-03-05T10:30:00-08:00"),
    )
    assert held["verdict"] == "defer"
    world.clock.advance(timedelta(seconds=300))
    asyncio.run(world.control.reconsider())
    escalated = asyncio.run(world.request("GET", f"/calls/{TENANT}/c2")).json()
    assert escalated["verdict"] == "escalate" and "defer_timeout" in escalated["rules"]


def test_escalations_wait_for_the_operator(world: World) -> None:
    refund = {"payment_intent": "pi_1", "amount": 25000, "currency": "usd"}
    assert world.call("r1", "stripe.create_refund", refund)["verdict"] == "escalate"
    queue = asyncio.run(world.request("GET", f"/escalations?tenant={TENANT}")).json()
    assert [e["call_id"] for e in queue["escalations"]] == ["r1"]
    assert queue["escalations"][0]["rules"] == ["refund_above_threshold"]
    world.call(
        "r0",
        "stripe.create_payment_intent",
        {"amount": 9000, "currency": "usd", "customer": "cus_1"},
    )
    world.call(
        "r9",
        "stripe.create_payment_intent",
        {"amount": 9000, "currency": "usd", "customer": "cus_1"},
    )
    queue = asyncio.run(world.request("GET", f"/escalations?tenant={TENANT}")).json()
    charge = next(e for e in queue["escalations"] if e["call_id"] == "r9")
    assert charge["rules"] == ["duplicate_charge"]
    (other,) = charge["conflicting_calls"]
    assert other["call_id"] == "r0" and other["args"]["customer"] == "cus_1"
    assert other["status"] == "in_flight"
    approve = {"decision": "approve", "operator": "owner"}
    response = asyncio.run(world.request("POST", f"/escalations/{TENANT}/r1/decision", approve))
    assert response.status_code == 200
    again = asyncio.run(world.request("POST", f"/escalations/{TENANT}/r1/decision", approve))
    assert again.status_code == 409
    duplicate = world.call("r2", "stripe.create_refund", refund)  # r1 is live now
    assert duplicate["verdict"] == "deny" and duplicate["conflicts_with"] == ["r1"]
    assert "operator.decision" in world.kinds()


def test_bad_input_is_refused_naming_what_is_wrong(world: World) -> None:
    bad = asyncio.run(
        world.request(
            "PUT", f"/tenants/{TENANT}/policy", {"timezone": "Mars/Olympus", "colour": "red"}
        )
    )
    assert bad.status_code == 400 and "timezone" in bad.text and "colour" in bad.text
    missing = asyncio.run(world.request("POST", "/calls", {"tenant": TENANT}))
    assert missing.status_code == 400 and "call_id" in missing.json()["detail"]
    assert world.outcome("nope", "succeeded") == 404
    world.call("c1", "twilio.send_sms", {"to": "+13105550123", "body": "x"})
    assert world.outcome("c1", "exploded") == 400
    assert world.kinds().count("action.verdict") == 1  # nothing else was recorded


def test_a_new_control_restores_live_calls_from_the_store(world: World) -> None:
    world.call(
        "c1",
        "google_calendar.insert_event",
        booking("2026-03-04T10:00:00-08:00", "2026-03-04T10:30:00-08:00"),
    )
    world.outcome("c1", "succeeded", {"event_id": "e1"})
    fresh = Control(
        world.store, world.clock, SequentialIds(), policies={TENANT: load_policy(POLICY)}
    )
    assert fresh.restore() == 1
    decision = asyncio.run(
        fresh.call(
            TENANT,
            "agent-2",
            "c2",
            "google_calendar.insert_event",
            booking("2026-03-04T10:10:00-08:00", "2026-03-04T10:20:00-08:00"),
        )
    )
    assert decision.verdict.value == "deny" and decision.conflicts_with == ["c1"]


CHILD = """
import asyncio, sys
from datetime import datetime, UTC
from corral.core.clock import ManualClock
from corral.core.ids import SequentialIds
from corral.supervisor.policy import load_policy
from corral.supervisor.service import Control
from corral.supervisor.store import LedgerStore

store = LedgerStore.from_url(sys.argv[1]); store.create_schema()
control = Control(store, ManualClock(datetime(2026, 3, 3, 17, tzinfo=UTC)), SequentialIds(),
                  policies={"brightsmile": load_policy({"timezone": "America/Los_Angeles"})})
async def main():
    for n in range(10_000):
        start = f"2026-03-{4 + n // 8:02d}T{9 + n % 8:02d}:00:00-08:00"
        end = f"2026-03-{4 + n // 8:02d}T{9 + n % 8:02d}:30:00-08:00"
        d = await control.call("brightsmile", "a", f"c{n}", "google_calendar.insert_event",
                               {"calendar_id": "lee", "start": start, "end": end, "summary": "x"})
        print(f"c{n} {d.verdict.value} {start}", flush=True)
asyncio.run(main())
"""


def test_sigkill_loses_no_live_call(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    answered: list[list[str]] = []
    deadline = time.monotonic() + 60
    while len(answered) < 40:
        assert time.monotonic() < deadline and child.poll() is None
        answered.append(child.stdout.readline().split())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = LedgerStore.from_url(url)
    control = Control(
        store,
        ManualClock(T0),
        SequentialIds(),
        policies={TENANT: load_policy({"timezone": "America/Los_Angeles"})},
    )
    assert control.restore() >= len(answered)
    for n, (call_id, verdict, start) in enumerate(answered):
        assert verdict == "allow"
        end = start.replace(":00:00-08:00", ":30:00-08:00")
        again = asyncio.run(
            control.call(
                TENANT,
                "b",
                f"again-{n}",
                "google_calendar.insert_event",
                {"calendar_id": "lee", "start": start, "end": end, "summary": "y"},
            )
        )
        assert again.verdict.value == "defer" and call_id in again.waits_for
    store.close()


def test_corral_control_serve_answers_on_its_socket(tmp_path: Path) -> None:
    tenants = tmp_path / "control" / "tenants"
    tenants.mkdir(parents=True)
    (tenants / f"{TENANT}.yaml").write_text(
        "timezone: America/Los_Angeles\nopted_out: ['+13105550100']\n"
    )
    env = {**os.environ, "CORRAL_DATA_DIR": str(tmp_path), "CORRAL_DASHBOARD__ENABLED": "false"}
    child = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "control", "serve"], cwd=ROOT, env=env
    )
    socket = tmp_path / "control" / "control.sock"
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    try:
        assert socket.stat().st_mode & 0o777 == 0o600
        transport = httpx.HTTPTransport(uds=str(socket))
        with httpx.Client(transport=transport, base_url="http://control") as client:
            body = {
                "tenant": TENANT,
                "agent": "a",
                "sandbox": "s",
                "call_id": "c1",
                "tool": "twilio.send_sms",
                "args": {"to": "(310) 555-0100", "body": "hi"},
            }
            answer = client.post("/calls", json=body).json()
            assert answer["verdict"] == "deny" and answer["rules"] == ["opted_out"]
            assert client.get("/healthz").json()["tenants"] == 1
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == 0
    assert not socket.exists()
