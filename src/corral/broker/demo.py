"""The broker at work for a sample business: what ``make demo`` shows after the audit day.

Bright Smile Dental connects its six accounts (the local provider sandboxes of
:mod:`corral.fakes`, in-process), its agents get delegations, and every catalog tool runs
through the broker's HTTP API with the control plane's approval of each call. Then the things
the broker refuses: a call without approval, a delegation presented from another sandbox, a
refund above the delegation's limit; a retry that is answered from the intent log instead of
acting twice; an expired access token refreshed (and its refresh token rotated) on the way.
Finally every answer is searched for every credential and token the sandboxes issued.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.broker.app import create_app
from corral.broker.approval import ApprovalSigner
from corral.broker.assembly import control_approval_signer, open_broker
from corral.broker.executor import Broker
from corral.broker.scrub import WINDOW
from corral.core.clock import SystemClock
from corral.core.settings import Settings
from corral.fakes import Fake, FakeTransport, create_fakes, fake_endpoints

TENANT = "brightsmile"
AGENTS = {
    "receptionist-1": ["twilio.send_sms", "google_calendar.*", "calendly.*"],
    "billing-1": ["stripe.*", "quickbooks.create_invoice"],
    "follow-up-1": ["ghl.*"],
}


@dataclass
class Step:
    """One request to the broker and what it answered."""

    agent: str
    tool: str
    what: str
    http_status: int
    outcome: str
    detail: str
    broker_ms: float | None = None


@dataclass
class BrokerDemo:
    steps: list[Step] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    secrets_checked: int = 0
    bytes_scanned: int = 0
    leaks: list[str] = field(default_factory=list)


class _Run:
    def __init__(self, broker: Broker, control: ApprovalSigner, fakes: dict[str, Fake]) -> None:
        self.broker, self.control, self.fakes = broker, control, fakes
        self.transport = httpx.ASGITransport(app=create_app(broker))
        self.report = BrokerDemo()
        self.answers: list[str] = []
        self.tokens = {
            agent: broker.mint(tenant=TENANT, agent=agent, sandbox=f"sbx-{agent}", tools=tools,
                               ttl_s=300, max_amount={"amount": 20000, "currency": "usd"})[0].token
            for agent, tools in AGENTS.items()
        }  # fmt: skip
        self.keys = 0

    async def call(
        self, agent: str, tool: str, args: dict[str, Any], what: str, *,
        sandbox: str | None = None, approve: bool = True, key: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self.keys += 1
        call = {"tenant": TENANT, "agent": agent, "sandbox": sandbox or f"sbx-{agent}",
                "tool": tool, "args": args, "idempotency_key": key or f"demo-call-{self.keys:04d}",
                "connection_id": None, "country": "US"}  # fmt: skip
        approval = (
            self.control.approve(call, approval_id=f"apv-{self.keys}", clock=SystemClock())
            if approve
            else "(none)"
        )
        body = {"delegation": self.tokens[agent], "approval": approval, "call": call}
        async with httpx.AsyncClient(transport=self.transport, base_url="http://broker") as http:
            response = await http.post("/execute", json=body)
        self.answers.append(response.text)
        answer: dict[str, Any] = response.json()
        if response.status_code == 200:
            self.report.events += answer["events"]
            detail = _summary(answer["result"]) if answer["result"] else answer["error"]["message"]
            timing = response.headers.get("server-timing", "")
            broker_ms = float(timing.split("broker;dur=")[1].split(",")[0]) if timing else None
            step = Step(agent, tool, what, 200, answer["status"], detail, broker_ms)
            if answer["replayed"]:
                step.outcome += " (replayed)"
        else:
            step = Step(agent, tool, what, response.status_code, "refused", answer["detail"])
        self.report.steps.append(step)
        return answer


def _summary(result: dict[str, Any]) -> str:
    shown = {k: v for k, v in result.items() if isinstance(v, str | int) and k != "status"}
    return ", ".join(f"{k}={v}" for k, v in list(shown.items())[:3]) or "ok"


async def _day(run: _Run, fakes: Any, fields: dict[str, dict[str, str]]) -> None:
    day = "2027-03-04T"
    contact = fakes["ghl"].add_contact(fields["ghl"]["location_id"], phone="+13105550123")
    calendar = fakes["ghl"].add_calendar(fields["ghl"]["location_id"])
    event_type = fakes["calendly"].add_event_type(fields["calendly"], duration=30)
    paid = fakes["stripe"].add_paid_payment_intent(fields["stripe"]["api_key"], 12000, "usd")
    customer = fakes["quickbooks"].add_customer(fields["quickbooks"]["realm_id"], "Ana Ruiz")
    r = "receptionist-1"
    slot = {"start": f"{day}10:00:00-08:00", "end": f"{day}10:30:00-08:00"}
    await run.call(r, "twilio.send_sms", {"to": "(310) 555-0123",
                   "body": "Hi Ana, your cleaning is confirmed for Thursday at 10:00."},
                   "text a patient (national format)")  # fmt: skip
    booked = await run.call(r, "google_calendar.insert_event",
                            {"calendar_id": "primary", "summary": "Cleaning: Ana Ruiz", **slot},
                            "book Dr Lee's calendar")  # fmt: skip
    await run.call(r, "google_calendar.list_events",
                   {"calendar_id": "primary", "time_min": slot["start"], "time_max": slot["end"]},
                   "check the calendar")  # fmt: skip
    await run.call(r, "google_calendar.delete_event",
                   {"calendar_id": "primary", "event_id": booked["result"]["event_id"]},
                   "cancel that booking")  # fmt: skip
    invitee = {"name": "Bo Chen", "email": "bo@example.com", "timezone": "America/Los_Angeles"}
    meeting = await run.call(r, "calendly.book",
                             {"event_type": event_type, "start_time": slot["start"],
                              "end_time": slot["end"], "invitee": invitee},
                             "book a Calendly consult")  # fmt: skip
    await run.call(r, "calendly.cancel_event",
                   {"event_uuid": meeting["result"]["event_id"], "reason": "patient asked"},
                   "cancel the consult")  # fmt: skip
    b = "billing-1"
    await run.call(b, "stripe.create_payment_intent",
                   {"amount": 8000, "currency": "usd", "description": "Filling"},
                   "charge for a filling")  # fmt: skip
    refund = {"payment_intent": paid, "amount": 5000, "currency": "usd",
              "reason": "requested_by_customer"}  # fmt: skip
    await run.call(b, "stripe.create_refund", refund, "refund part of a visit", key="demo-refund-1")
    await run.call(b, "stripe.create_refund", refund, "the same refund, retried after a timeout",
                   key="demo-refund-1")  # fmt: skip
    await run.call(b, "quickbooks.create_invoice",
                   {"customer_id": customer, "lines": [{"amount": "120.00",
                    "description": "Cleaning"}, {"amount": "35.50", "description": "X-ray"}]},
                   "invoice the visit")  # fmt: skip
    f = "follow-up-1"
    await run.call(f, "ghl.upsert_contact", {"phone": "+13105550123", "first_name": "Ana"},
                   "save the patient's contact")  # fmt: skip
    await run.call(f, "ghl.send_message", {"contact_id": contact, "type": "SMS",
                   "message": "How was your visit?"}, "follow up")  # fmt: skip
    await run.call(f, "ghl.book_appointment", {"calendar_id": calendar, "contact_id": contact,
                   "start": f"{day}18:00:00Z", "end": f"{day}18:30:00Z"},
                   "book a check-up")  # fmt: skip
    fakes["ghl"].expire_access_tokens()
    await run.call(f, "ghl.send_message", {"contact_id": contact, "type": "SMS",
                   "message": "Reminder: check-up tomorrow."},
                   "follow up again (access token expired)")  # fmt: skip
    # What the broker refuses, with nothing sent to any provider:
    await run.call(r, "twilio.send_sms", {"to": "+13105550123", "body": "no approval"},
                   "a call control did not approve", approve=False)  # fmt: skip
    await run.call(r, "twilio.send_sms", {"to": "+13105550123", "body": "stolen"},
                   "the receptionist's delegation from another sandbox",
                   sandbox="sbx-follow-up-1")  # fmt: skip
    await run.call(b, "stripe.create_refund",
                   {"payment_intent": paid, "amount": 50000, "currency": "usd"},
                   "a refund above the delegation's $200.00 limit")  # fmt: skip
    await run.call(f, "twilio.send_sms", {"to": "+13105550123", "body": "not mine"},
                   "a tool outside the follow-up agent's delegation")  # fmt: skip


def _scan(run: _Run, fields: dict[str, dict[str, str]], fakes: dict[str, Fake]) -> None:
    secrets = {v for provider in fields.values() for v in provider.values() if len(v) >= WINDOW}
    for fake in fakes.values():
        authority = getattr(fake, "oauth", None)
        if authority is not None:
            secrets |= set(authority.issued())
    text = "\n".join(run.answers)
    report = run.report
    report.secrets_checked, report.bytes_scanned = len(secrets), len(text.encode())
    report.leaks = sorted(s[:4] + "…" for s in secrets if s in text)


def run_broker_demo(data_dir: Path) -> BrokerDemo:
    """Run the demo in a fresh ``data_dir`` (wiped if a previous demo made it)."""
    if (data_dir / "broker" / "broker.db").exists():
        shutil.rmtree(data_dir)
    settings = Settings(data_dir=data_dir, deployment="brightsmile.example")
    control = control_approval_signer(settings)
    fakes = create_fakes()
    parts = open_broker(settings, transport=FakeTransport(fakes))
    fields = {name: fake.new_connection() for name, fake in fakes.items()}
    endpoints = fake_endpoints(fakes)
    for name in fakes:
        parts.broker.vault.connect(TENANT, f"{name}-1", name, dict(fields[name]),
                                   endpoints=endpoints[name])  # fmt: skip
    run = _Run(parts.broker, control, fakes)

    async def go() -> None:
        try:
            await _day(run, fakes, fields)
        finally:
            await parts.aclose()

    asyncio.run(go())
    _scan(run, fields, fakes)
    return run.report
