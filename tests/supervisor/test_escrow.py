"""The per-day refund totals (escrow) the daily cap reads: after any sequence of decisions,
outcomes, operator decisions and prunes, each total is exactly the sum of that day's live
refunds, and the cap decides as a full count of them would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from corral.supervisor.classifier import TenantSupervisor
from corral.supervisor.effects import CallEffect
from corral.supervisor.ledger import Ledger, Status
from corral.supervisor.policy import load_policy

T0 = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)
POLICY = load_policy({"timezone": "America/Los_Angeles",
                      "refunds": {"daily_cap": {"amount": 2000, "currency": "usd"}}})  # fmt: skip

# One step: a refund made some hours after T0 (amount in cents, intent), the outcome of an
# earlier call, the operator's decision on one, or a prune.
_refund = st.tuples(st.just("refund"), st.integers(0, 60), st.integers(1, 900), st.integers(0, 9))
_outcome = st.tuples(st.just("outcome"), st.integers(0, 40),
                     st.sampled_from(["succeeded", "failed", "unknown"]), st.just(0))  # fmt: skip
_operator = st.tuples(st.just("operator"), st.integers(0, 40),
                      st.sampled_from(["approve", "deny"]), st.just(0))  # fmt: skip
_prune = st.tuples(st.just("prune"), st.integers(24, 120), st.just(""), st.just(0))
steps = st.lists(st.one_of(_refund, _outcome, _operator, _prune), max_size=60)


def _counted(ledger: Ledger) -> dict[Any, int]:
    """The totals counted the long way, from the index."""
    out: dict[Any, int] = {}
    for key, records in ledger.refunds_by_day.items():
        total = sum(r.effect.amount or 0 for r in records
                    if r.live and isinstance(r.effect, CallEffect))  # fmt: skip
        if total:
            out[key] = total
    return out


def _apply(supervisor: TenantSupervisor, step: tuple[str, int, Any, int], n: int) -> None:
    kind, hours, value, intent = step
    ids = list(supervisor.ledger.calls)
    if kind == "refund":
        args = {"payment_intent": f"pi_{intent}", "amount": value, "currency": "usd"}
        at = T0 + timedelta(hours=hours, minutes=n)
        supervisor.decide(f"c{n}", "billing", "stripe.create_refund", args, at)
    elif kind == "outcome" and ids:
        record = supervisor.ledger.calls[ids[hours % len(ids)]]
        if record.status in (Status.IN_FLIGHT, Status.UNKNOWN):
            supervisor.outcome(record.id, value)
    elif kind == "operator" and ids:
        record = supervisor.ledger.calls[ids[hours % len(ids)]]
        if record.status is Status.HELD and record.admitted:
            supervisor.operator(record.id, value)
    elif kind == "prune":
        supervisor.prune(T0 + timedelta(hours=hours), limit=3)


@given(steps)
def test_the_running_totals_are_the_live_refunds_of_each_day(
    sequence: list[tuple[str, int, Any, int]],
) -> None:
    supervisor = TenantSupervisor(POLICY)
    for n, step in enumerate(sequence):
        _apply(supervisor, step, n)
        assert supervisor.ledger.refund_totals == _counted(supervisor.ledger)


def test_the_cap_counts_in_flight_refunds_frees_failed_ones_and_holds_an_escalation_out() -> None:
    supervisor = TenantSupervisor(POLICY)

    def refund(n: int, cents: int) -> str:
        args = {"payment_intent": f"pi_{n}", "amount": cents, "currency": "usd"}
        at = T0 + timedelta(minutes=n)
        return supervisor.decide(f"r{n}", "billing", "stripe.create_refund", args, at).verdict

    assert refund(1, 1500) == "allow"  # in flight: $15.00 held against the $20.00 cap
    assert refund(2, 600) == "escalate"  # 15 + 6 > 20, waits for the owner, not counted
    assert supervisor.ledger.refund_totals == {(T0.date(), "usd"): 1500}
    assert refund(3, 500) == "allow"  # exactly at the cap
    supervisor.outcome("r1", "failed")  # a failed refund frees its amount
    assert supervisor.ledger.refund_totals == {(T0.date(), "usd"): 500}
    supervisor.operator("r2", "approve")  # the approved escalation now counts
    assert supervisor.ledger.refund_totals == {(T0.date(), "usd"): 1100}
    assert refund(4, 1000) == "escalate"
