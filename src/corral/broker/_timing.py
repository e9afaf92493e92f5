"""The broker's transport to providers: bounded in flight, and timed per call.

**Bounded.** At most ``max_in_flight`` requests to one provider host run at once; the others
wait their turn (a slow provider does not hold up calls to the others). httpx's connection
pool slows down sharply when far more requests than that wait inside it (encode/httpx#3215;
measured here: 100 concurrent requests to one fake gave 158 req/s, the same load capped at 8
in flight 855 req/s), so the queue is kept in front of the pool.

**Timed.** Each request's time is added to the accumulator of the current call (a context
variable: concurrent calls on one event loop each see their own), split into the wait for a
slot (``queue``) and the request itself (``provider``). ``Server-Timing`` reports both, and
the benchmark subtracts them to get the broker's own time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import httpx


@dataclass(slots=True)
class Waited:
    """Seconds one call spent waiting for a provider slot and on providers."""

    queue: float = 0.0
    provider: float = 0.0


_waited: ContextVar[Waited | None] = ContextVar("corral_provider_time", default=None)


class ProviderTransport(httpx.AsyncBaseTransport):
    """Wraps the real transport: a bound on requests in flight, and per-call timing."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, max_in_flight: int = 16) -> None:
        self._inner = inner
        self._max_in_flight = max_in_flight
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        waited = _waited.get()
        queued = time.perf_counter()
        host = request.url.host
        slots = self._slots.get(host)
        if slots is None:
            slots = self._slots[host] = asyncio.Semaphore(self._max_in_flight)
        async with slots:
            started = time.perf_counter()
            try:
                response = await self._inner.handle_async_request(request)
                # The body too: read later, its network waits would count as the broker's.
                await response.aread()
                return response
            finally:
                if waited is not None:
                    waited.queue += started - queued
                    waited.provider += time.perf_counter() - started

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextmanager
def provider_time() -> Iterator[Waited]:
    """Within the block, this context's provider requests add their time to the result."""
    waited = Waited()
    token = _waited.set(waited)
    try:
        yield waited
    finally:
        _waited.reset(token)
