"""Export of the big log as a bundle, and its offline verification.

Checkpoints are signed at a quarter, half, three quarters and all of the log with the
``AuditKeys`` signer (roots from the build, not from the store), so the bundle carries four
signed notes and three consistency proofs; no anchors (``anchorer=None``). ``export_bundle`` is
timed once; ``verify_bundle`` up to three times (median), fewer if one run already spends the
phase's time budget (a run far above target is not made more accurate by repeating it).
"""

from __future__ import annotations

import resource
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from benchmarks._common import DEPLOYMENT, ORIGIN, TENANT, Metric, Phase, Profiler, repeat, spread
from corral.audit import note
from corral.audit.export import export_bundle
from corral.audit.keys import AuditKeys
from corral.audit.store import LogStore
from corral.audit.verify import Report, verify_bundle

VERIFY_TARGET_S = 20.0
VERIFY_TARGET_ENTRIES = 1_000_000


def checkpoint_sizes(size: int) -> list[int]:
    return sorted({max(1, size * k // 4) for k in (1, 2, 3)} | {size})


def add_checkpoints(
    store: LogStore, keys: AuditKeys, roots: dict[int, bytes], sizes: list[int]
) -> None:
    signer = keys.signer(ORIGIN)
    for size in sizes:
        text = note.Checkpoint(ORIGIN, size, roots[size]).format()
        signed = note.sign(text, [signer])
        store.add_checkpoint(TENANT, size, roots[size], signed, datetime.now(UTC))


def _cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (verify's worker processes):
    unlike wall time, not inflated when other work on the machine takes a core away."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _bundle_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def run(
    store: LogStore,
    keys: AuditKeys,
    size: int,
    out: Path,
    repeats: int,
    budget_s: float,
    phase: Phase,
    profiler: Profiler,
    *,
    hashing_floor_s: float | None = None,
) -> list[Metric]:
    """Export, then verify; ``hashing_floor_s`` (``merkle.root`` of the same leaves in memory)
    is the verify baseline: what is left when nothing is parsed, checked or signed."""
    group = f"bundle of {size:,} entries"
    phase.start(f"export bundle ({size:,} entries)", 1)
    if out.exists():
        shutil.rmtree(out)
    with profiler("export"):
        started = time.perf_counter()
        export_bundle(store, keys, None, deployment=DEPLOYMENT, tenant=TENANT, out=out)
        export_s = time.perf_counter() - started
    phase.advance()
    phase.start(f"verify bundle ({size:,} entries, up to {repeats} runs)", repeats)
    reports: list[Report] = []

    cpu: list[float] = []

    def verify() -> Report:
        before = _cpu_seconds()
        with profiler(f"verify_run{len(reports) + 1}"):
            report = verify_bundle(out)
        cpu.append(_cpu_seconds() - before)
        reports.append(report)
        phase.advance()
        return report

    _, verify_s = repeat(verify, repeats, budget_s)
    phase.done()
    report = reports[-1]
    if report.entries != size or report.checkpoints != len(checkpoint_sizes(size)):
        raise AssertionError(f"verify covered {report.entries} entries, expected {size}")
    target = VERIFY_TARGET_S * size / VERIFY_TARGET_ENTRIES
    scaled = size != VERIFY_TARGET_ENTRIES
    note_text = "issue: < 20 s for 1M entries" + (f" (scaled to {size:,})" if scaled else "")
    return [
        Metric(
            key="bundle.export",
            group=group,
            label="export_bundle (4 checkpoints, no anchors)",
            value=size / export_s,
            unit="entries/s",
            better="higher",
            details={"seconds": export_s, "bundle_bytes": _bundle_bytes(out), "runs": 1},
        ),
        Metric(
            key="bundle.verify",
            group=group,
            label="verify_bundle, time",
            value=median(verify_s),
            unit="s",
            better="lower",
            target=target,
            target_note=note_text,
            baseline_label="merkle.root of the same leaves in memory (hashing floor)",
            baseline_value=hashing_floor_s,
            details={
                "seconds": spread(verify_s),
                "entries_per_s": size / median(verify_s),
                "cpu_seconds": spread(cpu),
                "checkpoints": report.checkpoints,
                "anchors": report.anchors,
            },
        ),
        Metric(
            key="bundle.verify_rate",
            group=group,
            label="verify_bundle, rate",
            value=size / median(verify_s),
            unit="entries/s",
            better="higher",
            target=VERIFY_TARGET_ENTRIES / VERIFY_TARGET_S,
            target_note="issue: 1M entries in < 20 s = 50,000 entries/s",
            details={"runs": len(verify_s)},
        ),
    ]
