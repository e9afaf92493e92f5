"""Benchmarks of the sandbox runtime: ``python -m benchmarks runtime`` (part of ``make bench``).

For every backend this machine can run (``corral runtime doctor``), in one run:

- **cold start** p50/p99: ``Channel.open`` + ``backend.start`` of the guest runner
  (``python -m corral.guest.run``) until its ``sandbox.ready`` arrives on the channel, the path
  of a host start; the sandbox is stopped between samples;
- **warm hand-out** p50/p99: :meth:`Host.start_agent` with a ready sandbox in the tenant's warm
  pool, until the agent's first channel message reaches the host (its ``tools.list``): rebind,
  agent code copied into ``/work``, ``agent.start``, the runner starting the entry;
- **idle sandboxes per GiB**: N idle warm sandboxes, the PSS (and RSS) of all their processes
  summed from ``/proc/PID/smaps_rollup`` (bwrap's own, the runsc gofer and Sentry, the guest),
  and the sandboxes' memory cgroups' usage where they have one;
- **channel round trip** p50/p99 (bwrap): 10,000 ``tools.list`` calls by the guest SDK from
  inside a sandbox, each answered by the host's :class:`Channel` (a fixed one-tool list).

Baselines, measured in the same run: for starts, a plain ``python -c pass`` subprocess; for
memory, the same guest runners, each connected to its own channel, outside any sandbox; for the
round trip, the same frames and the same guest client over a ``socketpair`` in one process,
answered by a thread that decodes and encodes them as the host does.

Prints a table with PASS/FAIL against the targets (warm hand-out p50 < 20 ms, bwrap cold p50
< 50 ms, channel round trip p99 < 1 ms), writes ``benchmarks/results/runtime.json`` and
``runtime_latency.png`` (start latency histograms). ``--quick`` is a smoke run of about a
minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import _report
from benchmarks._common import Metric, percentile
from corral.core.settings import load_settings
from corral.guest import wire
from corral.guest._client import ChannelClient
from corral.runtime.backends import backends
from corral.runtime.channel import Channel
from corral.runtime.host import GUEST_COMMAND, AgentSpec, Host, tool_list
from corral.runtime.relay import NoControlRelay
from corral.runtime.sandbox import Backend, Identity, Limits, Sandbox, SandboxSpec

RESULTS = Path(__file__).resolve().parent / "results"
WARM_TARGET_MS = 20.0
BWRAP_COLD_TARGET_MS = 50.0
ROUND_TRIP_TARGET_MS = 1.0
TENANT = "bench"
GIB = 1 << 30
AGENT = "from corral.guest import tools\ntools.list()\n"
"""The warm benchmark's agent: its first act is a channel message."""
ROUND_TRIPS = """
import json, sys, time
from corral.guest._client import ChannelClient
n = int(sys.argv[1])
client = ChannelClient.connect()
for _ in range(200):  # warm-up
    client.call("tools.list")
samples = []
for _ in range(n):
    t0 = time.perf_counter()
    client.call("tools.list")
    samples.append((time.perf_counter() - t0) * 1000)
client.close()
print(json.dumps(samples))
"""


@dataclass
class BackendRun:
    """What was measured on one backend."""

    name: str
    level: str
    cold_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- processes, memory


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def processes_of(roots: set[int], names: Sequence[str]) -> set[int]:
    """``roots``, the processes whose command line names any of ``names`` (the sandbox's id or
    work directory: runsc's helpers), and every descendant of those."""
    parents: dict[int, int] = {}
    found = set(roots)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        parent = _parent(pid)
        if parent is None:
            continue
        parents[pid] = parent
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if any(name.encode() in cmdline for name in names):
            found.add(pid)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def memory_of(pids: set[int]) -> tuple[int, int]:
    """Summed PSS and RSS (bytes) of ``pids``, from ``/proc/PID/smaps_rollup``."""
    pss = rss = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key == "Pss":
                pss += int(value.split()[0]) * 1024
            elif key == "Rss":
                rss += int(value.split()[0]) * 1024
    return pss, rss


def cgroup_memory(sandbox: Sandbox) -> int | None:
    """The sandbox's memory cgroup usage in bytes, if its backend made one (cgroup v1)."""
    directory: Path | None = None
    cgroups = getattr(sandbox, "cgroups", None)
    if cgroups is not None:
        directory = getattr(cgroups, "dirs", {}).get("memory")
    elif hasattr(sandbox, "cgroup_dir"):
        directory = sandbox.cgroup_dir("memory")
    if directory is None:
        return None
    try:
        return int((directory / "memory.usage_in_bytes").read_text())
    except (OSError, ValueError):
        return None


def root_pid(sandbox: Sandbox) -> int | None:
    process = getattr(sandbox, "process", None)
    pid = getattr(sandbox, "pid", None) or getattr(process, "pid", None)
    return int(pid) if pid else None


# ---------------------------------------------------------------------------- starts


async def python_starts(n: int) -> list[float]:
    """The baseline: a plain ``python -c pass`` subprocess, spawned and waited for."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await process.wait()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def _nothing(identity: Identity, method: str, params: dict[str, Any]) -> Any:
    return None


async def cold_starts(backend: Backend, n: int, root: Path) -> list[float]:
    samples = []
    for i in range(n):
        directory = root / f"c{i}"
        (directory / "work").mkdir(parents=True)
        identity = Identity(TENANT, "cold", f"cold-{i}")
        t0 = time.perf_counter()
        channel = await Channel.open(directory / "c.sock", identity, _nothing)
        spec = SandboxSpec(identity, GUEST_COMMAND, directory / "work", channel.path, Limits())
        sandbox = await backend.start(spec)
        await channel.wait_ready(60)
        samples.append((time.perf_counter() - t0) * 1000)
        await sandbox.stop(1.0)
        await channel.close()
        shutil.rmtree(directory, ignore_errors=True)
    return samples


def _host(backend: Backend, root: Path, warm_pool: int) -> Host:
    settings = load_settings(data_dir=root, host={"backend": backend.name, "warm_pool": warm_pool,
                                                  "ready_timeout_s": 60})  # fmt: skip
    return Host(settings, NoControlRelay("benchmark"), backends=[backend])


async def warm_hand_outs(backend: Backend, n: int, root: Path) -> list[float]:
    code = root / "code"
    code.mkdir(parents=True)
    (code / "agent.py").write_text(AGENT)
    samples = []
    async with _host(backend, root / "h", 1) as host:
        for i in range(n):
            await host.wait_warm(TENANT, timeout=120)
            await asyncio.sleep(0.05)  # let the refill's start settle: hand out an idle sandbox
            spec = AgentSpec(TENANT, f"agent-{i}", "/work/agent.py", code=code)
            t0 = time.monotonic()
            slot = await host.start_agent(spec)
            await asyncio.wait_for(slot.first_message.wait(), 60)
            assert slot.first_message_at is not None
            samples.append((slot.first_message_at - t0) * 1000)
            await slot.done.wait()
    return samples


# ---------------------------------------------------------------------------- memory


async def idle_memory(backend: Backend, n: int, root: Path) -> dict[str, Any]:
    """N idle warm sandboxes: their processes' PSS/RSS and cgroup usage."""
    async with _host(backend, root, n) as host:
        slots = await host.wait_warm(TENANT, timeout=300)
        await asyncio.sleep(1.0)  # idle: let start-up garbage settle
        pss = rss = 0
        cgroups: list[int] = []
        processes = 0
        for slot in slots:
            assert slot.sandbox is not None
            roots = {pid for pid in [root_pid(slot.sandbox)] if pid is not None}
            pids = processes_of(roots, [slot.id, str(slot.directory / "work")])
            one_pss, one_rss = memory_of(pids)
            pss, rss, processes = pss + one_pss, rss + one_rss, processes + len(pids)
            usage = cgroup_memory(slot.sandbox)
            if usage is not None:
                cgroups.append(usage)
    return {"sandboxes": n, "processes": processes, "pss_bytes": pss, "rss_bytes": rss,
            "cgroup_bytes": sum(cgroups) if len(cgroups) == n else None,
            "per_gib_pss": n / (pss / GIB) if pss else None}  # fmt: skip


async def bare_runner_memory(n: int, root: Path) -> dict[str, Any]:
    """The baseline: N guest runners, each on its own channel, with no sandbox around them."""
    channels = []
    processes = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    try:
        for i in range(n):
            identity = Identity(TENANT, "bare", f"bare-{i}")
            channel = await Channel.open(root / f"b{i}.sock", identity, _nothing)
            channels.append(channel)
            process = await asyncio.create_subprocess_exec(
                *GUEST_COMMAND, env={**env, "CORRAL_CHANNEL": str(channel.path)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(process)
            await channel.wait_ready(60)
        await asyncio.sleep(1.0)
        pss, rss = memory_of({p.pid for p in processes})
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.wait()
        for channel in channels:
            await channel.close()
    return {"processes": n, "pss_bytes": pss, "rss_bytes": rss,
            "per_gib_pss": n / (pss / GIB) if pss else None}  # fmt: skip


# ---------------------------------------------------------------------------- round trips


async def sandbox_round_trips(backend: Backend, n: int, root: Path) -> list[float]:
    """The guest SDK's ``tools.list`` from inside a sandbox, answered by a :class:`Channel`."""
    answer = {"tools": tool_list(frozenset({"twilio.send_sms"}))}

    async def echo(identity: Identity, method: str, params: dict[str, Any]) -> Any:
        return answer

    (root / "work").mkdir(parents=True)
    identity = Identity(TENANT, "rtt", "rtt-1")
    channel = await Channel.open(root / "c.sock", identity, echo)
    command = ["python", "-c", ROUND_TRIPS, str(n)]
    sandbox = await backend.start(SandboxSpec(identity, command, root / "work", channel.path))
    code = await sandbox.wait()
    out, err = await sandbox.output()
    await sandbox.stop(0.5)
    await channel.close()
    if code != 0:
        raise RuntimeError(f"round trips in the sandbox failed ({code}): {err.decode()[-500:]}")
    samples: list[float] = json.loads(out)
    return samples


def socketpair_round_trips(n: int) -> list[float]:
    """The baseline: the same client and frames over a socketpair, echoed by a thread."""
    answer = {"tools": tool_list(frozenset({"twilio.send_sms"}))}
    guest, host = socket.socketpair()

    def serve() -> None:
        while (message := wire.read_frame_sync(host)) is not None:
            if "id" in message:
                wire.write_frame_sync(host, wire.result(message["id"], answer))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ChannelClient(guest)
    for _ in range(200):
        client.call("tools.list")
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.call("tools.list")
        samples.append((time.perf_counter() - t0) * 1000)
    client.close()
    host.close()
    thread.join(5)
    return samples


# ---------------------------------------------------------------------------- report


def _latency(
    key: str, group: str, label: str, samples: list[float], base: list[float], base_label: str,
    target: float | None = None, target_on: int = 50,
) -> list[Metric]:  # fmt: skip
    out = []
    for q in (50, 99):
        metric = Metric(f"{key}_p{q}", group, f"{label}, p{q}", percentile(samples, q), "ms",
                        "lower", baseline_label=base_label, baseline_value=percentile(base, q),
                        details={"runs": len(samples)})  # fmt: skip
        if target is not None and q == target_on:
            metric.target, metric.target_note = target, f"p{q} < {target:g} ms"
        out.append(metric)
    return out


def picture(path: Path, runs: list[BackendRun], baseline: list[float]) -> None:
    """Start latency histograms (log x): cold and warm per backend, and the python baseline."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6 * max(len(runs), 1), 4.5), layout="constrained")
    axes = figure.subplots(1, max(len(runs), 1), squeeze=False)[0]
    for ax, run in zip(axes, runs, strict=False):
        series = [("cold: start → sandbox.ready", run.cold_ms),
                  ("warm: hand-out → first message", run.warm_ms),
                  ("baseline: python -c pass", baseline)]  # fmt: skip
        values = [v for _, s in series for v in s if v > 0]
        low, high = min(values), max(values)
        bins = [low * (high / low) ** (i / 50) for i in range(51)]
        for label, samples in series:
            if samples:
                ax.hist(samples, bins=bins, alpha=0.6, label=label)
        ax.axvline(WARM_TARGET_MS, color="red", linestyle="--", label="warm target p50 20 ms")
        if run.name == "bwrap":
            ax.axvline(BWRAP_COLD_TARGET_MS, color="darkred", linestyle=":",
                       label="bwrap cold target p50 50 ms")  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(f"{run.name} ({run.level})")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("starts")
        ax.legend(fontsize=8)
    figure.suptitle("corral runtime: sandbox start latency")
    figure.savefig(path, dpi=110)


async def measure(
    args: argparse.Namespace, console: Console
) -> tuple[list[Metric], dict[str, Any]]:
    quick = args.quick
    n_cold = {"bwrap": 10 if quick else 50}.get
    n_warm = 10 if quick else 50
    n_idle = 5 if quick else 20
    n_rtt = 2_000 if quick else 10_000
    figures: list[Metric] = []
    detail: dict[str, Any] = {"unavailable": {}}
    usable = []
    for backend in backends(load_settings()):
        found = backend.available()
        if found.ok:
            usable.append(backend)
        else:
            detail["unavailable"][backend.name] = found.reason
    baseline = await python_starts(10 if quick else 50)
    base_label = "a plain `python -c pass` subprocess"
    runs: list[BackendRun] = []
    root = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # short: socket paths
    try:
        for backend in usable:
            run = BackendRun(backend.name, backend.level.label)
            runs.append(run)
            cold_n = n_cold(backend.name) or (5 if quick else 20)  # gvisor, vm: slower
            warm_n = n_warm if backend.name == "bwrap" else max(5, n_warm // 2)
            console.print(f"{backend.name}: {cold_n} cold starts, {warm_n} warm hand-outs, "
                          f"{n_idle} idle sandboxes")  # fmt: skip
            run.cold_ms = await cold_starts(backend, cold_n, root / backend.name / "cold")
            run.warm_ms = await warm_hand_outs(backend, warm_n, root / backend.name / "warm")
            run.memory = await idle_memory(backend, n_idle, root / backend.name / "idle")
            group = f"{backend.name} ({backend.level.label})"
            cold_target = BWRAP_COLD_TARGET_MS if backend.name == "bwrap" else None
            figures += _latency(f"{backend.name}.cold", group, "cold start → sandbox.ready",
                                run.cold_ms, baseline, base_label, cold_target)  # fmt: skip
            figures += _latency(f"{backend.name}.warm", group, "warm hand-out → first message",
                                run.warm_ms, baseline, base_label, WARM_TARGET_MS)  # fmt: skip
        bare = await bare_runner_memory(n_idle, root / "bare")
        detail["bare_runner_memory"] = bare
        for run in runs:
            memory = run.memory
            group = f"{run.name} ({run.level})"
            label = f"idle sandboxes per GiB (PSS, {memory['sandboxes']} sandboxes)"
            figures.append(Metric(f"{run.name}.idle_per_gib", group, label,
                                  memory["per_gib_pss"] or 0.0, "sandboxes", "higher",
                                  baseline_label="the same guest runners outside any sandbox",
                                  baseline_value=bare["per_gib_pss"],
                                  details={"runs": 1, **memory}))  # fmt: skip
            figures.append(Metric(f"{run.name}.idle_pss_mib", group, "PSS per idle sandbox",
                                  memory["pss_bytes"] / memory["sandboxes"] / 2**20, "MiB",
                                  "lower", details={"runs": 1, **memory}))  # fmt: skip
            if memory["cgroup_bytes"] is not None:
                figures.append(Metric(f"{run.name}.idle_cgroup_mib", group,
                                      "memory cgroup usage per idle sandbox",
                                      memory["cgroup_bytes"] / memory["sandboxes"] / 2**20,
                                      "MiB", "lower", details={"runs": 1, **memory}))  # fmt: skip
        bwrap = next((b for b in usable if b.name == "bwrap"), None)
        if bwrap is not None:
            console.print(f"channel: {n_rtt:,} round trips from inside bwrap and over a socketpair")
            inside = await sandbox_round_trips(bwrap, n_rtt, root / "rtt")
            pair = await asyncio.to_thread(socketpair_round_trips, n_rtt)
            figures += _latency("channel.round_trip", "channel (bwrap)",
                                "tools.list round trip, guest SDK → host Channel", inside, pair,
                                "the same frames and client over a socketpair, one process",
                                ROUND_TRIP_TARGET_MS, target_on=99)  # fmt: skip
        else:
            detail["channel"] = "skipped: bwrap is not available"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    detail["runs"] = runs
    detail["baseline_ms"] = baseline
    return figures, detail


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks runtime")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer samples")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    info, measured = _report.machine(), _report.code()
    figures, detail = asyncio.run(measure(args, console))
    runs: list[BackendRun] = detail.pop("runs")
    picture(out / "runtime_latency.png", runs, detail["baseline_ms"])
    duration = time.perf_counter() - started
    _report.write_json(out / "runtime.json", {
        "benchmark": "corral sandbox runtime",
        "command": shlex.join(["python", "-m", "benchmarks", "runtime", *(argv or [])]),
        "mode": "quick" if args.quick else "full",
        "started_at": started_at.isoformat(),
        "duration_s": duration,
        "machine": info,
        "code": measured,
        "load_average_at_end": _report.machine()["load_average"],
        "ratio_to_baseline": "how many times better than the baseline (> 1: corral is better)",
        "backends": {run.name: {"level": run.level, "cold_ms": run.cold_ms,
                                "warm_ms": run.warm_ms, "memory": run.memory} for run in runs},
        "unavailable_backends": detail["unavailable"],
        "baselines": {"python_c_pass_ms": detail["baseline_ms"],
                      "bare_runner_memory": detail.get("bare_runner_memory")},
        "figures": [m.to_json() for m in figures],
        "pictures": ["runtime_latency.png"],
        "method": __doc__,
    })  # fmt: skip
    title = (f"corral runtime, {'quick' if args.quick else 'full'} run, {info['cpu_count']} CPUs, "
             f"commit {(measured['commit'] or '?')[:7]}, {duration:.0f} s")  # fmt: skip
    console.print(_report.table(figures, title))
    for label in _report.baselines(figures):
        console.print(f"  baseline: {label}")
    for name, reason in detail["unavailable"].items():
        console.print(f"  not measured: {name}: {reason}")
    console.print(f"results: {out / 'runtime.json'}, {out / 'runtime_latency.png'}")
    return 0
