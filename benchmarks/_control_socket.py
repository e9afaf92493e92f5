"""Decision latency through ``corral control``'s socket, open loop.

``corral control serve`` runs as its own process (its ledger restored at start from a store
pre-filled with the earlier calls of one tenant or of 1,000, its audit chain on SQLite in the
same data directory). This process sends the measured calls as ``POST /calls`` over the Unix
socket on a fixed schedule (call i at t0 + i/R): latency = completion − scheduled time, so
queueing counts. Every answer has made the ledger row and both audit entries durable before
it is sent.

The client speaks HTTP/1.1 by hand (:class:`benchmarks._common.RawConnection`), with a pool of
keep-alive connections: this client shares the same 2 cores with the server, so a heavier
client would measure itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks._common import RawConnection, percentile
from benchmarks._supervisor_load import Call, Fleet, Workload
from corral.supervisor.store import LedgerStore, calls

HISTORY_DAYS = 1.5
"""Within control's two-day memory, so every earlier call is in the ledger when measured."""


@dataclass
class SocketRun:
    rate: float
    tenants: int = 1
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    verdicts: dict[str, int] = field(default_factory=dict)
    restore_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "tenants": self.tenants,
            "offered_per_s": self.rate,
            "achieved_per_s": len(self.latencies_ms) / self.seconds if self.seconds else 0.0,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
            "p999_ms": percentile(self.latencies_ms, 99.9),
            "calls": len(self.latencies_ms),
            "verdicts": self.verdicts,
            "restore_s": self.restore_s,
        }


def fill_store(
    url: str, tenants: int, earlier: int, measured: int
) -> tuple[dict[str, dict[str, Any]], list[Call]]:
    """Decide ``earlier`` calls in-process and write them, with their final statuses, to the
    store in one transaction; return each tenant's policy and the calls to measure.

    The earlier calls end now and cover the last ``HISTORY_DAYS``: control decides on the real
    clock and forgets what no rule can read (calls over two days old), so a history dated
    elsewhere would be forgotten at the restore and the ledger would be measured empty."""
    workload = Workload(tenants, 10, earlier, end=time.time(), days=HISTORY_DAYS)
    fleet = Fleet(workload)
    decided: list[tuple[Call, str]] = []
    for call in workload.calls(earlier):
        decision = fleet.decide(call)
        fleet.after(call, decision)
        decided.append((call, decision.verdict.value))
    fleet.feedback = False
    rows = []
    for seq, (call, verdict) in enumerate(decided, 1):
        record = fleet.supervisors[call.tenant].ledger.calls[call.call_id]
        rows.append({
            "tenant": call.tenant, "call_id": call.call_id, "seq": seq, "agent": call.agent,
            "tool": call.tool, "args": json.dumps(call.args), "at": call.at, "verdict": verdict,
            "status": record.status.value, "result": json.dumps(record.result),
            "keep_until": getattr(record.effect, "end", None),
        })  # fmt: skip
    store = LedgerStore.from_url(url)
    store.create_schema()
    with store._write("bulk fill") as conn:
        conn.execute(sa.insert(calls), rows)
    store.close()
    policies = {tenant.name: tenant.policy() for tenant in workload.tenants}
    return policies, list(workload.calls(measured))


async def _open_loop(socket: Path, bodies: list[bytes], rate: float, pool: int) -> SocketRun:
    run = SocketRun(rate)
    idle: asyncio.Queue[RawConnection] = asyncio.Queue()
    for _ in range(pool):
        idle.put_nowait(await RawConnection.open(socket))
    loop = asyncio.get_running_loop()

    async def one(scheduled: float, body: bytes) -> None:
        connection = await idle.get()
        status, _, answer = await connection.post("/calls", body)
        run.latencies_ms.append((loop.time() - scheduled) * 1000)
        idle.put_nowait(connection)
        verdict = json.loads(answer).get("verdict", f"http {status}")
        run.verdicts[verdict] = run.verdicts.get(verdict, 0) + 1

    # One sender that starts each call at its time (or at once, when behind): creating every
    # call's task up front, sleeping until its time, cost this client ~150 ms of CPU at the
    # start of each pass, and the first calls, sent late, were counted as the server's delay.
    running: set[asyncio.Task[None]] = set()
    t0 = loop.time() + 0.05
    for i, body in enumerate(bodies):
        scheduled = t0 + i / rate
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled, body))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    run.seconds = loop.time() - t0
    while not idle.empty():
        idle.get_nowait().writer.close()
    return run


WARM_UP = 1_000
"""Calls sent at 500/s after the start, before the measured passes."""


def _bodies(batch: list[Call]) -> list[bytes]:
    return [json.dumps({"tenant": c.tenant, "agent": c.agent, "sandbox": "bench",
                        "call_id": c.call_id, "tool": c.tool, "args": c.args}).encode()
            for c in batch]  # fmt: skip


def through_socket(
    earlier: int, per_rate: int, rates: list[float], tenants: int = 1
) -> list[SocketRun]:
    """Start ``corral control serve`` on a pre-filled store; after a warm-up, one open-loop pass
    per rate."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-control-") as tmp:
        data = Path(tmp)
        policies, calls = fill_store(f"sqlite:///{data / 'control' / 'control.db'}", tenants,
                                     earlier, WARM_UP + per_rate * len(rates))  # fmt: skip
        warm_up, measured = calls[:WARM_UP], calls[WARM_UP:]
        directory = data / "control" / "tenants"
        directory.mkdir(parents=True, exist_ok=True)
        for name, policy in policies.items():
            (directory / f"{name}.json").write_text(json.dumps(policy))
        env = {**os.environ, "CORRAL_DATA_DIR": str(data), "CORRAL_DASHBOARD__ENABLED": "false"}
        socket = data / "control" / "control.sock"
        started = time.perf_counter()
        with (data / "control.log").open("w") as log:
            child = subprocess.Popen([sys.executable, "-m", "corral.cli", "control", "serve"],
                                     env=env, stderr=log)  # fmt: skip
        try:
            while not socket.exists():
                if child.poll() is not None:
                    raise RuntimeError((data / "control.log").read_text()[-2000:])
                time.sleep(0.01)
            restore_s = time.perf_counter() - started
            # Not measured: what a service does once after its start (its first checkpoint, the
            # template maintenance round, the first use of each code path) is not a decision.
            asyncio.run(_open_loop(socket, _bodies(warm_up), 500.0, pool=64))
            for n, rate in enumerate(rates):
                batch = measured[n * per_rate : (n + 1) * per_rate]
                run = asyncio.run(_open_loop(socket, _bodies(batch), rate, pool=64))
                run.restore_s, run.tenants = restore_s, tenants
                runs.append(run)
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(30)
    return runs
