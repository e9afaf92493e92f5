"""The classifier: one tenant's calls in, one verdict each, built from the rules that fired.

``SUPERVISOR.md``: every rule that fires is reported; the verdict is the strongest (deny >
escalate > defer > allow); rules listed in the policy's ``observe_only`` are reported but do not
change the verdict; a non-allow verdict names its rule ids and the calls it conflicts with,
and a defer what it waits for or its ``not_before`` time.

:class:`TenantSupervisor` is pure state and rules, no I/O: the service (``corral control``) and
the evaluation (``corral supervisor eval``) run the same code.

>>> from datetime import UTC, datetime
>>> from corral.supervisor.policy import load_policy
>>> supervisor = TenantSupervisor(load_policy({"timezone": "America/Los_Angeles"}))
>>> at = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)
>>> book = {"calendar_id": "lee", "start": "2026-03-04T10:00:00-08:00",
...         "end": "2026-03-04T10:30:00-08:00", "summary": "Cleaning"}
>>> supervisor.decide("c1", "receptionist-1", "google_calendar.insert_event", book, at).verdict
<Verdict.ALLOW: 'allow'>
>>> second = supervisor.decide("c2", "receptionist-2", "google_calendar.insert_event", book, at)
>>> second.verdict.value, second.rules, second.conflicts_with, second.waits_for
('defer', ['slot_conflict'], ['c1'], ['c1'])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from corral.audit.entries import Decision as OperatorDecision
from corral.audit.entries import Verdict
from corral.core.errors import CorralError
from corral.supervisor.effects import CallEffect, InvalidCall, derive
from corral.supervisor.ledger import CallRecord, Ledger, Status
from corral.supervisor.policy import TenantPolicy
from corral.supervisor.rules import DAY, RULES_BY_KIND, STRENGTH, Context, Hit, retry_storm
from corral.supervisor.store import StoredCall


class SupervisorError(CorralError):
    """Base of errors raised by :mod:`corral.supervisor`."""


class UnknownCall(SupervisorError, LookupError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"no call {call_id!r} in this tenant's ledger")
        self.call_id = call_id


class CallStateError(SupervisorError, ValueError):
    """An outcome or operator decision that does not fit the call's state."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and its explanation."""

    call_id: str
    verdict: Verdict
    rules: list[str]
    """The enforced rules at the verdict's strength (empty for allow)."""
    conflicts_with: list[str] = field(default_factory=list)
    waits_for: list[str] = field(default_factory=list)
    not_before: datetime | None = None
    fired: list[str] = field(default_factory=list)
    """Every rule that fired, observed ones included."""
    observed: list[str] = field(default_factory=list)
    """Rules that fired but are ``observe_only``."""
    reason: str | None = None
    """For ``unknown_tool`` and ``invalid_arguments``: what is wrong with the call."""

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "verdict": self.verdict.value,
            "rules": self.rules,
            "conflicts_with": self.conflicts_with,
            "waits_for": self.waits_for,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "fired": self.fired,
            "observed": self.observed,
            "reason": self.reason,
        }


def _merge(ids: list[str], more: tuple[str, ...]) -> None:
    for call_id in more:
        if call_id not in ids:
            ids.append(call_id)


class TenantSupervisor:
    """The ledger and rules of one tenant."""

    def __init__(self, policy: TenantPolicy) -> None:
        self.policy = policy
        self.ledger = Ledger()

    def decide(
        self, call_id: str, agent: str, tool: str, args: Mapping[str, Any], at: datetime
    ) -> Decision:
        """Classify one call made at ``at``; an allowed call becomes live (in flight)."""
        if call_id in self.ledger.calls:
            raise CallStateError(f"call id {call_id!r} was already decided")
        effect = derive(tool, args, at, self.policy)
        record = CallRecord(call_id, agent, tool, at, effect, args=args)
        hits = self._hits(record)
        decision = self._decision(record, hits)
        self.ledger.record(record)
        if decision.verdict in (Verdict.ALLOW, Verdict.ESCALATE):
            self.ledger.admit(record)
        if decision.verdict is Verdict.ALLOW:
            self.ledger.set_status(record, Status.IN_FLIGHT)
        return decision

    def _hits(self, record: CallRecord) -> list[Hit]:
        hits: list[Hit] = []
        if self.policy.role_allows(record.agent, record.tool) is False:
            hits.append(Hit("role", Verdict.DENY))
        effect = record.effect
        if isinstance(effect, InvalidCall):
            hits.append(Hit(effect.rule, Verdict.DENY))
        else:
            ctx = Context(record, effect, self.policy, self.ledger)
            for rule in RULES_BY_KIND.get(effect.kind, ()):
                hit = rule(ctx)
                if hit is not None:
                    hits.append(hit)
        storm = retry_storm(record, self.ledger)
        if storm is not None:
            hits.append(storm)
        return hits

    def _decision(self, record: CallRecord, hits: list[Hit]) -> Decision:
        enforced = [h for h in hits if not self.policy.observed(h.rule)]
        verdict = max(
            (h.verdict for h in enforced), key=STRENGTH.__getitem__, default=Verdict.ALLOW
        )
        deciding = [h for h in enforced if h.verdict is verdict] if enforced else []
        conflicts: list[str] = []
        waits: list[str] = []
        for hit in deciding:
            _merge(conflicts, hit.conflicts_with)
            _merge(waits, hit.waits_for)
        not_befores = [h.not_before for h in deciding if h.not_before is not None]
        reason = record.effect.reason if isinstance(record.effect, InvalidCall) else None
        return Decision(
            call_id=record.id,
            verdict=verdict,
            rules=[h.rule for h in deciding],
            conflicts_with=conflicts,
            waits_for=waits if verdict is Verdict.DEFER else [],
            not_before=max(not_befores) if verdict is Verdict.DEFER and not_befores else None,
            fired=[h.rule for h in hits],
            observed=[h.rule for h in hits if self.policy.observed(h.rule)],
            reason=reason,
        )

    def reconsider(self, call_id: str, at: datetime) -> Decision:
        """Decide a held (deferred) call again, as if it were made now, at ``at``: what it
        waited for may have resolved, or its ``not_before`` passed. Allowed, it becomes live."""
        record = self._call(call_id)
        if record.status is not Status.HELD:
            raise CallStateError(f"call {call_id!r} is not held ({record.status.value})")
        record.at = at
        if isinstance(record.effect, CallEffect):
            record.effect = replace(record.effect, at=at, local_day=self.policy.local_day(at))
        decision = self._decision(record, self._hits(record))
        if decision.verdict in (Verdict.ALLOW, Verdict.ESCALATE):
            self.ledger.admit(record)
        if decision.verdict is Verdict.ALLOW:
            self.ledger.set_status(record, Status.IN_FLIGHT)
        return decision

    def restore(self, stored: Iterable[StoredCall]) -> None:
        """Rebuild the ledger from stored calls, in decision order (after a restart). The
        stored verdicts and statuses are authoritative: nothing is classified again."""
        for call in stored:
            effect = derive(call.tool, call.args, call.at, self.policy)
            record = CallRecord(
                call.call_id, call.agent, call.tool, call.at, effect, args=call.args
            )
            self.ledger.record(record)
            if call.verdict in (Verdict.ALLOW.value, Verdict.ESCALATE.value):
                self.ledger.admit(record)
            status = Status(call.status)
            if status in (Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN):
                self.ledger.outcome(record, status, call.result)
            else:
                self.ledger.set_status(record, status)

    def prune(self, now: datetime, *, limit: int | None = None) -> int:
        """Forget what no rule can read any more: calls older than the longest window (24 h,
        or the policy's ``dedupe_window_s`` if longer, plus a day for local days), bookings
        whose interval ended over a day ago. Keeps each check's cost bounded by the recent
        history, not the whole of it. With ``limit``, looks at that many of the oldest calls
        at most (see :meth:`Ledger.prune`)."""
        window = max(DAY, timedelta(seconds=self.policy.messages.dedupe_window_s)) + DAY
        return self.ledger.prune(now - window, now - DAY, limit=limit)

    def outcome(self, call_id: str, status: str, result: Mapping[str, Any] | None = None) -> None:
        """An executed call's outcome: ``succeeded``, ``failed`` or ``unknown`` (a later
        outcome, from reconciliation, may replace ``unknown``)."""
        record = self._call(call_id)
        try:
            new = Status(status)
        except ValueError:
            raise CallStateError(f"unknown outcome {status!r}") from None
        if new not in (Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN):
            raise CallStateError(f"unknown outcome {status!r}")
        if record.status not in (Status.IN_FLIGHT, Status.UNKNOWN):
            raise CallStateError(f"call {call_id!r} was not running ({record.status.value})")
        self.ledger.outcome(record, new, dict(result or {}))

    def operator(self, call_id: str, decision: str) -> None:
        """The operator approves (the call becomes live, in flight) or denies an escalation."""
        record = self._call(call_id)
        choice = OperatorDecision(decision)
        if record.status is not Status.HELD:
            raise CallStateError(f"call {call_id!r} is not waiting for a decision")
        if choice is OperatorDecision.APPROVE:
            self.ledger.set_status(record, Status.IN_FLIGHT)

    def _call(self, call_id: str) -> CallRecord:
        record = self.ledger.calls.get(call_id)
        if record is None:
            raise UnknownCall(call_id)
        return record
