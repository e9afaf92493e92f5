"""Time spent waiting on providers, per call: what ``Server-Timing`` reports and what the
benchmark subtracts to get the broker's own overhead.

The broker's HTTP client runs over :class:`TimedTransport`, which adds each provider request's
duration to the accumulator of the current call (a context variable: concurrent calls on one
event loop each see their own).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpx

_waiting: ContextVar[list[float] | None] = ContextVar("corral_provider_seconds", default=None)


class TimedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that counts its requests' time toward the current call."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            return await self._inner.handle_async_request(request)
        finally:
            acc = _waiting.get()
            if acc is not None:
                acc[0] += time.perf_counter() - started

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextmanager
def provider_time() -> Iterator[list[float]]:
    """Within the block, provider requests of this context add their seconds to ``acc[0]``."""
    acc = [0.0]
    token = _waiting.set(acc)
    try:
        yield acc
    finally:
        _waiting.reset(token)
