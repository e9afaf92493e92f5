"""Benchmarks of the capability broker: ``python -m benchmarks broker`` (part of ``make bench``).

Measures, in one run:

- **mint** and **verify** of a delegation (p50, p99 over single calls), each against the bare
  Ed25519 operation on the same bytes as its baseline (the floor no format can beat);
- **bytes per delegation** (one tool pattern and one recipient; and after one attenuation);
- **execute overhead**, in-process and through the Unix socket with 200 concurrent calls
  (:mod:`benchmarks._broker_exec` says exactly how).

Prints a table, writes ``benchmarks/results/broker.json`` and ``broker_latency.png`` (the
latency histograms). ``--quick`` is a smoke run of well under a minute.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import _broker_exec, _report
from benchmarks._common import Metric, Phase, percentile
from corral.broker.delegation import DelegationKeys, attenuate, generate_signer, mint, verify
from corral.core.canonical import canonicalize
from corral.core.clock import SystemClock
from corral.core.ids import RandomIds

RESULTS = Path(__file__).resolve().parent / "results"
MINT_TARGET_MS = 1.0
VERIFY_TARGET_MS = 0.5
WHO = {"tenant": "brightsmile", "agent": "receptionist-1", "sandbox": "sbx-7"}


def _timed(run: Any, n: int, phase: Phase) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1000)
        phase.advance()
    return samples


def delegations(n: int, phase: Phase) -> list[Metric]:
    clock, ids = SystemClock(), RandomIds(SystemClock())
    signer = generate_signer("bench-1")
    keys = DelegationKeys.of(signer)
    args: dict[str, Any] = {**WHO, "tools": ["twilio.send_sms"], "recipients": ["+15550100001"],
                            "ttl_s": 300, "clock": clock, "ids": ids}  # fmt: skip
    phase.start(f"delegations: {n:,} mints, verifies and their floors", n * 4)
    minted = mint(signer, **args)
    mint_ms = _timed(lambda: mint(signer, **args), n, phase)
    verify_ms = _timed(lambda: verify(minted.token, keys, **WHO, now=clock.now()), n, phase)
    raw = Ed25519PrivateKey.generate()
    payload = canonicalize({"caveats": {"tools": ["twilio.send_sms"]}, **WHO, "pad": "x" * 200})
    signature = raw.sign(payload)
    public = raw.public_key()
    sign_floor = _timed(lambda: raw.sign(payload), n, phase)
    verify_floor = _timed(lambda: public.verify(signature, payload), n, phase)
    narrowed = attenuate(minted.token, ttl_s=60, clock=clock)
    return [
        Metric("delegation.mint_p50", "delegations", "mint, p50", percentile(mint_ms, 50), "ms",
               "lower", baseline_label="one bare Ed25519 sign of a similar payload, p50",
               baseline_value=percentile(sign_floor, 50)),
        Metric("delegation.mint_p99", "delegations", "mint, p99", percentile(mint_ms, 99), "ms",
               "lower", target=MINT_TARGET_MS, target_note="p99 < 1 ms",
               baseline_label="one bare Ed25519 sign, p99",
               baseline_value=percentile(sign_floor, 99)),
        Metric("delegation.verify_p50", "delegations", "verify (1 block), p50",
               percentile(verify_ms, 50), "ms", "lower",
               baseline_label="one bare Ed25519 verify, p50",
               baseline_value=percentile(verify_floor, 50)),
        Metric("delegation.verify_p99", "delegations", "verify (1 block), p99",
               percentile(verify_ms, 99), "ms", "lower", target=VERIFY_TARGET_MS,
               target_note="p99 < 0.5 ms", baseline_label="one bare Ed25519 verify, p99",
               baseline_value=percentile(verify_floor, 99)),
        Metric("delegation.bytes", "delegations", "bytes per delegation (1 tool, 1 recipient)",
               len(minted.token), "bytes", "lower"),
        Metric("delegation.bytes_attenuated", "delegations", "bytes after one attenuation",
               len(narrowed), "bytes", "lower"),
    ]  # fmt: skip


def picture(path: Path, local: _broker_exec.Samples, remote: _broker_exec.Samples | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("in-process, one at a time", local)]
    if remote is not None:
        panels.append(("Unix socket, 200 concurrent", remote))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, samples) in zip(axes[0], panels, strict=True):
        values = samples.broker_ms + samples.provider_ms
        low, high = max(min(values), 0.01), max(values)
        bins = [low * (high / low) ** (i / 60) for i in range(61)]
        ax.hist(samples.broker_ms, bins=bins, alpha=0.8, label="broker overhead")
        ax.hist(samples.provider_ms, bins=bins, alpha=0.6, label="provider (fake) time")
        ax.axvline(_broker_exec.EXECUTE_TARGET_MS, color="red", linestyle="--",
                   label="target: overhead p99 5 ms")  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("ms per call (log scale)")
        ax.set_ylabel("calls")
        ax.legend()
    fig.suptitle("corral broker: time per /execute call")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks broker")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer calls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--no-socket", action="store_true", help="skip the socket benchmark")
    parser.add_argument("--port", type=int, default=18600, help="port for corral fakes serve")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    n_tokens = 2_000 if args.quick else 20_000
    n_local = 300 if args.quick else 3_000
    n_remote = 1_000 if args.quick else 10_000
    concurrency = 200
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    info, measured = _report.machine(), _report.code()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        phase = Phase(progress)
        figures = delegations(n_tokens, phase)
        local = _broker_exec.in_process(n_local, phase)
        remote = None
        if not args.no_socket:
            remote = _broker_exec.through_socket(n_remote, concurrency, args.port, phase)
        phase.done()
    figures += _broker_exec.metrics(local, remote, concurrency)
    picture(out / "broker_latency.png", local, remote)
    duration = time.perf_counter() - started
    _report.write_json(out / "broker.json", {
        "benchmark": "corral capability broker",
        "command": shlex.join(["python", "-m", "benchmarks", "broker", *(argv or [])]),
        "mode": "quick" if args.quick else "full",
        "started_at": started_at.isoformat(),
        "duration_s": duration,
        "machine": info,
        "code": measured,
        "load_average_at_end": _report.machine()["load_average"],
        "ratio_to_baseline": "how many times faster than the baseline (> 1: corral is faster)",
        "figures": [m.to_json() for m in figures],
        "pictures": ["broker_latency.png"],
        "method": {"delegations": __doc__, "execute": _broker_exec.__doc__},
    })  # fmt: skip
    title = (f"corral broker, {'quick' if args.quick else 'full'} run, {info['cpu_count']} CPUs, "
             f"commit {(measured['commit'] or '?')[:7]}, {duration:.0f} s")  # fmt: skip
    console.print(_report.table(figures, title))
    for label in _report.baselines(figures):
        console.print(f"  baseline: {label}")
    console.print(f"results: {out / 'broker.json'}, {out / 'broker_latency.png'}")
    return 0
