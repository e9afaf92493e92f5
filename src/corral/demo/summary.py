"""What ``corral demo`` prints: counted from the exported, verified audit record.

Verdicts, rules, outcomes, the owner's decisions and the sandboxes are read from the tenant's
audit bundle after :func:`~corral.audit.verify.verify_bundle` accepted it, not from what the
agents believe happened; latency is the agents' own (the guest's call to its answer, through
the channel, the host, control, the broker and the provider). ``--json`` prints
:meth:`Summary.to_json`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.demo import clinic

__all__ = ["Summary", "build_summary", "percentile", "render"]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``None`` for no values).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99)
    (2.0, 4.0)
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Summary:
    tenant: str
    day: str
    seed: int
    speed: float
    seconds: float
    calls: int
    calls_by_agent: dict[str, int]
    verdicts: dict[str, int]
    """Verdict entries by verdict (a deferred call that ran later has two)."""
    rules: dict[str, dict[str, int]]
    """Rule → verdict → count, over the verdict entries that name the rule."""
    conflicts: dict[str, dict[str, Any]]
    """Each collision of the day: its rule, the verdict expected, whether the record has it."""
    outcomes: dict[str, int]
    owner: dict[str, int]
    delegations: int
    connected: int
    sandboxes: dict[str, dict[str, Any]]
    latency_ms: dict[str, float | int | None]
    audit: dict[str, Any]
    scan: dict[str, Any]
    late_steps: int
    errors: list[str] = field(default_factory=list)
    dashboard: dict[str, Any] = field(default_factory=dict)
    prose: list[str] = field(default_factory=list)
    """The collisions as the owner reads them (the audit chain's prose)."""

    @property
    def ok(self) -> bool:
        """Every collision caught by its rule, every agent in a sandbox, nothing leaked."""
        return (
            all(c["seen"] for c in self.conflicts.values())
            and all(s["started"] for s in self.sandboxes.values())
            and not self.scan["leaks"]
            and not self.errors
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tenant": self.tenant,
            "day": self.day,
            "seed": self.seed,
            "speed": self.speed,
            "seconds": round(self.seconds, 1),
            "calls": self.calls,
            "calls_by_agent": self.calls_by_agent,
            "verdicts": self.verdicts,
            "rules": self.rules,
            "conflicts": self.conflicts,
            "outcomes": self.outcomes,
            "owner_decisions": self.owner,
            "delegations": self.delegations,
            "connected": self.connected,
            "sandboxes": self.sandboxes,
            "latency_ms": self.latency_ms,
            "audit": self.audit,
            "credential_scan": self.scan,
            "late_steps": self.late_steps,
            "errors": self.errors,
            "dashboard": self.dashboard,
            "prose": self.prose,
        }


def build_summary(
    *,
    world: dict[str, Any],
    seed: int,
    speed: float,
    records: list[dict[str, Any]],
    results: dict[str, dict[str, Any]],
    decided: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    report: Any,
    bundle: Path,
    scan: dict[str, Any],
    sandboxes: list[dict[str, Any]],
    data_dir: Path,
    dashboard: str | None,
    owner: dict[str, str] | None,
    seconds: float,
    prose: list[str] | None = None,
) -> Summary:
    kinds = Counter(str(e.get("kind")) for e in entries)
    verdicts: Counter[str] = Counter()
    rules: dict[str, Counter[str]] = {}
    calls_by_agent: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    started: dict[str, dict[str, Any]] = {}
    for entry in entries:
        kind, data = entry.get("kind"), entry.get("data") or {}
        if kind == "action.requested":
            calls_by_agent[str(entry.get("actor", {}).get("id"))] += 1
        elif kind == "action.verdict":
            verdict = str(data.get("verdict"))
            verdicts[verdict] += 1
            for rule in data.get("rules") or []:
                rules.setdefault(str(rule), Counter())[verdict] += 1
        elif kind == "action.executed":
            outcomes[str(data.get("status"))] += 1
        elif kind == "action.failed":
            outcomes["failed"] += 1
        elif kind == "operator.decision":
            decisions[str(data.get("decision"))] += 1
        elif kind == "sandbox.started":
            started[str(data.get("agent"))] = {
                "sandbox": data.get("sandbox_id"),
                "backend": data.get("backend"),
                "isolation": data.get("isolation"),
            }
    conflicts = {
        name: {"rule": rule, "verdict": verdict, "seen": rules.get(rule, Counter())[verdict] > 0}
        for name, (rule, verdict) in clinic.CONFLICTS.items()
    }
    immediate = [float(r["ms"]) for r in records if not r.get("held")]
    held = [float(r["ms"]) for r in records if r.get("held")]
    latency: dict[str, float | int | None] = {
        "calls": len(immediate),
        "p50": percentile(immediate, 50),
        "p99": percentile(immediate, 99),
        "max": max(immediate, default=None),
        "held_calls": len(held),
    }
    machines = {}
    for agent in clinic.AGENTS:
        row = next((r for r in sandboxes if r["agent"] == agent), {})
        machines[agent] = {
            "sandbox": row.get("id"),
            "backend": row.get("backend"),
            "level": row.get("level"),
            "started": agent in started,
        }
    errors = [
        f"{r['agent']} {r['tool']}: {r['explanation']}"
        for r in records
        if r["verdict"] in ("error", "forbidden")
    ]
    shown: dict[str, Any] = {"url": dashboard, "browse": f"corral --data-dir {data_dir} up"}
    if owner is not None:
        shown.update(owner)
    return Summary(
        tenant=clinic.TENANT,
        day=str(world["day"]),
        seed=seed,
        speed=speed,
        seconds=seconds,
        calls=kinds["action.requested"],
        calls_by_agent=dict(sorted(calls_by_agent.items())),
        verdicts=dict(sorted(verdicts.items())),
        rules={rule: dict(sorted(c.items())) for rule, c in sorted(rules.items())},
        conflicts=conflicts,
        outcomes=dict(sorted(outcomes.items())),
        owner=dict(sorted(decisions.items())),
        delegations=kinds["delegation.minted"],
        connected=kinds["credential.connected"],
        sandboxes=machines,
        latency_ms=latency,
        audit={
            "bundle": str(bundle),
            "verified": True,
            "entries": report.entries,
            "checkpoints": report.checkpoints,
            "anchors": report.anchors,
            "origin": report.origin,
            "notes": list(report.notes),
        },
        scan=scan,
        late_steps=sum(int(r.get("late_steps", 0)) for r in results.values()),
        errors=errors,
        dashboard=shown,
        prose=list(prose or []),
    )


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def render(summary: Summary, out: Console) -> None:
    """The summary for people."""
    out.print()
    out.print(
        f"[bold]{clinic.NAME}[/bold], {summary.day} (seed {summary.seed}, "
        f"{summary.speed:g}x time): {summary.calls} calls by "
        f"{len(summary.calls_by_agent)} agents in {summary.seconds:.0f} s"
    )
    agents = Table("agent", "calls", "sandbox", "isolation", "sandbox.started in audit")
    for agent, machine in summary.sandboxes.items():
        agents.add_row(
            agent,
            str(summary.calls_by_agent.get(agent, 0)),
            str(machine["backend"]),
            str(machine["level"]),
            "yes" if machine["started"] else "NO",
        )
    out.print(agents)
    verdicts = ", ".join(f"{v} {n}" for v, n in summary.verdicts.items())
    out.print(f"verdicts: {verdicts}", markup=False)
    table = Table("rule", "verdicts", "the collision it caught", title="verdicts by rule")
    names = {rule: name for name, (rule, _v) in clinic.CONFLICTS.items()}
    for rule, counts in summary.rules.items():
        table.add_row(rule, ", ".join(f"{v} {n}" for v, n in counts.items()), names.get(rule, ""))
    out.print(table)
    missing = [name for name, c in summary.conflicts.items() if not c["seen"]]
    out.print(
        "every collision of the day was caught by its rule"
        if not missing
        else f"NOT caught: {', '.join(missing)}",
        markup=False,
    )
    outcomes = ", ".join(f"{k} {n}" for k, n in summary.outcomes.items())
    owner = ", ".join(f"{k} {n}" for k, n in summary.owner.items()) or "none"
    out.print(f"executed: {outcomes}; the owner's decisions: {owner}", markup=False)
    lat = summary.latency_ms
    out.print(
        f"latency through the whole chain (guest → host → control → broker → provider "
        f"and back, {lat['calls']} calls answered at once): p50 {_ms(lat['p50'])}, "
        f"p99 {_ms(lat['p99'])}; {lat['held_calls']} calls waited for quiet hours or "
        "the owner",
        markup=False,
    )
    audit = summary.audit
    out.print(
        f"audit chain: {audit['entries']} entries, {audit['checkpoints']} checkpoints, "
        f"{audit['anchors']} anchors: exported to {audit['bundle']} and verified "
        f"({summary.delegations} delegations, {summary.connected} connections "
        "recorded)",
        markup=False,
    )
    if summary.prose:
        out.print("the collisions as the owner reads them (corral audit prose):", markup=False)
        for line in summary.prose:
            out.print(f"  {line}", markup=False)
    scan = summary.scan
    found = "none found" if not scan["leaks"] else "FOUND in " + ", ".join(scan["leaks"])
    out.print(
        f"credentials: {scan['secrets']} searched for in the agents' {scan['files']} "
        f"files ({scan['bytes']:,} bytes): {found}",
        markup=False,
    )
    if summary.late_steps:
        steps = "step" if summary.late_steps == 1 else "steps"
        out.print(f"note: {summary.late_steps} {steps} started late (a slow machine)", markup=False)
    for error in summary.errors:
        out.print(f"error: {error}", markup=False)
    shown = summary.dashboard
    if shown.get("url"):
        out.print(f"dashboard: run `{shown['browse']}`, open {shown['url']}", markup=False)
        if "password" in shown:
            out.print(
                f"  sign in to {shown['tenant']} as {shown['email']} with the one-time "
                f"password {shown['password']}",
                markup=False,
            )
        else:
            out.print(
                "  add an owner first: corral control add-owner --tenant brightsmile --email E",
                markup=False,
            )
