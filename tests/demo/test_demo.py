"""``corral demo`` as a subprocess: the whole chain, the day's collisions, a verified record.

The demo runs once per module (a day takes about a minute here) with a fixed seed; each test
reads what it left: its ``--json`` summary, the exported audit bundle, the copies of the
agents' work directories. The determinism test runs it a second time with the same seed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.audit.verify import verify_bundle
from corral.demo import clinic
from tests.conftest import need_service

SEED = 11
# Shapes of what the provider sandboxes issue (corral.fakes): Stripe keys, OAuth client
# secrets, Google access tokens, refresh and access tokens.
CREDENTIAL = re.compile(rb"(sk_test_|secret_|ya29\.|\brt_|\bat_)[A-Za-z0-9]{16,}")


@dataclass
class Run:
    data_dir: Path
    summary: dict[str, Any]
    stderr: str

    @property
    def entries(self) -> list[dict[str, Any]]:
        lines = (self.data_dir / "bundle" / "entries.jsonl").read_text("utf-8").splitlines()
        return [json.loads(line)["entry"] for line in lines if line]


def _need_sandboxes() -> None:
    from corral.core.settings import load_settings
    from corral.demo.run import DemoError, demo_backend

    try:
        demo_backend(load_settings(), "auto")
    except DemoError as exc:
        need_service("a sandbox backend (bubblewrap or gVisor)", str(exc))


def _demo(seed: int) -> Run:
    _need_sandboxes()
    # Short: sandbox channel sockets live under it (sun_path is 108 bytes).
    data_dir = Path(tempfile.mkdtemp(prefix="demo-", dir="/tmp")) / "d"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "demo", "--data-dir", str(data_dir),
         "--seed", str(seed), "--json"],
        capture_output=True, text=True, env=env, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return Run(data_dir, json.loads(result.stdout), result.stderr)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    done = _demo(SEED)
    yield done
    subprocess.run(["rm", "-rf", str(done.data_dir.parent)], check=False)


@pytest.mark.timeout(480)
def test_the_summary_has_each_collision_caught_by_its_rule(run: Run) -> None:
    summary = run.summary
    assert summary["ok"] is True
    for name, (rule, verdict) in clinic.CONFLICTS.items():
        assert summary["rules"].get(rule, {}).get(verdict, 0) >= 1, (name, summary["rules"])
    assert summary["owner_decisions"] == {"approve": 1, "deny": 1}
    assert summary["calls"] == sum(summary["calls_by_agent"].values()) > 20
    assert summary["latency_ms"]["p50"] is not None
    assert summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
    # The progress lines name each collision as it happens.
    for name in clinic.CONFLICTS:
        assert f"[{name}]" in run.stderr


@pytest.mark.timeout(480)
def test_the_audit_bundle_verifies_and_says_what_the_summary_says(run: Run) -> None:
    report = verify_bundle(run.data_dir / "bundle")
    assert report.entries == run.summary["audit"]["entries"]
    assert report.checkpoints >= 1 and report.anchors >= 1
    entries = run.entries
    verdicts = Counter(e["data"]["verdict"] for e in entries if e["kind"] == "action.verdict")
    assert dict(verdicts) == run.summary["verdicts"]
    connected = {e["data"]["provider"] for e in entries if e["kind"] == "credential.connected"}
    assert connected == {"twilio", "stripe", "google_calendar", "calendly", "quickbooks", "ghl"}
    # The refund over the threshold ran once the owner approved it.
    approved = next(e for e in entries if e["kind"] == "operator.decision"
                    and e["data"]["decision"] == "approve")  # fmt: skip
    call = approved["data"]["call_id"]
    assert any(e["kind"] == "action.executed" and e["data"]["call_id"] == call
               and e["data"]["status"] == "succeeded" for e in entries)  # fmt: skip


@pytest.mark.timeout(480)
def test_every_agent_call_went_through_its_sandbox(run: Run) -> None:
    entries = run.entries
    started: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry["kind"] == "sandbox.started":
            started.setdefault(entry["data"]["agent"], index)
    assert set(started) == set(clinic.AGENTS)
    requests = [(i, e) for i, e in enumerate(entries) if e["kind"] == "action.requested"]
    assert requests
    for index, entry in requests:
        agent = entry["actor"]["id"]
        assert agent in started and started[agent] < index, entry
    minted = [e for e in entries if e["kind"] == "delegation.minted"]
    assert {e["data"]["agent"] for e in minted} == set(clinic.AGENTS)
    assert {s["backend"] for s in run.summary["sandboxes"].values()} <= {"bwrap", "gvisor"}


@pytest.mark.timeout(480)
def test_no_credential_reaches_an_agent(run: Run) -> None:
    scan = run.summary["credential_scan"]
    assert scan["leaks"] == []
    assert scan["secrets"] >= 12 and scan["files"] >= 8  # it searched for real
    agents = run.data_dir / "agents"
    assert sorted(p.name for p in agents.iterdir()) == sorted(clinic.AGENTS)
    files = [p for p in agents.rglob("*") if p.is_file()]
    assert any(p.name == "calls.jsonl" for p in files)
    for path in files:
        assert CREDENTIAL.search(path.read_bytes()) is None, path
    assert CREDENTIAL.search(json.dumps(run.summary).encode()) is None
    assert CREDENTIAL.search(run.stderr.encode()) is None


@pytest.mark.timeout(900)
def test_the_same_seed_gives_the_same_verdicts(run: Run) -> None:
    again = _demo(SEED)
    try:
        assert again.summary["verdicts"] == run.summary["verdicts"]
        assert again.summary["rules"] == run.summary["rules"]
        assert again.summary["calls_by_agent"] == run.summary["calls_by_agent"]
    finally:
        subprocess.run(["rm", "-rf", str(again.data_dir.parent)], check=False)
