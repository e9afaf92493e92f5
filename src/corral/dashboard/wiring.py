"""The dashboard over ``corral control``'s real objects: its audit chain, its supervisor, the
broker's client, the host's admin API and the template activations.

:func:`build_dashboard` makes the :class:`~corral.dashboard.sources.Sources` and the app;
``corral control serve`` mounts it at ``/dashboard`` of its app and serves
:func:`dashboard_only` of that app on ``dashboard.listen`` (plain HTTP, loopback only): the
browser's port reaches the dashboard and its CSRF-protected forms, never the operator API.

- Activity and Audit: :class:`~corral.dashboard.sources.ChainActivity` and
  :class:`~corral.dashboard.sources.ChainAudit` over control's chain, the prose in each tenant's
  policy time zone and country.
- Approvals: :class:`~corral.dashboard.sources.ControlApprovals` over the :class:`Control`.
- Connections: :class:`~corral.dashboard.sources.BrokerConnections` over the broker's client:
  connect, replace and revoke (which deletes the saved credential) approved by control's key,
  the ``credential.*`` events the broker answers with appended to the tenant's chain
  (:func:`chain_recorder`), naming the signed-in owner as the operator.
- Agents: :class:`HostAgents`, the host's ``GET /sandboxes`` joined with the activations of
  :mod:`corral.templates`; the page says so when the host is not running.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import httpx
from fastapi import FastAPI
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import corral
from corral.audit.chain import AuditChain
from corral.audit.prose import ProseError, RenderContext
from corral.broker.client import BrokerClient
from corral.broker.events import to_entries
from corral.core.clock import Clock, parse_time
from corral.core.errors import ConfigError
from corral.core.ids import IdSource, RandomIds
from corral.core.settings import Settings
from corral.dashboard.app import create_dashboard
from corral.dashboard.auth import OwnerStore
from corral.dashboard.sources import (
    AgentView,
    BrokerConnections,
    ChainActivity,
    ChainAudit,
    ControlApprovals,
    NotFound,
    Sources,
    SourceUnavailable,
    UpgradeOffer,
)
from corral.supervisor.dispatch import Approver
from corral.supervisor.policy import TenantPolicy
from corral.supervisor.service import Control
from corral.templates import (
    Activation,
    ActivationError,
    Activations,
    ActivationStore,
    Catalog,
    HistoryRecord,
    TemplateError,
    UpgradeKind,
    Version,
    classify,
)
from corral.templates import UpgradeOffer as TemplateOffer

log = logging.getLogger(__name__)

__all__ = [
    "HOST_NOT_RUNNING",
    "HostAdmin",
    "HostAgents",
    "HostNotRunning",
    "WiredDashboard",
    "build_dashboard",
    "chain_recorder",
    "dashboard_only",
    "default_catalog",
    "open_activations",
    "policy_context",
    "tenant_zones",
]

HOST_NOT_RUNNING = (
    "The host that runs your agents is not running, so no agent can be listed right now. "
    "(Operator: start it with `corral host serve`.)"
)
#: The host's name for its warm sandboxes (``corral.runtime.host.POOL_AGENT``), not agents.
_POOL_AGENT = "pool"
_CHANGE: dict[UpgradeKind, Literal["patch", "minor", "major"]] = {
    UpgradeKind.PATCH: "patch",
    UpgradeKind.MINOR: "minor",
    UpgradeKind.MAJOR: "major",
}


# ------------------------------------------------------------------------- tenant settings


class _TenantZones(Mapping[str, str]):
    """The dashboard's ``timezones`` over the live policies' (a policy set at run time with
    ``PUT /tenants/{tenant}/policy`` shows at once)."""

    def __init__(self, overrides: Mapping[str, str], policies: Mapping[str, TenantPolicy]) -> None:
        self._overrides = overrides
        self._policies = policies

    def __getitem__(self, tenant: str) -> str:
        if tenant in self._overrides:
            return self._overrides[tenant]
        return self._policies[tenant].timezone

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._overrides, *self._policies]))

    def __len__(self) -> int:
        return len(set(self._overrides) | set(self._policies))


def tenant_zones(
    overrides: Mapping[str, str], policies: Mapping[str, TenantPolicy]
) -> Mapping[str, str]:
    """tenant → IANA zone: the settings' override, else the tenant policy's ``timezone``."""
    return _TenantZones(overrides, policies)


def policy_context(
    zones: Mapping[str, str], policies: Mapping[str, TenantPolicy]
) -> Callable[[str], RenderContext]:
    """How the timeline speaks to a tenant: its zone and its policy's country."""

    def context_for(tenant: str) -> RenderContext:
        policy = policies.get(tenant)
        try:
            return RenderContext(
                timezone=zones.get(tenant, "UTC"), country=policy.country if policy else "US"
            )
        except ProseError:  # a zone or country the renderer cannot use: UTC, not a 500
            return RenderContext()

    return context_for


# ------------------------------------------------------------------------------- broker


def chain_recorder(
    chain: AuditChain, ids: IdSource
) -> Callable[[str, list[dict[str, Any]]], Awaitable[None]]:
    """``record(tenant, events)``: append the broker's events to the tenant's audit chain
    (:func:`corral.broker.to_entries`) and return once they are durable."""

    async def record(tenant: str, events: list[dict[str, Any]]) -> None:
        futures = chain.sequencer.submit_many(tenant, to_entries(events, tenant, ids))
        await asyncio.gather(*(asyncio.wrap_future(future) for future in futures))

    return record


# ---------------------------------------------------------------------------------- host


class HostNotRunning(SourceUnavailable):
    """Nothing answers on the host's admin socket."""


class HostAdmin:
    """The host's admin API (``GET /sandboxes`` of :func:`corral.runtime.host.create_admin_app`)
    over its 0600 Unix socket; the transport is injectable for tests."""

    def __init__(
        self,
        socket: Path | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if transport is None:
            if socket is None:
                raise ValueError("HostAdmin needs the host's socket or a transport")
            transport = httpx.AsyncHTTPTransport(uds=str(socket))
        self._http = httpx.AsyncClient(
            base_url="http://host", transport=transport, timeout=httpx.Timeout(timeout_s)
        )

    async def sandboxes(self) -> list[dict[str, Any]]:
        """Every sandbox row of the host; :class:`HostNotRunning` if no host answers."""
        try:
            response = await self._http.get("/sandboxes")
        except httpx.ConnectError:  # no socket, or a stale one nobody listens on
            raise HostNotRunning(HOST_NOT_RUNNING) from None
        except httpx.HTTPError as exc:
            raise SourceUnavailable(
                f"The host did not answer ({type(exc).__name__}); try again shortly."
            ) from None
        if response.status_code != 200:
            status = response.status_code
            raise SourceUnavailable(f"The host refused to list its agents (HTTP {status}).")
        try:
            rows = response.json()["sandboxes"]
        except (ValueError, KeyError, TypeError):
            rows = None
        if not isinstance(rows, list):
            raise SourceUnavailable("The host's list of agents could not be read.")
        return [row for row in rows if isinstance(row, dict)]

    async def aclose(self) -> None:
        await self._http.aclose()


@dataclass(frozen=True, slots=True)
class _Running:
    sandbox_id: str
    agent: str
    backend: str
    level: str
    started_at: datetime | None


def _running(row: Mapping[str, Any], tenant: str) -> _Running | None:
    """A host row that is a running agent of ``tenant`` (not a warm sandbox, not one backing
    off between sandboxes), or None."""
    sandbox, agent = row.get("id"), row.get("agent")
    if row.get("tenant") != tenant or row.get("state") != "running":
        return None
    if not isinstance(sandbox, str) or not isinstance(agent, str) or agent == _POOL_AGENT:
        return None
    started: datetime | None = None
    if isinstance(row.get("started_at"), str):
        try:
            started = parse_time(row["started_at"])
        except ValueError:
            started = None
    return _Running(sandbox, agent, str(row.get("backend") or "?"), str(row.get("level")), started)


def _role(agent: str, assigned: Mapping[str, str], roles: set[str]) -> str | None:
    """The policy's role for the agent, else a template role it is named after
    (``booking`` or ``booking-2``)."""
    if agent in assigned:
        return assigned[agent]
    if agent in roles:
        return agent
    stem, sep, number = agent.rpartition("-")
    return stem if sep and number.isdigit() and stem in roles else None


def _version_at(history: list[HistoryRecord], current: str, started: datetime | None) -> str:
    """The version in force when the sandbox started: what the agent runs until it restarts."""
    if started is None or not history:
        return current
    before = [record for record in history if record.at <= started]
    return before[-1].version if before else history[0].version


def _notes(changelog: str) -> str:
    text = " ".join(changelog.split())
    return text if len(text) <= 300 else text[:297] + "..."


class HostAgents:
    """Running agents from the host's admin API, each joined with the template activation that
    set it up: the version it runs (the one in force when its sandbox started) and the upgrade
    offered. Opting in goes to :meth:`Activations.opt_in`, which appends the
    ``template.activated`` entry to the tenant's audit chain before the change commits; the
    agent runs the new version from its next start.

    ``roles`` gives the tenant policy's agent → role (``TenantPolicy.agents``); without one an
    agent named after a role of the template (``booking``, ``booking-2``) has that role.
    """

    def __init__(
        self,
        host: HostAdmin,
        activations: Activations | None,
        *,
        clock: Clock,
        roles: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        self._host = host
        self._activations = activations
        self._clock = clock
        self._roles = roles or (lambda _tenant: {})

    async def agents(self, tenant: str) -> list[AgentView]:
        rows = await self._host.sandboxes()
        running = [found for row in rows if (found := _running(row, tenant)) is not None]
        if not running:
            return []
        try:
            return await anyio.to_thread.run_sync(self._join, tenant, running)
        except TemplateError as exc:  # a corrupted activation row: the operator must look
            log.error("agents of %s: %s", tenant, exc)
            raise SourceUnavailable(
                "Your agents' setup record could not be read; the operator has been told."
            ) from exc

    def _join(self, tenant: str, running: list[_Running]) -> list[AgentView]:
        activations = self._activations
        now = self._clock.now()
        pinned = activations.activations(tenant) if activations is not None else []
        offers = activations.upgrades(tenant, now) if activations is not None else []
        roles_of: dict[str, set[str]] = {}
        for each in pinned:
            assert activations is not None
            template = activations.catalog.get(each.template, each.version)
            roles_of[each.activation_id] = {r.name for r in template.document.roles}
        every_role: set[str] = set()
        for names in roles_of.values():
            every_role |= names
        assigned = self._roles(tenant)
        history: dict[str, list[HistoryRecord]] = {}
        views = []
        for agent in sorted(running, key=lambda r: (r.agent, r.sandbox_id)):
            role = _role(agent.agent, assigned, every_role)
            activation = next(
                (a for a in pinned if role is not None and role in roles_of[a.activation_id]),
                pinned[0] if len(pinned) == 1 else None,
            )
            if activation is None or activations is None:
                views.append(
                    AgentView(
                        agent.agent,
                        role,
                        agent.sandbox_id,
                        agent.backend,
                        agent.level,
                        "—",
                        "",
                        agent.started_at,
                    )
                )
                continue
            if activation.activation_id not in history:
                history[activation.activation_id] = activations.store.history(
                    tenant, activation.activation_id
                )
            version = _version_at(
                history[activation.activation_id], activation.version, agent.started_at
            )
            views.append(
                AgentView(
                    agent=agent.agent,
                    role=role,
                    sandbox_id=agent.sandbox_id,
                    backend=agent.backend,
                    isolation=agent.level,
                    template=activation.template,
                    version=version,
                    started_at=agent.started_at,
                    upgrade=self._offer(activation, version, offers),
                )
            )
        return views

    def _offer(
        self, activation: Activation, running: str, offers: list[TemplateOffer]
    ) -> UpgradeOffer | None:
        """What the card offers: the pin it moved to since the agent started (scheduled), else
        the newest release the owner must opt in to (else a security patch, applied by itself)."""
        assert self._activations is not None
        if running != activation.version:
            try:
                kind = classify(Version.parse(running), activation.semver)
            except TemplateError:
                return None
            doc = self._activations.catalog.get(activation.template, activation.version).document
            return UpgradeOffer(
                activation.template,
                running,
                activation.version,
                _CHANGE[kind],
                security=doc.security,
                notes=_notes(doc.changelog),
                opted_in=True,
            )
        mine = [
            o for o in offers if o.activation_id == activation.activation_id and not o.prerelease
        ]
        if not mine:
            return None
        chosen = max(
            [o for o in mine if not o.automatic] or mine, key=lambda o: Version.parse(o.version)
        )
        return UpgradeOffer(
            chosen.template,
            chosen.current,
            chosen.version,
            _CHANGE[chosen.kind],
            security=chosen.security,
            notes=_notes(chosen.changelog),
        )

    async def opt_in(self, tenant: str, template: str, version: str) -> None:
        if self._activations is None:
            raise NotFound("no template catalog is configured")
        await anyio.to_thread.run_sync(self._opt_in, tenant, template, version)

    def _opt_in(self, tenant: str, template: str, version: str) -> None:
        activations = self._activations
        assert activations is not None
        now = self._clock.now()
        offer = next(
            (
                o
                for o in activations.upgrades(tenant, now)
                if o.template == template and o.version == version
            ),
            None,
        )
        if offer is None:
            raise NotFound(f"no upgrade of {template!r} to {version!r} is offered")
        try:
            activations.opt_in(tenant, offer.activation_id, version, now)
        except ActivationError as exc:  # sunset or moved meanwhile: no longer offered
            raise NotFound(str(exc)) from None


# ------------------------------------------------------------------------ the loopback port


def _loopback_name(host: str) -> bool:
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_of(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"host":
            text: str = value.decode("latin-1")
            if text.startswith("["):
                return text.partition("]")[0] + "]"
            return text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return ""


def dashboard_only(app: ASGIApp, prefix: str = "/dashboard") -> ASGIApp:
    """``app`` as the browser's loopback port serves it: ``prefix`` and below only (the
    operator API and everything else is 404, so the port cannot post calls or decisions outside
    the dashboard's CSRF-protected forms), and only for a ``Host`` that is a loopback name (a
    DNS-rebinding page's own host name is refused). ``/`` redirects to the dashboard."""

    async def only(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        if not _loopback_name(_host_of(scope)):
            text = "Misdirected request: this port answers to 127.0.0.1, [::1] and localhost."
            await PlainTextResponse(text, status_code=421)(scope, receive, send)
            return
        path: str = scope["path"]
        if path == prefix or path.startswith(prefix + "/"):
            await app(scope, receive, send)
        elif path == "/" and scope["method"] in ("GET", "HEAD"):
            await RedirectResponse(f"{prefix}/", status_code=307)(scope, receive, send)
        else:
            text = f"Not found: this port serves the dashboard only, at {prefix}/."
            await PlainTextResponse(text, status_code=404)(scope, receive, send)

    return only


# ---------------------------------------------------------------------------------- build


def default_catalog() -> Path | None:
    """``templates/`` of the source tree this corral runs from (the demo catalog), or None
    when it is installed without one (set ``dashboard.template_catalog``)."""
    root = Path(corral.__file__).resolve().parents[2] / "templates"
    return root if root.is_dir() else None


@dataclass
class WiredDashboard:
    """The dashboard app and what it holds open; :meth:`aclose` when control stops (the
    activations are the caller's, who closes them)."""

    app: FastAPI
    sources: Sources
    owners: OwnerStore
    host: HostAdmin
    activations: Activations | None

    async def aclose(self) -> None:
        await self.host.aclose()
        self.owners.close()


def open_activations(settings: Settings, chain: AuditChain, clock: Clock) -> Activations | None:
    """Control's template activations: the catalog ``dashboard.template_catalog`` (default
    :func:`default_catalog`), the store ``<data>/control/templates.db``, changes appended to
    ``chain``; ``None`` when there is no catalog. The caller closes ``activations.store``."""
    configured = settings.dashboard.template_catalog
    if configured is not None and not configured.is_dir():
        raise ConfigError(f"dashboard.template_catalog {configured} is not a directory")
    root = configured or default_catalog()
    if root is None:
        return None
    catalog = Catalog.load(root)
    store = ActivationStore.from_url(settings.templates_database_url())
    store.create_schema()
    return Activations(catalog, store, ids=RandomIds(clock), sequencer=chain.sequencer)


def build_dashboard(
    settings: Settings,
    *,
    control: Control,
    chain: AuditChain,
    broker: BrokerClient,
    approver: Approver,
    clock: Clock,
    activations: Activations | None,
    host: HostAdmin | None = None,
) -> WiredDashboard:
    """The dashboard of ``corral control`` over its chain, supervisor and broker client, the
    host's admin socket and the template activations (:func:`open_activations`, or ``None``
    for none)."""
    options = settings.dashboard
    zones = tenant_zones(dict(options.timezones), control.policies)
    context_for = policy_context(zones, control.policies)

    def approve(call: dict[str, Any]) -> str:
        return approver.approve(call, approval_id=f"apv-{call['idempotency_key']}", clock=clock)

    def roles(tenant: str) -> Mapping[str, str]:
        policy = control.policies.get(tenant)
        return policy.agents if policy is not None else {}

    host = host or HostAdmin(settings.host_socket)
    ids = RandomIds(clock)
    sources = Sources(
        activity=ChainActivity(chain, context_for=context_for),
        approvals=ControlApprovals(control, context_for=context_for),
        connections=BrokerConnections(
            broker, approve=approve, ids=ids, record=chain_recorder(chain, ids)
        ),
        agents=HostAgents(host, activations, clock=clock, roles=roles),
        audit=ChainAudit(chain),
    )
    resolved = options.model_copy(
        update={"database_url": settings.dashboard_database_url(), "timezones": zones}
    )
    app = create_dashboard(sources, resolved, clock=clock)
    owners: OwnerStore = app.state.owners
    return WiredDashboard(app, sources, owners, host, activations)
