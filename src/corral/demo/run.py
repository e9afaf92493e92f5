"""The demo's run: the whole chain up, the clinic's day through it, the record checked.

1. The six provider sandboxes on a loopback port, with the clinic's accounts and data.
2. ``corral broker serve``, control (:mod:`corral.demo.control`: ``corral control`` on the
   accelerated clock, its dashboard on a free loopback port) and ``corral host serve`` as child
   processes, as ``corral up`` starts them.
3. The six accounts connected through the broker, as ``corral broker connect`` does (the
   credential sealed in the vault, ``credential.connected`` in the audit chain).
4. The day begins a few seconds ahead, for control's clock and the agents alike; the four
   agents start in their sandboxes (``POST /agents`` on the host) and work through it. The
   owner, played by the demo, approves the refund over the threshold after a moment and
   declines the one past the daily cap, through control's ``POST /escalations/.../decision``.
5. When every agent has written its ``result.json``: their work directories are searched for
   every credential the providers issued, the processes are stopped (host, control, broker),
   and the tenant's audit chain is exported and verified (:func:`corral.audit.verify
   .verify_bundle`). The summary counts come from that verified record.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from corral.core.clock import SystemClock, format_time
from corral.core.errors import CorralError
from corral.core.settings import Settings, load_settings
from corral.demo import clinic
from corral.demo.providers import Accounts, ProviderWorld
from corral.demo.summary import Summary, build_summary
from corral.up import Stack, dashboard_url, prepare, root_args, standard_children, stop_signals

__all__ = ["DemoError", "DemoOptions", "connect_accounts", "demo_backend", "run_demo"]

MARKER = "corral-demo.json"
"""In a data directory a demo made: the next demo may wipe it, nothing else is wiped."""
DAY_START = "06:50"
DAY_END = "17:30"
_MARGIN_S = 1.0
"""Real seconds from choosing the day's start (every agent is up) to its start."""


class DemoError(CorralError):
    """The demo could not run (or was interrupted); the message says why."""


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path
    seed: int = 7
    speed: float = 3600.0
    """Simulated seconds per real second."""
    config: Path | None = None
    day: date | None = None
    """The clinic's day; default tomorrow in Los Angeles (bookings are in the providers'
    future, which keep real time)."""
    approve_after_s: float = 0.4
    """How long the owner takes to look at an escalation."""
    backend: str = "auto"
    """The agents' sandboxes: ``bwrap``, ``gvisor`` or ``auto`` (the stronger of the two this
    machine runs). The agents learn when the day begins from a file in their ``/work``, so the
    backend must share it with the host (Firecracker seals ``/work`` at start)."""


def _fresh(directory: Path) -> None:
    """An empty data directory: a previous demo's is wiped; anything else is refused."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise DemoError(
                f"{directory} holds data that no demo made; give --data-dir a new directory"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def _client(socket: Path, timeout: float = 30.0) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(socket))
    return httpx.Client(transport=transport, base_url="http://corral", timeout=timeout)


def _checked(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise DemoError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def _seed_world(providers: ProviderWorld, options: DemoOptions) -> tuple[dict[str, Any], Accounts]:
    """The clinic's accounts and data at the providers, and the world the plan is drawn on."""
    zone = ZoneInfo(clinic.TIMEZONE)
    day = options.day or (datetime.now(zone) + timedelta(days=1)).date()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=zone)
    offset = noon.utcoffset() or timedelta(0)
    accounts = providers.open_accounts(calendar_id=clinic.CALENDAR)
    stripe_key = accounts.fields["stripe"]["api_key"]
    stripe = providers.fake("stripe")
    realm = accounts.fields["quickbooks"]["realm_id"]
    world: dict[str, Any] = {
        "tenant": clinic.TENANT,
        "day": day.isoformat(),
        "utc_offset_min": int(offset.total_seconds() // 60),
        "event_type": providers.fake("calendly").add_event_type(
            accounts.fields["calendly"], duration=60, name="Dr. Lee: 60 minutes"
        ),
        "payments": {
            "eve": stripe.add_paid_payment_intent(stripe_key, 4500),
            "frank": stripe.add_paid_payment_intent(stripe_key, 40000),
            "grace": stripe.add_paid_payment_intent(stripe_key, 15000),
        },
        "customers": [
            providers.fake("quickbooks").add_customer(realm, name)
            for name in ("Noah Reed", "Maya Cohen")
        ],
    }
    start = clinic.local_time(world, DAY_START)
    world["clock"] = {"start": start.isoformat(), "origin": None, "factor": options.speed}
    return world, accounts


def connect_accounts(
    settings: Settings, tenant: str, accounts: Accounts, operator: str = clinic.OWNER
) -> int:
    """Connect the six accounts as ``corral broker connect`` does: sealed in the broker's vault,
    each a ``credential.connected`` entry in the tenant's audit chain."""
    import asyncio

    from corral.audit.chain import open_chain
    from corral.broker.assembly import open_broker
    from corral.broker.events import to_entries
    from corral.core.ids import RandomIds

    parts = open_broker(settings)
    events = []
    try:
        for provider, fields in accounts.fields.items():
            row = parts.broker.vault.connect(
                tenant,
                f"{provider}-1",
                provider,
                dict(fields),
                endpoints=accounts.endpoints[provider],
            )
            events.append(
                {
                    "kind": "credential.connected",
                    "at": format_time(row.created_at),
                    "actor": {"kind": "operator", "id": operator},
                    "data": {"connection_id": row.connection_id, "provider": provider},
                }
            )
    finally:
        asyncio.run(parts.aclose())
    clock = SystemClock()
    with open_chain(settings, clock) as chain:
        items = to_entries(events, tenant, RandomIds(clock))
        for future in chain.sequencer.submit_many(tenant, items):
            future.result()
    return len(events)


def _children(settings: Settings, options: DemoOptions) -> Stack:
    specs = standard_children(settings, options.config)
    control = (sys.executable, "-m", "corral.demo.control", *root_args(settings, options.config))
    specs[1] = type(specs[1])("control", control, specs[1].socket)
    clock = {
        "CORRAL_UP__CONTROL_CLOCK__START": "",
        "CORRAL_UP__CONTROL_CLOCK__FACTOR": str(options.speed),
        # Simulated seconds: a deferred call may wait out the morning's quiet hours.
        "CORRAL_CONTROL__DEFER_TIMEOUT_S": "21600",
        "CORRAL_CONTROL__RECONSIDER_EVERY_S": "0.2",
        # Control serves its dashboard as `corral control` does, on a port of its own: the
        # default one may be a developer's `corral up` (or the one run on this demo's data).
        "CORRAL_DASHBOARD__LISTEN": f"127.0.0.1:{_loopback_port()}",
        "CORRAL_HOST__BACKEND": demo_backend(settings, options.backend),
        # No warm pool: the four agents start once, together, before the day; sandboxes kept
        # warm (and refilled in the background) would only take CPU from them while it runs.
        "CORRAL_HOST__WARM_POOL": "0",
    }
    return Stack(
        specs,
        logs=settings.data_dir / "logs",
        env={**os.environ, **clock},
        start_timeout_s=settings.up.start_timeout_s,
        stop_grace_s=settings.up.stop_grace_s,
    )


def _loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's choice for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


_REFUND_LIMITS = {"billing": 50000, "receptionist": 10000}
"""The most one refund may return, in cents, per agent: a caveat of its delegation."""


def demo_backend(settings: Settings, name: str) -> str:
    """The backend the agents run on: ``name``, or for ``auto`` the stronger of gVisor and
    bwrap that this machine runs; :class:`DemoError` if it cannot."""
    from corral.runtime.backends import backend

    if name not in ("auto", "gvisor", "bwrap"):
        raise DemoError(f"the demo runs on bwrap or gvisor (its agents share /work), not {name}")
    reasons = []
    for candidate in ("gvisor", "bwrap") if name == "auto" else (name,):
        availability = backend(candidate, settings).available()
        if availability.ok:
            return candidate
        reasons.append(f"{candidate}: {availability.reason}")
    raise DemoError(
        "no sandbox backend for the agents (install gVisor's runsc or bubblewrap's bwrap): "
        + "; ".join(reasons)
    )


def _agent_spec(role: str, world: dict[str, Any], seed: int) -> dict[str, Any]:
    constraints = {}
    if role in _REFUND_LIMITS:
        limit = {"amount": _REFUND_LIMITS[role], "currency": "usd"}
        constraints["stripe.create_refund"] = {"max_amount": limit}
    job = {
        "agent": role,
        "seed": seed,
        "world": world,
        "constraints": constraints,
        "tools": clinic.ROLES[role],
    }
    return {
        "tenant": clinic.TENANT,
        "agent": role,
        "entry": f"corral.demo.agents.{role.replace('-', '_')}:main",
        "argv": [json.dumps(job)],
        "tools": clinic.ROLES[role],
        "seed": seed,
        "restart": False,
    }


class _Day:
    """Watching the day: the owner's decisions, what the agents did, when they are done."""

    def __init__(
        self,
        settings: Settings,
        world: dict[str, Any],
        sandboxes: dict[str, str],
        options: DemoOptions,
        say: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.world = world
        self.options = options
        self.say = say
        self.work = {
            agent: settings.host_dir / "sandboxes" / sandbox / "work"
            for agent, sandbox in sandboxes.items()
        }
        self.seen: dict[str, int] = dict.fromkeys(sandboxes, 0)
        self.records: list[dict[str, Any]] = []
        self.escalations: dict[str, float] = {}
        self.decided: list[dict[str, Any]] = []

    def simulated(self) -> datetime:
        clock = self.world["clock"]
        start = datetime.fromisoformat(clock["start"])
        elapsed = max(0.0, time.time() - float(clock["origin"])) * float(clock["factor"])
        return start + timedelta(seconds=elapsed)

    def local(self, text: str) -> str:
        offset = timedelta(minutes=int(self.world["utc_offset_min"]))
        return (datetime.fromisoformat(text).astimezone(UTC) + offset).strftime("%H:%M")

    def read_calls(self) -> None:
        for agent, work in self.work.items():
            path = work / "calls.jsonl"
            if not path.exists():
                continue
            lines = path.read_text("utf-8").splitlines()
            for line in lines[self.seen[agent] :]:
                if not line.endswith("}"):
                    break
                record = json.loads(line)
                self.seen[agent] += 1
                self.records.append(record)
                if record["verdict"] != "allow" or record.get("conflict"):
                    rules = f" ({', '.join(record['rules'])})" if record["rules"] else ""
                    waited = "after waiting, " if record.get("held") else ""
                    label = f"  [{record['conflict']}]" if record.get("conflict") else ""
                    self.say(
                        f"{self.local(record['at'])} {agent} {record['tool']}: "
                        f"{waited}{record['verdict']}{rules}, {record['outcome']}{label}"
                    )

    def owner(self, control: httpx.Client) -> None:
        """Decide escalations as the owner: approve a refund over the threshold after a
        moment, decline one past the daily cap."""
        pending = _checked(
            control.get("/escalations", params={"tenant": clinic.TENANT}), "reading escalations"
        )["escalations"]
        now = time.monotonic()
        for item in pending:
            call_id = item["call_id"]
            first = self.escalations.setdefault(call_id, now)
            if now - first < self.options.approve_after_s:
                continue
            decision = "deny" if "refund_daily_cap" in item["rules"] else "approve"
            _checked(
                control.post(
                    f"/escalations/{clinic.TENANT}/{call_id}/decision",
                    json={"decision": decision, "operator": clinic.OWNER},
                ),
                "deciding an escalation",
            )
            amount = item["args"].get("amount")
            what = f"{item['tool']} of ${amount / 100:.2f}" if amount else item["tool"]
            self.decided.append({"call_id": call_id, "decision": decision, "rules": item["rules"]})
            self.say(f"owner: {decision} {item['agent']}'s {what} ({', '.join(item['rules'])})")

    def done(self) -> bool:
        return all((work / "result.json").exists() for work in self.work.values())

    def results(self) -> dict[str, dict[str, Any]]:
        return {
            agent: json.loads((work / "result.json").read_text("utf-8"))
            for agent, work in self.work.items()
        }

    def keep(self, into: Path) -> None:
        """Copy each agent's work directory to ``into/<agent>`` (the host removes it)."""
        for agent, work in self.work.items():
            shutil.copytree(work, into / agent)

    def scan(self, secrets_: set[str]) -> tuple[int, int, list[str]]:
        """Search every file of every agent's work directory for every secret: (files,
        bytes, leaks as ``agent: file``)."""
        files = size = 0
        leaks = []
        for agent, work in self.work.items():
            for path in sorted(p for p in work.rglob("*") if p.is_file()):
                data = path.read_bytes()
                files, size = files + 1, size + len(data)
                if any(secret.encode() in data for secret in secrets_):
                    leaks.append(f"{agent}: {path.relative_to(work)}")
        return files, size, leaks


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        yield bar


def run_demo(options: DemoOptions, console: Console) -> Summary:
    """Run the clinic's day end to end; the summary of what the verified record shows."""
    data_dir = options.data_dir.resolve()
    _fresh(data_dir)
    (data_dir / MARKER).write_text(json.dumps({"seed": options.seed}) + "\n", "utf-8")
    settings = load_settings(options.config, data_dir=data_dir)

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    started = time.monotonic()
    with ProviderWorld() as providers, stop_signals() as stop:
        world, accounts = _seed_world(providers, options)
        say(f"{clinic.NAME}, {world['day']}: six provider sandboxes at {providers.root}")
        tenants = settings.control_dir / "tenants"
        tenants.mkdir(parents=True, exist_ok=True, mode=0o700)
        policy = clinic.policy(world)
        (tenants / f"{clinic.TENANT}.json").write_text(json.dumps(policy, indent=2), "utf-8")
        prepare(settings)
        stack = _children(settings, options)
        stack.env["CORRAL_UP__CONTROL_CLOCK__START"] = world["clock"]["start"]
        stack.stop_requested = stop
        with stack:
            with _progress(console) as bar:
                task = bar.add_task("starting broker, control, host", total=3)

                def progress(name: str, event: str) -> None:
                    if event == "ready":
                        bar.advance(task)
                        if not console.is_terminal:
                            say(f"corral {name} ready")

                stack.progress = progress
                if not stack.start():
                    raise DemoError("interrupted")
            connected = connect_accounts(settings, clinic.TENANT, accounts)
            say(f"connected {connected} accounts through the broker")
            day, rows = _run_day(settings, world, options, console, stop, say)
            # Before the host stops: it removes a sandbox's work directory when it ends.
            files, size, leaks = day.scan(providers.secrets())
            secrets_count = len(providers.secrets())
            results = day.results()
            day.keep(data_dir / "agents")
            say("stopping: host, control, broker")
    bundle = data_dir / "bundle"
    report, entries = _export(settings, bundle)
    owner = _owner(settings)
    collisions = {str(r["call_id"]) for r in day.records if r.get("conflict") and r["call_id"]}
    prose = _prose(settings, policy, collisions)
    return build_summary(
        world=world,
        seed=options.seed,
        speed=options.speed,
        records=day.records,
        results=results,
        decided=day.decided,
        entries=entries,
        report=report,
        bundle=bundle,
        scan={"secrets": secrets_count, "files": files, "bytes": size, "leaks": leaks},
        sandboxes=rows,
        data_dir=data_dir,
        dashboard=dashboard_url(settings),
        owner=owner,
        prose=prose,
        seconds=time.monotonic() - started,
    )


def _run_day(
    settings: Settings,
    world: dict[str, Any],
    options: DemoOptions,
    console: Console,
    stop: threading.Event,
    say: Callable[[str], None],
) -> tuple[_Day, list[dict[str, Any]]]:
    control = _client(settings.control_socket())
    host = _client(settings.host_socket)
    try:

        def start(role: str) -> dict[str, Any]:
            with _client(settings.host_socket, timeout=60) as own:
                spec = _agent_spec(role, world, options.seed)
                return _checked(own.post("/agents", json=spec), f"starting the {role} agent")

        with ThreadPoolExecutor(len(clinic.AGENTS), thread_name_prefix="demo-start") as pool:
            rows = list(pool.map(start, clinic.AGENTS))  # together; in the roles' order
        sandboxes = {row["agent"]: row["id"] for row in rows}
        levels = sorted({f"{row['backend']} ({row['level']})" for row in rows})
        say(f"{len(rows)} agents in their own sandboxes: {', '.join(levels)}")
        # Every agent is up: the day begins shortly, for control's clock and the agents alike.
        origin = datetime.now(UTC) + timedelta(seconds=_MARGIN_S)
        world["clock"]["origin"] = origin.timestamp()
        _checked(
            control.post("/demo/clock", json={"origin": origin.isoformat()}),
            "starting the day on control's clock",
        )
        for sandbox in sandboxes.values():
            work = settings.host_dir / "sandboxes" / sandbox / "work"
            tmp = work / "go.tmp"
            tmp.write_text(json.dumps({"origin": origin.timestamp()}), "utf-8")
            tmp.replace(work / "go.json")
        day = _Day(settings, world, sandboxes, options, say)
        start_at = datetime.fromisoformat(world["clock"]["start"])
        end_at = clinic.local_time(world, DAY_END)
        length = (end_at - start_at).total_seconds()
        deadline = time.monotonic() + _MARGIN_S + length / options.speed + 90
        last_check = 0.0
        with _progress(console) as bar:
            task = bar.add_task("the day", total=length)
            while not day.done():
                if stop.is_set():
                    raise DemoError("interrupted")
                if time.monotonic() > deadline:
                    raise DemoError(
                        "the agents did not finish the day in time; see "
                        f"{settings.data_dir / 'logs' / 'host.log'}"
                    )
                day.read_calls()
                day.owner(control)
                now = day.simulated()
                bar.update(
                    task,
                    completed=min(length, (now - start_at).total_seconds()),
                    description=f"{day.local(now.isoformat())} · {len(day.records)} calls",
                )
                if time.monotonic() - last_check > 1.0:
                    last_check = time.monotonic()
                    _check_agents(host, sandboxes, settings)
                time.sleep(0.05)
            day.read_calls()
        return day, rows
    finally:
        control.close()
        host.close()


def _check_agents(host: httpx.Client, sandboxes: dict[str, str], settings: Settings) -> None:
    """An agent whose sandbox ended before its day did is an error, with the host's log."""
    rows = _checked(host.get("/sandboxes"), "listing sandboxes")["sandboxes"]
    running = {row["agent"] for row in rows if row.get("state") == "running"}
    for agent, sandbox in sandboxes.items():
        work = settings.host_dir / "sandboxes" / sandbox / "work"
        if agent not in running and not (work / "result.json").exists():
            log = settings.data_dir / "logs" / "host.log"
            tail = "\n".join(log.read_text("utf-8", errors="replace").splitlines()[-15:])
            raise DemoError(f"the {agent} agent's sandbox ended early; the host's log:\n{tail}")


def _export(settings: Settings, bundle: Path) -> tuple[Any, list[dict[str, Any]]]:
    """Export the tenant's chain (a checkpoint and an anchor first) and verify the bundle."""
    from corral.audit.chain import open_chain
    from corral.audit.verify import VerificationError, verify_bundle

    with open_chain(settings, SystemClock()) as chain:
        chain.export(clinic.TENANT, bundle)
    try:
        report = verify_bundle(bundle)
    except VerificationError as exc:
        raise DemoError(f"the exported audit bundle does not verify: {exc}") from exc
    entries = [
        json.loads(line)["entry"]
        for line in (bundle / "entries.jsonl").read_text("utf-8").splitlines()
        if line
    ]
    return report, entries


def _prose(settings: Settings, policy: dict[str, Any], call_ids: set[str]) -> list[str]:
    """The owner's plain-English timeline lines (``corral audit prose``) of ``call_ids``."""
    from corral.audit.chain import open_chain
    from corral.audit.entries import parse_entry
    from corral.audit.prose import RenderContext, render_timeline
    from corral.audit.replay import read_log

    with open_chain(settings, SystemClock()) as chain:
        items = [
            (parse_entry(leaf), personal)
            for _, leaf, personal in read_log(chain.store, clinic.TENANT)
        ]
    lines = render_timeline(items, RenderContext.from_policy(policy))
    return [line.text for line in lines if line.call_id in call_ids]


def _owner(settings: Settings) -> dict[str, str] | None:
    """A demo owner for the dashboard, with a one-time password printed once."""
    try:
        from corral.dashboard.auth import OwnerStore
    except ImportError:
        return None
    password = secrets.token_urlsafe(12)
    store = OwnerStore.from_url(settings.dashboard_database_url(), clock=SystemClock())
    try:
        store.create_schema()
        store.create_owner(clinic.TENANT, clinic.OWNER, password)
    finally:
        store.close()
    return {"tenant": clinic.TENANT, "email": clinic.OWNER, "password": password}
