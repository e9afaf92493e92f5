"""Injected identifiers.

Ids are ``<prefix>_<26 chars>``: a Crockford base32 ULID (48-bit milliseconds, 80 random bits),
so they sort by creation time. The randomness and the clock are injected; :class:`SequentialIds`
gives readable, deterministic ids for tests and demos.

>>> ids = SequentialIds()
>>> ids.new("call"), ids.new("call")
('call_0000000001', 'call_0000000002')
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Protocol

from corral.core.clock import Clock
from corral.core.entropy import urandom

__all__ = ["IdSource", "RandomIds", "SequentialIds", "check_id"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


class IdSource(Protocol):
    def new(self, prefix: str) -> str: ...


def _check_prefix(prefix: str) -> None:
    if not _PREFIX.match(prefix):
        raise ValueError(f"id prefix must be 1-16 lowercase letters or digits: {prefix!r}")


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a safe identifier (tenant, agent, call), else raise ValueError.

    Safe: 1-128 characters of letters, digits and ``._:@-``, starting with a letter or digit,
    so that ids can appear in log origins, file names and prose without escaping.
    """
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(
            f"{what} must be 1-128 letters, digits or '._:@-', starting with a letter or digit:"
            f" {value!r}"
        )
    return value


class RandomIds:
    """Time-ordered random ids (ULID layout)."""

    def __init__(self, clock: Clock, entropy: Callable[[int], bytes] = urandom) -> None:
        self._clock = clock
        self._entropy = entropy

    def new(self, prefix: str) -> str:
        _check_prefix(prefix)
        millis = int(self._clock.now().timestamp() * 1000) & ((1 << 48) - 1)
        value = (millis << 80) | int.from_bytes(self._entropy(10), "big")
        chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
        return f"{prefix}_{''.join(chars)}"


class SequentialIds:
    """``prefix_0000000001``, ``prefix_0000000002``, ...: one counter per prefix."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()

    def new(self, prefix: str) -> str:
        _check_prefix(prefix)
        with self._lock:
            n = self._counters.get(prefix, 0) + 1
            self._counters[prefix] = n
        return f"{prefix}_{n:010d}"
