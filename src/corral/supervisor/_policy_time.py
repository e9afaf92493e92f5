"""When a tenant's quiet hours end: wall-clock windows read across DST changes.

Split from :mod:`corral.supervisor.policy` so that the one subtle computation behind
:meth:`~corral.supervisor.policy.TenantPolicy.in_quiet_hours` (a window's end that does not
exist, or happens twice, on a DST day) reads apart from the policy's fields and loading.
:func:`_aware` refuses a naive datetime; the end of a quiet period is returned in UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def _quiet_end(
    at: datetime, local: datetime, window: tuple[time, time], zone: ZoneInfo
) -> datetime:
    """The first instant after ``at`` (UTC; ``local`` is it in ``zone``) outside ``window``.

    A quiet period can only end where the wall clock reaches ``end`` or jumps (a DST change).
    Take the first real occurrence of ``end`` after ``at`` (every day has one, bar a gap day);
    if the UTC offset changed on the way, the jump came first, and ends the period if it
    lands outside the window. Assumes one offset change at most within two days.
    """
    first = next(
        instant
        for days in range(3)
        for instant in _occurrences(local.date() + timedelta(days), window[1], zone)
        if instant > at
    )
    before = local.utcoffset()
    if first.astimezone(zone).utcoffset() != before:
        jump = _transition(math.floor(at.timestamp()), int(first.timestamp()), zone)
        if jump < first and not _inside(jump.astimezone(zone).time(), window):
            return jump
    return first


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a time must be timezone-aware, got the naive {at.isoformat()}")
    return at


def _inside(wall: time, window: tuple[time, time]) -> bool:
    start, end = window
    return start <= wall < end if start < end else (wall >= start or wall < end)


def _occurrences(day: date, wall: time, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants at which the clocks of ``zone`` read ``wall`` on ``day``, in order.

    ``zoneinfo`` resolves ``fold=0`` with the offset before a transition and ``fold=1`` with the
    one after: equal offsets mean one occurrence, a drop (clocks back) two, a rise none (a gap).
    """
    first = datetime.combine(day, wall, tzinfo=zone)
    second = first.replace(fold=1)
    before, after = first.utcoffset(), second.utcoffset()
    if before == after:
        return [first.astimezone(UTC)]
    if before is not None and after is not None and after < before:
        return [first.astimezone(UTC), second.astimezone(UTC)]
    return []


def _transition(lo: int, hi: int, zone: ZoneInfo) -> datetime:
    """The first whole second in ``(lo, hi]`` whose UTC offset differs from ``lo``'s.

    Requires one transition in the range (tzdata's transitions fall on whole seconds).
    """

    def offset(ts: int) -> timedelta | None:
        return datetime.fromtimestamp(ts, zone).utcoffset()

    before = offset(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offset(mid) == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)
