"""Prose rendering of audit entries: goldens, personal payloads, determinism and properties.

Regenerate the goldens with ``CORRAL_UPDATE_GOLDEN=1 pytest tests/audit/test_prose.py`` and read
the diff: the files are what a business owner reads.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import time
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.audit import prose
from corral.audit._wording import WORDING
from corral.audit.entries import (
    ENTRY_KINDS,
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
    CredentialRevoked,
    CredentialRotated,
    Decision,
    DelegationMinted,
    DelegationMintedData,
    Entry,
    OperatorDecision,
    OperatorDecisionData,
    PersonalPayload,
    SandboxData,
    SandboxStarted,
    SandboxStopped,
    TemplateActivated,
    TemplateActivatedData,
    TemplateNotice,
    TemplateNoticeData,
    UnknownEntry,
    Verdict,
    seal,
    split_personal_args,
)
from corral.audit.prose import (
    ERASED,
    RENDERER_VERSION,
    Personal,
    ProseError,
    RenderContext,
    render_entry,
    render_timeline,
)
from corral.core.errors import AuditError

Status = Literal["succeeded", "unknown"]
GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).parents[2]
TENANT = "brightsmile"
SALT = bytes(32)
LA = "America/Los_Angeles"
CONTEXTS = {"en": RenderContext(LA, "en", "US"), "es": RenderContext(LA, "es", "US")}
FALLBACK = ("could not be shown", "no se pudieron mostrar")
UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

TOOLS = (  # TOOLS.md, version 1
    "twilio.send_sms",
    "ghl.send_message",
    "ghl.upsert_contact",
    "ghl.book_appointment",
    "google_calendar.insert_event",
    "google_calendar.delete_event",
    "google_calendar.list_events",
    "calendly.book",
    "calendly.cancel_event",
    "stripe.create_refund",
    "stripe.create_payment_intent",
    "quickbooks.create_invoice",
)
RULES = (  # SUPERVISOR.md, version 1
    "role",
    "opted_out",
    "quiet_hours",
    "duplicate_message",
    "recipient_daily_max",
    "slot_conflict",
    "duplicate_cancel",
    "duplicate_refund",
    "refund_above_threshold",
    "refund_daily_cap",
    "duplicate_charge",
    "duplicate_invoice",
    "unknown_outcome",
    "retry_storm",
    "unknown_tool",
    "invalid_arguments",
)

SUPERVISOR = Actor(kind="supervisor", id="supervisor")
BROKER = Actor(kind="broker", id="broker-1")
HOST = Actor(kind="host", id="host-1")
OWNER = Actor(kind="operator", id="ana@brightsmile.example")
SYSTEM = Actor(kind="system", id="corral")
R1 = Actor(kind="agent", id="receptionist-1", role="receptionist")
R2 = Actor(kind="agent", id="receptionist-2", role="receptionist")
BILLING = Actor(kind="agent", id="billing-1", role="billing")


def t(when: str) -> datetime:
    """``"03-03T17:14"`` -> 2026-03-03 17:14 UTC (the golden log is all in 2026)."""
    return datetime.fromisoformat(f"2026-{when}+00:00")


class Log:
    """Builds a log in order, with ids e01, e02, ... and the personal payload of each entry."""

    def __init__(self) -> None:
        self.items: list[tuple[Entry, Personal]] = []

    def add(self, cls: type[Any], at: str, actor: Actor, data: Any) -> None:
        entry = cls(
            id=f"e{len(self.items) + 1:02d}", tenant=TENANT, at=t(at), actor=actor, data=data
        )
        self.items.append((entry, None))

    def request(
        self,
        at: str,
        call: str,
        tool: str,
        args: dict[str, Any],
        actor: Actor = R1,
        erased: bool = False,
    ) -> None:
        public, personal = split_personal_args(args)
        self.add(
            ActionRequested, at, actor, ActionRequestedData(call_id=call, tool=tool, args=public)
        )
        entry = self.items[-1][0]
        assert isinstance(entry, ActionRequested)
        sealed, payload = seal(entry, {"args": personal} if personal else None, salt=SALT)
        self.items[-1] = (sealed, ERASED if erased else payload)

    def verdict(
        self, at: str, call: str, tool: str, verdict: Verdict, *rules: str, **kw: Any
    ) -> None:
        data = ActionVerdictData(call_id=call, tool=tool, verdict=verdict, rules=list(rules), **kw)
        self.add(ActionVerdict, at, SUPERVISOR, data)

    def executed(
        self, at: str, call: str, tool: str, status: Status = "succeeded", **result: Any
    ) -> None:
        data = ActionExecutedData(call_id=call, tool=tool, status=status, result=result)
        self.add(ActionExecuted, at, BROKER, data)

    def failed(self, at: str, call: str, tool: str, error: str, message: str = "") -> None:
        data = ActionFailedData(call_id=call, tool=tool, error=error, message=message)
        self.add(ActionFailed, at, BROKER, data)

    def decision(
        self, at: str, call: str, decision: Decision, escalation: str | None = None
    ) -> None:
        data = OperatorDecisionData(call_id=call, decision=decision, escalation_id=escalation)
        self.add(OperatorDecision, at, OWNER, data)

    def allowed(self, at: str, call: str, tool: str, args: dict[str, Any], **result: Any) -> None:
        """A request, its allow verdict and a succeeded outcome within a second."""
        self.request(at, call, tool, args)
        self.verdict(at + ":00.05", call, tool, Verdict.ALLOW)
        self.executed(at + ":01", call, tool, **result)

    def credential(
        self,
        cls: type[Any],
        at: str,
        actor: Actor,
        conn: str,
        provider: str,
        reason: str | None = None,
    ) -> None:
        self.add(
            cls, at, actor, CredentialData(connection_id=conn, provider=provider, reason=reason)
        )

    def sandbox(self, cls: type[Any], at: str, box: str, backend: str, **kw: Any) -> None:
        self.add(
            cls,
            at,
            HOST,
            SandboxData(sandbox_id=box, agent="receptionist-1", backend=backend, **kw),
        )


SMS, INSERT, REFUND = "twilio.send_sms", "google_calendar.insert_event", "stripe.create_refund"
INVOICE, CHARGE, GHL_MSG = (
    "quickbooks.create_invoice",
    "stripe.create_payment_intent",
    "ghl.send_message",
)
BOOK, CANCEL = "calendly.book", "calendly.cancel_event"
ANA, CONFIRM = "+15550101234", "Your cleaning is confirmed for Wednesday at 10:00 AM."
LEE = "lee@brightsmile.example"
LINES = [
    {"amount": "100.00", "description": "Cleaning"},
    {"amount": "50.00", "description": "X-ray"},
]
INVOICE_ARGS = {"customer_id": "42", "lines": LINES, "due_date": "2026-03-31"}
ALLOW, DENY, DEFER, ESCALATE = Verdict.ALLOW, Verdict.DENY, Verdict.DEFER, Verdict.ESCALATE


# fmt: off
def golden_log() -> list[tuple[Entry, Personal]]:
    """A dental clinic's week: every kind, verdict and tool, DST in Los Angeles both ways."""
    log = Log()
    log.credential(CredentialConnected, "03-02T16:00", OWNER, "conn_tw1", "twilio")
    log.credential(CredentialConnected, "03-02T16:05", OWNER, "conn_st1", "stripe")
    log.add(TemplateActivated, "03-02T16:10", OWNER, TemplateActivatedData(
        activation_id="act_1", template="dental-receptionist", version="1.2.0",
        content_hash="sha256:ab12"))
    log.sandbox(SandboxStarted, "03-03T17:00", "sbx_r1", "firecracker", isolation="microvm")
    log.add(DelegationMinted, "03-03T17:10", BROKER, DelegationMintedData(
        delegation_id="dlg_1", agent="receptionist-1", sandbox="sbx_r1",
        tools=[SMS, INSERT, "google_calendar.delete_event"], expires_at=t("03-03T17:15")))
    # The issue's example: a text, allowed, sent.
    log.allowed("03-03T17:14", "c1", SMS, {"to": ANA, "body": CONFIRM}, sid="SM1")
    log.allowed("03-03T17:20", "c2", INSERT, {
        "calendar_id": LEE, "start": "2026-03-04T10:00:00-08:00",
        "end": "2026-03-04T10:30:00-08:00", "summary": "Cleaning — Ana Ruiz",
        "attendees": ["ana.ruiz@example.com"]}, event_id="evt-1")
    log.request("03-03T17:21", "c3", INSERT, {
        "calendar_id": LEE, "start": "2026-03-04T10:15:00-08:00",
        "end": "2026-03-04T10:45:00-08:00", "summary": "Filling — Bo Chen"}, actor=R2)
    log.verdict("03-03T17:21", "c3", INSERT, DENY, "slot_conflict", conflicts_with=["c2"])
    log.request("03-03T17:30", "c4", SMS, {"to": ANA, "body": CONFIRM})
    log.verdict("03-03T17:30", "c4", SMS, DENY, "duplicate_message", conflicts_with=["c1"])
    log.request("03-03T17:40", "c5", SMS, {"to": "+15550100001", "body": "Happy birthday!"})
    log.verdict("03-03T17:40", "c5", SMS, DENY, "opted_out")
    log.allowed("03-03T18:00", "c6", SMS, {  # a number in another country
        "to": "+525512345678", "body": "Recordatorio: su cita es mañana a las 10:00."})
    log.request("03-03T19:00", "c7", REFUND, {"payment_intent": "pi_123", "amount": 2500,
                "currency": "usd", "reason": "requested_by_customer"}, actor=BILLING)
    log.verdict("03-03T19:00", "c7", REFUND, ALLOW)
    log.executed("03-03T19:00:02", "c7", REFUND, id="re_1")
    log.request("03-03T19:05", "c8", REFUND, {"payment_intent": "pi_456", "amount": 30000,
                "currency": "usd", "reason": "duplicate"}, actor=BILLING)
    log.verdict("03-03T19:05", "c8", REFUND, ESCALATE, "refund_above_threshold")
    log.request("03-03T19:30", "c9", REFUND, {"payment_intent": "pi_jp1", "amount": 5000,
                "currency": "jpy"}, actor=BILLING)
    log.verdict("03-03T19:30", "c9", REFUND, ALLOW)
    log.failed("03-03T19:30:01", "c9", REFUND, "charge_already_refunded",
               "Charge ch_9 has already been refunded.")
    log.request("03-03T20:00", "c10", INVOICE, INVOICE_ARGS, actor=BILLING)
    log.verdict("03-03T20:00", "c10", INVOICE, ALLOW)
    log.executed("03-03T20:00:30", "c10", INVOICE, status="unknown")
    log.request("03-03T20:01", "c11", INVOICE, INVOICE_ARGS, actor=BILLING)
    log.verdict("03-03T20:01", "c11", INVOICE, DEFER, "unknown_outcome",
                conflicts_with=["c10"], waits_for=["c10"])
    log.request("03-03T20:10", "c12", CHARGE, {"customer": "cus_9", "amount": 8000,
                "currency": "usd", "description": "Crown deposit"}, actor=BILLING)
    log.verdict("03-03T20:10", "c12", CHARGE, ESCALATE, "duplicate_charge", conflicts_with=["c0"])
    log.decision("03-03T21:02", "c8", Decision.APPROVE, "esc_1")
    log.executed("03-03T21:02:05", "c8", REFUND, id="re_2")
    log.decision("03-03T21:05", "c12", Decision.DENY, "esc_2")
    log.request("03-04T01:00", "c13", SMS, {"to": ANA, "body": "Your bill is ready."}, BILLING)
    log.verdict("03-04T01:00", "c13", SMS, DENY, "role")
    log.request("03-04T01:10", "c14", GHL_MSG, {"contact_id": "ct_7", "type": "Email",
                "message": "Your X-ray results are ready."})
    log.verdict("03-04T01:10", "c14", GHL_MSG, DENY, "recipient_daily_max",
                conflicts_with=["c90", "c91", "c92"])
    log.request("03-04T01:20", "c15", REFUND, {"payment_intent": "pi_456", "amount": 1000,
                "currency": "usd"}, actor=BILLING)
    log.verdict("03-04T01:20", "c15", REFUND, DENY, "retry_storm",
                conflicts_with=["c80", "c81", "c82"])
    log.request("03-04T01:30", "c16", "dentrix.update_chart", {"patient_id": "p-1"})
    log.verdict("03-04T01:30", "c16", "dentrix.update_chart", DENY, "unknown_tool")
    log.request("03-04T01:40", "c17", SMS, {"to": ANA})
    log.verdict("03-04T01:40", "c17", SMS, DENY, "invalid_arguments")
    # Quiet hours on Saturday night; the text goes out Sunday morning, after clocks spring forward.
    log.request("03-08T05:30", "c18", SMS, {"to": ANA, "body": "See you Monday at 3:00 PM."})
    log.verdict("03-08T05:30", "c18", SMS, DEFER, "quiet_hours", not_before=t("03-08T15:00"))
    log.sandbox(SandboxStopped, "03-08T09:59", "sbx_r1", "firecracker", reason="idle timeout",
                exit_code=0)
    log.sandbox(SandboxStarted, "03-08T10:01", "sbx_r2", "gvisor")
    log.verdict("03-08T15:00", "c18", SMS, ALLOW)
    log.executed("03-08T15:00:02", "c18", SMS, sid="SM2")
    log.request("03-08T15:30", "c19", BOOK, {
        "event_type": "https://api.calendly.com/event_types/ET1",
        "start_time": "2026-03-09T15:00:00-07:00", "end_time": "2026-03-09T15:30:00-07:00",
        "invitee": {"name": "Bo Chen", "email": "bo@example.com", "timezone": LA}})
    log.verdict("03-08T15:30", "c19", BOOK, ALLOW, observed=["slot_conflict"])
    log.executed("03-08T15:30:01", "c19", BOOK, event_id="EV123")
    log.allowed("03-08T16:00", "c20", CANCEL, {"event_uuid": "EV123", "reason": "Rescheduling"})
    log.request("03-08T16:01", "c21", CANCEL, {"event_uuid": "EV123"})
    log.verdict("03-08T16:01", "c21", CANCEL, DENY, "duplicate_cancel", conflicts_with=["c20"])
    log.allowed("03-08T16:05", "c22", "google_calendar.delete_event",
                {"calendar_id": LEE, "event_id": "evt-1"})
    log.allowed("03-08T16:10", "c23", "google_calendar.list_events", {"calendar_id": LEE,
                "time_min": "2026-03-09T08:00:00-07:00", "time_max": "2026-03-09T17:00:00-07:00"})
    log.allowed("03-08T16:20", "c24", "ghl.upsert_contact", {"first_name": "Ana",
                "last_name": "Ruiz", "phone": ANA, "email": "ana.ruiz@example.com"})
    log.request("03-08T16:30", "c25", "ghl.book_appointment", {
        "calendar_id": "cal_hyg", "contact_id": "ct_7", "start": "2026-03-09T15:15:00-07:00",
        "end": "2026-03-09T16:00:00-07:00", "title": "Hygiene visit"})
    log.verdict("03-08T16:30", "c25", "ghl.book_appointment", DEFER, "slot_conflict",
                conflicts_with=["c19"], waits_for=["c19"])
    log.request("03-08T17:00", "c26", SMS, {"to": "+15550107777", "body": "Call us."}, erased=True)
    log.verdict("03-08T17:00", "c26", SMS, ALLOW)
    log.executed("03-08T17:00:01", "c26", SMS, sid="SM3")
    log.request("03-08T17:10", "c27", REFUND, {"payment_intent": "pi_789", "amount": 60000,
                "currency": "usd"}, actor=BILLING)
    log.verdict("03-08T17:10", "c27", REFUND, ESCALATE, "refund_above_threshold",
                "refund_daily_cap", conflicts_with=["c7", "c8"])
    # Entries whose request is not in this list render on their own.
    log.verdict("03-09T15:00", "c98", GHL_MSG, DENY, "recipient_daily_max")
    log.executed("03-09T15:01", "c97", REFUND, status="unknown")
    log.failed("03-09T15:02", "c96", SMS, "invalid_number", "The 'To' number is not valid.")
    log.decision("03-09T15:03", "c95", Decision.DENY, "esc_9")
    log.executed("03-09T15:04", "c94", INSERT, event_id="evt-9")
    log.decision("03-09T16:00", "c27", Decision.APPROVE)
    log.executed("03-09T16:00:03", "c27", REFUND, id="re_3")
    log.credential(CredentialRotated, "03-09T17:00", BROKER, "conn_gc1", "google_calendar",
                   "access token refreshed")
    log.credential(CredentialRevoked, "03-09T17:05", OWNER, "conn_st1", "stripe",
                   "Switched to a new Stripe account")
    log.add(TemplateActivated, "03-09T17:10", SYSTEM, TemplateActivatedData(
        activation_id="act_2", template="dental-receptionist", version="1.2.1",
        content_hash="sha256:cd34", automatic=True))
    # Template maintenance: a coming sunset, one past, and a deprecation without a date.
    log.add(TemplateNotice, "03-09T17:15", SYSTEM, TemplateNoticeData(
        activation_id="act_1", template="dental-receptionist", version="1.2.0",
        notice="sunsetting", deprecated_at=t("03-01T00:00"), sunset_at=t("03-20T00:00"),
        replacement="2.0.0"))
    log.add(TemplateNotice, "03-09T17:16", SYSTEM, TemplateNoticeData(
        activation_id="act_3", template="dental-billing", version="0.9.0", notice="sunset",
        sunset_at=t("03-01T08:00")))
    log.add(TemplateNotice, "03-09T17:17", SYSTEM, TemplateNoticeData(
        activation_id="act_4", template="dental-follow-up", version="1.0.0",
        notice="deprecated", deprecated_at=t("03-05T00:00"), replacement="1.1.0"))
    log.items.append((UnknownEntry(v=2, kind="payroll.run", raw={
        "v": 2, "kind": "payroll.run", "id": "e90", "tenant": TENANT,
        "at": "2026-03-09T18:00:00.000000Z", "actor": {"kind": "system", "id": "corral"}}), None))
    log.items.append((UnknownEntry(v=1, kind="x.y", raw={"v": 1, "kind": "x.y"}), None))
    # Clocks fall back: 1:30 AM happens twice.
    log.add(DelegationMinted, "11-01T08:30", BROKER, DelegationMintedData(
        delegation_id="dlg_9", agent="receptionist-1", sandbox="sbx_r2", tools=[SMS],
        expires_at=t("11-01T08:35")))
    log.sandbox(SandboxStopped, "11-01T09:30", "sbx_r2", "gvisor", reason="maintenance",
                exit_code=137)
    return log.items
# fmt: on


def golden_text(language: str) -> str:
    ctx, items = CONTEXTS[language], golden_log()
    out = [f"# corral audit prose {RENDERER_VERSION}: {ctx.locale}, {ctx.timezone}, {ctx.country}"]
    out += ["", "# timeline"] + [line.text for line in render_timeline(items, ctx)]
    out += ["", "# one line per entry"] + [render_entry(e, p, ctx) for e, p in items]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("language", sorted(CONTEXTS))
def test_golden_timeline(language: str) -> None:
    path = GOLDEN / f"timeline.{language}.txt"
    text = golden_text(language)
    if os.environ.get("CORRAL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_golden_log_covers_every_kind_verdict_and_tool() -> None:
    items = golden_log()
    kinds = {e.kind for e, _ in items}
    assert set(ENTRY_KINDS) <= kinds and any(isinstance(e, UnknownEntry) for e, _ in items)
    verdicts = {e.data.verdict for e, _ in items if isinstance(e, ActionVerdict)}
    assert verdicts == set(Verdict)
    tools = {e.data.tool for e, _ in items if isinstance(e, ActionRequested)}
    assert set(TOOLS) <= tools
    assert any(p is ERASED for _, p in items)


@pytest.mark.parametrize("language", sorted(CONTEXTS))
def test_golden_lines_are_safe_and_never_the_fallback(language: str) -> None:
    for line in golden_text(language).splitlines():
        assert not any(phrase in line for phrase in FALLBACK)
        assert_clean(line)


def test_issue_example_renders_as_one_story() -> None:
    items = golden_log()
    story = [e for e, _ in items if getattr(getattr(e, "data", None), "call_id", None) == "c1"]
    assert len(story) == 3
    lines = render_timeline([(e, p) for e, p in items if e in story], CONTEXTS["en"])
    assert [line.entry_ids for line in lines] == [("e06", "e07", "e08")]
    assert lines[0].text == (
        "Tue, Mar 3, 9:14\u202fAM — The receptionist agent (receptionist-1) texted (555) 010-1234: "
        "“Your cleaning is confirmed for Wednesday at 10:00 AM.” Allowed; no conflicts. [call c1]"
    )


def test_doctests() -> None:
    assert doctest.testmod(prose).failed == 0


def test_public_names() -> None:
    assert set(prose.__all__) == {
        "ERASED",
        "RENDERER_VERSION",
        "Erased",
        "Line",
        "Personal",
        "ProseError",
        "RenderContext",
        "render_entry",
        "render_timeline",
    }
    assert all(hasattr(prose, name) for name in prose.__all__)
    assert RENDERER_VERSION == "2" and isinstance(RENDERER_VERSION, str)


# ---------------------------------------------------------------------------- wording


def _fields(template: str) -> set[str]:
    import string

    names = {n for _, n, _, _ in string.Formatter().parse(template) if n}
    return {"actor" if n == "actor_obj" else n for n in names}


def _variants(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def test_wording_tables_have_the_same_keys_and_placeholders() -> None:
    en, es = WORDING["en"], WORDING["es"]
    assert set(es) - set(en) == {k for k in es if k.endswith(".h1")}
    assert set(en) <= set(es)
    for key, value in en.items():
        theirs = _variants(es[key])
        assert len(_variants(value)) == len(theirs), key
        for mine, other in zip(_variants(value), theirs, strict=True):
            assert _fields(mine) == _fields(other), (key, mine, other)


@pytest.mark.parametrize("language", ["en", "es"])
def test_every_catalog_tool_and_rule_has_wording_that_never_needs_a_missing_fact(
    language: str,
) -> None:
    words = WORDING[language]
    for tool in (*TOOLS, "other"):
        for form in ("do", "did"):
            assert _fields(_variants(words[f"tool.{tool}.{form}"])[-1]) <= {"tool"}
    for rule in (*RULES, "other"):
        assert _fields(_variants(words[f"rule.{rule}"])[-1]) <= {"rule"}
    assert set(TOOLS) == prose._TOOLS and set(RULES) == prose._RULES


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_explained_in_both_languages(rule: str) -> None:
    log = Log()
    log.verdict("03-03T17:00", "c1", SMS, Verdict.DENY, rule, conflicts_with=["c0"])
    (entry, _), texts = log.items[0], set()
    for ctx in CONTEXTS.values():
        text = render_entry(entry, None, ctx)
        assert f"“{rule}”" not in text and f"«{rule}»" not in text  # explained, not named
        assert "c0" in text and "c1" in text
        texts.add(text)
    assert len(texts) == 2


def test_unknown_rule_and_tool_are_named_not_invented() -> None:
    log = Log()
    log.request("03-03T17:00", "c1", "acme.frobnicate", {"x": 1})
    log.verdict("03-03T17:00", "c1", "acme.frobnicate", Verdict.DENY, "new_rule")
    line = render_timeline(log.items, CONTEXTS["en"])[0].sentence
    assert line == (
        "The receptionist agent (receptionist-1) asked to use the tool “acme.frobnicate”. "
        "Denied: rule “new_rule”. [call c1]"
    )
    assert "«acme.frobnicate»" in render_timeline(log.items, CONTEXTS["es"])[0].sentence


# ------------------------------------------------------------------- personal payloads


def _sms(to: str = ANA, body: str = "See you at 10.") -> tuple[ActionRequested, PersonalPayload]:
    entry = ActionRequested(
        id="e1",
        tenant=TENANT,
        at=t("03-03T17:14"),
        actor=R1,
        data=ActionRequestedData(call_id="c1", tool=SMS),
    )
    sealed, payload = seal(entry, {"args": {"to": to, "body": body}}, salt=SALT)
    assert payload is not None
    return sealed, payload


def test_mismatched_payload_raises_a_clear_error() -> None:
    entry, _ = _sms()
    _, other = _sms(body="Something else")
    with pytest.raises(ProseError, match=r"does not match the commitment of entry 'e1'") as info:
        render_entry(entry, other, CONTEXTS["en"])
    assert info.value.entry_id == "e1"
    assert isinstance(info.value, AuditError) and isinstance(info.value, ValueError)
    with pytest.raises(ProseError, match="does not match"):
        render_timeline([(entry, other)], CONTEXTS["es"])


def test_payload_for_an_entry_without_commitment_raises() -> None:
    entry, payload = _sms()
    bare = entry.model_copy(update={"personal": None})
    with pytest.raises(ProseError, match="unverified personal data"):
        render_entry(bare, payload, CONTEXTS["en"])
    unknown = UnknownEntry(v=2, kind="x.y", raw={"id": "u1", "personal": "bogus"})
    with pytest.raises(ProseError, match="'u1'"):
        render_entry(unknown, payload, CONTEXTS["en"])


def test_payload_with_a_salt_of_another_entry_raises() -> None:
    entry, payload = _sms()
    other = PersonalPayload(salt=bytes(range(32)), data=payload.data)
    with pytest.raises(ProseError):
        render_entry(entry, other, CONTEXTS["en"])


def test_verified_payload_is_rendered() -> None:
    entry, payload = _sms()
    assert "(555) 010-1234: “See you at 10.”" in render_entry(entry, payload, CONTEXTS["en"])
    assert "(555) 010-1234: «See you at 10.» [acción c1]" in render_entry(
        entry, payload, CONTEXTS["es"]
    )


def test_erased_payload_is_said_neutrally_and_shows_nothing_personal() -> None:
    entry, _ = _sms()
    en, es = (render_entry(entry, ERASED, c) for c in (CONTEXTS["en"], CONTEXTS["es"]))
    assert en.endswith("asked to send a text [details erased on request]. [call c1]")
    assert es.endswith("pidió enviar un SMS [datos borrados a petición]. [acción c1]")
    for text in (en, es):
        assert "555" not in text and "See you" not in text


def test_absent_payload_renders_without_personal_details_and_without_claiming_erasure() -> None:
    entry, _ = _sms()
    text = render_entry(entry, None, CONTEXTS["en"])
    assert text.endswith("asked to send a text. [call c1]")
    plain = entry.model_copy(update={"personal": None})
    assert render_entry(plain, ERASED, CONTEXTS["en"]) == text  # nothing was there to erase


def test_erased_follow_up_is_marked_once_on_the_story() -> None:
    entry, payload = _sms()
    log = Log()
    log.verdict("03-03T17:14", "c1", SMS, Verdict.ALLOW)
    verdict = log.items[0][0]
    assert isinstance(verdict, ActionVerdict)
    sealed_verdict, _ = seal(verdict, {"note": "x"}, salt=SALT)
    for personal in (payload, ERASED):
        lines = render_timeline([(entry, personal), (sealed_verdict, ERASED)], CONTEXTS["en"])
        assert lines[0].sentence.count("[details erased on request]") == 1


# --------------------------------------------------------------------------- untrusted text


def test_control_and_bidi_characters_are_removed_and_bodies_quoted() -> None:
    evil = "Pay\u202e now\u0000\n\u2028 please\u200f\u2066 ok"
    entry, payload = _sms(body=evil)
    text = render_entry(entry, payload, CONTEXTS["en"])
    assert "“Pay now please ok”" in text
    assert_clean(text)
    # A lone surrogate can be neither sealed nor put in a str field, but public args may hold one.
    args = {"to": "+1555\ud8000101234", "body": evil + "\ud800"}
    data = ActionRequestedData(call_id="c1", tool=SMS, args=args)
    entry = ActionRequested(id="e2", tenant=TENANT, at=t("03-03T17:14"), actor=R1, data=data)
    text = render_entry(entry, None, CONTEXTS["es"])
    assert "enviar un SMS a (555) 010-1234: «Pay now please ok»." in text
    assert_clean(text)


def test_long_values_are_shortened() -> None:
    entry, payload = _sms(body="a" * 1000)
    text = render_entry(entry, payload, CONTEXTS["en"])
    assert "“" + "a" * 199 + "…”" in text


def test_template_braces_in_data_are_not_interpreted() -> None:
    entry, payload = _sms(body="{actor} {0} {body!r}")
    assert "“{actor} {0} {body!r}”" in render_entry(entry, payload, CONTEXTS["en"])


# ------------------------------------------------------------------------ time zones and phones


def test_phone_national_for_tenant_country_international_otherwise() -> None:
    entry, payload = _sms(to="+34612345678")
    assert "text +34 612 34 56 78:" in render_entry(entry, payload, CONTEXTS["en"])
    spain = RenderContext("Europe/Madrid", "es_ES", "ES")
    assert "enviar un SMS a 612 34 56 78:" in render_entry(entry, payload, spain)
    entry, payload = _sms(to="not a phone")
    assert "text not a phone:" in render_entry(entry, payload, CONTEXTS["en"])


def test_times_follow_the_tenant_zone_across_dst() -> None:
    log = Log()
    for at in (
        "03-08T09:59",
        "03-08T10:01",
        "11-01T08:30",
        "11-01T09:30",
    ):
        log.add(SandboxStarted, at, HOST, SandboxData(sandbox_id="s", agent="a", backend="b"))
    en = [line.when for line in render_timeline(log.items, CONTEXTS["en"])]
    assert en == [
        "Sun, Mar 8, 1:59\u202fAM",
        "Sun, Mar 8, 3:01\u202fAM",
        "Sun, Nov 1, 1:30\u202fAM PDT",
        "Sun, Nov 1, 1:30\u202fAM PST",
    ]
    es = [line.when for line in render_timeline(log.items, CONTEXTS["es"])]
    assert es[2:] == [
        "dom, 1 de noviembre, 1:30 (hora de verano del Pacífico)",
        "dom, 1 de noviembre, 1:30 (hora estándar del Pacífico)",
    ]
    tokyo = RenderContext("Asia/Tokyo", "en", "JP", with_year=True)
    assert render_timeline(log.items, tokyo)[0].when == "Sun, Mar 8, 2026, 6:59\u202fPM"


def test_time_outside_the_representable_range_renders_unknown() -> None:
    data = SandboxData(sandbox_id="s", agent="a", backend="b")
    at = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    entry = SandboxStarted(id="e1", tenant=TENANT, at=at, actor=HOST, data=data)
    tokyo = RenderContext("Asia/Tokyo", "en", "JP")
    assert render_entry(entry, None, tokyo).startswith("Unknown time — ")


def test_money_in_minor_units() -> None:
    text = golden_text("en")
    assert "refunded $25.00 on payment pi_123 (requested by the customer)" in text
    assert "refund ¥5,000 on payment pi_jp1" in text
    assert "reembolsar 5.000\xa0JPY del pago pi_jp1" in golden_text("es")


# ----------------------------------------------------------------------------- timeline


def test_follow_up_without_its_request_stands_alone_and_order_is_kept() -> None:
    log = Log()
    log.verdict("03-03T17:00", "c1", SMS, Verdict.ALLOW)
    log.request("03-03T17:01", "c1", SMS, {"to": ANA, "body": "Hi"})
    log.executed("03-03T17:02", "c1", SMS)
    lines = render_timeline(log.items, CONTEXTS["en"])
    assert [line.entry_ids for line in lines] == [("e01",), ("e02", "e03")]
    assert lines[0].sentence == (
        "The supervisor reviewed a request to send a text. Allowed; no conflicts. [call c1]"
    )
    assert lines[1].sentence.endswith(
        "texted (555) 010-1234: “Hi”. Done at 9:02\u202fAM. [call c1]"
    )
    assert lines[1].call_id == "c1" and lines[1].at == t("03-03T17:01")


def test_calls_of_other_tenants_are_not_grouped() -> None:
    log = Log()
    log.request("03-03T17:00", "c1", SMS, {"to": ANA, "body": "Hi"})
    log.verdict("03-03T17:00", "c1", SMS, Verdict.ALLOW)
    entry, personal = log.items[1]
    log.items[1] = (entry.model_copy(update={"tenant": "other"}), personal)
    assert len(render_timeline(log.items, CONTEXTS["en"])) == 2


def test_failed_outcome_keeps_the_request_in_the_asking_form() -> None:
    text = golden_text("en")
    assert (
        "The billing agent (billing-1) asked to refund ¥5,000 on payment pi_jp1. Allowed; no "
        "conflicts. Failed: charge_already_refunded (“Charge ch_9 has already been refunded.”). "
        "[call c9]"
    ) in text


# ------------------------------------------------------------------------- render context


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "time zone"),
        ({"timezone": "../etc/passwd"}, "time zone"),
        ({"locale": "xx_YY"}, "locale"),
        ({"locale": "fr"}, "no wording"),
        ({"country": "ZZ"}, "country"),
        ({"country": "us"}, "country"),
    ],
)
def test_render_context_refuses_what_it_cannot_use(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ProseError, match=message):
        RenderContext(**kwargs)  # type: ignore[arg-type]


def test_render_context_from_policy() -> None:
    assert RenderContext.from_policy({}) == RenderContext("UTC", "en", "US")
    policy = {"timezone": LA, "country": "MX", "quiet_hours": None}
    assert RenderContext.from_policy(policy, locale="es_MX") == RenderContext(LA, "es_MX", "MX")


# ---------------------------------------------------------------- determinism across hosts


def test_output_does_not_depend_on_tz_or_lang(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {language: golden_text(language) for language in CONTEXTS}
    try:
        for tz, lang in (
            ("Asia/Kolkata", "de_DE.UTF-8"),
            ("America/New_York", "es_ES.UTF-8"),
            ("UTC", "C"),
        ):
            monkeypatch.setenv("TZ", tz)
            monkeypatch.setenv("LANG", lang)
            monkeypatch.setenv("LC_ALL", lang)
            time.tzset()
            assert {language: golden_text(language) for language in CONTEXTS} == expected
    finally:
        monkeypatch.undo()
        time.tzset()


def test_output_does_not_depend_on_hash_seed_or_environment() -> None:
    script = (
        "import sys; from tests.audit.test_prose import golden_text; "
        "sys.stdout.buffer.write(golden_text(sys.argv[1]).encode())"
    )
    for seed, tz, lang in (
        ("1", "Pacific/Chatham", "ja_JP.UTF-8"),
        ("4242", "Europe/Madrid", "es_MX.UTF-8"),
    ):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TZ": tz, "LANG": lang, "LC_ALL": lang}
        for language in CONTEXTS:
            run = subprocess.run(
                [sys.executable, "-c", script, language],
                cwd=ROOT,
                env=env,
                capture_output=True,
                check=True,
            )
            assert run.stdout.decode() == golden_text(language)


# ---------------------------------------------------------------------------- properties


def assert_clean(text: str) -> None:
    bad = [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in UNSAFE]
    assert not bad, f"unsafe characters {bad} in {text!r}"


ANY_TEXT = st.text(min_size=1, max_size=24)  # every category but lone surrogates (pydantic refuses)
JSON_TEXT = st.text(max_size=24)
RAW_TEXT = st.text(st.characters(exclude_categories=()), max_size=24)  # lone surrogates too
NAMES = st.one_of(st.sampled_from(["c1", "c2", "r-1", "pi_123"]), ANY_TEXT)
INSTANTS = st.one_of(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.datetimes(timezones=st.just(UTC)),
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | JSON_TEXT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(JSON_TEXT, kids, max_size=3),
    max_leaves=8,
)
TIME_TEXT = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()), JSON_TEXT
)
PHONES = st.sampled_from(
    ["+15550101234", "+525512345678", "5550101234", "+34612345678", "+1", "١٢٣"]
)
ARG_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "to": PHONES | JSON_TEXT,
    "phone": PHONES | JSON,
    "body": JSON_TEXT | JSON,
    "message": JSON_TEXT,
    "type": st.sampled_from(["SMS", "Email"]) | JSON,
    "contact_id": RAW_TEXT,
    "calendar_id": RAW_TEXT,
    "event_id": RAW_TEXT,
    "event_uuid": RAW_TEXT,
    "payment_intent": RAW_TEXT,
    "customer": RAW_TEXT,
    "customer_id": JSON_TEXT | JSON,
    "first_name": JSON_TEXT,
    "last_name": JSON_TEXT,
    "email": JSON_TEXT,
    "title": JSON_TEXT,
    "summary": JSON_TEXT,
    "description": JSON_TEXT,
    "reason": st.sampled_from(["duplicate", "fraudulent", "requested_by_customer"]) | JSON_TEXT,
    "start": TIME_TEXT,
    "end": TIME_TEXT,
    "start_time": TIME_TEXT,
    "end_time": TIME_TEXT,
    "time_min": TIME_TEXT,
    "time_max": TIME_TEXT,
    "amount": st.integers() | JSON,
    "currency": st.sampled_from(["usd", "jpy", "kwd", "USD", "eur", "xyz", ""]) | JSON_TEXT,
    "attendees": st.lists(JSON_TEXT, max_size=5) | JSON,
    "invitee": st.fixed_dictionaries({}, optional={"name": JSON_TEXT, "email": JSON_TEXT}) | JSON,
    "event_type": RAW_TEXT,
    "lines": st.lists(
        st.fixed_dictionaries({"amount": st.decimals().map(str) | JSON_TEXT | JSON}), max_size=3
    )
    | JSON,
    "due_date": st.dates().map(str) | JSON_TEXT,
}
ARGS = st.fixed_dictionaries({}, optional=ARG_VALUES)
TOOL_NAMES = st.sampled_from(TOOLS) | NAMES
ACTORS = st.builds(
    Actor,
    kind=st.sampled_from(["agent", "operator", "broker", "host", "supervisor", "system"]),
    id=NAMES,
    role=st.none() | NAMES,
)


def _entry(cls: type[Any], data: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.builds(
        cls, id=NAMES, tenant=st.sampled_from(["t1", "t2"]), at=INSTANTS, actor=ACTORS, data=data
    )


CALLS = st.sampled_from(["c1", "c2"]) | NAMES
IDS = st.lists(NAMES, max_size=8)
CREDENTIAL = st.builds(
    CredentialData, connection_id=NAMES, provider=NAMES, reason=st.none() | ANY_TEXT
)
SANDBOX = st.builds(
    SandboxData,
    sandbox_id=NAMES,
    agent=NAMES,
    backend=NAMES,
    isolation=st.none() | NAMES,
    reason=st.none() | ANY_TEXT,
    exit_code=st.none() | st.integers(),
)
KNOWN = st.one_of(
    _entry(
        DelegationMinted,
        st.builds(
            DelegationMintedData,
            delegation_id=NAMES,
            agent=NAMES,
            sandbox=NAMES,
            tools=IDS,
            expires_at=INSTANTS,
            constraints=st.dictionaries(JSON_TEXT, JSON, max_size=2),
        ),
    ),
    _entry(
        ActionRequested, st.builds(ActionRequestedData, call_id=CALLS, tool=TOOL_NAMES, args=ARGS)
    ),
    _entry(
        ActionVerdict,
        st.builds(
            ActionVerdictData,
            call_id=CALLS,
            tool=TOOL_NAMES,
            verdict=st.sampled_from(Verdict),
            rules=st.lists(st.sampled_from(RULES) | NAMES, max_size=8),
            conflicts_with=IDS,
            waits_for=IDS,
            not_before=st.none() | INSTANTS,
            observed=st.lists(st.sampled_from(RULES) | NAMES, max_size=3),
        ),
    ),
    _entry(
        ActionExecuted,
        st.builds(
            ActionExecutedData,
            call_id=CALLS,
            tool=TOOL_NAMES,
            status=st.sampled_from(["succeeded", "unknown"]),
            result=st.fixed_dictionaries({}, optional={"event_id": JSON_TEXT | JSON}),
        ),
    ),
    _entry(
        ActionFailed,
        st.builds(ActionFailedData, call_id=CALLS, tool=TOOL_NAMES, error=NAMES, message=st.text()),
    ),
    _entry(CredentialConnected, CREDENTIAL),
    _entry(CredentialRotated, CREDENTIAL),
    _entry(CredentialRevoked, CREDENTIAL),
    _entry(
        TemplateActivated,
        st.builds(
            TemplateActivatedData,
            activation_id=NAMES,
            template=NAMES,
            version=NAMES,
            content_hash=NAMES,
            automatic=st.booleans(),
        ),
    ),
    _entry(
        TemplateNotice,
        st.builds(
            TemplateNoticeData,
            activation_id=NAMES,
            template=NAMES,
            version=NAMES,
            notice=st.sampled_from(["deprecated", "sunsetting", "sunset"]),
            deprecated_at=st.none() | INSTANTS,
            sunset_at=st.none() | INSTANTS,
            replacement=st.none() | NAMES,
        ),
    ),
    _entry(
        OperatorDecision,
        st.builds(
            OperatorDecisionData,
            call_id=CALLS,
            escalation_id=st.none() | NAMES,
            decision=st.sampled_from(Decision),
        ),
    ),
    _entry(SandboxStarted, SANDBOX),
    _entry(SandboxStopped, SANDBOX),
)
UNKNOWN = st.builds(
    UnknownEntry,
    v=st.integers(),
    kind=ANY_TEXT,
    raw=st.dictionaries(JSON_TEXT, JSON, max_size=4)
    | st.fixed_dictionaries(
        {},
        optional={
            "at": TIME_TEXT | JSON,
            "actor": st.builds(lambda a: a.model_dump(mode="json"), ACTORS) | JSON,
            "id": JSON,
            "personal": JSON,
        },
    ),
)
CONTEXT_CHOICES = st.sampled_from(
    [
        CONTEXTS["en"],
        CONTEXTS["es"],
        RenderContext("Europe/Madrid", "es_ES", "ES"),
        RenderContext("Asia/Tokyo", "es_MX", "MX", with_year=True),
        RenderContext("Pacific/Chatham", "en_GB", "GB"),
    ]
)


@st.composite
def with_payload(draw: st.DrawFn) -> tuple[Entry, Personal]:
    entry = draw(KNOWN)
    mode = draw(st.sampled_from(["none", "payload", "erased"]))
    if isinstance(entry, ActionRequested):
        public, personal = split_personal_args(entry.data.args)
        entry = entry.model_copy(update={"data": entry.data.model_copy(update={"args": public})})
    else:
        personal = draw(st.dictionaries(JSON_TEXT, JSON, max_size=3))
    if mode == "none":
        return entry, None
    sealed, payload = seal(entry, {"args": personal, "x": 1}, salt=SALT)
    return sealed, ERASED if mode == "erased" else payload


def _check(text: str) -> None:
    assert_clean(text)
    assert not any(phrase in text for phrase in FALLBACK), text


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(with_payload(), max_size=6), ctx=CONTEXT_CHOICES)
def test_known_entries_always_render_cleanly_and_deterministically(
    items: list[tuple[Entry, Personal]], ctx: RenderContext
) -> None:
    lines = render_timeline(items, ctx)
    assert [line.text for line in lines] == [line.text for line in render_timeline(items, ctx)]
    assert sum(len(line.entry_ids) for line in lines) == len(items)
    for line in lines:
        _check(line.text)
    for entry, personal in items:
        text = render_entry(entry, personal, ctx)
        _check(text)
        assert text == render_entry(entry, personal, ctx)


@settings(deadline=None, max_examples=100)
@given(item=with_payload(), ctx=CONTEXT_CHOICES)
def test_rendering_does_not_depend_on_argument_order(
    item: tuple[Entry, Personal], ctx: RenderContext
) -> None:
    entry, personal = item
    if not isinstance(entry, ActionRequested):
        return
    flipped = dict(reversed(list(entry.data.args.items())))
    other = entry.model_copy(update={"data": entry.data.model_copy(update={"args": flipped})})
    if isinstance(personal, PersonalPayload):
        args = personal.data.get("args", {})
        personal = PersonalPayload(
            salt=personal.salt, data={"x": 1, "args": dict(reversed(list(args.items())))}
        )
    assert render_entry(other, personal, ctx) == render_entry(entry, item[1], ctx)


@settings(deadline=None, max_examples=200)
@given(entry=UNKNOWN, ctx=CONTEXT_CHOICES)
def test_unknown_entries_with_any_json_never_raise(entry: UnknownEntry, ctx: RenderContext) -> None:
    text = render_entry(entry, None, ctx)
    assert_clean(text)
    assert "this version of corral cannot describe it" in text or "no sabe describirlo" in text
    assert render_timeline([(entry, None), (entry, ERASED)], ctx)[0].text == text
