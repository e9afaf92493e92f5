"""A whole broker against the six provider fakes, in-process, for end-to-end tests.

The broker is built by :func:`corral.broker.assembly.open_broker` from real settings (SQLite
file, local key file, delegation seed) and served by its real ASGI app; only the network to
the providers is replaced, by :class:`corral.fakes.FakeTransport`. Control's part (approving
each call) is played by :meth:`World.approve`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from corral.broker.app import create_app
from corral.broker.approval import ApprovalSigner
from corral.broker.assembly import BrokerParts, control_approval_signer, open_broker
from corral.broker.executor import Broker
from corral.core.clock import ManualClock
from corral.core.ids import SequentialIds
from corral.core.settings import Settings, load_settings
from corral.fakes import Fake, FakeTransport, create_fakes, fake_endpoints

T = TypeVar("T")
TENANT = "brightsmile"
START = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class World:
    settings: Settings
    clock: ManualClock
    fakes: dict[str, Fake]
    parts: BrokerParts
    control: ApprovalSigner
    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    seeds: dict[str, str] = field(default_factory=dict)
    _keys: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def broker(self) -> Broker:
        return self.parts.broker

    def key(self) -> str:
        return f"idem-{next(self._keys):08d}"

    def delegate(
        self, tools: list[str], *, agent: str = "agent-1", sandbox: str = "sbx-1", **kw: Any
    ) -> str:
        minted, _events = self.broker.mint(
            tenant=TENANT, agent=agent, sandbox=sandbox, tools=tools, ttl_s=kw.pop("ttl_s", 300),
            **kw,
        )  # fmt: skip
        return minted.token

    def call(
        self,
        tool: str,
        args: dict[str, Any],
        *,
        key: str | None = None,
        agent: str = "agent-1",
        sandbox: str = "sbx-1",
    ) -> dict[str, Any]:
        return {
            "tenant": TENANT, "agent": agent, "sandbox": sandbox, "tool": tool, "args": args,
            "idempotency_key": key or self.key(), "connection_id": None, "country": "US",
        }  # fmt: skip

    def approve(self, call: dict[str, Any]) -> str:
        return self.control.approve(
            call, approval_id=f"apv-{call['idempotency_key']}", clock=self.clock
        )

    @functools.cached_property
    def app(self) -> FastAPI:
        return create_app(self.broker)

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            return await client.post(path, json=body)

    async def get(self, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            return await client.get(path)

    async def execute(
        self, tool: str, args: dict[str, Any], *, delegation: str | None = None, **kw: Any
    ) -> httpx.Response:
        call = self.call(tool, args, **kw)
        token = delegation or self.delegate([tool], agent=call["agent"], sandbox=call["sandbox"])
        return await self.post(
            "/execute", {"delegation": token, "approval": self.approve(call), "call": call}
        )

    def close(self) -> None:
        run(self.parts.aclose())


def build_world(tmp: Path, *, database_url: str | None = None, schema: str | None = None) -> World:
    """A broker with all six providers connected to their fakes."""
    overrides: dict[str, Any] = {"data_dir": tmp, "deployment": "corral.test"}
    if database_url is not None:
        overrides["broker"] = {"database_url": database_url, "database_schema": schema}
    settings = load_settings(**overrides)
    clock = ManualClock(START)
    fakes = create_fakes(clock)
    control = control_approval_signer(settings)
    parts = open_broker(settings, clock=clock, ids=SequentialIds(), transport=FakeTransport(fakes))
    world = World(settings, clock, fakes, parts, control)
    endpoints = fake_endpoints(fakes)
    for name, fake in fakes.items():
        world.fields[name] = fake.new_connection()
        parts.broker.vault.connect(
            TENANT, f"{name}-1", name, dict(world.fields[name]), endpoints=endpoints[name]
        )
    _seed(world)
    return world


def _seed(world: World) -> None:
    """Provider-side data the catalog calls refer to (customers, contacts, calendars)."""
    fakes: Any = world.fakes
    stripe_key = world.fields["stripe"]["api_key"]
    world.seeds["stripe_customer"] = fakes["stripe"].add_customer(stripe_key)
    world.seeds["stripe_paid"] = fakes["stripe"].add_paid_payment_intent(stripe_key, 12000, "usd")
    realm = world.fields["quickbooks"]["realm_id"]
    world.seeds["qbo_customer"] = fakes["quickbooks"].add_customer(realm, "Ana Ruiz")
    location = world.fields["ghl"]["location_id"]
    world.seeds["ghl_contact"] = fakes["ghl"].add_contact(location, phone="+13105550123")
    world.seeds["ghl_calendar"] = fakes["ghl"].add_calendar(location)
    world.seeds["calendly_event_type"] = fakes["calendly"].add_event_type(
        world.fields["calendly"], duration=30
    )


def catalog_calls(world: World) -> list[tuple[str, dict[str, Any]]]:
    """One valid call of every catalog tool (a refund refers to a payment intent made first)."""
    day = START + timedelta(days=1)
    at = (day.replace(hour=17)).isoformat()
    end = (day.replace(hour=17, minute=30)).isoformat()
    return [
        ("twilio.send_sms", {"to": "(310) 555-0123", "body": "See you at 10!"}),
        ("stripe.create_payment_intent",
         {"amount": 12000, "currency": "usd", "customer": world.seeds["stripe_customer"]}),
        ("quickbooks.create_invoice",
         {"customer_id": world.seeds["qbo_customer"],
          "lines": [{"amount": "120.00", "description": "Cleaning"}]}),
        ("google_calendar.insert_event",
         {"calendar_id": "primary", "start": at, "end": end, "summary": "Cleaning"}),
        ("google_calendar.list_events",
         {"calendar_id": "primary", "time_min": at, "time_max": end}),
        ("calendly.book",
         {"event_type": world.seeds["calendly_event_type"], "start_time": at, "end_time": end,
          "invitee": {"name": "Ana Ruiz", "email": "ana@example.com",
                      "timezone": "America/Los_Angeles"}}),
        ("ghl.upsert_contact", {"phone": "+13105550199", "first_name": "Bo"}),
        ("ghl.send_message",
         {"contact_id": world.seeds["ghl_contact"], "type": "SMS", "message": "Hi!"}),
        ("ghl.book_appointment",
         {"calendar_id": world.seeds["ghl_calendar"], "contact_id": world.seeds["ghl_contact"],
          "start": at, "end": end}),
    ]  # fmt: skip
