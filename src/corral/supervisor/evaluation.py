"""``corral supervisor eval``: run scenario files through the real classifier and score it.

A scenario file is JSON Lines (``SUPERVISOR.md``, "Scenario files"): each scenario has a tenant
policy and steps run in order at their ``at`` time: ``call`` steps (with ``expect``),
``outcome`` steps and ``operator`` steps. Each scenario gets a fresh
:class:`~corral.supervisor.classifier.TenantSupervisor`; the code is the service's, without the
transport.

The report: calls; **verdict accuracy**; **conflict precision and recall**, where a conflict
is any non-allow verdict (a positive is a call expected not to be allowed); **rule accuracy**
over calls whose expectation names rules (right when at least one of them is among the rules
reported at the verdict's strength); **conflicts-with accuracy** over calls whose expectation
lists ``conflicts_with`` (right when the sets are equal); decision latency p50 and p99 in
microseconds; and each wrong call with its scenario and call id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.core.canonical import loads_strict
from corral.core.clock import parse_time
from corral.supervisor.classifier import Decision, SupervisorError, TenantSupervisor
from corral.supervisor.policy import PolicyError, load_policy


class ScenarioError(SupervisorError, ValueError):
    """A scenario file that does not follow the format (the message names line and step)."""


@dataclass
class Failure:
    scenario: str
    call: str
    problems: list[str]
    expected: dict[str, Any]
    got: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "call": self.call, "problems": self.problems,
                "expected": self.expected, "got": self.got}  # fmt: skip


@dataclass
class Report:
    calls: int = 0
    verdicts_right: int = 0
    true_conflicts: int = 0
    false_conflicts: int = 0
    missed_conflicts: int = 0
    rule_checks: int = 0
    rules_right: int = 0
    conflict_checks: int = 0
    conflicts_right: int = 0
    latencies_us: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @staticmethod
    def _ratio(right: int, total: int) -> float:
        return right / total if total else 1.0

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_us)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

        return {
            "calls": self.calls,
            "verdict_accuracy": self._ratio(self.verdicts_right, self.calls),
            "conflict_precision": self._ratio(
                self.true_conflicts, self.true_conflicts + self.false_conflicts
            ),
            "conflict_recall": self._ratio(
                self.true_conflicts, self.true_conflicts + self.missed_conflicts
            ),
            "rule_accuracy": self._ratio(self.rules_right, self.rule_checks),
            "conflicts_with_accuracy": self._ratio(self.conflicts_right, self.conflict_checks),
            "latency_us": {"p50": pct(0.50), "p99": pct(0.99)},
            "failures": [f.to_json() for f in self.failures],
        }


def load_scenarios(path: Path) -> list[dict[str, Any]]:
    """Every scenario of a JSON Lines file (blank lines skipped)."""
    scenarios = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            scenario = loads_strict(line)
        except ValueError as exc:
            raise ScenarioError(f"{path.name}:{number}: not JSON: {exc}") from None
        if not isinstance(scenario, dict) or not isinstance(scenario.get("steps"), list):
            raise ScenarioError(f"{path.name}:{number}: a scenario is an object with 'steps'")
        scenario.setdefault("id", f"{path.name}:{number}")
        scenarios.append(scenario)
    return scenarios


def evaluate(scenarios: Iterable[dict[str, Any]], report: Report | None = None) -> Report:
    """Run every scenario; score each call step against its ``expect``."""
    report = report or Report()
    _warm_up()
    for scenario in scenarios:
        _run(scenario, report)
    return report


def _warm_up() -> None:
    """Load the catalog, phone metadata and time zones once, before any decision is timed."""
    supervisor = TenantSupervisor(load_policy({"timezone": "America/Los_Angeles"}))
    args = {"to": "(310) 555-0123", "body": "warm-up"}
    supervisor.decide(
        "warm-up", "agent", "twilio.send_sms", args, parse_time("2026-01-01T12:00:00Z")
    )


def _run(scenario: dict[str, Any], report: Report) -> None:
    sid = str(scenario["id"])
    try:
        supervisor = TenantSupervisor(load_policy(scenario.get("policy") or {}))
    except PolicyError as exc:
        raise ScenarioError(f"scenario {sid}: invalid policy: {exc}") from None
    for n, step in enumerate(scenario["steps"], 1):
        try:
            at = parse_time(step["at"])
            if "call" in step:
                call = step["call"]
                started = time.perf_counter()
                decision = supervisor.decide(
                    str(call["id"]), str(call.get("agent", "agent")), str(call["tool"]),
                    call.get("args", {}), at,
                )  # fmt: skip
                report.latencies_us.append((time.perf_counter() - started) * 1e6)
                _score(sid, str(call["id"]), step.get("expect", {}), decision, report)
            elif "outcome" in step:
                outcome = step["outcome"]
                supervisor.outcome(str(outcome["call"]), str(outcome["status"]),
                                   outcome.get("result") or {})  # fmt: skip
            elif "operator" in step:
                supervisor.operator(
                    str(step["operator"]["call"]), str(step["operator"]["decision"])
                )
            else:
                raise ScenarioError("a step has a call, an outcome or an operator decision")
        except (KeyError, TypeError, ValueError, SupervisorError) as exc:
            if isinstance(exc, ScenarioError) and str(exc).startswith("scenario "):
                raise
            raise ScenarioError(f"scenario {sid}, step {n}: {type(exc).__name__}: {exc}") from None


def _score(sid: str, call_id: str, expect: dict[str, Any], got: Decision, report: Report) -> None:
    report.calls += 1
    problems = []
    want = expect.get("verdict", "allow")
    if got.verdict.value == want:
        report.verdicts_right += 1
    else:
        problems.append(f"verdict {got.verdict.value}, expected {want}")
    expected_conflict, got_conflict = want != "allow", got.verdict.value != "allow"
    if expected_conflict and got_conflict:
        report.true_conflicts += 1
    elif got_conflict:
        report.false_conflicts += 1
    elif expected_conflict:
        report.missed_conflicts += 1
    if expect.get("rules"):
        report.rule_checks += 1
        if set(expect["rules"]) & set(got.rules):
            report.rules_right += 1
        else:
            problems.append(f"rules {got.rules}, expected one of {expect['rules']}")
    if "conflicts_with" in expect:
        report.conflict_checks += 1
        if set(expect["conflicts_with"]) == set(got.conflicts_with):
            report.conflicts_right += 1
        else:
            problems.append(
                f"conflicts_with {got.conflicts_with}, expected {expect['conflicts_with']}"
            )
    if problems:
        report.failures.append(Failure(sid, call_id, problems, expect, got.to_json()))
