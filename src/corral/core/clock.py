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

__all__ = ["Clock", "ManualClock", "SystemClock", "format_time", "parse_time"]


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
