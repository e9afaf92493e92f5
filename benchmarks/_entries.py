"""The entries the benchmarks append: realistic ``action.requested`` leaves of ~330 bytes.

:func:`entry` builds one through the real schema (pydantic + RFC 8785). :func:`leaves` makes
a million leaf byte strings in about a second by filling the numbered fields of one real leaf,
then checks a sample against :func:`entry` byte for byte, so the bytes are exactly what
``entry(i).leaf()`` returns (and ``verify_bundle`` re-checks every one).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from benchmarks._common import TENANT
from corral.audit import entries
from corral.core.clock import format_time

START = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)
_WIDTH = 12  # digits of the numbered fields: fixed width keeps every leaf the same shape


def entry(i: int, tenant: str = TENANT) -> entries.ActionRequested:
    """Entry ``i``: an agent asks to book a calendar slot (two public args)."""
    return entries.ActionRequested(
        id=f"ent_{i:0{_WIDTH}d}",
        tenant=tenant,
        at=START + timedelta(milliseconds=i),
        actor=entries.Actor(kind="agent", id="receptionist-1", role="receptionist"),
        data=entries.ActionRequestedData(
            call_id=f"call_{i:0{_WIDTH}d}",
            tool="calendar.book",
            args={"calendar_id": "primary", "start": "2026-03-04T10:00:00Z"},
        ),
    )


def leaves(count: int, *, checks: int = 64, seed: int = 1) -> list[bytes]:
    """``[entry(i).leaf() for i in range(count)]``, fast; ``checks`` random ones are compared."""
    marker = "9" * _WIDTH
    first = entry(int(marker)).leaf().decode("utf-8")
    at = format_time(START + timedelta(milliseconds=int(marker)))
    if first.count(marker) != 2 or first.count(at) != 1:
        raise AssertionError("entry layout changed: update benchmarks/_entries.py")
    template = first.replace("%", "%%").replace(marker, f"%(i)0{_WIDTH}d").replace(at, "%(at)s")
    out = [
        (template % {"i": i, "at": format_time(START + timedelta(milliseconds=i))}).encode()
        for i in range(count)
    ]
    rng = random.Random(seed)
    sample = {0, count - 1, *(rng.randrange(count) for _ in range(checks))} if count else set()
    for i in sample:
        if out[i] != entry(i).leaf():
            raise AssertionError(f"generated leaf {i} differs from entry({i}).leaf()")
    return out
