"""Building the fakes, routing to them in-process, and mounting them on one server."""

from __future__ import annotations

import importlib
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from corral.connectors import Endpoints
from corral.core.clock import Clock
from corral.fakes._common import Fake

_CLASSES = {
    "twilio": ("twilio", "TwilioFake"),
    "stripe": ("stripe", "StripeFake"),
    "google_calendar": ("google_calendar", "GoogleCalendarFake"),
    "calendly": ("calendly", "CalendlyFake"),
    "quickbooks": ("quickbooks", "QuickBooksFake"),
    "ghl": ("ghl", "GhlFake"),
}


def create_fakes(clock: Clock | None = None) -> dict[str, Fake]:
    """A fresh fake of every provider, by provider name."""
    fakes: dict[str, Fake] = {}
    for provider, (module, cls) in _CLASSES.items():
        factory: Any = getattr(importlib.import_module(f"corral.fakes.{module}"), cls)
        fakes[provider] = factory(clock=clock) if clock is not None else factory()
    return fakes


def fake_root(provider: str) -> str:
    """The in-process root URL of a provider's fake (routed by :class:`FakeTransport`)."""
    return f"http://{provider.replace('_', '-')}.fake"


def fake_endpoints(fakes: dict[str, Fake]) -> dict[str, Endpoints]:
    return {name: fake.endpoints(fake_root(name)) for name, fake in fakes.items()}


class FakeTransport(httpx.AsyncBaseTransport):
    """Routes requests for ``http://<provider>.fake`` to that provider's fake, in-process."""

    def __init__(self, fakes: dict[str, Fake]) -> None:
        self._routes = {
            fake_root(name).removeprefix("http://"): httpx.ASGITransport(app=fake.app())
            for name, fake in fakes.items()
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        route = self._routes.get(request.url.host)
        if route is None:
            raise httpx.ConnectError(f"no fake serves {request.url.host}", request=request)
        return await route.handle_async_request(request)


def combined_app(fakes: dict[str, Fake]) -> Starlette:
    """All fakes under one server: ``/<provider>/...`` (``corral fakes serve``)."""
    return Starlette(routes=[Mount(f"/{name}", app=fake.app()) for name, fake in fakes.items()])
