"""Run ``corral control``'s supervisor: its ledger restored, tenants' policies loaded, the API
on a 0600 Unix socket (TCP with TLS optional), every decision in the audit chain.

Tenant policies are files ``<data dir>/control/tenants/<tenant>.json`` (or ``.yaml``), or set
at run time with ``PUT /tenants/{tenant}/policy``.

The operator dashboard (``dashboard.enabled``, on by default) is mounted at ``/dashboard`` of
the same app, over real data (:mod:`corral.dashboard.wiring`), and served alone on
``dashboard.listen``: plain HTTP on a loopback address, where every path outside
``/dashboard`` is 404, so the operator API stays on the Unix socket (and TLS TCP).
"""

from __future__ import annotations

from pathlib import Path

from corral.audit.chain import open_chain
from corral.broker.assembly import control_approval_signer
from corral.broker.client import BrokerClient
from corral.core import serving
from corral.core.clock import SystemClock
from corral.core.ids import RandomIds
from corral.core.serving import Listen, serve
from corral.core.settings import Settings
from corral.dashboard import mount
from corral.dashboard.wiring import WiredDashboard, build_dashboard, dashboard_only
from corral.supervisor.app import create_app
from corral.supervisor.dispatch import Dispatcher
from corral.supervisor.policy import TenantPolicy, load_policy
from corral.supervisor.service import Control
from corral.supervisor.store import LedgerStore


def load_policies(directory: Path) -> dict[str, TenantPolicy]:
    """Every ``<tenant>.json``/``.yaml``/``.yml`` file of ``directory`` (refused if invalid)."""
    policies = {}
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.suffix in (".json", ".yaml", ".yml"):
                policies[path.stem] = load_policy(path)
    return policies


async def serve_control(settings: Settings) -> None:
    clock = SystemClock()
    store = LedgerStore.from_url(
        settings.control_database_url(), schema=settings.control.database_schema
    )
    store.create_schema()
    control_settings = settings.control
    # Control's approval key: the broker runs nothing without control's signature over the call.
    broker = BrokerClient(socket=settings.broker_socket())
    approver = control_approval_signer(settings)
    dispatcher = Dispatcher(broker, approver, clock)
    with open_chain(settings, clock) as chain:
        control = Control(
            store, clock, RandomIds(clock), sequencer=chain.sequencer,
            policies=load_policies(settings.control_dir / "tenants"),
            defer_timeout_s=control_settings.defer_timeout_s, dispatcher=dispatcher,
        )  # fmt: skip
        control.restore()
        app = create_app(control, reconsider_every_s=control_settings.reconsider_every_s)
        dashboard: WiredDashboard | None = None
        try:
            if settings.dashboard.enabled:
                dashboard = build_dashboard(settings, control=control, chain=chain,
                                            broker=broker, approver=approver,
                                            clock=clock)  # fmt: skip
                mount(app, dashboard.app)
            browser = settings.dashboard.address() if dashboard is not None else None
            listen = Listen(settings.control_socket(), control_settings.tcp_host,
                            control_settings.tcp_port, control_settings.tls_cert,
                            control_settings.tls_key, http_loopback=browser)  # fmt: skip
            await serve(app, listen, loopback_app=dashboard_only(app) if dashboard else None)
        finally:
            if dashboard is not None:
                await dashboard.aclose()
            await broker.aclose()
            store.close()


def run(settings: Settings) -> None:
    serving.run(serve_control(settings))
