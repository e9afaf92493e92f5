"""The supervisor as a service: decide, hold, escalate, record, in ``corral control``.

:class:`Control` owns one :class:`~corral.supervisor.classifier.TenantSupervisor` per tenant
and, for every decision, in this order: classifies the call; writes it to the durable ledger
(:mod:`~corral.supervisor.store`); appends ``action.requested`` and ``action.verdict`` to the
tenant's audit chain and waits until they are durable; only then answers. Nothing the
supervisor decided can run before the record of that decision exists.

- **Deferred** calls are held. Each is decided again (as if made at that moment) when a call it
  waits for gets an outcome, when its ``not_before`` passes, and periodically; after
  ``defer_timeout_s`` still deferred, it is escalated. ``Control.wait`` lets a caller wait for
  a held call's final verdict.
- **Escalated** calls wait in a queue for the operator, with both conflicting calls and the
  rule; :meth:`Control.decide_escalation` approves (the call becomes live) or denies.
- **Outcomes** (``succeeded``, ``failed``, ``unknown``; a reconciliation may replace
  ``unknown``) update the ledger, the store and the audit chain.

At start, :meth:`Control.restore` rebuilds every tenant's ledger from the store, so a restart
(even a SIGKILL) loses no live call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

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
    KnownEntry,
    OperatorDecision,
    OperatorDecisionData,
    PersonalPayload,
    SandboxData,
    SandboxStarted,
    SandboxStopped,
    Verdict,
    seal,
    split_personal_args,
)
from corral.audit.log import Sequencer
from corral.broker.events import to_entries
from corral.core import heap
from corral.core.clock import Clock
from corral.core.errors import CorralError
from corral.core.ids import IdSource
from corral.supervisor.classifier import CallStateError, Decision, TenantSupervisor, UnknownCall
from corral.supervisor.dispatch import Dispatcher, Execution
from corral.supervisor.effects import CallEffect
from corral.supervisor.ledger import CallRecord, Status
from corral.supervisor.policy import TenantPolicy, load_policy
from corral.supervisor.store import LedgerStore

_log = logging.getLogger(__name__)

PRUNE_PER_CALL = 2
"""Oldest calls each decision looks at for forgetting: more than one, so forgetting keeps up
with any arrival rate, and few, so a decision never pays for a backlog."""


@dataclass
class Held:
    """A deferred call waiting to be decided again."""

    tenant: str
    call_id: str
    agent: str
    tool: str
    args: dict[str, Any]
    deferred_at: datetime
    decision: Decision


class NoBroker(CorralError):
    """Control was started without a broker: it decides, but cannot execute or delegate."""


@dataclass
class _Pending:
    """A call whose verdict is not final yet (deferred or escalated): what is needed to run it
    once it is allowed, and an event set when it is final (and, if it ran, executed)."""

    agent: str
    sandbox: str
    tool: str
    args: dict[str, Any]
    delegation: str | None
    final: asyncio.Event = field(default_factory=asyncio.Event)
    running: bool = False


@dataclass
class Escalation:
    tenant: str
    call_id: str
    agent: str
    tool: str
    args: dict[str, Any]
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "call_id": self.call_id, "agent": self.agent,
                "tool": self.tool, "args": self.args, "rules": self.decision.rules,
                "conflicts_with": self.decision.conflicts_with}  # fmt: skip


class Control:
    """Every tenant's supervisor, its durable ledger and its audit chain."""

    def __init__(
        self,
        store: LedgerStore,
        clock: Clock,
        ids: IdSource,
        *,
        sequencer: Sequencer | None = None,
        policies: Mapping[str, TenantPolicy] | None = None,
        defer_timeout_s: float = 300.0,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.ids = ids
        self.sequencer = sequencer
        self.defer_timeout = timedelta(seconds=defer_timeout_s)
        self.policies: dict[str, TenantPolicy] = dict(policies or {})
        self.tenants: dict[str, TenantSupervisor] = {}
        self.held: dict[tuple[str, str], Held] = {}
        self.escalations: dict[tuple[str, str], Escalation] = {}
        self.last: dict[tuple[str, str], Decision] = {}
        self.pending_calls: dict[tuple[str, str], _Pending] = {}
        self.executions: dict[tuple[str, str], Execution] = {}
        self._running: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ tenants

    def supervisor(self, tenant: str) -> TenantSupervisor:
        found = self.tenants.get(tenant)
        if found is None:
            found = self.tenants[tenant] = TenantSupervisor(
                self.policies.get(tenant) or load_policy({})
            )
            # What control remembers per call goes with the call (else it grows without bound).
            found.ledger.on_forget = lambda record: self._forget(tenant, record.id)
        return found

    def _forget(self, tenant: str, call_id: str) -> None:
        self.last.pop((tenant, call_id), None)
        self.executions.pop((tenant, call_id), None)

    def set_policy(self, tenant: str, policy: TenantPolicy) -> None:
        """A new policy applies to calls decided from now on (the ledger is kept)."""
        self.policies[tenant] = policy
        self.supervisor(tenant).policy = policy

    def restore(self) -> int:
        """Rebuild every tenant's ledger from the store; return the number of calls."""
        count = 0
        for tenant in self.store.tenants():
            stored = self.store.load(tenant)
            self.supervisor(tenant).restore(stored)
            count += len(stored)
            for call in stored:
                if call.verdict == Verdict.ESCALATE.value and call.status == Status.HELD.value:
                    decision = Decision(call.call_id, Verdict.ESCALATE, [])
                    self.escalations[(tenant, call.call_id)] = Escalation(
                        tenant, call.call_id, call.agent, call.tool, call.args, decision
                    )
        # Forget now, before serving, what aged out while control was down.
        now = self.clock.now()
        for supervisor in self.tenants.values():
            supervisor.prune(now)
        heap.settle()  # what was restored lives long: out of the collector's reach
        return count

    # ------------------------------------------------------------------ audit

    async def _append(
        self,
        tenant: str,
        items: list[tuple[KnownEntry, PersonalPayload | None]],
        stored: Future[None] | None = None,
    ) -> None:
        """Append to the tenant's audit chain and wait until durable, together with the ledger
        write ``stored`` if given (one wake-up of the event loop for all of them)."""
        futures: list[Future[Any]] = [] if stored is None else [stored]
        if self.sequencer is not None and items:
            futures += self.sequencer.submit_many(tenant, items)
        await _all_durable(futures)

    def _base(self, tenant: str, actor: Actor) -> dict[str, Any]:
        return {"id": self.ids.new("ent"), "tenant": tenant, "at": self.clock.now(), "actor": actor}

    def _verdict_entry(self, tenant: str, tool: str, decision: Decision) -> KnownEntry:
        data = ActionVerdictData(
            call_id=decision.call_id, tool=tool, verdict=decision.verdict, rules=decision.rules,
            conflicts_with=decision.conflicts_with, waits_for=decision.waits_for,
            not_before=decision.not_before, observed=decision.observed,
        )  # fmt: skip
        return ActionVerdict(**self._base(tenant, Actor(kind="supervisor", id="supervisor")),
                             data=data)  # fmt: skip

    async def sandbox_event(
        self, tenant: str, agent: str, sandbox: str, kind: str, backend: str, *,
        isolation: str | None = None, exit_code: int | None = None, reason: str | None = None,
    ) -> int | None:  # fmt: skip
        """Record a sandbox started or stopped by ``corral host``; the entry's index once
        durable (``None`` without an audit chain)."""
        data = SandboxData(sandbox_id=sandbox, agent=agent, backend=backend,
                           isolation=isolation, exit_code=exit_code, reason=reason)  # fmt: skip
        base = self._base(tenant, Actor(kind="host", id="host"))
        entry: KnownEntry = (
            SandboxStarted(**base, data=data)
            if kind == "sandbox.started"
            else SandboxStopped(**base, data=data)
        )
        if self.sequencer is None:
            return None
        (future,) = self.sequencer.submit_many(tenant, [(entry, None)])
        index: int = await asyncio.wrap_future(future)
        return index

    # ------------------------------------------------------------------ calls

    async def call(
        self, tenant: str, agent: str, call_id: str, tool: str, args: Mapping[str, Any],
        role: str | None = None, *, sandbox: str = "-", delegation: str | None = None,
    ) -> Decision:  # fmt: skip
        """Decide one call; durable in the ledger and the audit chain before returning.

        With a ``delegation`` and a dispatcher, an allowed call is then executed through the
        broker (its outcome recorded before returning: :attr:`executions`); a deferred or
        escalated one is executed when it becomes allowed."""
        supervisor = self.supervisor(tenant)
        earlier = supervisor.ledger.calls.get(call_id)
        if earlier is not None:
            return self._repeated(tenant, call_id, earlier, agent, tool, args)
        at = self.clock.now()
        decision = supervisor.decide(call_id, agent, tool, args, at)
        record = supervisor.ledger.calls[call_id]
        saved = self.store.save_later(tenant, call_id, agent, tool, args, at,
                                      decision.verdict.value, record.status.value,
                                      keep_until=_keep_until(record))  # fmt: skip  # fmt: skip
        public, personal = split_personal_args(dict(args))
        requested = ActionRequested(
            **self._base(tenant, Actor(kind="agent", id=agent, role=role)),
            data=ActionRequestedData(call_id=call_id, tool=tool, args=public),
        )
        items = [seal(requested, {"args": personal} if personal else None),
                 (self._verdict_entry(tenant, tool, decision), None)]  # fmt: skip
        await self._append(tenant, items, saved)
        if decision.verdict in (Verdict.DEFER, Verdict.ESCALATE):
            self.pending_calls[(tenant, call_id)] = _Pending(
                agent, sandbox, tool, dict(args), delegation
            )
        self._after(tenant, agent, tool, dict(args), decision)
        # Forget a few of the tenant's oldest calls per decision: the ledger stays bounded by
        # its windows without a periodic walk of the whole of it (which stalled every call).
        supervisor.prune(at, limit=PRUNE_PER_CALL)
        if decision.verdict is Verdict.ALLOW and delegation is not None:
            await self._execute(tenant, call_id, agent, sandbox, tool, dict(args), delegation)
        return decision

    def _repeated(
        self, tenant: str, call_id: str, earlier: CallRecord, agent: str, tool: str,
        args: Mapping[str, Any],
    ) -> Decision:  # fmt: skip
        """A call id seen before: the same call retried (the host relays a guest's retry with
        the same idempotency key, or retries after a lost answer) gets its decision again and
        runs nothing twice; the id reused for a different call is refused."""
        if (earlier.agent, earlier.tool, dict(earlier.args)) != (agent, tool, dict(args)):
            raise CallStateError(
                f"call id {call_id!r} was already used for a different call of tenant {tenant!r}"
            )
        known = self.last.get((tenant, call_id))
        if known is not None:
            return known
        # Restored from the store after a restart: a live call was allowed; a held one is
        # escalated (the queue was restored) or, conservatively, not to run.
        if earlier.live or earlier.status is Status.FAILED:
            return Decision(call_id, Verdict.ALLOW, [])
        if (tenant, call_id) in self.escalations:
            return Decision(call_id, Verdict.ESCALATE, [])
        return Decision(call_id, Verdict.DENY, [], reason="held when control restarted")

    async def _execute(
        self, tenant: str, call_id: str, agent: str, sandbox: str, tool: str,
        args: dict[str, Any], delegation: str,
    ) -> None:  # fmt: skip
        """Run an allowed call through the broker; record its outcome and the broker's events."""
        if self.dispatcher is None:
            return
        execution = await self.dispatcher.execute(
            tenant, agent, sandbox, call_id, tool, args, delegation
        )
        self.executions[(tenant, call_id)] = execution
        error = (execution.error or {}).get("code") if execution.status == "failed" else None
        # The broker's events (a token refreshed, a credential refused) go in with the outcome:
        # one durable append where there were two in a row.
        events = to_entries(execution.events, tenant, self.ids) if execution.events else []
        await self.outcome(tenant, call_id, execution.status, execution.result, error,
                           preceded_by=events)  # fmt: skip

    async def delegate(
        self, tenant: str, agent: str, sandbox: str, request: Mapping[str, Any], key: str
    ) -> dict[str, Any]:
        """Mint a delegation for a sandbox's agent through the broker; its ``delegation.minted``
        event is in the audit chain before the token is returned."""
        if self.dispatcher is None:
            raise NoBroker("corral control has no broker configured: cannot mint delegations")
        minted = await self.dispatcher.delegate(tenant, agent, sandbox, request, key)
        await self._append(tenant, to_entries(minted.get("events") or [], tenant, self.ids))
        return {k: minted[k] for k in ("delegation", "id", "expires_at", "scope") if k in minted}

    def _finalize(self, tenant: str, call_id: str, decision: Decision) -> None:
        """A pending call's verdict is final: run it if allowed (in the background: whoever
        waits for it is woken once it ran), else wake its waiters now."""
        key = (tenant, call_id)
        pending = self.pending_calls.get(key)
        if pending is None or pending.running:
            return
        if decision.verdict is not Verdict.ALLOW or pending.delegation is None:
            del self.pending_calls[key]
            pending.final.set()
            return
        pending.running = True

        async def run(p: _Pending) -> None:
            try:
                await self._execute(tenant, call_id, p.agent, p.sandbox, p.tool, p.args,
                                    p.delegation or "")  # fmt: skip
            finally:
                self.pending_calls.pop(key, None)
                p.final.set()

        task = asyncio.get_running_loop().create_task(run(pending))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _after(
        self, tenant: str, agent: str, tool: str, args: dict[str, Any], decision: Decision
    ) -> None:
        key = (tenant, decision.call_id)
        self.last[key] = decision
        if decision.verdict is Verdict.DEFER:
            existing = self.held.get(key)
            if existing is not None:
                existing.decision = decision
            else:
                self.held[key] = Held(
                    tenant, decision.call_id, agent, tool, args, self.clock.now(), decision
                )
        else:
            self.held.pop(key, None)
        if decision.verdict is Verdict.ESCALATE:
            self.escalations[key] = Escalation(
                tenant, decision.call_id, agent, tool, args, decision
            )
        elif decision.verdict is not Verdict.DEFER:
            self._finalize(tenant, decision.call_id, decision)

    async def outcome(
        self, tenant: str, call_id: str, status: str, result: Mapping[str, Any] | None = None,
        error: str | None = None, *,
        preceded_by: Sequence[tuple[KnownEntry, PersonalPayload | None]] = (),
    ) -> None:  # fmt: skip
        """Record an executed call's outcome, then decide again the calls waiting for it.

        ``preceded_by``: entries appended just before the outcome's, in the same batch."""
        supervisor = self.supervisor(tenant)
        supervisor.outcome(call_id, status, result)
        updated = self.store.update_later(tenant, call_id, status, result or {})
        tool = supervisor.ledger.calls[call_id].tool
        base = self._base(tenant, Actor(kind="broker", id="broker"))
        entry: KnownEntry
        if status == "failed":
            entry = ActionFailed(**base, data=ActionFailedData(
                call_id=call_id, tool=tool, error=error or "failed"))  # fmt: skip
        else:
            entry = ActionExecuted(**base, data=ActionExecutedData(
                call_id=call_id, tool=tool, status=status, result=dict(result or {})))  # fmt: skip
        await self._append(tenant, [*preceded_by, (entry, None)], updated)
        await self.reconsider(tenant, waiting_for=call_id)

    async def reconsider(self, tenant: str | None = None, *, waiting_for: str | None = None) -> int:
        """Decide held calls again: those waiting for ``waiting_for``, or (without it) every
        held call whose ``not_before`` passed, and any held longer than the timeout, which is
        escalated. Returns how many were decided again."""
        now = self.clock.now()
        count = 0
        for held in list(self.held.values()):
            if tenant is not None and held.tenant != tenant:
                continue
            due = (
                waiting_for in held.decision.waits_for
                if waiting_for is not None
                else (held.decision.not_before is not None and held.decision.not_before <= now)
                or self._unblocked(held)
            )
            timed_out = now - held.deferred_at >= self.defer_timeout
            if not (due or timed_out):
                continue
            supervisor = self.supervisor(held.tenant)
            if timed_out and not due:
                decision = Decision(held.call_id, Verdict.ESCALATE, ["defer_timeout"],
                                    conflicts_with=held.decision.conflicts_with)  # fmt: skip
                supervisor.ledger.admit(supervisor.ledger.calls[held.call_id])
            else:
                decision = supervisor.reconsider(held.call_id, now)
                if decision.verdict is Verdict.DEFER and timed_out:
                    decision = Decision(held.call_id, Verdict.ESCALATE,
                                        ["defer_timeout", *decision.rules],
                                        conflicts_with=decision.conflicts_with)  # fmt: skip
            if decision == held.decision:
                continue  # deferred again for the same reasons: nothing new to record
            record = supervisor.ledger.calls[held.call_id]
            await asyncio.wrap_future(
                self.store.update_later(held.tenant, held.call_id, record.status.value)
            )
            await self._append(held.tenant, [(self._verdict_entry(held.tenant, held.tool,
                                                                  decision), None)])  # fmt: skip
            self._after(held.tenant, held.agent, held.tool, held.args, decision)
            count += 1
        return count

    def _unblocked(self, held: Held) -> bool:
        """Whether a call ``held`` waits for has left the states that hold it (in flight,
        unknown), or was forgotten. Outcomes wake their waiters at once; this catches any other
        way out (an operator's decision, a restart), without deciding again, each second, every
        call still rightly waiting."""
        calls = self.supervisor(held.tenant).ledger.calls
        for call_id in held.decision.waits_for:
            other = calls.get(call_id)
            if other is None or other.status not in (Status.IN_FLIGHT, Status.UNKNOWN):
                return True
        return False

    async def wait(self, tenant: str, call_id: str, timeout_s: float) -> Decision:
        """The call's latest decision, waiting up to ``timeout_s`` while it is deferred or
        escalated (and, once allowed, until it has been executed)."""
        pending = self.pending_calls.get((tenant, call_id))
        if pending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.final.wait(), timeout_s)
        decision = self.last.get((tenant, call_id))
        if decision is None:
            raise UnknownCall(call_id)
        return decision

    async def decide_escalation(
        self, tenant: str, call_id: str, decision: str, operator: str
    ) -> None:
        """The operator's approval (the call becomes live) or denial of an escalated call."""
        escalation = self.escalations.get((tenant, call_id))
        if escalation is None:
            raise CallStateError(f"call {call_id!r} of tenant {tenant!r} is not escalated")
        supervisor = self.supervisor(tenant)
        supervisor.operator(call_id, decision)
        record = supervisor.ledger.calls[call_id]
        updated = self.store.update_later(tenant, call_id, record.status.value)
        entry = OperatorDecision(
            **self._base(tenant, Actor(kind="operator", id=operator)),
            data=OperatorDecisionData(call_id=call_id, escalation_id=call_id, decision=decision),
        )
        await self._append(tenant, [(entry, None)], updated)
        del self.escalations[(tenant, call_id)]
        final = (
            Decision(call_id, Verdict.ALLOW, [], reason=f"approved by {operator}")
            if decision == "approve"
            else Decision(
                call_id,
                Verdict.DENY,
                escalation.decision.rules,
                conflicts_with=escalation.decision.conflicts_with,
                reason=f"denied by {operator}",
            )
        )
        self.last[(tenant, call_id)] = final
        self._finalize(tenant, call_id, final)

    def prune(self, *, limit: int | None = None) -> int:
        """Forget calls no rule can read any more: in memory (each tenant's oldest ``limit``
        calls at most, or all), and in the store through its writer thread, behind the writes
        already queued (so the event loop never waits on a bulk delete)."""
        now = self.clock.now()
        forgotten = 0
        for tenant, supervisor in self.tenants.items():
            forgotten += supervisor.prune(now, limit=limit)
            window = timedelta(seconds=supervisor.policy.messages.dedupe_window_s)
            before = now - max(timedelta(hours=24), window) - timedelta(hours=24)
            self.store.prune_later(tenant, before).add_done_callback(_log_failure)
        return forgotten

    def pending(self, tenant: str) -> list[Escalation]:
        return [e for (t, _), e in self.escalations.items() if t == tenant]

    def describe(self, escalation: Escalation) -> dict[str, Any]:
        """An escalation as the operator sees it: the call, the rule, and each call it
        conflicts with (who, what, when, where it stands)."""
        ledger = self.supervisor(escalation.tenant).ledger
        others = []
        for call_id in escalation.decision.conflicts_with:
            record = ledger.calls.get(call_id)
            if record is not None:
                others.append({"call_id": call_id, "agent": record.agent, "tool": record.tool,
                               "args": dict(record.args), "at": record.at.isoformat(),
                               "status": record.status.value})  # fmt: skip
        return {**escalation.to_json(), "conflicting_calls": others}


def _all_durable(futures: list[Future[Any]]) -> asyncio.Future[None]:
    """An asyncio future done when every one of the writer threads' ``futures`` is (failed with
    the first error). ``asyncio.wrap_future`` per future would wake the event loop once each:
    through the self-pipe, from a thread that holds the GIL the loop is waiting for."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    if not futures:
        done.set_result(None)
        return done
    remaining = [len(futures)]
    lock = threading.Lock()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def finished(future: Future[Any]) -> None:
        error = future.exception()
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if error is not None or last:
            loop.call_soon_threadsafe(settle, error)

    for future in futures:
        future.add_done_callback(finished)
    return done


def _log_failure(future: Future[Any]) -> None:
    error = future.exception()
    if error is not None:
        _log.error("supervisor ledger: pruning the store failed: %s", error)


def _keep_until(record: CallRecord) -> datetime | None:
    """Bookings must outlive the 24 h windows until their interval ends."""
    return record.effect.end if isinstance(record.effect, CallEffect) else None
