"""Run ``corral control``'s supervisor: its ledger restored, tenants' policies loaded, the API
on a 0600 Unix socket (TCP with TLS optional), every decision in the audit chain.

Tenant policies are files ``<data dir>/control/tenants/<tenant>.json`` (or ``.yaml``), or set
at run time with ``PUT /tenants/{tenant}/policy``.

The operator dashboard (``dashboard.enabled``, on by default) is mounted at ``/dashboard`` of
the same app, over real data (:mod:`corral.dashboard.wiring`), and served alone on
``dashboard.listen``: plain HTTP on a loopback address, where every path outside
``/dashboard`` is 404, so the operator API stays on the Unix socket (and TLS TCP).

Template maintenance (:class:`corral.templates.Maintenance`) runs every
``templates.maintain_every_s`` seconds while control serves, when there is a template catalog:
automatic security patches, and sunset notices in the audit chain.

:func:`serve_control` is also what the demo's launcher (:mod:`corral.demo.control`) runs, with
its decisions on an accelerated clock, a route of its own and a timing middleware.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp

from corral.audit.chain import open_chain
from corral.broker.assembly import control_approval_signer
from corral.broker.client import BrokerClient
from corral.core import serving
from corral.core.clock import Clock, SystemClock
from corral.core.ids import RandomIds
from corral.core.serving import Listen, serve
from corral.core.settings import Settings
from corral.dashboard import mount
from corral.dashboard.wiring import (
    WiredDashboard,
    build_dashboard,
    dashboard_only,
    open_activations,
)
from corral.supervisor.app import create_app
from corral.supervisor.dispatch import Dispatcher
from corral.supervisor.policy import TenantPolicy, load_policy
from corral.supervisor.service import Control
from corral.supervisor.store import LedgerStore
from corral.templates import Activations, Maintenance


def load_policies(directory: Path) -> dict[str, TenantPolicy]:
    """Every ``<tenant>.json``/``.yaml``/``.yml`` file of ``directory`` (refused if invalid)."""
    policies = {}
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.suffix in (".json", ".yaml", ".yml"):
                policies[path.stem] = load_policy(path)
    return policies


async def serve_control(
    settings: Settings,
    *,
    decision_clock: Clock | None = None,
    broker_transport: httpx.AsyncBaseTransport | None = None,
    routes: Callable[[FastAPI], None] | None = None,
    middleware: Callable[[ASGIApp], ASGIApp] | None = None,
) -> None:
    """Serve control until SIGINT or SIGTERM, then close everything it opened.

    **Parameters:**

    - ``decision_clock``: the time control decides on (quiet hours, daily caps, windows),
      writes its audit entries at and runs template maintenance at; default the real clock.
      The dispatcher's approvals and the dashboard (sessions, the approvals it signs for the
      broker) keep the real clock: the broker checks expiries in real seconds.
    - ``broker_transport``: the broker client's httpx transport; default the broker's socket.
    - ``routes``: called with control's API (a ``FastAPI``) to add routes before serving.
    - ``middleware``: wraps the app served on the Unix socket and TCP (not the dashboard's
      loopback port, which serves only ``/dashboard``).
    """
    real = SystemClock()
    clock = decision_clock if decision_clock is not None else real
    store = LedgerStore.from_url(
        settings.control_database_url(), schema=settings.control.database_schema
    )
    store.create_schema()
    control_settings = settings.control
    # Control's approval key: the broker runs nothing without control's signature over the call.
    broker = (
        BrokerClient(socket=settings.broker_socket())
        if broker_transport is None
        else BrokerClient(transport=broker_transport)
    )
    approver = control_approval_signer(settings)
    dispatcher = Dispatcher(broker, approver, real)
    with open_chain(settings, clock) as chain:
        control = Control(
            store, clock, RandomIds(clock), sequencer=chain.sequencer,
            policies=load_policies(settings.control_dir / "tenants"),
            defer_timeout_s=control_settings.defer_timeout_s, dispatcher=dispatcher,
        )  # fmt: skip
        control.restore()
        app = create_app(control, reconsider_every_s=control_settings.reconsider_every_s)
        if routes is not None:
            routes(app.api)
        dashboard: WiredDashboard | None = None
        maintenance: Maintenance | None = None
        activations: Activations | None = None
        try:
            activations = open_activations(settings, chain, clock)
            if settings.dashboard.enabled:
                dashboard = build_dashboard(settings, control=control, chain=chain,
                                            broker=broker, approver=approver, clock=real,
                                            activations=activations)  # fmt: skip
                mount(app, dashboard.app)
            if activations is not None:
                templates = settings.templates
                maintenance = Maintenance(activations, clock=clock,
                                          every_s=templates.maintain_every_s,
                                          warn_days=templates.warn_days)  # fmt: skip
                maintenance.start()
            browser = settings.dashboard.address() if dashboard is not None else None
            listen = Listen(settings.control_socket(), control_settings.tcp_host,
                            control_settings.tcp_port, control_settings.tls_cert,
                            control_settings.tls_key, http_loopback=browser)  # fmt: skip
            served = middleware(app) if middleware is not None else app
            await serve(served, listen, loopback_app=dashboard_only(app) if dashboard else None)
        finally:
            if maintenance is not None:
                await maintenance.aclose()
            if dashboard is not None:
                await dashboard.aclose()
            if activations is not None:
                activations.store.close()
            await broker.aclose()
            store.close()


def run(settings: Settings) -> None:
    serving.run(serve_control(settings))
