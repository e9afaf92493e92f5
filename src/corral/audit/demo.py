"""A sample business's day in the audit chain: what ``make demo`` shows.

Bright Smile Dental (Los Angeles) runs a receptionist, a booking agent, a billing agent and a
follow-up agent. Their day, as audit entries: sandboxes start, credentials connect, agents ask
for delegations and call tools, the supervisor allows, defers, denies and escalates, the owner
approves a refund, and a patient's data-deletion request erases one message's details.

Everything is deterministic: an injected clock, sequential ids and seeded salts, so the same
demo gives the same log, the same checkpoints' roots and the same prose on any machine.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from corral.audit.chain import open_chain
from corral.audit.entries import (
    ActionExecuted,
    ActionExecutedData,
    ActionFailed,
    ActionFailedData,
    ActionRequested,
    ActionRequestedData,
    ActionVerdict,
    ActionVerdictData,
    Actor,
    CredentialConnected,
    CredentialData,
    CredentialRotated,
    DelegationMinted,
    DelegationMintedData,
    KnownEntry,
    OperatorDecision,
    OperatorDecisionData,
    PersonalPayload,
    SandboxData,
    SandboxStarted,
    SandboxStopped,
    TemplateActivated,
    TemplateActivatedData,
    Verdict,
    seal,
    split_personal_args,
)
from corral.audit.prose import RENDERER_VERSION, RenderContext
from corral.audit.replay import prose_snapshot_path, render_log, save_prose
from corral.audit.verify import Report, verify_bundle
from corral.core.clock import ManualClock
from corral.core.errors import ConfigError
from corral.core.ids import SequentialIds
from corral.core.settings import Settings

__all__ = ["DEMO_START", "DEMO_TENANT", "demo_day"]

DEMO_TENANT = "brightsmile"
DEMO_START = datetime(2026, 3, 3, 15, 55, tzinfo=UTC)  # 7:55 AM in Los Angeles
OPTED_OUT = "+13105550100"
AGENTS = {
    "receptionist-1": "receptionist",
    "booking-1": "booking",
    "billing-1": "billing",
    "followup-1": "follow-up",
}


class _Day:
    """Builds the day's entries in order, with their personal payloads."""

    def __init__(self, seed: int) -> None:
        self.now = DEMO_START
        self.ids = SequentialIds()
        self.rng = random.Random(seed)  # noqa: S311 - salts for a reproducible demo, not secrets
        self.out: list[tuple[KnownEntry, PersonalPayload | None]] = []

    def at(self, minutes: float) -> None:
        self.now = DEMO_START + timedelta(minutes=minutes)

    def add(self, entry: KnownEntry, personal: dict[str, Any] | None = None) -> None:
        sealed, payload = seal(entry, personal, salt=self.rng.randbytes(32))
        self.out.append((sealed, payload))

    def base(self, actor: Actor) -> dict[str, Any]:
        return {"id": self.ids.new("ent"), "tenant": DEMO_TENANT, "at": self.now, "actor": actor}

    def call(
        self,
        agent: str,
        tool: str,
        args: dict[str, Any],
        verdict: Verdict,
        *,
        rules: list[str] | None = None,
        conflicts: list[str] | None = None,
        waits_for: list[str] | None = None,
        not_before: datetime | None = None,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> str:
        call_id = self.ids.new("call")
        actor = Actor(kind="agent", id=agent, role=AGENTS[agent])
        public, personal = split_personal_args(args)
        self.add(
            ActionRequested(
                **self.base(actor),
                data=ActionRequestedData(call_id=call_id, tool=tool, args=public),
            ),
            {"args": personal} if personal else None,
        )
        self.add(
            ActionVerdict(
                **self.base(Actor(kind="supervisor", id="supervisor")),
                data=ActionVerdictData(
                    call_id=call_id,
                    tool=tool,
                    verdict=verdict,
                    rules=rules or [],
                    conflicts_with=conflicts or [],
                    waits_for=waits_for or [],
                    not_before=not_before,
                ),
            )
        )
        if verdict is Verdict.ALLOW:
            self.outcome(call_id, tool, result=result, error=error)
        return call_id

    def outcome(
        self,
        call_id: str,
        tool: str,
        *,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        broker = Actor(kind="broker", id="broker")
        if error is not None:
            data = ActionFailedData(call_id=call_id, tool=tool, error=error[0], message=error[1])
            self.add(ActionFailed(**self.base(broker), data=data))
        else:
            executed = ActionExecutedData(
                call_id=call_id, tool=tool, status="succeeded", result=result or {}
            )
            self.add(ActionExecuted(**self.base(broker), data=executed))


def demo_day(seed: int = 7) -> Iterator[tuple[KnownEntry, PersonalPayload | None]]:
    """The sample business's day, in order: (entry, personal payload or None)."""
    day = _Day(seed)
    host, system = Actor(kind="host", id="host-1"), Actor(kind="operator", id="owner")
    lee = "lee@brightsmile.example"

    day.add(
        TemplateActivated(
            **day.base(system),
            data=TemplateActivatedData(
                activation_id="act-1",
                template="dental-front-desk",
                version="1.4.2",
                content_hash="sha256:9c1b6f0e5a1d7c3b",
            ),
        )
    )
    for provider, conn in [("twilio", "conn-twilio"), ("google_calendar", "conn-gcal"),
                           ("stripe", "conn-stripe")]:  # fmt: skip
        day.add(
            CredentialConnected(
                **day.base(system), data=CredentialData(connection_id=conn, provider=provider)
            )
        )
    for n, agent in enumerate(AGENTS):
        day.at(1 + n * 0.1)
        day.add(
            SandboxStarted(
                **day.base(host),
                data=SandboxData(sandbox_id=f"sbx-{n + 1}", agent=agent, backend="gvisor"),
            )
        )
    day.at(5)
    day.add(
        DelegationMinted(
            **day.base(Actor(kind="broker", id="broker")),
            data=DelegationMintedData(
                delegation_id="dlg-1",
                agent="receptionist-1",
                sandbox="sbx-1",
                tools=["twilio.send_sms"],
                expires_at=day.now + timedelta(minutes=5),
                constraints={"max_uses": 5},
            ),
        )
    )
    day.at(19)
    confirm = {
        "to": "+13105550123",
        "body": "Hi Ana, your cleaning is confirmed for Wednesday at 10:00 AM.",
    }
    first = day.call(
        "receptionist-1", "twilio.send_sms", confirm, Verdict.ALLOW, result={"sid": "SM1001"}
    )
    day.at(21)
    day.call(
        "followup-1",
        "twilio.send_sms",
        confirm,
        Verdict.DENY,
        rules=["duplicate_message"],
        conflicts=[first],
    )
    day.at(64)
    slot = {
        "calendar_id": lee,
        "start": "2026-03-04T10:00:00-08:00",
        "end": "2026-03-04T10:30:00-08:00",
        "summary": "Cleaning — Ana Ruiz",
    }
    booked = day.call(
        "booking-1",
        "google_calendar.insert_event",
        slot,
        Verdict.ALLOW,
        result={"event_id": "evt-ana-0304"},
    )
    day.at(64.02)
    overlap = dict(
        slot,
        start="2026-03-04T10:15:00-08:00",
        end="2026-03-04T10:45:00-08:00",
        summary="Filling — Bo Chen",
    )
    day.call(
        "receptionist-1",
        "google_calendar.insert_event",
        overlap,
        Verdict.DENY,
        rules=["slot_conflict"],
        conflicts=[booked],
    )
    day.at(125)
    day.call(
        "billing-1",
        "stripe.create_refund",
        {"payment_intent": "pi_3Pq", "amount": 4500, "currency": "usd", "reason": "duplicate"},
        Verdict.ALLOW,
        result={"refund_id": "re_1001"},
    )
    day.at(126)
    big = day.call(
        "billing-1",
        "stripe.create_refund",
        {"payment_intent": "pi_7Zx", "amount": 32000, "currency": "usd"},
        Verdict.ESCALATE,
        rules=["refund_above_threshold"],
    )
    day.at(151)
    day.add(
        OperatorDecision(
            **day.base(system),
            data=OperatorDecisionData(call_id=big, escalation_id="esc-1", decision="approve"),
        )
    )
    day.outcome(big, "stripe.create_refund", result={"refund_id": "re_1002"})
    day.at(200)
    day.call(
        "billing-1",
        "quickbooks.create_invoice",
        {"customer_id": "58", "lines": [{"amount": "180.00", "description": "Crown, part 1"}]},
        Verdict.ALLOW,
        error=("provider_rejected", "QuickBooks said the customer is inactive"),
    )
    day.at(240)
    day.add(
        CredentialRotated(
            **day.base(Actor(kind="broker", id="broker")),
            data=CredentialData(
                connection_id="conn-gcal", provider="google_calendar", reason="token refreshed"
            ),
        )
    )
    day.at(13 * 60 + 10)  # 9:05 PM: quiet hours
    day.call(
        "followup-1",
        "twilio.send_sms",
        {"to": "+13105550188", "body": "How did your visit go today? Reply 1-5."},
        Verdict.DEFER,
        rules=["quiet_hours"],
        not_before=datetime(2026, 3, 4, 16, 0, tzinfo=UTC),
    )
    day.at(13 * 60 + 12)
    day.call(
        "followup-1",
        "twilio.send_sms",
        {"to": OPTED_OUT, "body": "Don't forget to floss!"},
        Verdict.DENY,
        rules=["opted_out"],
    )
    day.at(13 * 60 + 30)
    for n, agent in enumerate(AGENTS):
        day.add(
            SandboxStopped(
                **day.base(host),
                data=SandboxData(
                    sandbox_id=f"sbx-{n + 1}", agent=agent, backend="gvisor", reason="end of day"
                ),
            )
        )
    yield from day.out


@dataclass
class DemoResult:
    data_dir: Path
    bundle: Path
    lines: list[str]
    report: Report
    erased_seq: int


_MARKER = ".corral-demo"


def _fresh_dir(data_dir: Path) -> None:
    """Start from an empty directory; only a previous demo's directory is wiped."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / _MARKER).is_file():
            raise ConfigError(f"{data_dir} is not empty and not a corral demo directory")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / _MARKER).write_text("made by corral audit demo; wiped by the next demo\n")


def run_demo(
    data_dir: Path,
    *,
    locale: str = "en",
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Log the sample day, anchor it, honour a deletion request, render, export and verify."""
    _fresh_dir(data_dir)
    day = list(demo_day())
    clock = ManualClock(DEMO_START)
    settings = Settings(data_dir=data_dir)
    ctx = RenderContext(timezone="America/Los_Angeles", locale=locale, country="US")
    erased_seq = -1
    with open_chain(settings, clock) as chain:
        for n, (entry, payload) in enumerate(day):
            clock.set(max(entry.at, clock.now()))
            seq = chain.sequencer.append(DEMO_TENANT, entry, payload)
            if payload is not None and payload.data.get("args", {}).get("to") == OPTED_OUT:
                erased_seq = seq
            if n == len(day) // 2:  # a midday anchor, so the bundle links two anchors
                chain.sequencer.checkpoint(DEMO_TENANT)
                chain.anchorer.anchor_now()
            if progress is not None:
                progress(n + 1, len(day))
        # The patient who opted out asks for their data to be deleted.
        chain.store.erase_personal(DEMO_TENANT, erased_seq)
        bundle = data_dir / "bundle"
        chain.export(DEMO_TENANT, bundle, renderer_version=RENDERER_VERSION)
        lines = render_log(chain.store, DEMO_TENANT, ctx)
        save_prose(
            prose_snapshot_path(data_dir, DEMO_TENANT, ctx),
            ctx,
            chain.store.log_size(DEMO_TENANT),
            lines,
        )
    report = verify_bundle(bundle)
    return DemoResult(data_dir, bundle, lines, report, erased_seq)
