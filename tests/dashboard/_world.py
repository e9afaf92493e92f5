"""Two businesses for the dashboard's tests: a real audit chain and a real supervisor.

Bright Smile Dental (``brightsmile``) has the demo day of :func:`corral.audit.demo.demo_day`;
QuickFix Plumbing (``quickfix``) has a day of its own, with no text in common. Both have
escalations waiting in a real :class:`~corral.supervisor.service.Control` (whose decisions
append to the same chain), connections in a fake source holding canary credentials, and agents
in an :class:`~corral.dashboard.sources.InMemoryAgents`. The dashboard is mounted at
``/dashboard`` of a parent app, as ``corral control`` mounts it.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from argon2 import PasswordHasher
from fastapi import FastAPI

from corral.audit import AuditChain, AuditKeys, LocalAnchorStore, LogStore
from corral.audit.demo import DEMO_TENANT, demo_day
from corral.audit.entries import (
    ActionExecuted,
    ActionExecutedData,
    ActionRequested,
    ActionRequestedData,
    ActionVerdict,
    ActionVerdictData,
    Actor,
    KnownEntry,
    PersonalPayload,
    SandboxData,
    SandboxStarted,
    TemplateActivated,
    TemplateActivatedData,
    Verdict,
    seal,
    split_personal_args,
)
from corral.audit.prose import RenderContext
from corral.core.clock import ManualClock
from corral.core.ids import SequentialIds
from corral.dashboard import DashboardSettings, Sources, create_dashboard, mount
from corral.dashboard.auth import OwnerStore
from corral.dashboard.sources import (
    ActionUnavailable,
    AgentView,
    ChainActivity,
    ChainAudit,
    ConnectionView,
    ControlApprovals,
    InMemoryAgents,
    NotFound,
    UpgradeOffer,
    connection_views,
)
from corral.supervisor.policy import load_policy
from corral.supervisor.service import Control
from corral.supervisor.store import LedgerStore

T = TypeVar("T")
A, B = DEMO_TENANT, "quickfix"
NAMES = {A: "Bright Smile Dental", B: "QuickFix Plumbing"}
ZONES = {A: "America/Los_Angeles", B: "America/Chicago"}
PASSWORD = {A: "correct horse battery staple", B: "pipes and wrenches 2026!"}
EMAIL = {A: "lee@brightsmile.example", B: "sam@quickfix.example"}
#: Strings of each tenant that must never appear on the other tenant's pages.
MARKERS = {
    A: [
        "brightsmile",
        "Bright Smile",
        "receptionist-1",
        "pi_7Zx",
        "Ana Ruiz",
        "(310) 555-0123",
        "esc-refund-a",
        "charge-a2",
        "dental-front-desk",
        "twilio-a1",
        "sbx-1",
    ],
    B: [
        "quickfix",
        "QuickFix",
        "dispatcher-1",
        "(415) 555-0142",
        "esc-refund-b",
        "plumbing-dispatch",
        "stripe-b1",
        "sbx-q1",
    ],
}
CANARY = {
    A: {"account_sid": "ACcanary0000a11ce", "auth_token": "CANARY-A-TWILIO-9d8f7e6c5b4a"},
    B: {"api_key": "sk_live_CANARY-B-STRIPE-1f2e3d4c"},
}
POLICY = {
    "timezone": "America/Los_Angeles",
    "refunds": {"escalate_above": {"amount": 20000, "currency": "usd"}},
}
DAY_B = datetime(2026, 3, 3, 16, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 4, 16, 30, tzinfo=UTC)  # the next morning in Los Angeles


def off_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in a thread of its own (Playwright's sync API keeps an
    event loop running in the test's thread)."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(make())))
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("the coroutine failed; see the thread's traceback")
    return result[0]


def quickfix_day() -> list[tuple[KnownEntry, PersonalPayload | None]]:
    """QuickFix Plumbing's morning: a setup, a sandbox, one text message sent."""
    ids = SequentialIds()
    out: list[tuple[KnownEntry, PersonalPayload | None]] = []

    def base(actor: Actor, minutes: float) -> dict[str, Any]:
        return {
            "id": ids.new("qf"),
            "tenant": B,
            "at": DAY_B + timedelta(minutes=minutes),
            "actor": actor,
        }

    owner, host = Actor(kind="operator", id="owner"), Actor(kind="host", id="host-9")
    out.append(
        seal(
            TemplateActivated(
                **base(owner, 0),
                data=TemplateActivatedData(
                    activation_id="act-q1",
                    template="plumbing-dispatch",
                    version="2.0.1",
                    content_hash="sha256:77aa",
                ),
            ),
            None,
            salt=bytes(32),
        )
    )
    out.append(
        seal(
            SandboxStarted(
                **base(host, 1),
                data=SandboxData(
                    sandbox_id="sbx-q1",
                    agent="dispatcher-1",
                    backend="bwrap",
                    isolation="namespaces",
                ),
            ),
            None,
            salt=bytes(32),
        )
    )
    args = {"to": "+14155550142", "body": "Your plumber Sam arrives between 2 and 4 PM."}
    public, personal = split_personal_args(args)
    agent = Actor(kind="agent", id="dispatcher-1", role="dispatcher")
    out.append(
        seal(
            ActionRequested(
                **base(agent, 5),
                data=ActionRequestedData(call_id="qcall-1", tool="twilio.send_sms", args=public),
            ),
            {"args": personal},
            salt=bytes(range(32)),
        )
    )
    supervisor, broker = Actor(kind="supervisor", id="supervisor"), Actor(kind="broker", id="b")
    out.append(
        seal(
            ActionVerdict(
                **base(supervisor, 5),
                data=ActionVerdictData(
                    call_id="qcall-1", tool="twilio.send_sms", verdict=Verdict.ALLOW
                ),
            ),
            None,
        )
    )
    out.append(
        seal(
            ActionExecuted(
                **base(broker, 5.1),
                data=ActionExecutedData(
                    call_id="qcall-1",
                    tool="twilio.send_sms",
                    status="succeeded",
                    result={"sid": "SMq1"},
                ),
            ),
            None,
        )
    )
    return out


class FakeConnections:
    """Connections as the broker shows them, with the secrets a broker would hold (canaries),
    recording every call so that tests can see which tenant each action was for."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.unavailable = False
        self._add(A, "twilio-a1", "twilio", CANARY[A], "active")
        self._add(
            A,
            "gcal-a1",
            "google_calendar",
            {
                "client_id": "cid-a",
                "client_secret": "CANARY-A-GCAL-SECRET-55aa",
                "refresh_token": "CANARY-A-REFRESH-66bb",
            },
            "needs_reconnect",
            reason="Google refused the saved refresh token: reconnect the account",
        )
        self._add(B, "stripe-b1", "stripe", CANARY[B], "active")

    def _add(
        self,
        tenant: str,
        cid: str,
        provider: str,
        fields: Mapping[str, str],
        status: str,
        reason: str | None = None,
    ) -> None:
        self.rows[(tenant, cid)] = {
            "tenant": tenant,
            "connection_id": cid,
            "provider": provider,
            "status": status,
            "created_at": self.at.isoformat(),
            "updated_at": self.at.isoformat(),
            "status_reason": reason,
        }
        self.secrets[(tenant, cid)] = dict(fields)

    async def connections(self, tenant: str) -> list[ConnectionView]:
        return connection_views(row for (t, _), row in self.rows.items() if t == tenant)

    def _own(self, tenant: str, cid: str) -> dict[str, Any]:
        row = self.rows.get((tenant, cid))
        if row is None:
            raise NotFound(cid)
        return row

    async def connect(
        self, tenant: str, provider: str, fields: Mapping[str, str], *, operator: str
    ) -> None:
        self.calls.append(("connect", tenant, provider))
        if self.unavailable:
            raise ActionUnavailable("use `corral broker connect` for now")
        self._add(tenant, f"{provider}-{len(self.rows) + 1}", provider, fields, "active")

    async def rotate(
        self, tenant: str, connection_id: str, fields: Mapping[str, str], *, operator: str
    ) -> None:
        self.calls.append(("rotate", tenant, connection_id))
        row = self._own(tenant, connection_id)
        self.secrets[(tenant, connection_id)] = dict(fields)
        row["status"], row["status_reason"] = "active", None

    async def revoke(self, tenant: str, connection_id: str, *, operator: str) -> None:
        self.calls.append(("revoke", tenant, connection_id))
        self._own(tenant, connection_id)["status"] = "revoked"


def agents_of(tenant: str) -> Iterable[AgentView]:
    started = datetime(2026, 3, 4, 15, 55, tzinfo=UTC)
    if tenant == A:
        offer = UpgradeOffer(
            "dental-front-desk",
            "1.4.2",
            "1.5.0",
            "minor",
            notes="Adds Spanish replies and a waitlist.",
        )
        return [
            AgentView(
                "receptionist-1",
                "receptionist",
                "sbx-1",
                "firecracker",
                "vm",
                "dental-front-desk",
                "1.4.2",
                started,
                offer,
            ),
            AgentView(
                "booking-1",
                "booking",
                "sbx-2",
                "gvisor",
                "gvisor",
                "dental-front-desk",
                "1.4.2",
                started,
                offer,
            ),
            AgentView(
                "billing-1",
                "billing",
                "sbx-3",
                "firecracker",
                "vm",
                "dental-front-desk",
                "1.4.2",
                started,
                offer,
            ),
        ]
    if tenant == B:
        offer = UpgradeOffer("plumbing-dispatch", "2.0.1", "2.1.0", "minor")
        return [
            AgentView(
                "dispatcher-1",
                "dispatcher",
                "sbx-q1",
                "bwrap",
                "namespaces",
                "plumbing-dispatch",
                "2.0.1",
                started,
                offer,
            )
        ]
    return []


@dataclass
class World:
    tmp: Path
    clock: ManualClock
    chain: AuditChain
    ledger: LedgerStore
    control: Control
    owners: OwnerStore
    connections: FakeConnections
    agents: InMemoryAgents
    app: FastAPI
    opted: list[tuple[str, str, str]] = field(default_factory=list)

    def log(self, tenant: str) -> list[bytes]:
        store = self.chain.store
        return [e.leaf for e in store.entries(tenant, 0, store.log_size(tenant))]

    def close(self) -> None:
        self.chain.close()
        self.ledger.close()
        self.owners.close()


def context_for(tenant: str) -> RenderContext:
    return RenderContext(timezone="America/Los_Angeles", locale="en", country="US")


def build_world(tmp: Path, *, per_page: int = 25, hasher: PasswordHasher | None = None) -> World:
    clock = ManualClock(datetime(2026, 3, 3, 15, 55, tzinfo=UTC))
    store = LogStore.from_url(f"sqlite:///{tmp / 'audit.db'}")
    store.create_schema()
    chain = AuditChain(
        deployment="corral.test",
        store=store,
        keys=AuditKeys(bytes(range(32))),
        anchors=LocalAnchorStore(tmp / "anchors.db"),
        clock=clock,
    )
    day = list(demo_day())
    for future in chain.sequencer.submit_many(A, day[: len(day) // 2]):
        future.result()
    chain.sequencer.checkpoint(A)
    chain.anchorer.anchor_now()  # a midday anchor: the latest checkpoint links to it by proof
    for future in chain.sequencer.submit_many(A, day[len(day) // 2 :]):
        future.result()
    for future in chain.sequencer.submit_many(B, quickfix_day()):
        future.result()
    clock.set(NOW)
    ledger = LedgerStore.from_url(f"sqlite:///{tmp / 'control.db'}")
    ledger.create_schema()
    control = Control(
        ledger,
        clock,
        SequentialIds(),
        sequencer=chain.sequencer,
        policies={A: load_policy(POLICY), B: load_policy(POLICY)},
    )
    refund = {"payment_intent": "pi_9Kd", "amount": 48000, "currency": "usd"}
    charge = {"amount": 9000, "currency": "usd", "customer": "cus_ana"}

    async def escalate() -> None:
        await control.call(
            A, "billing-1", "esc-refund-a", "stripe.create_refund", refund, "billing"
        )
        await control.call(A, "billing-1", "charge-a1", "stripe.create_payment_intent", charge)
        await control.call(A, "receptionist-1", "charge-a2", "stripe.create_payment_intent", charge)
        await control.call(
            B,
            "dispatcher-1",
            "esc-refund-b",
            "stripe.create_refund",
            {"payment_intent": "pi_QF1", "amount": 75000, "currency": "usd"},
        )

    off_loop(escalate)
    for tenant in (A, B):
        chain.sequencer.checkpoint(tenant)
    chain.anchorer.anchor_now()
    owners = OwnerStore.from_url(
        f"sqlite:///{tmp / 'dashboard.db'}",
        clock=clock,
        hasher=hasher or PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1),
    )
    owners.create_schema()
    for tenant in (A, B):
        owners.create_owner(tenant, EMAIL[tenant], PASSWORD[tenant])
    connections = FakeConnections(datetime(2026, 3, 3, 15, 55, tzinfo=UTC))
    opted: list[tuple[str, str, str]] = []
    agents = InMemoryAgents(agents_of, on_opt_in=lambda *args: opted.append(args))
    sources = Sources(
        activity=ChainActivity(chain, context_for=context_for),
        approvals=ControlApprovals(control, context_for=context_for),
        connections=connections,
        agents=agents,
        audit=ChainAudit(chain),
    )
    settings = DashboardSettings(
        database_url="sqlite:///unused", per_page=per_page, tenant_names=NAMES, timezones=ZONES
    )
    parent = FastAPI()

    @parent.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    mount(parent, create_dashboard(sources, settings, clock=clock, owners=owners))
    return World(tmp, clock, chain, ledger, control, owners, connections, agents, parent, opted)


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Client:
    """An owner's browser without JavaScript: cookies, forms, the CSRF token from the page."""

    def __init__(
        self, app: FastAPI, *, base_url: str = "http://dash.test", address: str = "203.0.113.7"
    ) -> None:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        self.http = httpx.AsyncClient(transport=transport, base_url=base_url)
        self.csrf: str | None = None

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        response = await self.http.get(f"/dashboard{path}", **kw)
        if match := _CSRF.search(response.text):
            self.csrf = match.group(1)
        return response

    async def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        csrf: str | None | bool = True,
        **kw: Any,
    ) -> httpx.Response:
        form = dict(data or {})
        if csrf is True:
            assert self.csrf is not None, "GET a page first"
            form["csrf"] = self.csrf
        elif isinstance(csrf, str):
            form["csrf"] = csrf
        return await self.http.post(f"/dashboard{path}", data=form, **kw)

    async def login(
        self, tenant: str, *, password: str | None = None, email: str | None = None
    ) -> httpx.Response:
        await self.get("/login")
        return await self.post(
            "/login",
            {
                "tenant": tenant,
                "email": email or EMAIL[tenant],
                "password": password or PASSWORD[tenant],
            },
        )

    async def aclose(self) -> None:
        await self.http.aclose()
