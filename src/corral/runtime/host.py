"""``corral host``: owns the sandboxes of agents, relays their channels, keeps warm pools.

One sandbox per agent, labelled with its tenant; its only way out is its :class:`Channel`,
whose handler is here:

- ``tools.list`` is answered by the host from the connector catalog, filtered to the agent's
  allowed tools (so a guest learns nothing about tools its template does not grant);
- ``tools.call`` / ``delegation.request`` of a tool outside that list is refused
  (``FORBIDDEN``) without reaching control; anything else goes to the :class:`Relay` with the
  channel's identity;
- ``log`` goes to the host's logger.

A sandbox is started as ``python -m corral.guest.run`` with no entry: it connects, says
``sandbox.ready`` and waits for ``agent.start``. That makes cold and warm starts one path, and
lets the host keep a **warm pool per tenant** (and backend): ready sandboxes labelled with the
tenant, handed to an agent by :meth:`Channel.rebind` and ``agent.start``. A tenant's pool is
never handed to another tenant; an agent asking for limits other than the host's defaults
starts cold.

An agent whose sandbox exits non-zero (and was not stopped on purpose) is **restarted with
back-off**: exponential from ``restart_initial_s`` to ``restart_max_s``, with up to 50 % jitter
added (so delays still grow), reset once a sandbox ran ``restart_reset_after_s`` healthy; after
``restart_max_crashes`` crashes within ``restart_window_s`` the host gives up and says so.

Every sandbox handed to an agent is reported to control as ``sandbox.started`` and, when it
ends, ``sandbox.stopped`` (with exit code and reason), for the tenant's audit chain. A warm
sandbox runs no agent code until it is handed out, so it is reported then, under the agent's
name; one discarded unused (at shutdown) ran for nobody and is not reported. Events go through
an ordered outbox that retries while control is unreachable.

The admin API (:func:`create_admin_app`) is served on ``<data>/host/host.sock`` (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import shutil
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.core.clock import Clock, SystemClock, format_time
from corral.core.ids import IdSource, RandomIds, check_id
from corral.core.settings import HostLimitsSettings, Settings
from corral.guest import wire
from corral.runtime.channel import Channel, ChannelRefusal
from corral.runtime.relay import Relay
from corral.runtime.sandbox import (
    Availability,
    Backend,
    Identity,
    IsolationLevel,
    Limits,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    require_level,
)

__all__ = [
    "GUEST_COMMAND",
    "POOL_AGENT",
    "AgentExists",
    "AgentRun",
    "AgentSpec",
    "Host",
    "Slot",
    "SlotState",
    "UnknownSandbox",
    "answer",
    "backoff_delay",
    "create_admin_app",
    "limits_of",
    "load_agents",
    "running_host",
    "serve_host",
    "tool_list",
]

log = logging.getLogger(__name__)

GUEST_COMMAND = (sys.executable, "-m", "corral.guest.run")
"""What every sandbox runs: the guest runner, waiting for ``agent.start``."""
POOL_AGENT = "pool"
"""The agent label of a warm sandbox not yet handed out (it runs no agent code)."""
_SHARED_WORK = frozenset({"bwrap", "gvisor"})
"""Backends whose ``/work`` is the host directory itself (files copied later are seen)."""
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
_REASON_MAX = 256  # control's limit on an event's reason
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR}  # fmt: skip


class AgentExists(SandboxError, ValueError):
    """An agent of that tenant is already running on this host."""


class UnknownSandbox(SandboxError, LookupError):
    pass


def limits_of(section: HostLimitsSettings | Mapping[str, Any]) -> Limits:
    """:class:`Limits` from the settings' section or a mapping (``ValueError`` if bad)."""
    values = section.model_dump() if isinstance(section, HostLimitsSettings) else dict(section)
    known = set(Limits.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")
    return Limits(**values)


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before restart number ``attempt + 1``: ``initial · 2^attempt`` plus 0-50 % jitter,
    capped. Each delay's lowest possible value exceeds the previous one's highest, so the
    delays grow until the cap whatever the jitter.

    >>> rng = random.Random(1)
    >>> [round(backoff_delay(n, 0.5, 30, rng), 2) for n in range(8)]
    [0.53, 1.42, 2.76, 4.51, 9.98, 19.6, 30, 30]
    """
    base = initial_s * 2.0 ** min(attempt, 62)
    return min(max_s, base * (1 + rng.uniform(0, 0.5)))


async def answer(
    relay: Relay, allowed: frozenset[str], identity: Identity, method: str, params: dict[str, Any]
) -> Any:
    """The host's answer to one channel message of a sandbox whose agent may use ``allowed``
    (also ``corral sandbox exec``'s): the catalog, a refusal, or the relay's answer."""
    if method == "tools.list":
        return {"tools": tool_list(allowed)}
    if method in ("tools.call", "delegation.request"):
        tool = params.get("tool")
        if not isinstance(tool, str) or not tool:
            raise ValueError('"tool" must be a non-empty string')
        if tool not in allowed:
            raise ChannelRefusal(
                wire.FORBIDDEN,
                f"tool {tool!r} is not among this agent's tools",
                data={"tool": tool},
            )
        if method == "tools.call":
            return await relay.call(identity, params)
        return await relay.delegation(identity, params)
    if method == "log":
        level = _LOG_LEVELS.get(str(params.get("level", "info")).lower(), logging.INFO)
        message = str(params.get("message", ""))[:4000]
        log.log(level, "[%s/%s/%s] %s", identity.tenant, identity.agent, identity.sandbox, message)
        return None
    raise ChannelRefusal(wire.METHOD_NOT_FOUND, f"unknown method {method!r}")


def tool_list(allowed: frozenset[str]) -> list[dict[str, Any]]:
    """The ``tools.list`` answer: each allowed catalog tool with its argument schema."""
    from corral.connectors._registry import catalog

    tools = []
    for name, tool in sorted(catalog().items()):
        if name in allowed:
            schema = tool.json_schema()
            description = str(schema.get("description") or tool.operation).split("\n\n")[0]
            tools.append({"name": name, "description": " ".join(description.split()),
                          "input_schema": schema})  # fmt: skip
    return tools


@dataclass(frozen=True)
class AgentSpec:
    """An agent to run: who it is, its entry point, what it may call, where and how."""

    tenant: str
    agent: str
    entry: str
    argv: tuple[str, ...] = ()
    tools: frozenset[str] = frozenset()
    """Allowed catalog tool names (the template's); every other tool is refused by the host."""
    backend: str | None = None
    """A backend by name; ``None``: the host's default."""
    min_isolation: IsolationLevel | None = None
    limits: Limits | None = None
    """``None``: the host's default limits (only those can come from the warm pool)."""
    restart: bool = True
    seed: int | None = None
    """Passed to the guest in ``agent.start`` (it seeds the agent's ``random``)."""
    code: Path | None = None
    """A host directory copied into the sandbox's ``/work`` before ``agent.start``: agent code
    that is not an installed package (``entry="/work/agent.py"``)."""

    def __post_init__(self) -> None:
        check_id(self.tenant, "tenant")
        check_id(self.agent, "agent")
        if self.agent == POOL_AGENT:
            raise ValueError(f"agent name {POOL_AGENT!r} is reserved for warm sandboxes")
        if not self.entry:
            raise ValueError("entry must not be empty")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "tools", frozenset(self.tools))
        if self.code is not None and not self.code.is_dir():
            raise ValueError(f"agent code directory {self.code} does not exist")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentSpec:
        """From the admin API's body or one ``[[agents]]`` table of an agents file."""
        allowed = {"tenant", "agent", "entry", "argv", "tools", "backend", "min_isolation",
                   "limits", "restart", "seed", "code"}  # fmt: skip
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown agent fields: {', '.join(sorted(unknown))}")
        for name in ("tenant", "agent", "entry"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"agent field {name!r} must be a string")
        argv, tools = data.get("argv", []), data.get("tools", [])
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("agent field 'argv' must be a list of strings")
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise ValueError("agent field 'tools' must be a list of tool names")
        level = data.get("min_isolation")
        limits = data.get("limits")
        if limits is not None and not isinstance(limits, Mapping):
            raise ValueError("agent field 'limits' must be a table")
        seed, code = data.get("seed"), data.get("code")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError("agent field 'seed' must be an integer")
        if code is not None and not isinstance(code, str):
            raise ValueError("agent field 'code' must be a directory path")
        return cls(
            tenant=data["tenant"], agent=data["agent"], entry=data["entry"], argv=tuple(argv),
            tools=frozenset(tools), backend=data.get("backend"),
            min_isolation=IsolationLevel.parse(level) if level else None,
            limits=limits_of(limits) if limits is not None else None,
            restart=bool(data.get("restart", True)), seed=seed,
            code=Path(code) if code is not None else None,
        )  # fmt: skip


class SlotState(enum.StrEnum):
    STARTING = "starting"
    WARM = "warm"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    CRASHED = "crashed"
    STOPPED = "stopped"


@dataclass(eq=False)
class Slot:
    """One sandbox the host runs: its channel, its directory, its state."""

    id: str
    backend: Backend
    limits: Limits
    directory: Path
    channel: Channel
    started_at: datetime
    sandbox: Sandbox | None = None
    state: SlotState = SlotState.STARTING
    tools: frozenset[str] = frozenset()
    run: AgentRun | None = None
    ready_s: float | None = None
    """Start → ``sandbox.ready``, seconds."""
    handed_at: float | None = None
    first_message_at: float | None = None
    first_message: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the agent's first channel message after hand-out (the benchmark's "warm")."""
    stop_reason: str | None = None
    exit_code: int | None = None
    reported: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None

    @property
    def identity(self) -> Identity:
        return self.channel.identity

    def row(self) -> dict[str, Any]:
        who = self.identity
        return {"id": self.id, "tenant": who.tenant, "agent": who.agent,
                "backend": self.backend.name, "level": self.backend.level.label,
                "state": self.state.value, "started_at": format_time(self.started_at),
                "restarts": self.run.restarts if self.run else 0}  # fmt: skip


@dataclass(eq=False)
class AgentRun:
    """One agent kept running by the host: its current sandbox and its crash history."""

    spec: AgentSpec
    slot: Slot | None = None
    restarts: int = 0
    delays: list[float] = field(default_factory=list)
    """Back-off delays waited before each restart, in order."""
    crashes: deque[float] = field(default_factory=deque)
    stopping: bool = False
    state: str = "running"
    gave_up: str | None = None
    task: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Event:
    identity: Identity
    kind: str
    backend: str
    level: IsolationLevel
    exit_code: int | None
    reason: str | None


class Host:
    """The sandboxes of agents on this machine. Use ``async with Host(...)`` or call
    :meth:`stop_all` before dropping it."""

    def __init__(
        self,
        settings: Settings,
        relay: Relay,
        *,
        backends: Sequence[Backend] | None = None,
        ids: IdSource | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.options = settings.host
        self.relay = relay
        if backends is None:
            from corral.runtime.backends import backends as configured

            backends = configured(settings)
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self.clock = clock or SystemClock()
        self.ids = ids or RandomIds(self.clock)
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self.default_limits = limits_of(self.options.limits)
        self.sandboxes_dir = settings.host_dir / "sandboxes"
        self.slots: dict[str, Slot] = {}
        self.agents: dict[tuple[str, str], AgentRun] = {}
        self.pools: dict[tuple[str, str], deque[Slot]] = {}
        self._refills: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._later: set[asyncio.Task[None]] = set()
        self._available: dict[str, Availability] = {}
        self._default: Backend | None = None
        self._events: deque[_Event] = deque()
        self._outbox: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Host:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all()

    # ------------------------------------------------------------------ backends

    def _availability(self, backend: Backend) -> Availability:
        found = self._available.get(backend.name)
        if found is None:
            found = self._available[backend.name] = backend.available()
        return found

    def default_backend(self) -> Backend:
        """The configured backend, or (``auto``) the strongest available one."""
        if self._default is None:
            name = self.options.backend
            if name == "auto":
                usable = [b for b in self.backends.values() if self._availability(b).ok]
                if not usable:
                    reasons = "; ".join(f"{b.name}: {self._availability(b).reason}"
                                        for b in self.backends.values())  # fmt: skip
                    raise SandboxUnavailable(f"no sandbox backend is available ({reasons})")
                self._default = max(usable, key=lambda b: b.level)
            else:
                self._default = self.backend(name)
        return self._default

    def backend(self, name: str | None) -> Backend:
        """A backend by name (``None``: the default), refused if this host cannot run it."""
        if name is None:
            return self.default_backend()
        found = self.backends.get(name)
        if found is None:
            known = ", ".join(sorted(self.backends)) or "none"
            raise SandboxUnavailable(f"unknown sandbox backend {name!r} (known: {known})")
        availability = self._availability(found)
        if not availability.ok:
            raise SandboxUnavailable(f"backend {name!r} is not available: {availability.reason}")
        return found

    def minimum(self, spec: AgentSpec) -> IsolationLevel | None:
        """The stronger of the agent's and its tenant's minimum isolation level."""
        levels = [spec.min_isolation] if spec.min_isolation is not None else []
        tenant = self.options.min_isolation.get(spec.tenant)
        if tenant is not None:
            levels.append(IsolationLevel.parse(tenant))
        return max(levels) if levels else None

    # ------------------------------------------------------------------ agents

    async def start_agent(self, spec: AgentSpec) -> Slot:
        """Run ``spec``'s agent: in a warm sandbox of its tenant if one is ready, else cold.
        Returns its sandbox once ``agent.start`` has been sent."""
        if self._closing:
            raise SandboxError("the host is stopping")
        key = (spec.tenant, spec.agent)
        if key in self.agents:
            raise AgentExists(f"agent {spec.agent!r} of tenant {spec.tenant!r} is already running")
        backend = self.backend(spec.backend)
        minimum = self.minimum(spec)
        if minimum is not None:
            require_level(backend, minimum)
        run = AgentRun(spec)
        self.agents[key] = run
        try:
            slot = await self._acquire(run, backend, "cold start")
        except BaseException:
            del self.agents[key]
            raise
        run.task = asyncio.create_task(self._supervise(run, backend, slot))
        return slot

    async def stop_agent(self, tenant: str, agent: str, reason: str = "stopped by the operator",
                         grace_s: float = 2.0) -> int | None:  # fmt: skip
        """Stop an agent on purpose (no restart); its last sandbox's exit status."""
        run = self.agents.get((tenant, agent))
        if run is None:
            raise UnknownSandbox(f"no agent {agent!r} of tenant {tenant!r} runs here")
        run.stopping = True
        slot = run.slot
        if slot is not None and not slot.done.is_set():
            await self._stop_slot(slot, reason, grace_s)
        if run.task is not None:
            run.task.cancel()  # wakes a back-off sleep; a finished loop ignores it
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        slot = run.slot  # a restart may have started one meanwhile
        if slot is not None and not slot.done.is_set():
            await self._stop_slot(slot, reason, grace_s)
        run.state = "stopped" if run.gave_up is None else run.state
        self.agents.pop((tenant, agent), None)
        run.finished.set()
        return slot.exit_code if slot is not None else None

    async def stop_sandbox(self, sandbox_id: str) -> int | None:
        """Stop one sandbox: its agent is stopped on purpose; a warm one leaves the pool."""
        slot = self.slots.get(sandbox_id)
        if slot is None:  # an agent between sandboxes, or given up: its last sandbox's id
            runs = [r for r in self.agents.values() if r.slot and r.slot.id == sandbox_id]
            if not runs:
                raise UnknownSandbox(f"no sandbox {sandbox_id!r} runs here")
            return await self.stop_agent(runs[0].spec.tenant, runs[0].spec.agent)
        if slot.run is not None:
            spec = slot.run.spec
            return await self.stop_agent(spec.tenant, spec.agent)
        await self._stop_slot(slot, "stopped by the operator")
        return slot.exit_code

    async def stop_all(self, reason: str = "host shutdown", grace_s: float = 2.0) -> None:
        """Stop every agent and warm sandbox, and deliver the pending events (SIGTERM)."""
        self._closing = True
        for task in [*self._later, *self._refills.values()]:
            task.cancel()
        for task in list(self._refills.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._refills.clear()
        runs = list(self.agents.values())
        await asyncio.gather(
            *(self.stop_agent(r.spec.tenant, r.spec.agent, reason, grace_s) for r in runs),
            return_exceptions=True,
        )
        await asyncio.gather(
            *(self._stop_slot(s, reason, grace_s) for s in list(self.slots.values())),
            return_exceptions=True,
        )
        await self._flush_events()

    def listing(self) -> list[dict[str, Any]]:
        """Every sandbox: the admin API's ``GET /sandboxes``."""
        rows = [slot.row() for slot in self.slots.values()]
        for run in self.agents.values():
            if run.slot is None or run.slot.id not in self.slots:
                spec = run.spec  # between sandboxes: backing off, or given up
                last = run.slot.id if run.slot else None
                rows.append({"id": last, "tenant": spec.tenant, "agent": spec.agent,
                             "backend": spec.backend, "level": None, "state": run.state,
                             "started_at": None, "restarts": run.restarts})  # fmt: skip
        return rows

    # ------------------------------------------------------------------ warm pools

    def warm(self, tenant: str, backend: str | None = None) -> None:
        """Keep ``warm_pool`` ready sandboxes for ``tenant`` (refilled in the background)."""
        check_id(tenant, "tenant")
        self._refill((tenant, self.backend(backend).name))

    async def wait_warm(self, tenant: str, backend: str | None = None, *,
                        timeout: float = 30.0) -> list[Slot]:  # fmt: skip
        """Wait until ``tenant``'s pool is full; its warm sandboxes."""
        key = (tenant, self.backend(backend).name)
        self._refill(key)
        deadline = time.monotonic() + timeout
        while len(self.pools.get(key, ())) < self.options.warm_pool:
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm pool of {tenant} not full after {timeout} s")
            await asyncio.sleep(0.01)
        return list(self.pools[key])

    def _refill(self, key: tuple[str, str]) -> None:
        if self._closing or self.options.warm_pool == 0:
            return
        task = self._refills.get(key)
        if task is None or task.done():
            self._refills[key] = asyncio.create_task(self._refill_loop(key))

    def _refill_later(self, slot: Slot, key: tuple[str, str]) -> None:
        """Refill once the agent just handed out has started (its first message, or a second
        at most): starting a sandbox is CPU-heavy and would slow the hand-out it replaces."""

        async def later() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.first_message.wait(), 1.0)
            self._refill(key)

        task = asyncio.create_task(later())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _refill_loop(self, key: tuple[str, str]) -> None:
        tenant, backend_name = key
        backend = self.backends[backend_name]
        failures = 0
        pool = self.pools.setdefault(key, deque())
        while not self._closing and len(pool) < self.options.warm_pool:
            identity = Identity(tenant, POOL_AGENT, self._new_id())
            try:
                slot = await self._start_slot(identity, backend, self.default_limits)
            except Exception as exc:
                failures += 1
                delay = backoff_delay(failures - 1, self.options.restart_initial_s,
                                      self.options.restart_max_s, self.rng)  # fmt: skip
                log.warning("warm sandbox for %s failed (%s); again in %.1f s", tenant, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            slot.state = SlotState.WARM
            pool.append(slot)

    def _take_warm(self, spec: AgentSpec, backend: Backend, limits: Limits) -> Slot | None:
        if limits != self.default_limits:
            return None
        if spec.code is not None and backend.name not in _SHARED_WORK:
            return None  # its /work was sealed at start: the code must be there before
        tenant = spec.tenant
        pool = self.pools.get((tenant, backend.name))
        while pool:
            slot = pool.popleft()
            alive = slot.sandbox is not None and slot.sandbox.returncode is None
            if alive and slot.channel.connected and slot.state is SlotState.WARM:
                return slot
        return None

    # ------------------------------------------------------------------ sandboxes

    def _new_id(self) -> str:
        return self.ids.new("sbx")

    async def _acquire(self, run: AgentRun, backend: Backend, how: str) -> Slot:
        spec = run.spec
        limits = spec.limits or self.default_limits
        slot = self._take_warm(spec, backend, limits)
        if slot is not None:
            slot.channel.rebind(spec.agent)
            how = "warm pool" if how == "cold start" else f"{how}, warm pool"
            if spec.code is not None:
                await asyncio.to_thread(_copy_code, spec.code, slot.directory / "work")
        else:
            identity = Identity(spec.tenant, spec.agent, self._new_id())
            slot = await self._start_slot(identity, backend, limits, spec.code)
        slot.run, run.slot = run, slot
        slot.tools = spec.tools
        slot.state = SlotState.RUNNING
        slot.handed_at = time.monotonic()
        slot.first_message.clear()
        start: dict[str, Any] = {"entry": spec.entry, "argv": list(spec.argv)}
        if spec.seed is not None:
            start["seed"] = spec.seed
        try:
            await slot.channel.notify("agent.start", start)
        except (SandboxError, ConnectionError) as exc:
            self._refill((spec.tenant, backend.name))
            await self._stop_slot(slot, f"agent.start failed: {exc}")
            raise SandboxError(f"sandbox {slot.id} lost its guest before agent.start") from exc
        slot.reported = True
        self._refill_later(slot, (spec.tenant, backend.name))
        self._event(_Event(slot.identity, "sandbox.started", backend.name, backend.level,
                           None, how))  # fmt: skip
        return slot

    async def _start_slot(
        self, identity: Identity, backend: Backend, limits: Limits, code: Path | None = None
    ) -> Slot:
        """Start a sandbox (``code`` copied into its ``/work`` first) and wait for its
        ``sandbox.ready``; clean up if it does not come."""
        directory = self.sandboxes_dir / identity.sandbox
        socket = directory / "channel.sock"
        if len(str(socket).encode()) > _SOCKET_PATH_MAX:
            raise SandboxError(
                f"channel socket path {socket} is longer than {_SOCKET_PATH_MAX} bytes: "
                "use a shorter data directory"
            )
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(mode=0o700)
        (directory / "work").mkdir(mode=0o700)
        if code is not None:
            await asyncio.to_thread(_copy_code, code, directory / "work")
        started = time.monotonic()
        channel = await Channel.open(socket, identity, self._handle)
        slot = Slot(identity.sandbox, backend, limits, directory, channel, self.clock.now())
        self.slots[slot.id] = slot
        spec = SandboxSpec(identity, GUEST_COMMAND, directory / "work", socket, limits)
        try:
            slot.sandbox = await _start_uncancelled(backend, spec)
            await self._wait_ready(slot, slot.sandbox)
        except BaseException:
            await self._discard(slot)
            raise
        slot.ready_s = time.monotonic() - started
        slot.watcher = asyncio.create_task(self._watch(slot, slot.sandbox))
        return slot

    async def _wait_ready(self, slot: Slot, sandbox: Sandbox) -> None:
        ready = asyncio.ensure_future(slot.channel.wait_ready(self.options.ready_timeout_s))
        ended = asyncio.ensure_future(sandbox.wait())
        try:
            await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, ended):
                task.cancel()
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            return
        if ended.done() and not ended.cancelled():
            _, err = await sandbox.output()
            tail = err.decode(errors="replace").strip()[-500:]
            raise SandboxError(f"sandbox {slot.id} exited ({ended.result()}) before it was "
                               f"ready{': ' + tail if tail else ''}")  # fmt: skip
        raise SandboxError(f"sandbox {slot.id} was not ready within "
                           f"{self.options.ready_timeout_s:g} s")  # fmt: skip

    async def _discard(self, slot: Slot) -> None:
        """Release a sandbox that never became ready."""
        if slot.sandbox is not None:
            with contextlib.suppress(Exception):
                await slot.sandbox.stop(0.5)
        await slot.channel.close()
        self.slots.pop(slot.id, None)
        shutil.rmtree(slot.directory, ignore_errors=True)
        slot.done.set()

    async def _watch(self, slot: Slot, sandbox: Sandbox) -> None:
        """The one place a running sandbox's end is noticed and everything it held released."""
        try:
            code = await sandbox.wait()
        except asyncio.CancelledError:
            code = await sandbox.stop(0.5)
        slot.exit_code = code
        with contextlib.suppress(Exception):
            await sandbox.stop(0.5)  # releases cgroups, mounts and helpers; idempotent
        if slot.stop_reason is None and code != 0:
            with contextlib.suppress(Exception):
                _, err = await sandbox.output()
                tail = err.decode(errors="replace").strip()[-1000:]
                log.warning("sandbox %s (%s/%s) exited %s: %s", slot.id, slot.identity.tenant,
                            slot.identity.agent, code, tail or "(no stderr)")  # fmt: skip
        await slot.channel.close()
        if slot.state is SlotState.WARM:
            pool = self.pools.get((slot.identity.tenant, slot.backend.name))
            if pool is not None and slot in pool:
                pool.remove(slot)
                self._refill((slot.identity.tenant, slot.backend.name))
        if slot.stop_reason is not None:
            slot.state = SlotState.STOPPED
        else:
            slot.state = SlotState.EXITED if code == 0 else SlotState.CRASHED
        if slot.reported and not _restartable_crash(slot):  # else the supervisor says more
            reason = slot.stop_reason or ("exited" if code == 0 else f"crashed (exit {code})")
            self._stopped(slot, reason)
        self.slots.pop(slot.id, None)
        shutil.rmtree(slot.directory, ignore_errors=True)
        slot.done.set()

    async def _stop_slot(self, slot: Slot, reason: str, grace_s: float = 2.0) -> None:
        if slot.done.is_set():
            return
        if slot.stop_reason is None:
            slot.stop_reason = reason
        slot.state = SlotState.STOPPING
        if slot.channel.connected:
            with contextlib.suppress(Exception):
                await slot.channel.notify("sandbox.stop", {})
        if slot.sandbox is not None:
            with contextlib.suppress(Exception):
                await slot.sandbox.stop(grace_s)
        if slot.watcher is None:
            await self._discard(slot)
        await slot.done.wait()

    async def _supervise(self, run: AgentRun, backend: Backend, first: Slot) -> None:
        """Keep one agent running: restart it with back-off when it crashes."""
        options = self.options
        attempt = 0
        slot: Slot | None = first
        while True:
            ran_s, crashed = 0.0, False
            if slot is None:
                code = None  # the restart itself failed: counts as a crash
            else:
                started = time.monotonic()
                await slot.done.wait()
                ran_s = time.monotonic() - started
                code = slot.exit_code
                crashed = _restartable_crash(slot) and slot.reported
                if run.stopping:
                    if crashed:
                        self._stopped(slot, f"crashed (exit {code})")
                    return
                if code == 0 or not run.spec.restart:
                    run.state = "exited" if code == 0 else "crashed"
                    self.agents.pop((run.spec.tenant, run.spec.agent), None)
                    run.finished.set()
                    return
            now = time.monotonic()
            if ran_s >= options.restart_reset_after_s:
                attempt = 0
                run.crashes.clear()
            run.crashes.append(now)
            while now - run.crashes[0] > options.restart_window_s:
                run.crashes.popleft()
            if len(run.crashes) >= options.restart_max_crashes:
                run.state = "failed"
                run.gave_up = (f"gave up after {len(run.crashes)} crashes within "
                               f"{options.restart_window_s:g} s (last exit {code})")  # fmt: skip
                log.error("agent %s of %s: %s", run.spec.agent, run.spec.tenant, run.gave_up)
                if slot is not None and crashed:
                    self._stopped(slot, f"crashed (exit {code}); {run.gave_up}")
                run.finished.set()
                return
            delay = backoff_delay(attempt, options.restart_initial_s, options.restart_max_s,
                                  self.rng)  # fmt: skip
            if slot is not None and crashed:
                self._stopped(slot, f"crashed (exit {code}); restart in {delay:.2f} s")
            attempt += 1
            run.delays.append(delay)
            run.state = "backoff"
            await asyncio.sleep(delay)
            if run.stopping or self._closing:
                return
            run.restarts += 1
            try:
                slot = await self._acquire(
                    run, backend, f"restart {run.restarts} after exit {code}"
                )
            except SandboxError as exc:
                log.warning("agent %s of %s: restart failed: %s", run.spec.agent,
                            run.spec.tenant, exc)  # fmt: skip
                slot = None
                continue
            run.state = "running"

    # ------------------------------------------------------------------ the channel

    async def _handle(self, identity: Identity, method: str, params: dict[str, Any]) -> Any:
        slot = self.slots.get(identity.sandbox)
        if slot is None:
            raise ChannelRefusal(wire.FORBIDDEN, "this sandbox is being stopped")
        if slot.handed_at is not None and not slot.first_message.is_set():
            slot.first_message_at = time.monotonic()
            slot.first_message.set()
        return await answer(self.relay, slot.tools, identity, method, params)

    # ------------------------------------------------------------------ events

    def _stopped(self, slot: Slot, reason: str) -> None:
        self._event(_Event(slot.identity, "sandbox.stopped", slot.backend.name,
                           slot.backend.level, slot.exit_code, reason))  # fmt: skip

    def _event(self, event: _Event) -> None:
        reason = event.reason[:_REASON_MAX] if event.reason else None
        self._events.append(_Event(event.identity, event.kind, event.backend, event.level,
                                   event.exit_code, reason))  # fmt: skip
        if self._outbox is None or self._outbox.done():
            self._outbox = asyncio.create_task(self._deliver())

    async def _deliver(self) -> None:
        """Send events in order; while control is unreachable, retry with back-off."""
        failures = 0
        while self._events:
            event = self._events[0]
            try:
                await self.relay.sandbox_event(
                    event.identity,
                    event.kind,
                    event.backend,
                    event.level,
                    event.exit_code,
                    event.reason,
                )
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("cannot report %s of %s to control (%s); retrying",
                                event.kind, event.identity.sandbox, exc)  # fmt: skip
                await asyncio.sleep(backoff_delay(failures - 1, 0.1, 5.0, self.rng))
                continue
            failures = 0
            self._events.popleft()

    async def _flush_events(self, timeout_s: float = 5.0) -> None:
        if self._outbox is None or self._outbox.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._outbox), timeout_s)
        except TimeoutError:
            log.error("%d sandbox events were not delivered to control", len(self._events))
            self._outbox.cancel()

    async def events_delivered(self) -> None:
        """Wait until every event so far reached the relay (tests, shutdown)."""
        while self._outbox is not None and not self._outbox.done():
            await asyncio.shield(self._outbox)


def _restartable_crash(slot: Slot) -> bool:
    """Whether ``slot`` ended by crashing (not stopped, non-zero) in an agent that restarts."""
    run = slot.run
    return run is not None and run.spec.restart and slot.stop_reason is None and slot.exit_code != 0


async def _start_uncancelled(backend: Backend, spec: SandboxSpec) -> Sandbox:
    """``backend.start``, never cancelled halfway. Cancelling ``create_subprocess_exec`` while
    it connects its pipes can wait forever on Python 3.11 (the transport waits for pipes that
    will never connect), so a cancelled caller lets the start finish, stops what it made, and
    only then is cancelled."""
    starting = asyncio.ensure_future(backend.start(spec))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            sandbox = await starting
            await sandbox.stop(0.5)
        raise


def _copy_code(source: Path, work: Path) -> None:
    shutil.copytree(source, work, dirs_exist_ok=True)


# ---------------------------------------------------------------------- the admin API


def create_admin_app(host: Host) -> Any:
    """The host's admin API: list, start and stop sandboxes (served on a 0600 Unix socket)."""
    from fastapi import Body, FastAPI, Request
    from fastapi.responses import JSONResponse

    from corral.core.problems import problem
    from corral.runtime.sandbox import IsolationTooWeak

    app = FastAPI(title="corral host", version="1", docs_url=None, redoc_url=None)

    @app.exception_handler(UnknownSandbox)
    async def unknown(_request: Request, exc: UnknownSandbox) -> JSONResponse:
        return problem(404, "unknown_sandbox", str(exc))

    @app.exception_handler(AgentExists)
    async def exists(_request: Request, exc: AgentExists) -> JSONResponse:
        return problem(409, "agent_exists", str(exc))

    @app.exception_handler(IsolationTooWeak)
    async def too_weak(_request: Request, exc: IsolationTooWeak) -> JSONResponse:
        return problem(409, "isolation_too_weak", str(exc))

    @app.exception_handler(SandboxUnavailable)
    async def unavailable(_request: Request, exc: SandboxUnavailable) -> JSONResponse:
        return problem(503, "sandbox_unavailable", str(exc))

    @app.exception_handler(SandboxError)
    async def failed(_request: Request, exc: SandboxError) -> JSONResponse:
        return problem(500, "sandbox_failed", str(exc))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        warm = sum(len(pool) for pool in host.pools.values())
        return {"status": "ok", "sandboxes": len(host.slots), "agents": len(host.agents),
                "warm": warm}  # fmt: skip

    @app.get("/sandboxes")
    async def sandboxes() -> dict[str, Any]:
        return {"sandboxes": host.listing()}

    @app.post("/agents", status_code=201)
    async def agents(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        try:
            spec = AgentSpec.from_json(body)
        except ValueError as exc:
            return problem(400, "bad_request", str(exc))
        slot = await host.start_agent(spec)
        return slot.row()

    @app.delete("/sandboxes/{sandbox_id}")
    async def stop(sandbox_id: str) -> dict[str, Any]:
        code = await host.stop_sandbox(sandbox_id)
        return {"id": sandbox_id, "state": "stopped", "exit_code": code}

    return app


def load_agents(path: Path) -> list[AgentSpec]:
    """The ``[[agents]]`` tables of a TOML file (``ValueError`` naming the bad one); a relative
    ``code`` directory is relative to the file."""
    import tomllib

    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read agents file {path}: {exc}") from None
    tables = document.get("agents", [])
    if not isinstance(tables, list) or set(document) - {"agents"}:
        raise ValueError(f"{path}: expected only [[agents]] tables")
    specs = []
    for number, table in enumerate(tables, 1):
        if isinstance(table, dict) and isinstance(table.get("code"), str):
            table["code"] = str(path.parent / table["code"])  # relative to the file
        try:
            specs.append(AgentSpec.from_json(table))
        except ValueError as exc:
            raise ValueError(f"{path}: agent {number}: {exc}") from None
    return specs


@contextlib.asynccontextmanager
async def running_host(settings: Settings, relay: Relay | None = None) -> AsyncIterator[Host]:
    """A :class:`Host` with its relay to control, stopped (all sandboxes) on exit."""
    from corral.runtime.relay import ControlRelay

    own = relay is None
    relay = relay or ControlRelay.from_settings(settings)
    host = Host(settings, relay)
    try:
        yield host
    finally:
        await host.stop_all()
        if own:
            await relay.aclose()


async def serve_host(settings: Settings, agents: Sequence[AgentSpec] = ()) -> None:
    """``corral host serve``: start ``agents``, serve the admin API until SIGTERM/SIGINT, then
    stop every sandbox."""
    from corral.core.serving import Listen, serve

    settings.host_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    async with running_host(settings) as host:
        for tenant in sorted({spec.tenant for spec in agents}):
            host.warm(tenant)
        for spec in agents:
            await host.start_agent(spec)
            log.info("started %s/%s", spec.tenant, spec.agent)
        await serve(create_admin_app(host), Listen(settings.host_socket))
