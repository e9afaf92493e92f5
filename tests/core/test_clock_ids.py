from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from corral.core.clock import ManualClock, format_time, parse_time
from corral.core.ids import RandomIds, SequentialIds, check_id
from corral.core.money import Money, minor_unit_digits

T0 = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)


def test_manual_clock_moves_only_forward() -> None:
    clock = ManualClock(T0)
    clock.advance(timedelta(seconds=5))
    assert clock.now() == T0 + timedelta(seconds=5)
    assert clock.monotonic() == 5.0
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))


def test_time_has_one_spelling() -> None:
    pst = timezone(timedelta(hours=-8))
    assert format_time(datetime(2026, 3, 3, 9, 0, tzinfo=pst)) == "2026-03-03T17:00:00.000000Z"
    assert parse_time("2026-03-03T09:00:00-08:00") == T0
    with pytest.raises(ValueError, match="offset"):
        parse_time("2026-03-03T09:00:00")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday")


def test_random_ids_sort_by_time_and_differ() -> None:
    clock = ManualClock(T0)
    ids = RandomIds(clock)
    first = ids.new("call")
    clock.advance(timedelta(milliseconds=1))
    second = ids.new("call")
    assert first.startswith("call_") and len(first) == 5 + 26
    assert first < second
    assert len({ids.new("call") for _ in range(100)}) == 100


def test_sequential_ids_and_prefix_check() -> None:
    ids = SequentialIds()
    assert [ids.new("a"), ids.new("b"), ids.new("a")] == [
        "a_0000000001",
        "b_0000000001",
        "a_0000000002",
    ]
    with pytest.raises(ValueError, match="prefix"):
        ids.new("Bad Prefix")


@pytest.mark.parametrize("bad", ["", " x", "a b", "x/y", "é", "a" * 129])
def test_check_id_refuses_unsafe_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        check_id(bad, "tenant")


def test_money_minor_units() -> None:
    assert str(Money(1999, "usd").decimal) == "19.99"
    assert minor_unit_digits("jpy") == 0
    assert minor_unit_digits("kwd") == 3
    with pytest.raises(ValueError, match="currency"):
        Money(1, "USD")
    with pytest.raises(ValueError, match="unknown"):
        Money(1, "xyz")
    with pytest.raises(ValueError, match="integer"):
        Money(1.5, "usd")  # type: ignore[arg-type]
