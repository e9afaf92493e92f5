"""The supervisor's durable ledger on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from corral.supervisor.store import LedgerStore
from tests.audit._backends import StoreUrl
from tests.broker._backends import broker_url_fixture  # noqa: F401 (the same two databases)

T0 = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)


@pytest.fixture(name="ledger")
def ledger_fixture(broker_url: StoreUrl) -> Iterator[LedgerStore]:
    store = LedgerStore.from_url(broker_url.url, schema=broker_url.schema)
    store.create_schema()
    try:
        yield store
    finally:
        store.close()


def test_calls_round_trip_in_decision_order(ledger: LedgerStore) -> None:
    for n in range(3):
        ledger.save("t1", f"c{n}", "a", "twilio.send_sms", {"to": f"+1310555012{n}", "n": n},
                    T0 + timedelta(seconds=n), "allow", "in_flight")  # fmt: skip
    ledger.save("t2", "x", "a", "stripe.create_refund", {}, T0, "escalate", "held")
    ledger.update("t1", "c1", "succeeded", {"sid": "SM1"})
    calls = ledger.load("t1")
    assert [c.call_id for c in calls] == ["c0", "c1", "c2"]
    assert calls[1].status == "succeeded" and calls[1].result == {"sid": "SM1"}
    assert calls[2].args == {"to": "+13105550122", "n": 2} and calls[2].at == T0 + timedelta(
        seconds=2
    )
    assert sorted(ledger.tenants()) == ["t1", "t2"]


def test_prune_keeps_unknown_outcomes_and_future_bookings(ledger: LedgerStore) -> None:
    ledger.save("t1", "old", "a", "twilio.send_sms", {}, T0, "allow", "succeeded")
    ledger.save("t1", "unknown", "a", "twilio.send_sms", {}, T0, "allow", "unknown")
    ledger.save("t1", "booking", "a", "google_calendar.insert_event", {}, T0, "allow",
                "succeeded", keep_until=T0 + timedelta(days=30))  # fmt: skip
    assert ledger.prune("t1", T0 + timedelta(days=3)) == 1
    assert [c.call_id for c in ledger.load("t1")] == ["unknown", "booking"]


def test_prune_later_forgets_the_same_rows_behind_the_writes_queued_before_it(
    ledger: LedgerStore,
) -> None:
    """The service prunes through the writer thread: the rows saved just before are pruned
    too (ordered), the same rule as ``prune`` applies, and the other tenant is untouched."""
    ledger.save_later("t1", "old", "a", "twilio.send_sms", {}, T0, "allow", "succeeded")
    ledger.save_later("t1", "unknown", "a", "twilio.send_sms", {}, T0, "allow", "unknown")
    ledger.save_later("t1", "booking", "a", "google_calendar.insert_event", {}, T0, "allow",
                      "succeeded", keep_until=T0 + timedelta(days=30))  # fmt: skip
    ledger.save_later("t1", "recent", "a", "twilio.send_sms", {}, T0 + timedelta(days=4),
                      "allow", "succeeded")  # fmt: skip
    ledger.save_later("t2", "old", "a", "twilio.send_sms", {}, T0, "allow", "succeeded")
    ledger.prune_later("t1", T0 + timedelta(days=3)).result(timeout=10)
    assert [c.call_id for c in ledger.load("t1")] == ["unknown", "booking", "recent"]
    assert [c.call_id for c in ledger.load("t2")] == ["old"]
    with pytest.raises(ValueError, match="naive"):
        ledger.prune_later("t1", datetime(2026, 3, 3))
