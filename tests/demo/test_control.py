"""``python -m corral.demo.control`` as a subprocess: ``corral control serve``'s own service
(dashboard and template maintenance included) with its decisions on the accelerated clock,
``/demo/clock`` on control's socket only, and ``--timings`` written at shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.audit.entries import parse_entry
from corral.audit.store import LogStore
from corral.core.ids import SequentialIds
from corral.core.settings import load_settings
from corral.dashboard.wiring import default_catalog
from corral.supervisor.dispatch import idempotency_key
from corral.templates import Activations, ActivationStore, Catalog
from tests._serving import free_port, wait_for_page

ROOT = Path(__file__).resolve().parents[2]
TENANT = "brightsmile"
OPTED_OUT = "+13105550100"
POLICY = (
    "timezone: America/Los_Angeles\n"
    "quiet_hours: {start: '21:00', end: '08:00'}\n"
    f"opted_out: ['{OPTED_OUT}']\n"
)
#: The simulated day: 11:00 in Los Angeles, ten days before dental-front-desk 1.0.0's sunset.
START = "2027-01-21T11:00:00-08:00"
START_UTC = "2027-01-21T19:00:00.000000Z"


@dataclass
class Launched:
    data: Path
    port: int
    process: subprocess.Popen[bytes]
    timings: Path

    def control(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.data / "control" / "control.sock"))
        return httpx.Client(transport=transport, base_url="http://control")

    @property
    def browser(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture(scope="module")
def launched() -> Iterator[Launched]:
    catalog = default_catalog()
    assert catalog is not None
    data = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
    tenants = data / "control" / "tenants"
    tenants.mkdir(parents=True)
    (tenants / f"{TENANT}.yaml").write_text(POLICY)
    # The tenant runs 1.0.0, whose security patch 1.0.1 is due: maintenance applies it.
    store = ActivationStore.from_url(load_settings(data_dir=data).templates_database_url())
    store.create_schema()
    try:
        Activations(Catalog.load(catalog), store, ids=SequentialIds()).activate(
            TENANT, "dental-front-desk", "1.0.0", datetime(2026, 9, 1, tzinfo=UTC)
        )
    finally:
        store.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env |= {
        "CORRAL_UP__CONTROL_CLOCK__START": START,
        "CORRAL_UP__CONTROL_CLOCK__FACTOR": "3600",
        "CORRAL_DASHBOARD__LISTEN": f"127.0.0.1:{port}",
    }
    timings = data / "timings.jsonl"
    log = (data / "control.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.demo.control", "--data-dir", str(data),
         "--timings", str(timings)],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    running = Launched(data, port, process, timings)
    try:
        wait_for_page(process, f"{running.browser}/dashboard/login", data / "control.log")
        yield running
    finally:
        running.stop()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def _entries(data: Path) -> list[dict[str, Any]]:
    store = LogStore.from_url(f"sqlite:///{data / 'audit.db'}")
    try:
        leaves = store.entries(TENANT, 0, store.log_size(TENANT))
        return [parse_entry(e.leaf).model_dump(mode="json") for e in leaves]
    finally:
        store.close()


def test_the_launcher_serves_the_dashboard_and_the_clock_route_stays_on_the_socket(
    launched: Launched,
) -> None:
    page = httpx.get(f"{launched.browser}/dashboard/login")
    assert page.status_code == 200 and "csrf" in page.text
    # The loopback port serves the dashboard alone: no operator API, no demo clock.
    assert httpx.get(f"{launched.browser}/demo/clock").status_code == 404
    assert httpx.get(f"{launched.browser}/healthz").status_code == 404
    with launched.control() as control:
        assert control.get("/healthz").status_code == 200
        assert control.get("/dashboard/login").status_code == 200  # mounted, as in control
        clock = control.get("/demo/clock").json()
    assert clock == {"now": START_UTC, "start": START_UTC, "factor": 3600.0, "origin": None}


def test_the_launcher_decides_and_maintains_templates_on_the_accelerated_clock(
    launched: Launched,
) -> None:
    call = {"tenant": TENANT, "agent": "follow-up", "sandbox": "sbx-1", "call_id": "c1",
            "tool": "twilio.send_sms", "args": {"to": OPTED_OUT, "body": "Recall"}}  # fmt: skip
    with launched.control() as control:
        answer = control.post("/calls", json=call).json()
        assert (answer["verdict"], answer["rules"]) == ("deny", ["opted_out"])
        # Template maintenance ran its first round at start, at the simulated time.
        deadline = time.monotonic() + 30
        while not any(e["kind"] == "template.activated" for e in _entries(launched.data)):
            assert time.monotonic() < deadline, "no maintenance round"
            time.sleep(0.1)
        bad = control.post("/demo/clock", json={"origin": "2027-01-21T11:00:00"})
        assert bad.status_code == 400 and "UTC offset" in bad.json()["detail"]
    entries = _entries(launched.data)
    by_kind = {e["kind"]: e for e in entries}
    # The day has not begun, so the decisions' clock still reads its start, not the real time.
    assert by_kind["action.requested"]["at"] == by_kind["action.verdict"]["at"] == START_UTC
    patched = by_kind["template.activated"]
    assert patched["at"] == START_UTC
    assert patched["data"]["version"] == "1.0.1" and patched["data"]["automatic"] is True


def test_beginning_the_day_runs_the_clock_and_timings_are_written_at_shutdown(
    launched: Launched,
) -> None:
    origin = datetime.now(UTC)
    with launched.control() as control:
        begun = control.post("/demo/clock", json={"origin": origin.isoformat()}).json()
        assert begun["origin"] is not None and begun["now"] > START_UTC
        call = {"tenant": TENANT, "agent": "follow-up", "sandbox": "sbx-1", "call_id": "c2",
                "tool": "twilio.send_sms", "args": {"to": OPTED_OUT, "body": "Again"}}  # fmt: skip
        assert control.post("/calls", json=call).json()["verdict"] == "deny"
    assert launched.stop() == 0
    rows = [json.loads(line) for line in launched.timings.read_text().splitlines()]
    keys = [row["key"] for row in rows]  # c1 too when the test above ran first
    assert keys[-1] == idempotency_key(TENANT, "c2")
    assert set(keys) <= {idempotency_key(TENANT, c) for c in ("c1", "c2")}
    assert all(row["control_ms"] > 0 for row in rows)  # denied: no broker time to join
