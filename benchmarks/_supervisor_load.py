"""The supervisor benchmark's workload: tenants' calls in time order, decisions, outcomes.

Deterministic (one seeded ``random.Random``): the same arguments give the same calls, the
same verdicts and the same ledgers, run after run, so every measured pass starts from an
identical state. The tenants, their policies and the arguments of each kind of call are in
:mod:`benchmarks._supervisor_calls`.

Each call is made by a tenant drawn uniformly. A tenant's clock is a Poisson process whose
rate follows the local hour (business hours 08:00-18:00 ten times as busy as the night), so
that its share of the earlier calls covers the 14 days before the measured calls. The mix, in
per cent of calls: messages 40 (twilio 25, ghl 15), bookings 22 (Google, Calendly,
GoHighLevel), cancellations 5, reads 5, contact updates 4, refunds 8, payment intents 6,
invoices 6, invalid calls 2, and 2 repeats of the tenant's last message, refund, charge or
invoice (so that the ``duplicate_*`` rules fire). After 10 % of the failed calls, the agent
retries the same call 2 to 4 times, 3 s apart (``retry_storm``). 3 % of calls are made by
an agent drawn from all ten, the others by an agent whose role allows the tool.

Outcomes: an allowed (or escalated and approved) call gets its outcome 20 decisions later:
88 % succeeded (a booking with its ``event_id``), 10 % failed (at once: the provider said no),
2 % unknown, reconciled 20 decisions later (to succeeded, 1 % of all to failed). Half the
escalations are approved by the operator at once.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from benchmarks._supervisor_calls import BOOKINGS, ROLE_OF, ROLES, Args, Tenant
from corral.audit.entries import Verdict
from corral.supervisor.classifier import Decision, TenantSupervisor
from corral.supervisor.policy import load_policy

END = datetime(2026, 3, 16, 17, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 in Los Angeles
DAYS = 14.0
OUTCOME_LAG = 20
_HOUR_WEIGHT = [0.16] * 7 + [0.8] + [1.6] * 10 + [1.0] * 3 + [0.5] * 3
_MEAN_WEIGHT = sum(_HOUR_WEIGHT) / 24
_MIX: tuple[tuple[float, Callable[[Tenant], Args]], ...] = (
    (40, Tenant.message), (22, Tenant.booking), (5, Tenant.cancel), (5, Tenant.read),
    (4, Tenant.upsert), (8, Tenant.refund), (6, Tenant.charge), (6, Tenant.invoice),
    (2, Tenant.invalid),
)  # fmt: skip
_REPEATED = {"twilio.send_sms": "message", "ghl.send_message": "message",
             "stripe.create_refund": "refund", "stripe.create_payment_intent": "charge",
             "quickbooks.create_invoice": "invoice"}  # fmt: skip
Outcome = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call of one agent of one tenant, with its planned outcomes if it runs."""

    tenant: str
    call_id: str
    agent: str
    tool: str
    args: dict[str, Any]
    at: datetime
    outcomes: tuple[Outcome, ...] = ()
    approve: bool = False
    """When escalated: whether the operator approves it."""


class Workload:
    """``tenants`` tenants of ``agents`` agents; ``earlier`` calls in all cover ``days`` days
    up to ``end`` (a POSIX time)."""

    def __init__(
        self, tenants: int, agents: int, earlier: int, seed: int = 2026, *,
        end: float = END, days: float = DAYS,
    ) -> None:  # fmt: skip
        self.rng = random.Random(seed)
        self.agents = agents
        per_tenant = max(earlier / tenants, 1)
        self.tenants = [Tenant(f"t{i:04d}", self.rng, per_tenant, days, end - days * 86_400)
                        for i in range(tenants)]  # fmt: skip
        self.by_name = {t.name: t for t in self.tenants}

    def calls(self, n: int) -> Iterator[Call]:
        """The next ``n`` calls, each of a tenant drawn uniformly."""
        for _ in range(n):
            yield self._call(self.tenants[self.rng.randrange(len(self.tenants))])

    def booked(self, call: Call, event_id: str) -> None:
        """Feedback from the run: ``call`` booked ``event_id`` (it may be cancelled later)."""
        calendar = str(call.args.get("calendar_id", ""))
        self.by_name[call.tenant].booked.append((call.tool, calendar, event_id))

    def _call(self, t: Tenant) -> Call:
        if t.retries:
            again = t.retries.popleft()
            t.clock += 3
            return self._make(t, again.agent, again.tool, again.args, failed=True)
        self._tick(t)
        r = self.rng.random() * 100
        for share, kind in _MIX:
            if r < share:
                tool, args = kind(t)
                break
            r -= share
        else:
            earlier = t.recent.get(self.rng.choice(("message", "refund", "charge", "invoice")))
            tool, args = (earlier.tool, earlier.args) if earlier else t.message()
        return self._make(t, self._agent(tool), tool, args, failed=False)

    def _make(self, t: Tenant, agent: str, tool: str, args: dict[str, Any], failed: bool) -> Call:
        rng = self.rng
        t.made += 1
        u = rng.random()
        result: dict[str, Any] = {"event_id": f"ev{t.made}"} if tool in BOOKINGS else {}
        if failed or 0.88 <= u < 0.98:
            outcomes: tuple[Outcome, ...] = (("failed", {}),)
        elif u < 0.88:
            outcomes = (("succeeded", result),)
        else:
            outcomes = (("unknown", {}), ("succeeded" if u < 0.99 else "failed", result))
        at = datetime.fromtimestamp(t.clock, UTC)
        call = Call(
            t.name, f"{t.name}-{t.made}", agent, tool, args, at, outcomes, rng.random() < 0.5
        )
        if tool in _REPEATED:
            t.recent[_REPEATED[tool]] = call
        if not failed and outcomes[0][0] == "failed" and rng.random() < 0.1:
            t.retries.extend([call] * rng.randint(2, 4))
        return call

    def _agent(self, tool: str) -> str:
        """Mostly an agent whose role allows ``tool``; 3 % of calls, any agent."""
        rng = self.rng
        if rng.random() < 0.03:
            return f"agent-{rng.randrange(self.agents)}"
        patterns = (tool, f"{tool.split('.')[0]}.*")
        fits = [k for k in range(self.agents)
                if k not in ROLE_OF or any(p in patterns for p in ROLES[ROLE_OF[k]])]  # fmt: skip
        return f"agent-{rng.choice(fits)}"

    def _tick(self, t: Tenant) -> None:
        """Move the tenant's clock to its next call (a Poisson process thinned by the local
        hour's weight), ``mean_gap_s`` apart on average."""
        top = max(_HOUR_WEIGHT) / _MEAN_WEIGHT
        while True:
            t.clock += self.rng.expovariate(top / t.mean_gap_s)
            if self.rng.random() * top < _HOUR_WEIGHT[t.local().hour] / _MEAN_WEIGHT:
                return


class Fleet:
    """One :class:`TenantSupervisor` per tenant, and the outcomes still to come."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.supervisors = {t.name: TenantSupervisor(load_policy(t.policy()))
                            for t in workload.tenants}  # fmt: skip
        self.feedback = True
        self._due: deque[tuple[int, Call, int]] = deque()
        self._n = 0

    def decide(self, call: Call) -> Decision:
        """``TenantSupervisor.decide`` of the call's tenant: what the latency covers."""
        supervisor = self.supervisors[call.tenant]
        return supervisor.decide(call.call_id, call.agent, call.tool, call.args, call.at)

    def after(self, call: Call, decision: Decision) -> None:
        """What follows a decision: an approval, and the outcomes that are due."""
        self._n += 1
        supervisor = self.supervisors[call.tenant]
        runs = decision.verdict is Verdict.ALLOW
        if decision.verdict is Verdict.ESCALATE and call.approve:
            supervisor.operator(call.call_id, "approve")
            runs = True
        if runs and call.outcomes[0][0] == "failed":
            supervisor.outcome(call.call_id, "failed")
        elif runs:
            self._due.append((self._n + OUTCOME_LAG, call, 0))
        while self._due and self._due[0][0] <= self._n:
            _, done, step = self._due.popleft()
            status, result = done.outcomes[step]
            self.supervisors[done.tenant].outcome(done.call_id, status, result)
            if step + 1 < len(done.outcomes):
                self._due.append((self._n + OUTCOME_LAG, done, step + 1))
            elif self.feedback and status == "succeeded" and "event_id" in result:
                self.workload.booked(done, str(result["event_id"]))


def prepare(
    tenants: int,
    agents: int,
    earlier: int,
    measured: int,
    tick: Callable[[int], None] | None = None,
    seed: int = 2026,
) -> tuple[Fleet, list[Call]]:
    """Fill a fleet with ``earlier`` calls (decided, approved, given outcomes as they come),
    then generate the ``measured`` calls that follow (not decided yet)."""
    workload = Workload(tenants, agents, earlier, seed)
    fleet = Fleet(workload)
    for i, call in enumerate(workload.calls(earlier), 1):
        fleet.after(call, fleet.decide(call))
        if tick is not None and i % 1000 == 0:
            tick(1000)
    fleet.feedback = False
    return fleet, list(workload.calls(measured))
