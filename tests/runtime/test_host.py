"""``corral host`` with a real backend (bubblewrap): cold starts, the per-tenant warm pool,
restart with back-off, stopping (nothing left in ``/proc``), the host's answers on the channel,
sandbox events, and the admin API. A simple in-test relay stands in for control."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.core.settings import Settings, load_settings
from corral.guest import wire
from corral.runtime.bwrap import BwrapSandbox
from corral.runtime.channel import ChannelRefusal
from corral.runtime.host import (
    POOL_AGENT,
    AgentSpec,
    Host,
    SlotState,
    backoff_delay,
    create_admin_app,
    load_agents,
)
from corral.runtime.sandbox import Identity, IsolationLevel, IsolationTooWeak
from tests.conftest import need_service

ROOT = Path(__file__).resolve().parents[2]
TENANT = "brightsmile"
SMS = "twilio.send_sms"

AGENTS = {
    "agent.py": """
import sys
from corral.guest import tools
print("tools:", [t.name for t in tools.list()])
sent = tools.twilio.send_sms(to="+13105550123", body="See you at 10")
print("verdict:", sent.verdict, sent.call_id)
""",
    "forbidden.py": """
from corral.guest import tools, ToolForbidden
try:
    tools.stripe.create_refund(payment_intent="pi_1", amount=100, currency="usd")
except ToolForbidden as exc:
    print("forbidden:", exc.code, exc.message)
""",
    "crash.py": "import sys\nsys.exit(1)\n",
    "sleeper.py": "import time\nwhile True:\n    time.sleep(1)\n",
}


class RecordingRelay:
    """Control, as far as the host can tell: every call allowed, everything recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[Identity, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []

    async def call(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((identity, params))
        return {"call_id": f"call_{len(self.calls)}", "verdict": "allow", "explanation": "allowed"}

    async def delegation(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        raise ChannelRefusal(wire.REFUSED, "no delegations here")

    async def sandbox_event(
        self, identity: Identity, kind: str, backend: str, level: IsolationLevel,
        exit_code: int | None = None, reason: str | None = None,
    ) -> None:  # fmt: skip
        self.events.append({"identity": identity, "kind": kind, "backend": backend,
                            "level": level, "exit_code": exit_code, "reason": reason})  # fmt: skip

    async def aclose(self) -> None:
        return None


@pytest.fixture(name="data_dir")
def data_dir_fixture() -> Iterator[Path]:
    """A short data directory (a channel socket's path must fit in 108 bytes)."""
    from corral.runtime.bwrap import BwrapBackend

    found = BwrapBackend().available()
    if not found.ok:
        need_service("bubblewrap", found.reason)
    path = Path(tempfile.mkdtemp(prefix="ch-", dir="/tmp"))
    (path / "code").mkdir()
    for name, text in AGENTS.items():
        (path / "code" / name).write_text(text)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def settings_for(data_dir: Path, **host: Any) -> Settings:
    options = {"backend": "bwrap", "warm_pool": 0, "restart_initial_s": 0.05,
               "restart_max_s": 5.0, "ready_timeout_s": 30.0, **host}  # fmt: skip
    return load_settings(data_dir=data_dir, host=options)


def spec(data_dir: Path, script: str, agent: str = "receptionist-1", tenant: str = TENANT,
         **more: Any) -> AgentSpec:  # fmt: skip
    return AgentSpec(tenant, agent, f"/work/{script}", tools=frozenset({SMS}),
                     code=data_dir / "code", **more)  # fmt: skip


def with_host(data_dir: Path, scenario: Callable[[Host, RecordingRelay], Awaitable[None]],
              **host: Any) -> RecordingRelay:  # fmt: skip
    relay = RecordingRelay()

    async def run() -> None:
        async with Host(settings_for(data_dir, **host), relay, rng=random.Random(7)) as running:
            await asyncio.wait_for(scenario(running, relay), 60)
        await asyncio.wait_for(running.events_delivered(), 10)

    asyncio.run(run())
    return relay


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it holds nothing but its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_under(path: Path) -> set[int]:
    """Host pids of running processes whose command line names ``path``, and all their
    descendants (bwrap's command line names the work directory it binds; the guest's are its
    children)."""
    parents: dict[int, int] = {}
    roots: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        if str(path).encode() in cmdline:
            roots.add(int(entry))
    found = set(roots)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return {pid for pid in found if alive(pid)}


async def output(slot: Any) -> str:
    out, _ = await slot.sandbox.output()
    return str(out.decode())


def test_a_cold_start_runs_the_agent_and_its_tool_call_reaches_the_relay(data_dir: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario(host: Host, relay: RecordingRelay) -> None:
        slot = await host.start_agent(spec(data_dir, "agent.py"))
        seen["ready_s"], seen["id"] = slot.ready_s, slot.id
        assert slot.state is SlotState.RUNNING and host.pools.get((TENANT, "bwrap")) is None
        await slot.done.wait()
        seen["exit"], seen["out"] = slot.exit_code, await output(slot)
        seen["left"] = (data_dir / "host" / "sandboxes" / slot.id).exists()

    relay = with_host(data_dir, scenario)
    assert seen["exit"] == 0 and seen["ready_s"] > 0
    assert "tools: ['twilio.send_sms']" in seen["out"] and "verdict: allow call_1" in seen["out"]
    who = Identity(TENANT, "receptionist-1", seen["id"])
    assert relay.calls == [(who, {"tool": SMS, "args": {"to": "+13105550123",
                                                        "body": "See you at 10"}})]  # fmt: skip
    assert [(e["kind"], e["exit_code"], e["reason"]) for e in relay.events] == [
        ("sandbox.started", None, "cold start"), ("sandbox.stopped", 0, "exited")]  # fmt: skip
    assert all(e["identity"] == who and e["level"] is IsolationLevel.NAMESPACES
               for e in relay.events)  # fmt: skip
    assert seen["left"] is False  # the sandbox's directory went with it


def test_a_warm_sandbox_is_running_before_the_agent_is_handed_it(data_dir: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario(host: Host, relay: RecordingRelay) -> None:
        (warm,) = await host.wait_warm(TENANT)
        assert warm.identity == Identity(TENANT, POOL_AGENT, warm.id)
        running = processes_under(warm.directory)
        assert warm.sandbox is not None and warm.sandbox.returncode is None and running
        assert relay.events == []  # a warm sandbox ran for nobody yet
        slot = await host.start_agent(spec(data_dir, "agent.py"))
        assert slot is warm  # handed out, not started
        assert isinstance(warm.sandbox, BwrapSandbox)
        assert warm.sandbox.pid in running  # its bwrap ran before the hand-out
        await slot.done.wait()
        seen["id"], seen["out"] = slot.id, await output(slot)
        (refilled,) = await host.wait_warm(TENANT)
        seen["refilled"] = refilled.id

    relay = with_host(data_dir, scenario, warm_pool=1)
    assert "verdict: allow" in seen["out"]
    who = Identity(TENANT, "receptionist-1", seen["id"])
    assert [identity for identity, _ in relay.calls] == [who]  # rebound: the agent, not "pool"
    assert relay.events[0]["identity"] == who and relay.events[0]["reason"] == "warm pool"
    assert seen["refilled"] != seen["id"]  # the pool refilled itself


def test_warm_pools_are_per_tenant_and_never_cross(data_dir: Path) -> None:
    async def scenario(host: Host, relay: RecordingRelay) -> None:
        (warm_a,) = await host.wait_warm("tenant-a")
        (warm_b,) = await host.wait_warm("tenant-b")
        slot = await host.start_agent(spec(data_dir, "sleeper.py", tenant="tenant-b"))
        assert slot is warm_b and slot.identity.tenant == "tenant-b"
        assert list(host.pools[("tenant-a", "bwrap")]) == [warm_a]  # untouched
        assert warm_a.state is SlotState.WARM and warm_a.identity.agent == POOL_AGENT
        other = await host.start_agent(spec(data_dir, "sleeper.py", tenant="tenant-c"))
        assert other is not warm_a and other.identity.tenant == "tenant-c"  # cold, not a's
        assert other.id not in {s.id for pool in host.pools.values() for s in pool}
        with pytest.raises(ValueError, match="tenant"):
            slot.channel.rebind("../tenant-a")  # an agent name, never a tenant

    relay = with_host(data_dir, scenario, warm_pool=1)
    started = [e for e in relay.events if e["kind"] == "sandbox.started"]
    assert {e["identity"].tenant for e in started} == {"tenant-b", "tenant-c"}


def test_a_crashing_agent_is_restarted_with_growing_delays_then_given_up(data_dir: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario(host: Host, relay: RecordingRelay) -> None:
        await host.start_agent(spec(data_dir, "crash.py"))
        run = host.agents[(TENANT, "receptionist-1")]
        await run.finished.wait()
        seen.update(state=run.state, restarts=run.restarts, delays=run.delays,
                    gave_up=run.gave_up, listing=host.listing())  # fmt: skip

    relay = with_host(data_dir, scenario, restart_max_crashes=4, restart_window_s=600)
    assert seen["state"] == "failed" and seen["restarts"] == 3
    delays = seen["delays"]
    assert len(delays) == 3 and delays == sorted(delays) and len(set(delays)) == 3
    assert 0.05 <= delays[0] <= 0.075 and 0.1 <= delays[1] <= 0.15 and 0.2 <= delays[2] <= 0.3
    assert seen["gave_up"] == "gave up after 4 crashes within 600 s (last exit 1)"
    assert seen["listing"][0]["state"] == "failed" and seen["listing"][0]["restarts"] == 3
    kinds = [(e["kind"], e["exit_code"]) for e in relay.events]
    assert kinds == [("sandbox.started", None), ("sandbox.stopped", 1)] * 4
    assert [e["reason"] for e in relay.events] == [
        "cold start", f"crashed (exit 1); restart in {delays[0]:.2f} s",
        "restart 1 after exit 1", f"crashed (exit 1); restart in {delays[1]:.2f} s",
        "restart 2 after exit 1", f"crashed (exit 1); restart in {delays[2]:.2f} s",
        "restart 3 after exit 1", f"crashed (exit 1); {seen['gave_up']}",
    ]  # fmt: skip
    assert len({e["identity"].sandbox for e in relay.events}) == 4  # a fresh sandbox each time


def test_a_healthy_run_resets_the_back_off(data_dir: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario(host: Host, relay: RecordingRelay) -> None:
        await host.start_agent(spec(data_dir, "crash.py"))
        run = host.agents[(TENANT, "receptionist-1")]
        while run.restarts < 3:
            await asyncio.sleep(0.02)
        await host.stop_agent(TENANT, "receptionist-1")
        seen.update(delays=list(run.delays), state=run.state)

    with_host(data_dir, scenario, restart_reset_after_s=1e-6, restart_max_crashes=2)
    assert seen["state"] == "stopped"  # never gave up: each crash came after a "healthy" run
    assert all(0.05 <= d <= 0.075 for d in seen["delays"])  # always the first delay


def test_stop_all_leaves_no_sandbox_process(data_dir: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario(host: Host, relay: RecordingRelay) -> None:
        slot = await host.start_agent(spec(data_dir, "sleeper.py"))
        await host.wait_warm(TENANT)
        seen["before"] = processes_under(data_dir)
        seen["slot"] = slot
        await host.stop_all()
        seen["after"] = processes_under(data_dir)

    relay = with_host(data_dir, scenario, warm_pool=2)
    assert len(seen["before"]) >= 6  # 3 sandboxes: bwrap, its pid 1 and the guest each
    assert seen["after"] == set()
    assert not [pid for pid in seen["before"] if alive(pid)]
    assert list((data_dir / "host" / "sandboxes").iterdir()) == []
    assert [(e["kind"], e["reason"]) for e in relay.events] == [
        ("sandbox.started", "cold start"),  # the pool filled after the agent started
        ("sandbox.stopped", "host shutdown")]  # fmt: skip
    assert relay.events[1]["exit_code"] == 0  # the runner ends the agent on sandbox.stop


def test_stopping_one_agent_stops_it_for_good(data_dir: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario(host: Host, relay: RecordingRelay) -> None:
        slot = await host.start_agent(spec(data_dir, "sleeper.py"))
        seen["code"] = await host.stop_sandbox(slot.id)
        seen["agents"], seen["slots"] = dict(host.agents), dict(host.slots)
        seen["gone"] = processes_under(slot.directory)

    relay = with_host(data_dir, scenario)
    assert seen["code"] == 0 and seen["agents"] == {} and seen["slots"] == {}
    assert seen["gone"] == set()
    assert relay.events[-1]["reason"] == "stopped by the operator"


def test_a_tool_outside_the_agents_list_is_refused_without_reaching_control(
    data_dir: Path,
) -> None:
    seen: dict[str, Any] = {}

    async def scenario(host: Host, relay: RecordingRelay) -> None:
        slot = await host.start_agent(spec(data_dir, "forbidden.py"))
        await slot.done.wait()
        seen["exit"], seen["out"] = slot.exit_code, await output(slot)

    relay = with_host(data_dir, scenario)
    assert seen["exit"] == 0
    assert (
        "forbidden: -32003 tool 'stripe.create_refund' is not among this agent's tools"
        in (seen["out"])
    )
    assert relay.calls == []


def test_a_tenants_minimum_isolation_is_enforced(data_dir: Path) -> None:
    async def scenario(host: Host, relay: RecordingRelay) -> None:
        with pytest.raises(IsolationTooWeak, match="requires at least 'gvisor'"):
            await host.start_agent(spec(data_dir, "agent.py", min_isolation=IsolationLevel.GVISOR))
        with pytest.raises(IsolationTooWeak, match="requires at least 'vm'"):
            await host.start_agent(spec(data_dir, "agent.py", tenant="strict"))
        assert host.slots == {} and host.agents == {}
        slot = await host.start_agent(
            spec(data_dir, "agent.py", min_isolation=IsolationLevel.NAMESPACES)
        )
        await slot.done.wait()

    relay = with_host(data_dir, scenario, min_isolation={"strict": "vm"})
    assert len(relay.calls) == 1


def test_the_admin_api(data_dir: Path) -> None:
    async def scenario(host: Host, relay: RecordingRelay) -> None:
        transport = httpx.ASGITransport(app=create_admin_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            body = {"tenant": TENANT, "agent": "receptionist-1", "entry": "/work/sleeper.py",
                    "tools": [SMS], "code": str(data_dir / "code")}  # fmt: skip
            started = await client.post("/agents", json=body)
            assert started.status_code == 201, started.text
            row = started.json()
            assert row["agent"] == "receptionist-1" and row["state"] == "running"
            again = await client.post("/agents", json=body)
            assert again.status_code == 409 and "already running" in again.json()["detail"]
            bad = await client.post("/agents", json={**body, "agent": "x", "limits": {"gpu": 1}})
            assert bad.status_code == 400 and bad.json()["detail"] == "unknown limits: gpu"
            listed = (await client.get("/sandboxes")).json()["sandboxes"]
            assert [r["id"] for r in listed] == [row["id"]]
            assert set(listed[0]) == {"id", "tenant", "agent", "backend", "level", "state",
                                      "started_at", "restarts"}  # fmt: skip
            assert (await client.get("/healthz")).json()["sandboxes"] == 1
            assert (await client.delete("/sandboxes/sbx-nope")).status_code == 404
            stopped = await client.delete(f"/sandboxes/{row['id']}")
            assert stopped.json() == {"id": row["id"], "state": "stopped", "exit_code": 0}
            assert (await client.get("/sandboxes")).json()["sandboxes"] == []

    with_host(data_dir, scenario)


def test_corral_host_serve_stops_every_sandbox_on_sigterm(data_dir: Path) -> None:
    agents = data_dir / "agents.toml"
    agents.write_text(
        f'[[agents]]\ntenant = "{TENANT}"\nagent = "receptionist-1"\nentry = "/work/sleeper.py"\n'
        f'tools = ["{SMS}"]\ncode = "{data_dir / "code"}"\n'
    )
    assert [s.agent for s in load_agents(agents)] == ["receptionist-1"]
    env = {**os.environ, "CORRAL_HOST__BACKEND": "bwrap"}
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "--data-dir", str(data_dir), "host", "serve",
         "--agents", str(agents)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    socket = data_dir / "host" / "host.sock"
    try:
        deadline = time.monotonic() + 60
        rows: list[dict[str, Any]] = []
        while len([r for r in rows if r["state"] == "running"]) < 1:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the host did not start its agent"
            time.sleep(0.1)
            if socket.exists():
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket))) as client:
                    rows = client.get("http://host/sandboxes").json()["sandboxes"]
        assert oct(socket.stat().st_mode & 0o777) == "0o600"
        before = processes_under(data_dir)
        assert before
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert processes_under(data_dir) == set()
    assert not socket.exists()


def test_backoff_delay_grows_to_its_cap() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(n, 0.5, 30.0, rng) for n in range(10)]
    assert delays == sorted(delays) and delays[-1] == 30.0
    assert all(0.5 * 2**n <= d <= 0.75 * 2**n for n, d in enumerate(delays[:5]))


def test_agent_specs_refuse_what_they_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        AgentSpec(TENANT, POOL_AGENT, "a:b")
    with pytest.raises(ValueError, match="tenant"):
        AgentSpec("../etc", "a", "a:b")
    with pytest.raises(ValueError, match="unknown agent fields: cmd"):
        AgentSpec.from_json({"tenant": TENANT, "agent": "a", "entry": "a:b", "cmd": "sh"})
    with pytest.raises(ValueError, match="does not exist"):
        AgentSpec(TENANT, "a", "a:b", code=tmp_path / "missing")
    bad = tmp_path / "agents.toml"
    bad.write_text('[[agents]]\ntenant = "t"\nagent = "a"\nentry = "x.py"\nseed = "s"\n')
    with pytest.raises(ValueError, match="agent 1: agent field 'seed' must be an integer"):
        load_agents(bad)
