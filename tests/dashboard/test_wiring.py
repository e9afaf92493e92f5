"""The dashboard as ``corral control serve`` serves it, over real data.

Most tests run ``corral control serve`` as a real subprocess on a data directory: an owner made
by ``corral control add-owner --password-stdin`` signs in on the loopback port and sees the
calls posted to control's Unix socket on the Activity page; the operator API is not on that
port (404); the Agents page says when the host is not running and, with ``corral host serve``
running (bubblewrap), lists its agents joined with their template activation, and the opt-in
appends ``template.activated`` to the tenant's chain. A non-loopback ``dashboard.listen``
refuses to start.

:class:`~corral.dashboard.wiring.HostAgents`' join is also tested in process against a
minimal ASGI app with the same JSON shape as the host's ``GET /sandboxes`` (so it runs without
bubblewrap); the real ``create_admin_app`` is what ``corral host serve`` serves above.

The Connections page's forms are tested in process against the broker's real app (all six
providers connected to their fakes), through :class:`BrokerConnections` wired as
:func:`build_dashboard` wires it: revoke, connect and replace a key, each approved with
control's key, changing the broker's vault, recorded in the tenant's chain by
:func:`chain_recorder` in the owner's name, and never echoing a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from corral.audit import AuditChain, AuditKeys, LocalAnchorStore, LogStore
from corral.audit.entries import UnknownEntry, parse_entry
from corral.broker.client import BrokerClient
from corral.core import serving
from corral.core.clock import ManualClock, format_time
from corral.core.errors import ConfigError
from corral.core.ids import SequentialIds
from corral.core.settings import load_settings
from corral.dashboard import DashboardSettings, Sources, create_dashboard, mount
from corral.dashboard.sources import (
    BrokerConnections,
    ChainActivity,
    ChainAudit,
    ControlApprovals,
    NotFound,
)
from corral.dashboard.wiring import (
    HOST_NOT_RUNNING,
    HostAdmin,
    HostAgents,
    HostNotRunning,
    chain_recorder,
    dashboard_only,
    default_catalog,
    policy_context,
    tenant_zones,
)
from corral.supervisor.policy import load_policy
from corral.templates import Activations, ActivationStore, Catalog
from tests._serving import free_port, wait_for_page
from tests.broker._world import build_world as build_broker
from tests.conftest import need_service
from tests.dashboard import _world as dash_world

ROOT = Path(__file__).resolve().parents[2]
TENANT = "brightsmile"
EMAIL = "lee@brightsmile.example"
PASSWORD = "correct horse battery staple"
POLICY = (
    "timezone: America/Los_Angeles\nrefunds:\n  escalate_above: {amount: 20000, currency: usd}\n"
)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
CATALOG = default_catalog()


def _cli(data: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "--data-dir", str(data), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _activate(data: Path, version: str) -> None:
    """Pin the tenant to the demo template (as an owner's first activation would)."""
    assert CATALOG is not None
    settings = load_settings(data_dir=data)
    store = ActivationStore.from_url(settings.templates_database_url())
    store.create_schema()
    try:
        activations = Activations(Catalog.load(CATALOG), store, ids=SequentialIds())
        activations.activate(TENANT, "dental-front-desk", version, datetime.now(UTC))
    finally:
        store.close()


@dataclass
class Served:
    """``corral control serve`` in a subprocess, its data directory and the loopback port."""

    data: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self) -> httpx.Client:
        """The operator API, on control's Unix socket."""
        transport = httpx.HTTPTransport(uds=str(self.data / "control" / "control.sock"))
        return httpx.Client(transport=transport, base_url="http://control")

    def kinds(self) -> list[str]:
        store = LogStore.from_url(f"sqlite:///{self.data / 'audit.db'}")
        try:
            leaves = store.entries(TENANT, 0, store.log_size(TENANT))
            return [parse_entry(e.leaf).kind for e in leaves]
        finally:
            store.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    # A short path: the host's sandbox channel sockets must fit in 108 bytes.
    data = Path(tempfile.mkdtemp(prefix="dw-", dir="/tmp"))
    tenants = data / "control" / "tenants"
    tenants.mkdir(parents=True)
    (tenants / f"{TENANT}.yaml").write_text(POLICY)
    _activate(data, "1.1.0")
    add = _cli(data, "control", "add-owner", "--tenant", TENANT, "--email", EMAIL,
               "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    out, err = add.communicate(PASSWORD + "\n", timeout=120)
    assert add.returncode == 0, err
    assert PASSWORD not in out + err
    port = free_port()
    log = (data / "control.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "--data-dir", str(data), "control", "serve"],
        cwd=ROOT,
        env={**os.environ, "CORRAL_DASHBOARD__LISTEN": f"127.0.0.1:{port}"},
        stdout=log,
        stderr=log,
    )
    running = Served(data, port, process)
    try:
        wait_for_page(process, f"{running.url}/dashboard/login", data / "control.log")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        text = (data / "control.log").read_text()
        shutil.rmtree(data, ignore_errors=True)
        assert code == 0, text


def sign_in(served: Served) -> tuple[httpx.Client, str]:
    """An owner's browser on the loopback port, signed in; and the session's CSRF token."""
    client = httpx.Client(base_url=served.url)
    form = client.get("/dashboard/login")
    match = _CSRF.search(form.text)
    assert form.status_code == 200 and match is not None
    answer = client.post(
        "/dashboard/login",
        data={"csrf": match.group(1), "tenant": TENANT, "email": EMAIL, "password": PASSWORD},
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/dashboard/activity"
    assert "secure" not in answer.headers["set-cookie"].lower()  # plain HTTP on loopback
    page = client.get("/dashboard/activity")
    token = _CSRF.search(page.text)
    assert page.status_code == 200 and token is not None
    return client, token.group(1)


def _local_times() -> set[str]:
    """How the timeline tells the last two minutes in the policy's zone (Los Angeles)."""
    now = datetime.now(ZoneInfo("America/Los_Angeles"))
    times = set()
    for ago in (0, 1, 2):
        at = now - timedelta(minutes=ago)
        hour = at.strftime("%I").lstrip("0")
        times.add(f"{at:%a}, {at:%b} {at.day}, {hour}:{at:%M %p}")
    return times


def _call(
    call_id: str, tool: str, args: dict[str, Any], agent: str = "booking-1"
) -> dict[str, Any]:
    return {"tenant": TENANT, "agent": agent, "sandbox": "sbx-t", "call_id": call_id,
            "tool": tool, "args": args}  # fmt: skip


def test_the_dashboard_shows_what_control_recorded_and_decides_through_it(
    served: Served,
) -> None:
    booking = {"calendar_id": "lee", "start": "2027-03-04T10:00:00-08:00",
               "end": "2027-03-04T10:30:00-08:00", "summary": "Cleaning"}  # fmt: skip
    refund = {"payment_intent": "pi_9Kd", "amount": 48000, "currency": "usd"}
    with served.control() as control:
        first = control.post("/calls", json=_call("c1", "google_calendar.insert_event", booking))
        assert first.json()["verdict"] == "allow"
        done = control.post(f"/calls/{TENANT}/c1/outcome", json={"status": "succeeded"})
        assert done.status_code == 200
        held = control.post("/calls", json=_call("c2", "stripe.create_refund", refund, "billing-1"))
        assert held.json()["verdict"] == "escalate"
    client, csrf = sign_in(served)
    with contextlib.closing(client):
        page = client.get("/dashboard/activity")
        assert 'data-call="c1"' in page.text and 'data-call="c2"' in page.text
        assert "Bright Smile" not in page.text  # no display name configured: the tenant id
        shown = re.search(r'data-call="c1">\s*<div class="meta">\s*<time>([^<]+)</time>', page.text)
        assert shown is not None
        assert shown.group(1).replace("\u202f", " ") in _local_times()  # the policy's zone
        queue = client.get("/dashboard/approvals")
        assert queue.status_code == 200 and 'data-call="c2"' in queue.text
        decided = client.post("/dashboard/approvals/c2", data={"csrf": csrf, "decision": "approve"})
        assert decided.status_code == 303
        refused = client.post("/dashboard/approvals/c2", data={"decision": "deny"})
        assert refused.status_code == 403  # no CSRF token: refused before anything is read
        line = re.search(r'<li[^>]*data-call="c2"[^>]*>', client.get("/dashboard/activity").text)
        assert line is not None and "operator.decision" in line.group(0)
        audit = client.get("/dashboard/audit")
        assert audit.status_code == 200 and ("PST" in audit.text or "PDT" in audit.text)
    with served.control() as control:
        assert control.get("/escalations", params={"tenant": TENANT}).json()["escalations"] == []
    assert served.kinds().count("operator.decision") == 1


def test_the_operator_api_is_not_on_the_loopback_port(served: Served) -> None:
    before = served.kinds()
    body = _call("sneaky", "twilio.send_sms", {"to": "+13105550100", "body": "hi"})
    decision = {"decision": "approve", "operator": "mallory"}
    with httpx.Client(base_url=served.url) as browser:
        assert browser.get("/healthz").status_code == 404
        assert browser.get("/metrics").status_code == 404
        assert browser.get("/escalations", params={"tenant": TENANT}).status_code == 404
        assert browser.post("/calls", json=body).status_code == 404
        assert browser.post(f"/escalations/{TENANT}/c2/decision", json=decision).status_code == 404
        assert browser.put(f"/tenants/{TENANT}/policy", json={}).status_code == 404
        assert browser.post("/sandbox-events", json={}).status_code == 404
        assert browser.get("/dashboard/../healthz").status_code == 404
        assert browser.get("/").headers["location"] == "/dashboard/"
        rebound = browser.get("/dashboard/login", headers={"Host": f"evil.example:{served.port}"})
        assert rebound.status_code == 421  # a DNS-rebinding page's host name
    with served.control() as control:
        assert control.get("/healthz").status_code == 200  # still on the Unix socket
        assert control.get("/dashboard/login").status_code == 200  # mounted there too
    assert served.kinds() == before  # nothing reached the supervisor


def test_the_agents_page_says_when_the_host_is_not_running(served: Served) -> None:
    client, _ = sign_in(served)
    with contextlib.closing(client):
        page = client.get("/dashboard/agents")
        assert page.status_code == 503
        assert "The host that runs your agents is not running" in page.text
        assert 'aria-current="page"' in page.text  # the page, with its tabs, not a crash
        assert client.get("/dashboard/activity").status_code == 200  # the rest still works
        broker = client.get("/dashboard/connections")
        assert broker.status_code == 503 and "broker is not answering" in broker.text


def test_the_agents_page_lists_the_hosts_agents_and_the_owner_opts_in(served: Served) -> None:
    from corral.runtime.bwrap import BwrapBackend

    found = BwrapBackend().available()
    if not found.ok:
        need_service("bubblewrap", found.reason)
    code = served.data / "code"
    code.mkdir(exist_ok=True)
    (code / "sleeper.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    agents = served.data / "agents.toml"
    agents.write_text(
        f'[[agents]]\ntenant = "{TENANT}"\nagent = "receptionist-1"\nentry = "/work/sleeper.py"\n'
        f'code = "{code}"\n'
    )
    host = _cli(served.data, "host", "serve", "--agents", str(agents), CORRAL_HOST__BACKEND="bwrap")
    client, csrf = sign_in(served)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert host.poll() is None, host.communicate()
            assert time.monotonic() < deadline, "the host's agent never showed"
            page = client.get("/dashboard/agents")
            if page.status_code == 200 and 'data-agent="receptionist-1"' in page.text:
                break
            time.sleep(0.2)
        assert page.text.count('class="card agent-card"') == 1  # the warm sandbox is no agent
        card = page.text[page.text.index('data-agent="receptionist-1"') :]
        assert "Receptionist agent" in card  # the template's role it is named after
        assert "dental-front-desk" in card and "1.1.0" in card
        assert "Namespaces" in card and "bwrap" in card
        assert "Upgrade to 2.0.0" in card  # a major: the owner's choice
        form = {"csrf": csrf, "template": "dental-front-desk", "version": "2.0.0"}
        assert client.post("/dashboard/agents/opt-in", data=form).status_code == 303
        again = client.get("/dashboard/agents").text
        assert "Scheduled" in again and "1.1.0" in again  # runs 1.1.0 until its next start
        other = {**form, "version": "9.9.9"}
        assert client.post("/dashboard/agents/opt-in", data=other).status_code == 404
        assert served.kinds()[-1] == "template.activated"
        with served.control() as control:
            kinds = [k for k in served.kinds() if k.startswith("sandbox.")]
            assert "sandbox.started" in kinds  # the host reports to this control
            assert control.get("/healthz").status_code == 200
    finally:
        client.close()
        host.send_signal(signal.SIGTERM)
        try:
            host.communicate(timeout=60)
        finally:
            if host.poll() is None:
                host.kill()
    store = ActivationStore.from_url(load_settings(data_dir=served.data).templates_database_url())
    try:
        assert [a.version for a in store.activations(TENANT)] == ["2.0.0"]
    finally:
        store.close()


def test_the_browser_verifies_the_record_over_plain_http_on_loopback(served: Served) -> None:
    """http://127.0.0.1 is a secure context: WebCrypto is there and every badge verifies."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        need_service("Playwright", f"cannot import playwright: {exc}")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        need_service("Chromium", f"{chromium} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{served.url}/")
            page.get_by_label("Business ID").fill(TENANT)
            page.get_by_label("Email").fill(EMAIL)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{served.url}/dashboard/activity")
            assert page.evaluate("window.isSecureContext") is True
            lines = page.locator("li.entry")
            expect(page.locator('li.entry[data-state="checking"]')).to_have_count(0, timeout=15000)
            assert lines.count() >= 2
            states = lines.evaluate_all("els => els.map(e => e.dataset.state)")
            assert set(states) == {"verified"}
        finally:
            browser.close()


# ------------------------------------------------------------------ refusing to start


def test_a_non_loopback_dashboard_listen_refuses_to_start(tmp_path: Path) -> None:
    for address in ("0.0.0.0:8765", "192.0.2.10:8765", "[::]:8765", "dash.example:8765"):
        process = _cli(tmp_path, "control", "serve", CORRAL_DASHBOARD__LISTEN=address)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        assert "dashboard.listen" in err and "not a loopback address" in err, err
        assert "control.tcp_host" in err  # and what to do instead
        assert not (tmp_path / "control" / "control.sock").exists()


def test_a_dashboard_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = _cli(tmp_path, "control", "serve", CORRAL_DASHBOARD__LISTEN=f"127.0.0.1:{port}")
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert f"cannot listen on 127.0.0.1 port {port}" in err
    assert not (tmp_path / "control" / "control.sock").exists()


def test_the_dashboard_settings() -> None:
    default = load_settings().dashboard
    assert default.enabled and default.address() == ("127.0.0.1", 8765)
    assert load_settings(dashboard={"listen": "localhost:9000"}).dashboard.address() == (
        "127.0.0.1",
        9000,
    )
    assert load_settings(dashboard={"listen": "[::1]:9000"}).dashboard.address() == ("::1", 9000)
    assert load_settings(dashboard={"listen": "127.0.0.2:80"}).dashboard.address()[0] == "127.0.0.2"
    for bad in ("0.0.0.0:1", "8765", "127.0.0.1:0", "127.0.0.1:http"):
        with pytest.raises(ConfigError, match=r"dashboard\.listen"):
            load_settings(dashboard={"listen": bad})
    off = load_settings(dashboard={"enabled": False, "listen": "0.0.0.0:8765"})
    assert not off.dashboard.enabled  # not served: nothing to refuse
    settings = load_settings(data_dir=Path("/srv/corral"))
    assert settings.dashboard_database_url() == "sqlite:////srv/corral/control/dashboard.db"
    assert settings.templates_database_url() == "sqlite:////srv/corral/control/templates.db"
    from corral.dashboard import DashboardSettings

    assert DashboardSettings is type(settings.dashboard)  # one definition


def test_serving_plain_http_only_on_loopback(tmp_path: Path) -> None:
    listen = serving.Listen(tmp_path / "s.sock", http_loopback=("0.0.0.0", free_port()))
    with pytest.raises(ConfigError, match="loopback addresses only"):
        asyncio.run(serving.serve(PlainTextResponse("x"), listen))
    assert not (tmp_path / "s.sock").exists()


# ------------------------------------------------------------------------- in process


def test_dashboard_only_passes_the_dashboard_and_nothing_else() -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.scope['root_path']}|{request.url.path}")

    inner = Starlette(routes=[Route("/x", hello)])
    app = Starlette(routes=[Mount("/dashboard", inner), Route("/healthz", hello)])
    only = dashboard_only(app)

    async def go() -> None:
        transport = httpx.ASGITransport(app=only)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as c:
            assert (await c.get("/dashboard/x")).text == "/dashboard|/dashboard/x"
            assert (await c.get("/healthz")).status_code == 404
            assert (await c.get("/dashboardx")).status_code == 404
            assert (await c.post("/")).status_code == 404
            assert (await c.get("/")).status_code == 307
            for host in ("localhost:8765", "[::1]:8765", "127.0.0.5"):
                assert (await c.get("/dashboard/x", headers={"Host": host})).status_code == 200
            for host in ("evil.example", "10.0.0.1:8765", "127.0.0.1.nip.io:8765"):
                assert (await c.get("/dashboard/x", headers={"Host": host})).status_code == 421

    asyncio.run(go())


def test_zones_and_prose_follow_the_live_policies() -> None:
    policies = {TENANT: load_policy({"timezone": "America/Los_Angeles", "country": "US"})}
    zones = tenant_zones({"quickfix": "America/Chicago"}, policies)
    assert zones[TENANT] == "America/Los_Angeles" and zones["quickfix"] == "America/Chicago"
    assert zones.get("nobody", "UTC") == "UTC" and set(zones) == {TENANT, "quickfix"}
    policies[TENANT] = load_policy({"timezone": "Europe/Madrid", "country": "ES"})  # a PUT
    assert zones[TENANT] == "Europe/Madrid"
    context = policy_context(zones, policies)
    assert (context(TENANT).timezone, context(TENANT).country) == ("Europe/Madrid", "ES")
    assert context("nobody").timezone == "UTC"


def test_a_host_that_is_not_running_is_named(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # a socket file nobody listens on: a host that died

    async def go() -> None:
        for path in (tmp_path / "missing.sock", stale):
            host = HostAdmin(path)
            with pytest.raises(HostNotRunning, match="not running"):
                await host.sandboxes()
            await host.aclose()

    asyncio.run(go())
    assert "corral host serve" in HOST_NOT_RUNNING


class _World:
    """A real audit chain and activation store, and a host admin app with the JSON shape of
    ``corral.runtime.host.create_admin_app``'s ``GET /sandboxes`` (a minimal stand-in, so this
    runs without bubblewrap)."""

    def __init__(self, tmp: Path) -> None:
        assert CATALOG is not None
        self.clock = ManualClock(datetime(2026, 11, 2, 17, 0, tzinfo=UTC))
        store = LogStore.from_url(f"sqlite:///{tmp / 'audit.db'}")
        store.create_schema()
        self.chain = AuditChain(
            deployment="corral.test",
            store=store,
            keys=AuditKeys(bytes(range(32))),
            anchors=LocalAnchorStore(tmp / "anchors.db"),
            clock=self.clock,
        )
        self.store = ActivationStore.from_url(f"sqlite:///{tmp / 'templates.db'}")
        self.store.create_schema()
        self.activations = Activations(
            Catalog.load(CATALOG), self.store, ids=SequentialIds(), sequencer=self.chain.sequencer
        )
        self.activations.activate(TENANT, "dental-front-desk", "1.1.0", self.clock.now())
        self.clock.advance(timedelta(minutes=5))
        started = format_time(self.clock.now())
        self.rows: list[dict[str, Any]] = [
            {"id": "sbx-1", "tenant": TENANT, "agent": "booking-1", "backend": "firecracker",
             "level": "vm", "state": "running", "started_at": started, "restarts": 0},
            {"id": "sbx-2", "tenant": TENANT, "agent": "front", "backend": "gvisor",
             "level": "gvisor", "state": "running", "started_at": started, "restarts": 0},
            {"id": "sbx-3", "tenant": TENANT, "agent": "pool", "backend": "bwrap",
             "level": "namespaces", "state": "warm", "started_at": started, "restarts": 0},
            {"id": None, "tenant": TENANT, "agent": "billing-1", "backend": None, "level": None,
             "state": "backing_off", "started_at": None, "restarts": 2},
            {"id": "sbx-9", "tenant": "quickfix", "agent": "dispatcher-1", "backend": "bwrap",
             "level": "namespaces", "state": "running", "started_at": started, "restarts": 0},
        ]  # fmt: skip
        app = FastAPI()

        @app.get("/sandboxes")
        async def sandboxes() -> dict[str, Any]:
            return {"sandboxes": self.rows}

        self.host = HostAdmin(transport=httpx.ASGITransport(app=app))
        self.source = HostAgents(
            self.host,
            self.activations,
            clock=self.clock,
            roles=lambda tenant: {"front": "receptionist"} if tenant == TENANT else {},
        )

    def close(self) -> None:
        self.chain.close()
        self.store.close()


def test_host_agents_join_the_hosts_sandboxes_with_their_activation(tmp_path: Path) -> None:
    world = _World(tmp_path)

    async def go() -> None:
        views = {v.agent: v for v in await world.source.agents(TENANT)}
        assert set(views) == {"booking-1", "front"}  # running agents of this tenant only
        booking, front = views["booking-1"], views["front"]
        assert (booking.role, booking.sandbox_id, booking.backend, booking.isolation) == (
            "booking", "sbx-1", "firecracker", "vm",
        )  # fmt: skip
        assert front.role == "receptionist"  # from the policy's agents
        assert (booking.template, booking.version) == ("dental-front-desk", "1.1.0")
        offer = booking.upgrade
        assert offer is not None and (offer.to_version, offer.change) == ("2.0.0", "major")
        assert not offer.opted_in
        with pytest.raises(NotFound):
            await world.source.opt_in("quickfix", "dental-front-desk", "2.0.0")
        with pytest.raises(NotFound):
            await world.source.opt_in(TENANT, "dental-front-desk", "1.0.1")  # not newer
        world.clock.advance(timedelta(minutes=1))
        await world.source.opt_in(TENANT, "dental-front-desk", "2.0.0")
        after = {v.agent: v for v in await world.source.agents(TENANT)}["booking-1"]
        assert after.version == "1.1.0"  # what it runs until its next start
        assert after.upgrade is not None and after.upgrade.opted_in
        assert after.upgrade.to_version == "2.0.0"
        world.rows[0]["started_at"] = format_time(world.clock.now() + timedelta(seconds=1))
        restarted = {v.agent: v for v in await world.source.agents(TENANT)}["booking-1"]
        assert (restarted.version, restarted.upgrade) == ("2.0.0", None)
        assert await world.source.agents("nobody") == []

    try:
        asyncio.run(go())
        store = world.chain.store
        kinds = [parse_entry(e.leaf).kind for e in store.entries(TENANT, 0, store.log_size(TENANT))]
        assert kinds == ["template.activated", "template.activated"]  # activation, opt-in
    finally:
        world.close()


def test_host_agents_without_a_catalog_still_list_the_agents(tmp_path: Path) -> None:
    world = _World(tmp_path)
    source = HostAgents(world.host, None, clock=world.clock)

    async def go() -> None:
        views = await source.agents(TENANT)
        assert {(v.agent, v.template, v.upgrade) for v in views} == {
            ("booking-1", "—", None),
            ("front", "—", None),
        }
        with pytest.raises(NotFound):
            await source.opt_in(TENANT, "dental-front-desk", "2.0.0")

    try:
        asyncio.run(go())
    finally:
        world.close()


def test_the_connections_page_revokes_connects_and_replaces_through_the_broker(
    tmp_path: Path,
) -> None:
    (tmp_path / "dashboard").mkdir()
    (tmp_path / "broker").mkdir()
    dash = dash_world.build_world(tmp_path / "dashboard")
    broker = build_broker(tmp_path / "broker")
    vault, store = broker.broker.vault, broker.broker.vault.store
    tenant = dash_world.A
    assert tenant == "brightsmile"  # the broker's world connects its six providers for it
    owner = dash.owners.authenticate(tenant, dash_world.EMAIL[tenant], dash_world.PASSWORD[tenant])
    assert owner is not None
    twilio = broker.fakes["twilio"].new_connection()
    stripe = broker.fakes["stripe"].new_connection()
    secrets = [v for v in (*twilio.values(), *stripe.values()) if len(v) >= 8]
    seen: list[str] = []

    async def go() -> None:
        client = BrokerClient(transport=httpx.ASGITransport(app=broker.app))
        ids = SequentialIds()
        context_for = dash_world.context_for
        sources = Sources(
            activity=ChainActivity(dash.chain, context_for=context_for),
            approvals=ControlApprovals(dash.control, context_for=context_for),
            connections=BrokerConnections(
                client, approve=broker.approve, ids=ids, record=chain_recorder(dash.chain, ids)
            ),
            agents=dash.agents,
            audit=ChainAudit(dash.chain),
        )
        settings = DashboardSettings(
            database_url="sqlite:///unused",
            tenant_names=dash_world.NAMES,
            timezones=dash_world.ZONES,
        )
        app = FastAPI()
        mount(app, create_dashboard(sources, settings, clock=dash.clock, owners=dash.owners))
        browser = dash_world.Client(app)
        assert (await browser.login(tenant)).status_code == 303
        page = await browser.get("/connections")
        assert page.text.count('data-status="connected"') == 6

        revoked = await browser.post("/connections/revoke/twilio-1")
        assert revoked.status_code == 303, revoked.text
        page = await browser.get("/connections?done=revoke")
        assert 'data-provider="twilio" data-status="not_connected"' in page.text
        seen.append(page.text)

        form = {f"cred_{name}": value for name, value in twilio.items()}
        hx = {"HX-Request": "true"}
        connected = await browser.post("/connections/connect/twilio", form, headers=hx)
        assert connected.status_code == 200 and "Connected." in connected.text
        assert 'data-provider="twilio" data-status="connected"' in connected.text
        assert "twilio-2" in connected.text
        seen.append(connected.text)

        replaced = await browser.post(
            "/connections/rotate/stripe-1", {"cred_api_key": stripe["api_key"]}
        )
        assert replaced.status_code == 303, replaced.text
        seen.append((await browser.get("/connections?done=rotate")).text)
        # The key now in the vault is the one the next call uses.
        paid = await broker.execute(
            "stripe.create_payment_intent", {"amount": 4200, "currency": "usd"}
        )
        assert paid.json()["status"] == "succeeded"
        fake: Any = broker.fakes["stripe"]
        assert [pi["amount"] for pi in fake.payment_intents(stripe["api_key"])] == [4200]

        activity = await browser.get("/activity")
        assert "connection twilio-2" in activity.text
        seen.append(activity.text)
        await browser.aclose()
        await client.aclose()

    try:
        asyncio.run(go())
        row = vault.connection(tenant, "twilio-1")
        assert row.status.value == "revoked" and store.credential(tenant, "twilio-1", 1) is None
        assert vault.read_fields(vault.connection(tenant, "twilio-2")) == (1, twilio)
        assert vault.read_fields(vault.connection(tenant, "stripe-1")) == (2, stripe)
        leaves = dash.log(tenant)
        entries = [e for e in map(parse_entry, leaves[-3:]) if not isinstance(e, UnknownEntry)]
        assert [e.kind for e in entries] == [
            "credential.revoked", "credential.connected", "credential.rotated"]  # fmt: skip
        assert {(e.actor.kind, e.actor.id) for e in entries} == {("operator", owner.owner_id)}
        said = [*seen, *(leaf.decode("utf-8", "replace") for leaf in leaves)]
        assert not [s for s in secrets if any(s in text for text in said)]
    finally:
        broker.close()
        dash.close()
