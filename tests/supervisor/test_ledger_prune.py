"""Incremental forgetting: a few of the oldest calls per decision, never a walk of the ledger,
and in the end exactly what a full prune would keep, in every index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from corral.connectors import EffectKind
from corral.supervisor.classifier import TenantSupervisor
from corral.supervisor.effects import CallEffect
from corral.supervisor.ledger import CallRecord, Ledger, Status
from corral.supervisor.policy import load_policy

T0 = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)
CUTOFF = T0 + timedelta(hours=72)  # forgets calls made before T0 + 24 h

# (tool kind, minutes after T0, outcome, key): enough kinds to fill every index.
calls = st.lists(
    st.tuples(
        st.sampled_from(["sms", "booking", "refund", "charge", "invoice", "cancel"]),
        st.integers(0, 60 * 48),
        st.sampled_from(["succeeded", "failed", "unknown", None]),
        st.integers(0, 3),
    ),
    max_size=40,
)


def _args(kind: str, n: int, key: int) -> tuple[str, dict[str, Any]]:
    if kind == "sms":
        return "twilio.send_sms", {"to": f"+1310555012{key}", "body": f"hello {n}"}
    if kind == "booking":
        start = T0 + timedelta(hours=key * 20, minutes=n)
        return "google_calendar.insert_event", {
            "calendar_id": f"cal{key}", "start": start.isoformat(),
            "end": (start + timedelta(minutes=30)).isoformat(), "summary": str(n),
        }  # fmt: skip
    if kind == "refund":
        return "stripe.create_refund", {"payment_intent": f"pi_{key}", "amount": 100 + n,
                                        "currency": "usd"}  # fmt: skip
    if kind == "charge":
        return "stripe.create_payment_intent", {"customer": f"cus_{key}", "amount": 500,
                                                "currency": "usd"}  # fmt: skip
    if kind == "invoice":
        return "quickbooks.create_invoice", {
            "customer_id": str(key),
            "lines": [{"amount": f"{n}.00", "description": "x"}],
        }
    return "google_calendar.delete_event", {"calendar_id": f"cal{key}", "event_id": f"ev{n}"}


def _ledger(spec: list[tuple[str, int, str | None, int]]) -> TenantSupervisor:
    supervisor = TenantSupervisor(load_policy({}))
    for n, (kind, minutes, outcome, key) in enumerate(sorted(spec, key=lambda c: c[1])):
        tool, args = _args(kind, n, key)
        decision = supervisor.decide(f"c{n}", "agent", tool, args, T0 + timedelta(minutes=minutes))
        record = supervisor.ledger.calls[f"c{n}"]
        if decision.verdict.value == "allow" and outcome is not None:
            supervisor.outcome(record.id, outcome)
    return supervisor


def _indexes(ledger: Ledger) -> dict[str, Any]:
    """Every index as ids, to compare two ledgers."""
    plain: dict[str, Any] = {
        name: {key: [r.id for r in held] for key, held in getattr(ledger, name).items()}
        for name in ("messages", "messages_by_day", "cancellations", "refunds", "refunds_by_day",
                     "charges", "invoices", "invoices_by_customer", "identical")
    }  # fmt: skip
    plain["bookings"] = {
        cal: [r.id for r in index._records] for cal, index in ledger.bookings.items()
    }
    plain["calls"] = sorted(ledger.calls)
    return plain


def _kept(record: CallRecord) -> bool:
    """The rule of forgetting, written out: what a prune at CUTOFF keeps."""
    effect = record.effect
    if record.at >= CUTOFF - timedelta(hours=48) or record.status is Status.UNKNOWN:
        return True
    if isinstance(effect, CallEffect) and effect.kind is EffectKind.BOOKING:
        return effect.end is not None and effect.end > CUTOFF - timedelta(hours=24)
    return isinstance(effect, CallEffect) and effect.kind is EffectKind.CANCELLATION


def _filtered(indexes: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": sorted(i for i in indexes["calls"] if i in keep)}
    for name, index in indexes.items():
        if name != "calls":
            out[name] = {k: [i for i in ids if i in keep] for k, ids in index.items()}
            out[name] = {k: ids for k, ids in out[name].items() if ids}
    return out


@given(spec=calls, limit=st.one_of(st.none(), st.integers(1, 5)))
def test_pruning_forgets_exactly_what_no_rule_reads_from_every_index(
    spec: list[tuple[str, int, str | None, int]], limit: int | None
) -> None:
    supervisor = _ledger(spec)
    before = _indexes(supervisor.ledger)
    keep = {r.id for r in supervisor.ledger.calls.values() if _kept(r)}
    forgotten: list[str] = []
    supervisor.ledger.on_forget = lambda record: forgotten.append(record.id)
    total = 0
    for _ in range(len(spec) + 1 if limit else 1):  # a round looks at `limit` calls at most
        total += supervisor.prune(CUTOFF, limit=limit)
    assert _indexes(supervisor.ledger) == _filtered(before, keep)
    assert total == len(forgotten) == len(set(forgotten)) == len(spec) - len(keep)
    assert set(forgotten) == set(before["calls"]) - keep


def test_a_limited_prune_looks_at_no_more_than_its_limit() -> None:
    supervisor = _ledger([("sms", m, "succeeded", m % 4) for m in range(0, 600, 10)])
    later = T0 + timedelta(days=5)
    assert supervisor.prune(later, limit=2) == 2
    assert len(supervisor.ledger.calls) == 58
    assert supervisor.prune(later, limit=100) == 58
    assert supervisor.ledger.calls == {} and supervisor.ledger.messages == {}


def test_a_kept_call_goes_to_the_back_and_does_not_block_the_ones_after_it() -> None:
    supervisor = _ledger([("sms", 0, "unknown", 0), ("sms", 10, "succeeded", 1),
                          ("sms", 20, "succeeded", 2)])  # fmt: skip
    later = T0 + timedelta(days=5)
    assert supervisor.prune(later, limit=1) == 0  # the unknown one is kept, moved back
    assert list(supervisor.ledger.calls) == ["c1", "c2", "c0"]
    assert supervisor.prune(later, limit=2) == 2
    assert list(supervisor.ledger.calls) == ["c0"]
    assert supervisor.ledger.calls["c0"].status is Status.UNKNOWN
    assert set(supervisor.ledger.messages) == {"+13105550120"}


def test_nothing_younger_than_the_cutoff_is_looked_at() -> None:
    supervisor = _ledger([("sms", m, "succeeded", 0) for m in range(5)])
    assert supervisor.prune(T0, limit=None) == 0
    assert len(supervisor.ledger.calls) == 5
