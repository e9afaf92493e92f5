"""Every scenario in ``tests/scenarios/`` through the real classifier: 100% or a named failure.

Also the example of ``SUPERVISOR.md`` itself, and the evaluator's own scoring and refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli import app
from corral.supervisor import ScenarioError, evaluate, load_scenarios

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.jsonl"))
SPEC_EXAMPLE = {
    "id": "slot-overlap-in-flight", "policy": {"timezone": "America/Los_Angeles"},
    "steps": [
        {"at": "2026-03-03T17:00:00Z",
         "call": {"id": "c1", "agent": "receptionist-1", "tool": "google_calendar.insert_event",
                  "args": {"calendar_id": "lee@brightsmile.example",
                           "start": "2026-03-04T10:00:00-08:00",
                           "end": "2026-03-04T10:30:00-08:00", "summary": "Cleaning — Ana Ruiz"}},
         "expect": {"verdict": "allow"}},
        {"at": "2026-03-03T17:00:01Z",
         "call": {"id": "c2", "agent": "receptionist-2", "tool": "google_calendar.insert_event",
                  "args": {"calendar_id": "lee@brightsmile.example",
                           "start": "2026-03-04T10:15:00-08:00",
                           "end": "2026-03-04T10:45:00-08:00", "summary": "Filling — Bo Chen"}},
         "expect": {"verdict": "defer", "rules": ["slot_conflict"], "conflicts_with": ["c1"]}},
        {"at": "2026-03-03T17:00:03Z",
         "outcome": {"call": "c1", "status": "succeeded", "result": {"event_id": "evt-1"}}},
    ],
}  # fmt: skip


def test_there_are_enough_scenarios() -> None:
    assert sum(len(load_scenarios(path)) for path in SCENARIOS) >= 80


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_scenario_is_right(path: Path) -> None:
    report = evaluate(load_scenarios(path)).to_json()
    assert report["failures"] == []
    assert report["verdict_accuracy"] == 1.0 and report["conflict_recall"] == 1.0


def test_the_spec_example() -> None:
    report = evaluate([SPEC_EXAMPLE]).to_json()
    assert report["calls"] == 2 and report["failures"] == []


def test_a_wrong_expectation_is_reported_with_its_ids() -> None:
    wrong = json.loads(json.dumps(SPEC_EXAMPLE))
    wrong["steps"][1]["expect"] = {"verdict": "deny", "rules": ["duplicate_message"],
                                   "conflicts_with": ["c9"]}  # fmt: skip
    report = evaluate([wrong]).to_json()
    assert report["verdict_accuracy"] == 0.5
    (failure,) = report["failures"]
    assert failure["scenario"] == "slot-overlap-in-flight" and failure["call"] == "c2"
    assert len(failure["problems"]) == 3


def test_the_cli_prints_json_and_exits_nonzero_on_a_wrong_verdict(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(SPEC_EXAMPLE) + "\n")
    result = CliRunner().invoke(app, ["supervisor", "eval", str(good), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"calls", "verdict_accuracy", "conflict_precision", "conflict_recall",
                           "rule_accuracy", "latency_us", "failures"}  # fmt: skip
    assert set(report["latency_us"]) == {"p50", "p99"}
    bad = tmp_path / "bad.jsonl"
    wrong = json.loads(json.dumps(SPEC_EXAMPLE))
    wrong["steps"][0]["expect"] = {"verdict": "deny", "rules": ["role"]}
    bad.write_text(json.dumps(wrong) + "\n")
    result = CliRunner().invoke(app, ["supervisor", "eval", str(bad)])
    assert result.exit_code == 1 and "WRONG slot-overlap-in-flight / c1" in result.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", "not JSON"), ('{"id": "x"}', "steps"),
     ('{"id": "x", "policy": {"colour": 1}, "steps": []}', "invalid policy"),
     ('{"id": "x", "steps": [{"at": "2026-01-01T00:00:00Z"}]}', "step 1")],
)  # fmt: skip
def test_a_malformed_file_is_refused_naming_where(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ScenarioError, match=message):
        evaluate(load_scenarios(path))
