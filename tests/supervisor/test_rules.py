"""Pieces of the classifier checked against brute force and the spec's words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from corral.connectors import EffectKind
from corral.supervisor.effects import CallEffect, normalize_body
from corral.supervisor.ledger import CallRecord, IntervalIndex

T0 = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)


def _booking(n: int, start_min: int, length_min: int) -> CallRecord:
    start = T0 + timedelta(minutes=start_min)
    effect = CallEffect(tool="google_calendar.insert_event", kind=EffectKind.BOOKING, at=T0,
                        local_day=T0.date(), args_key="k", calendar="c", start=start,
                        end=start + timedelta(minutes=length_min))  # fmt: skip
    return CallRecord(f"c{n}", "a", effect.tool, T0, effect)


intervals = st.lists(st.tuples(st.integers(0, 600), st.integers(1, 240)), max_size=40)


@given(existing=intervals, query=st.tuples(st.integers(0, 600), st.integers(1, 240)))
def test_interval_index_finds_exactly_the_overlapping_half_open_intervals(
    existing: list[tuple[int, int]], query: tuple[int, int]
) -> None:
    index = IntervalIndex()
    records = [_booking(n, s, length) for n, (s, length) in enumerate(existing)]
    for record in records:
        index.add(record)
    start = T0 + timedelta(minutes=query[0])
    end = start + timedelta(minutes=query[1])
    found = {r.id for r in index.overlapping(start, end)}
    expected = {
        r.id for r in records
        if r.effect.start < end and start < r.effect.end  # type: ignore[union-attr,operator]
    }  # fmt: skip
    assert found == expected


def test_touching_intervals_do_not_overlap() -> None:
    index = IntervalIndex()
    index.add(_booking(1, 0, 30))
    assert list(index.overlapping(T0 + timedelta(minutes=30), T0 + timedelta(minutes=60))) == []
    assert list(index.overlapping(T0 - timedelta(minutes=30), T0)) == []


def test_normalized_body_is_nfkc_casefolded_and_collapsed() -> None:
    assert normalize_body("  See\tyou\n\nat ＴＥＮ!  ") == "see you at ten!"
    assert normalize_body("STRASSE") == normalize_body("straße")


def test_pruning_forgets_old_calls_but_keeps_what_rules_still_read() -> None:
    from corral.supervisor.classifier import TenantSupervisor
    from corral.supervisor.policy import load_policy

    supervisor = TenantSupervisor(load_policy({}))
    old = T0 - timedelta(days=5)
    supervisor.decide("m-old", "a", "twilio.send_sms", {"to": "+13105550123", "body": "x"}, old)
    supervisor.decide("m-unknown", "a", "twilio.send_sms", {"to": "+13105550124", "body": "x"}, old)
    supervisor.outcome("m-unknown", "unknown")
    future = {"calendar_id": "lee", "start": "2026-03-20T10:00:00Z",
              "end": "2026-03-20T10:30:00Z", "summary": "later"}  # fmt: skip
    supervisor.decide("b-future", "a", "google_calendar.insert_event", future, old)
    assert supervisor.prune(T0) == 1
    assert set(supervisor.ledger.calls) == {"m-unknown", "b-future"}
    again = supervisor.decide("b-2", "a", "google_calendar.insert_event", future, T0)
    assert again.verdict.value == "defer" and again.waits_for == ["b-future"]
    msg = supervisor.decide("m-2", "a", "twilio.send_sms", {"to": "+13105550124", "body": "y"}, T0)
    assert msg.rules == ["unknown_outcome"]


def test_a_provider_pattern_covers_catalog_tools_only() -> None:
    from corral.supervisor.policy import load_policy

    policy = load_policy({"roles": {"billing": ["stripe.*"]}, "agents": {"billing-1": "billing"}})
    assert policy.role_allows("billing-1", "stripe.create_refund") is True
    assert policy.role_allows("billing-1", "stripe.create_charge") is False  # not in the catalog
    assert policy.role_allows("billing-1", "twilio.send_sms") is False
    assert policy.role_allows("someone-else", "stripe.create_charge") is None
