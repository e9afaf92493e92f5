"""Benchmarks of the audit chain, one command: ``python -m benchmarks`` (``make bench``).

Measures durable appends/s through the ``Sequencer`` at batch sizes 1, 64 and 1024 on SQLite
(and PostgreSQL when reachable), inclusion- and consistency-proof latency at 1M entries, the
export and offline verification of a 1M-entry bundle, and builds the same tree with
``pymerkle`` as a baseline, all in one run. Prints a table (value, target, pass/fail, ratio to
the baseline measured in the same run) and writes ``benchmarks/results/audit.json`` plus
``append_throughput.png`` and ``proof_latency.png``. ``--quick`` is a ~1 minute smoke run on
20,000 entries; ``--entries N`` sets the size of the big log.

Each module says exactly what it measures: :mod:`benchmarks._appends`,
:mod:`benchmarks._tree`, :mod:`benchmarks._bundle`.
"""

from __future__ import annotations

import argparse
import gc
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from benchmarks import _appends, _backends, _bundle, _entries, _report, _tree
from benchmarks._common import POSTGRES_URL, Metric, Phase, Profiler, bench_keys
from corral.audit.store import LogStore

__all__ = ["RESULTS", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
FULL_ENTRIES = 1_000_000
QUICK_ENTRIES = 20_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of the corral audit chain (appends, proofs, bundle, baselines).",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_ENTRIES:,} entries, fewer runs"
    )
    parser.add_argument(
        "--entries",
        type=int,
        metavar="N",
        help=f"entries in the big log (default {FULL_ENTRIES:,})",
    )
    parser.add_argument("--proofs", type=int, metavar="K", help="proofs timed per kind")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="PostgreSQL for appends")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL appends")
    parser.add_argument(
        "--skip-appends", action="store_true", help="only the big log: proofs, bundle, pymerkle"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile appends, export and verify into OUT/profile_*.txt (slows them down)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; 0 once the results are written (a missed target is not an error)."""
    args = _parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    size = args.entries or (QUICK_ENTRIES if args.quick else FULL_ENTRIES)
    if size < 16:
        console.print("--entries must be at least 16")
        return 2
    proofs = args.proofs or (500 if args.quick else 2000)
    plan = _appends.QUICK if args.quick else _appends.FULL
    repeats, budget_s = 3, (20.0 if args.quick else 60.0)
    verify_budget_s = 20.0 if args.quick else 150.0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    profiler = Profiler(out if args.profile else None)
    keys = bench_keys()
    skipped: list[str] = []

    backends_wanted = not args.skip_appends
    postgres = None
    if backends_wanted and not args.no_postgres:
        problem = _backends.postgres_problem(args.postgres_url)
        if problem is None:
            postgres = _backends.postgres_version(args.postgres_url)
        else:
            skipped.append(f"PostgreSQL appends: {problem}")
    elif backends_wanted:
        skipped.append("PostgreSQL appends: --no-postgres")
    if args.skip_appends:
        skipped.append("appends: --skip-appends")
    for line in skipped:
        console.print(f"skipped: {line}")

    started_at = datetime.now(UTC)
    started = time.perf_counter()
    info = _report.machine()
    info["postgresql_server"] = postgres
    measured = _report.code()
    metrics: list[Metric] = []
    latencies = _tree.Latencies()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp,
        Progress(*columns, console=console) as progress,
    ):
        work = Path(tmp)
        phase = Phase(progress)
        if backends_wanted:
            backends = [_backends.Backend("SQLite", work)]
            if postgres is not None:
                backends.append(_backends.Backend("PostgreSQL", work, args.postgres_url))
            metrics += _appends.run(plan, backends, keys, phase, profiler)

        phase.start(f"generate {size:,} leaves", 1)
        leaves = _entries.leaves(size)
        phase.advance()
        rng = random.Random(3)
        wanted = set(rng.sample(range(1, size), min(proofs + 100, size - 1)))
        wanted |= set(_bundle.checkpoint_sizes(size))
        store = LogStore.from_url(f"sqlite:///{work / 'big' / 'audit.db'}")
        store.create_schema()
        floor_nodes = _tree.FloorNodes(work / "floor.db")
        try:
            root, roots, built = _tree.build(store, floor_nodes, leaves, wanted, phase)
            metrics.append(built)
            samples = _tree.ProofSamples.draw(size, roots, proofs)
            latencies = _tree.store_proofs(
                store, floor_nodes, samples, leaves, root, roots, phase, profiler
            )
            tree_metrics, pm_tree = _tree.tree_baseline(leaves, root, repeats, budget_s, phase)
            metrics += tree_metrics
            _tree.pymerkle_proofs(pm_tree, samples, latencies, phase)
            del pm_tree  # millions of GC-tracked nodes would slow down everything after
            gc.collect()
            metrics += _tree.proof_metrics(samples, latencies)
            _bundle.add_checkpoints(store, keys, roots, _bundle.checkpoint_sizes(size))
            floor = next(m.value for m in tree_metrics if m.key == "tree.corral_root")
            metrics += _bundle.run(
                store,
                keys,
                size,
                work / "bundle",
                repeats,
                verify_budget_s,
                phase,
                profiler,
                hashing_floor_s=floor,
            )
        finally:
            floor_nodes.close()
            store.close()
        phase.done()
    duration = time.perf_counter() - started

    pictures = []
    if backends_wanted:
        data = _appends.throughput_picture_data(metrics)
        _report.append_picture(out / "append_throughput.png", data, _appends.APPEND_TARGET)
        pictures.append("append_throughput.png")
    _report.latency_picture(out / "proof_latency.png", latencies, _tree.PROOF_TARGET_MS, size)
    pictures.append("proof_latency.png")
    mode = "quick" if args.quick else "full"
    payload: dict[str, Any] = {
        "benchmark": "corral audit chain",
        "command": shlex.join(["python", "-m", "benchmarks", *(argv or [])]),
        "mode": mode if args.entries is None else f"{mode}, --entries {size}",
        "entries": size,
        "started_at": started_at.isoformat(),
        "duration_s": duration,
        "machine": info,
        "code": measured,
        "load_average_at_end": _report.machine()["load_average"],
        "ratio_to_baseline": "how many times faster than the baseline (> 1: corral is faster)",
        "targets": [
            {
                "figure": m.key,
                "target": m.target,
                "unit": m.unit,
                "note": m.target_note,
                "value": m.value,
                "passed": m.passed,
            }
            for m in metrics
            if m.target is not None
        ],
        "figures": [m.to_json() for m in metrics],
        "skipped": skipped,
        "pictures": pictures,
        "profiles": [p.name for p in profiler.write()],
        "method": {
            "appends": _appends.__doc__,
            "tree_and_proofs": _tree.__doc__,
            "bundle": _bundle.__doc__,
        },
    }
    _report.write_json(out / "audit.json", payload)

    title = (
        f"corral audit chain, {mode} run: {size:,} entries, {info['cpu_count']} CPUs, "
        f"Python {info['python']}, commit {(measured['commit'] or '?')[:7]}"
        f"{' + changes' if measured['src_modified_since_commit'] else ''}, {duration:.0f} s"
    )
    console.print(_report.table(metrics, title))
    console.print("x baseline: times faster than the baseline measured in this run (> 1: corral)")
    for label in _report.baselines(metrics):
        console.print(f"  baseline: {label}")
    for line in skipped:
        console.print(f"skipped: {line}")
    if args.profile:
        console.print("profiled run: timings are inflated by cProfile; compare nothing to them")
    console.print(f"results: {out / 'audit.json'}, " + ", ".join(str(out / p) for p in pictures))
    return 0
