"""The supervisor benchmark's rows, picture and JSON: what one fleet's passes gave.

:func:`latency_metrics` turns timed passes (:class:`benchmarks._open_loop.Run`) into table
rows beside the Cedar pass of the same mode and rate, with a p99 target; the in-process rows
use 1 ms, and the service socket's passes, once measured, go through it with 5 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._cedar import Agreement
from benchmarks._common import Metric
from benchmarks._open_loop import Run

IN_PROCESS_TARGET_MS = 1.0
SOCKET_TARGET_MS = 5.0
CEDAR = "Cedar: the same calls, stateless rules as Cedar policies (cedarpy)"
_QUANTILES = ((50.0, "p50"), (99.0, "p99"), (99.9, "p99.9"))


@dataclass
class Setup:
    """One fleet and what was measured on it."""

    key: str
    name: str
    tenants: int
    earlier: int
    corral: list[Run[Any]] = field(default_factory=list)
    cedar: list[Run[Any]] = field(default_factory=list)
    cedar_authorize_only: Run[Any] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    agreement: Agreement = field(default_factory=Agreement)
    mix: dict[str, Any] = field(default_factory=dict)
    cedar_policies: str = ""

    def to_json(self) -> dict[str, Any]:
        alone = self.cedar_authorize_only
        return {
            "name": self.name,
            "tenants": self.tenants,
            "earlier_calls": self.earlier,
            "memory": self.memory,
            "mix_of_measured_calls": self.mix,
            "corral_runs": [run.summary() for run in self.corral],
            "cedar_runs": [run.summary() for run in self.cedar],
            "cedar_is_authorized_alone_closed_loop": alone.summary() if alone else None,
            "cedar_agreement": self.agreement.to_json(),
            "cedar_policies_of_first_tenant": self.cedar_policies,
        }


def latency_metrics(
    group: str, key: str, where: str, runs: Sequence[Run[Any]], baselines: Sequence[Run[Any]],
    target_ms: float,
) -> list[Metric]:  # fmt: skip
    """Rows for passes measured ``where``, each beside the baseline pass of the same mode and
    rate: p50, p99 (with the target), p99.9, and for an open loop the achieved rate."""
    out: list[Metric] = []
    for run, base in zip(runs, baselines, strict=True):
        mode = run.label
        slug = mode.replace(" ", "_").replace(",", "").replace("/", "per")
        details = {"runs": 1, "corral": run.summary(), "baseline": base.summary()}
        label = f"{CEDAR}, same mode and rate"
        for q, name in _QUANTILES:
            metric = Metric(f"{key}.{slug}.{name}", group, f"{where}, {mode}, {name}", run.p(q),
                            "ms", "lower", baseline_label=label, baseline_value=base.p(q),
                            details=details)  # fmt: skip
            if q == 99:
                metric.target, metric.target_note = target_ms, f"p99 < {target_ms:g} ms"
            out.append(metric)
        if run.rate is not None:
            out.append(Metric(f"{key}.{slug}.achieved", group, f"{where}, {mode}, achieved",
                              run.achieved_rate, "calls/s", "higher", baseline_label=label,
                              baseline_value=base.achieved_rate, details=details))  # fmt: skip
    return out


def metrics(setup: Setup) -> list[Metric]:
    """The in-process rows of one fleet, its ledgers' memory and Cedar's agreement."""
    group = f"{setup.name}, {setup.earlier:,} earlier calls"
    out = latency_metrics(group, setup.key, "in-process", setup.corral, setup.cedar,
                          IN_PROCESS_TARGET_MS)  # fmt: skip
    memory, agreement = setup.memory, setup.agreement
    calls = f"{memory['calls_in_ledgers']:,} calls"
    rows: list[tuple[str, str, float, str]] = [
        ("memory", f"memory of the supervisors, {calls}", memory["bytes"] / 2**20, "MiB"),
        ("memory_per_call", "memory per call (beyond empty supervisors)",
         memory["bytes_per_call"], "bytes"),
        ("memory_per_tenant", "memory per tenant, empty supervisor",
         memory["bytes_per_tenant_empty"], "bytes"),
    ]  # fmt: skip
    longest = max(run.gc["longest_pause_ms"] for run in setup.corral)
    full = sum(run.gc["collections_gen0_1_2"][2] for run in setup.corral)
    rows += [
        ("full_gc", "one full gc.collect() with the filled fleet", memory["full_gc_ms"], "ms"),
        ("full_gc_frozen", "the same, settled (corral.core.heap), as the service does",
         memory["full_gc_frozen_ms"], "ms"),
        ("gc_pause", f"longest gc pause in corral's passes ({full} full, settles included)",
         longest, "ms"),
    ]  # fmt: skip
    for name, label, value, unit in rows:
        out.append(Metric(f"{setup.key}.{name}", group, label, value, unit, "lower",
                          details=memory))  # fmt: skip
    share = 100 * agreement.agree / max(agreement.calls, 1)
    label = f"Cedar = corral on 5 rules, {agreement.agree:,}/{agreement.calls:,} calls"
    out.append(Metric(f"{setup.key}.cedar_agreement", group, label, share, "%", "higher",
                      details=agreement.to_json()))  # fmt: skip
    return out


def picture(path: Path, setups: Sequence[Setup]) -> None:
    """Latency histograms (log x and y), corral and Cedar, one panel per fleet and mode."""
    from matplotlib.figure import Figure

    columns = max(len(s.corral) for s in setups)
    figure = Figure(figsize=(5.5 * columns, 4.2 * len(setups)), layout="constrained")
    axes = figure.subplots(len(setups), columns, squeeze=False)
    for row, setup in zip(axes, setups, strict=True):
        for ax, ours, theirs in zip(row, setup.corral, setup.cedar, strict=True):
            values = [v for v in (*ours.latencies_ms, *theirs.latencies_ms) if v > 0]
            low, high = min(values), max(*values, IN_PROCESS_TARGET_MS * 2)
            bins = [low * (high / low) ** (i / 80) for i in range(81)]
            ax.hist(ours.latencies_ms, bins=bins, alpha=0.65, label="corral, all 16 rules")
            ax.hist(theirs.latencies_ms, bins=bins, alpha=0.55, label="Cedar, 5 stateless rules")
            for run, color, who in ((ours, "C0", "corral"), (theirs, "C1", "Cedar")):
                ax.axvline(run.p(99), color=color, linestyle=":",
                           label=f"{who} p99 {run.p(99):.3f} ms")  # fmt: skip
            ax.axvline(IN_PROCESS_TARGET_MS, color="red", linestyle="--", label="target p99 1 ms")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{setup.name}, {setup.earlier:,} earlier calls, {ours.label}", fontsize=9)
            ax.set_xlabel("decision latency (ms, log scale)")
            ax.set_ylabel("calls (log scale)")
            ax.legend(fontsize=7)
    figure.suptitle("corral supervisor, in-process decide(): latency per call")
    figure.savefig(path, dpi=110)
