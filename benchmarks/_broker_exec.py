"""Execute overhead: the broker's own time per call, apart from the provider's.

Two setups, both against the ``corral.fakes`` provider sandboxes:

- **in-process**: the broker's ASGI app and the fakes in one process (httpx ``ASGITransport``),
  one call at a time: the broker's service time with nothing else running. The same calls
  made straight through the connector (credential in hand, no broker) are the baseline.
- **through the socket, 200 concurrent**: ``corral broker serve`` in its own process on a Unix
  socket, ``corral fakes serve`` in another on TCP, and 200 client tasks in this process, each
  sending its next call as soon as the previous one answers (closed loop). The broker reports
  its own time and the time it waited on the provider per call in its ``Server-Timing``
  header; the client measures the whole round trip, queueing included.

Overhead is the broker's time minus the provider's: ``Server-Timing: broker;dur=…`` is the
wall time inside ``Broker.execute`` minus the time its provider requests took.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import Metric, Phase, RawConnection, percentile
from corral.broker.assembly import control_approval_signer, open_broker
from corral.broker.executor import Call
from corral.connectors import CallContext, Credential, catalog
from corral.core.clock import SystemClock
from corral.core.settings import load_settings
from corral.fakes import FakeTransport, create_fakes, fake_endpoints

EXECUTE_TARGET_MS = 5.0
TENANT = "bench"


@dataclass
class Samples:
    broker_ms: list[float] = field(default_factory=list)
    provider_ms: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)
    direct_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _sms(i: int) -> dict[str, Any]:
    return {"to": "+13105550123", "body": f"Reminder {i}: see you tomorrow at 10."}


def in_process(calls: int, phase: Phase) -> Samples:
    """One call at a time through the broker's app, then the same calls straight through the
    connector (the baseline)."""
    return asyncio.run(_in_process(calls, phase))


async def _in_process(calls: int, phase: Phase) -> Samples:
    samples = Samples()
    with tempfile.TemporaryDirectory(prefix="corral-bench-broker-") as tmp:
        settings = load_settings(data_dir=Path(tmp), deployment="bench.local")
        control = control_approval_signer(settings)
        fakes = create_fakes()
        parts = open_broker(settings, transport=FakeTransport(fakes))
        broker = parts.broker
        fields = fakes["twilio"].new_connection()
        endpoints = fake_endpoints(fakes)["twilio"]
        broker.vault.connect(TENANT, "twilio-1", "twilio", dict(fields), endpoints=endpoints)
        minted, _ = broker.mint(tenant=TENANT, agent="a", sandbox="s",
                                tools=["twilio.send_sms"], ttl_s=300)  # fmt: skip
        phase.start(f"execute in-process: {calls:,} calls, one at a time", calls * 2)
        clock = SystemClock()
        for i in range(calls):
            call = Call(TENANT, "a", "s", "twilio.send_sms", _sms(i), f"bench-inproc-{i:08d}")
            approval = control.approve(call.document(), approval_id=f"a{i}", clock=clock)
            t0 = time.perf_counter()
            execution = await broker.execute(minted.token, approval, call)
            samples.round_trip_ms.append((time.perf_counter() - t0) * 1000)
            assert execution.status == "succeeded", execution.error
            samples.broker_ms.append(execution.broker_ms)
            samples.provider_ms.append(execution.provider_ms)
            phase.advance()
        tool = catalog()["twilio.send_sms"]
        async with httpx.AsyncClient(transport=FakeTransport(fakes)) as http:
            for i in range(calls):
                ctx = CallContext(http, endpoints, Credential(fields), f"bench-direct-{i:08d}")
                t0 = time.perf_counter()
                await tool.execute(ctx, tool.parse_args(_sms(i)))
                samples.direct_ms.append((time.perf_counter() - t0) * 1000)
                phase.advance()
        await parts.aclose()
    return samples


@contextmanager
def _process(command: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as err:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        try:
            yield child
        finally:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _wait_for(predicate: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def through_socket(calls: int, concurrency: int, port: int, phase: Phase) -> Samples:
    """``calls`` calls, ``concurrency`` at a time, to a ``corral broker serve`` process."""
    corral = [sys.executable, "-m", "corral.cli"]
    with tempfile.TemporaryDirectory(prefix="corral-bench-socket-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "CORRAL_DATA_DIR": str(work), "CORRAL_DEPLOYMENT": "bench.local"}
        with _process([*corral, "fakes", "serve", "--port", str(port)], work / "fakes.log",
                      env) as fakes:  # fmt: skip
            assert fakes.stdout is not None
            lines: dict[str, dict[str, Any]] = {}
            while len(lines) < 6:
                line = json.loads(fakes.stdout.readline())
                lines[line["provider"]] = line
            twilio = lines["twilio"]
            settings = load_settings(data_dir=work, deployment="bench.local")
            control = control_approval_signer(settings)
            parts = open_broker(settings)
            parts.broker.vault.connect(
                TENANT, "twilio-1", "twilio", twilio["fields"],
                endpoints=fake_endpoints_of(twilio),
            )  # fmt: skip
            minted, _ = parts.broker.mint(tenant=TENANT, agent="a", sandbox="s",
                                          tools=["twilio.send_sms"], ttl_s=300)  # fmt: skip
            asyncio.run(parts.aclose())
            socket = settings.broker_socket()
            with _process([*corral, "broker", "serve"], work / "broker.log", env):
                _wait_for(socket.exists, "the broker's socket")
                phase.start(f"execute over the socket: {calls:,} calls, {concurrency} concurrent",
                            calls)  # fmt: skip
                try:
                    return asyncio.run(
                        _closed_loop(socket, minted.token, control, calls, concurrency, phase)
                    )
                except Exception:
                    for log in ("broker.log", "fakes.log"):
                        print(f"--- {log} ---\n{(work / log).read_text()[-3000:]}", file=sys.stderr)
                    raise


def fake_endpoints_of(line: dict[str, Any]) -> Any:
    from corral.connectors import Endpoints

    return Endpoints(api=line["api_url"], token=line["token_url"])


async def _closed_loop(
    socket: Path, token: str, control: Any, calls: int, concurrency: int, phase: Phase
) -> Samples:
    samples = Samples()
    clock = SystemClock()
    counter = iter(range(calls))
    # Each worker keeps one connection (HTTP/1.1: one call in flight on it), spoken by hand:
    # through httpx with a 200-connection pool, this client used a whole core (it checks every
    # pooled connection on each request) and measured itself at 65 calls/s.
    connections = [await RawConnection.open(socket) for _ in range(concurrency)]

    async def worker(connection: RawConnection) -> None:
        for i in counter:
            call = Call(TENANT, "a", "s", "twilio.send_sms", _sms(i), f"bench-sock-{i:08d}")
            document = call.document()
            approval = control.approve(document, approval_id=f"s{i}", clock=clock, ttl_s=60)
            body = json.dumps({"delegation": token, "approval": approval, "call": document})
            t0 = time.perf_counter()
            status, headers, answer = await connection.post("/execute", body.encode())
            samples.round_trip_ms.append((time.perf_counter() - t0) * 1000)
            assert status == 200 and json.loads(answer)["status"] == "succeeded", answer
            timing = dict(
                part.strip().split(";dur=") for part in headers["server-timing"].split(",")
            )
            samples.broker_ms.append(float(timing["broker"]))
            samples.provider_ms.append(float(timing["provider"]))
            samples.queue_ms.append(float(timing["queue"]))
            phase.advance()

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    samples.seconds = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return samples


def metrics(local: Samples, remote: Samples | None, concurrency: int) -> list[Metric]:
    out = [
        Metric("execute.inproc.overhead_p50", "execute", "execute overhead, in-process, p50",
               percentile(local.broker_ms, 50), "ms", "lower",
               baseline_label="the same calls straight through the connector (no broker), p50",
               baseline_value=percentile(local.direct_ms, 50),
               details={"calls": len(local.broker_ms),
                        "provider_ms_p50": percentile(local.provider_ms, 50)}),
        Metric("execute.inproc.overhead_p99", "execute", "execute overhead, in-process, p99",
               percentile(local.broker_ms, 99), "ms", "lower", target=EXECUTE_TARGET_MS,
               target_note="p99 < 5 ms",
               baseline_label="the same calls straight through the connector (no broker), p99",
               baseline_value=percentile(local.direct_ms, 99)),
    ]  # fmt: skip
    if remote is not None:
        throughput = len(remote.round_trip_ms) / remote.seconds
        out += [
            Metric("execute.socket.overhead_p50", "execute",
                   f"execute overhead, socket, {concurrency} concurrent, p50",
                   percentile(remote.broker_ms, 50), "ms", "lower"),
            Metric("execute.socket.overhead_p99", "execute",
                   f"execute overhead, socket, {concurrency} concurrent, p99",
                   percentile(remote.broker_ms, 99), "ms", "lower", target=EXECUTE_TARGET_MS,
                   target_note="p99 < 5 ms (Server-Timing broker time)"),
            Metric("execute.socket.round_trip_p50", "execute",
                   f"round trip, socket, {concurrency} concurrent, p50 (queueing included)",
                   percentile(remote.round_trip_ms, 50), "ms", "lower"),
            Metric("execute.socket.round_trip_p99", "execute",
                   f"round trip, socket, {concurrency} concurrent, p99 (queueing included)",
                   percentile(remote.round_trip_ms, 99), "ms", "lower",
                   details={"provider_ms_p50": percentile(remote.provider_ms, 50),
                            "provider_slot_wait_ms_p50": percentile(remote.queue_ms, 50)}),
            Metric("execute.socket.throughput", "execute", "calls/s through one broker process",
                   throughput, "calls/s", "higher"),
        ]  # fmt: skip
    return out
