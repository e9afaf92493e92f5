"""Injected time.

Nothing in corral reads the wall clock directly: services take a :class:`Clock`, so tests,
replay and prose are deterministic.

>>> from datetime import datetime, timezone, timedelta
>>> clock = ManualClock(datetime(2026, 3, 3, 17, 0, tzinfo=timezone.utc))
>>> clock.advance(timedelta(seconds=90)); clock.now().isoformat()
'2026-03-03T17:01:30+00:00'
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = [
    "AcceleratedClock",
    "Clock",
    "ManualClock",
    "SystemClock",
    "format_time",
    "parse_time",
]


class Clock(Protocol):
    """A source of timezone-aware UTC instants."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals, not timestamps)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; safe to share between threads."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()
        self._origin = self._now

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return (self._now - self._origin).total_seconds()

    def advance(self, delta: timedelta) -> None:
        if delta < timedelta(0):
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += delta

    def set(self, when: datetime) -> None:
        self.advance(when.astimezone(UTC) - self.now())


class AcceleratedClock:
    """Simulated time running ``factor`` times faster than a real clock: a day in seconds.

    ``corral demo`` gives it to control so that rules that read the time of day (quiet hours,
    daily caps, 24-hour windows) meet a whole business day in well under a minute. It reads
    ``start`` until it begins at the real instant ``origin``, then ``start + (real - origin) *
    factor``; before that instant it stands still, so a demo can start its processes, pick the
    moment the day opens and hand the same moment to the agents and to control
    (:meth:`begin`). :meth:`monotonic` stays real: intervals (how often a checkpoint is signed,
    how long to sleep) are real seconds.

    >>> from datetime import datetime, timezone
    >>> real = ManualClock(datetime(2026, 3, 4, 15, 0, tzinfo=timezone.utc))
    >>> clock = AcceleratedClock(datetime(2026, 3, 4, 7, 0, tzinfo=timezone.utc), 3600, base=real)
    >>> clock.now().isoformat()
    '2026-03-04T07:00:00+00:00'
    >>> _ = clock.begin(); real.advance(timedelta(seconds=2.5)); clock.now().isoformat()
    '2026-03-04T09:30:00+00:00'
    """

    def __init__(
        self,
        start: datetime,
        factor: float,
        *,
        origin: datetime | None = None,
        base: Clock | None = None,
    ) -> None:
        if start.tzinfo is None or (origin is not None and origin.tzinfo is None):
            raise ValueError("AcceleratedClock needs timezone-aware times")
        if not factor > 0:
            raise ValueError("the factor of an AcceleratedClock must be positive")
        self.start = start.astimezone(UTC)
        self.factor = float(factor)
        self._base: Clock = base or SystemClock()
        self._lock = threading.Lock()
        self._origin = origin.astimezone(UTC) if origin is not None else None

    @property
    def origin(self) -> datetime | None:
        """The real instant the simulated ``start`` is reached; ``None`` until :meth:`begin`."""
        with self._lock:
            return self._origin

    def begin(self, origin: datetime | None = None) -> datetime:
        """Start (or re-anchor) the simulated day at the real instant ``origin`` (default now)."""
        when = (origin or self._base.now()).astimezone(UTC)
        with self._lock:
            self._origin = when
        return when

    def simulated(self, real: datetime) -> datetime:
        """The simulated time at the real instant ``real``."""
        with self._lock:
            origin = self._origin
        if origin is None or real <= origin:
            return self.start
        return self.start + (real - origin) * self.factor

    def now(self) -> datetime:
        return self.simulated(self._base.now())

    def monotonic(self) -> float:
        return self._base.monotonic()


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: one spelling per instant."""
    if when.tzinfo is None:
        raise ValueError("refusing a naive datetime: corral times are timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time with an offset (``Z`` or ``±hh:mm``) into an aware datetime."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"time has no UTC offset: {text!r}")
    return parsed
