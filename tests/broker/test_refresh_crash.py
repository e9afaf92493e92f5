"""SIGKILL during an OAuth refresh loses no token (``corral.broker.oauth``).

A child process refreshes a rotating connection (HighLevel, Calendly, QuickBooks: every refresh
invalidates the used refresh token) over real HTTP against the fakes served by uvicorn, and is
killed at each step of the protocol. A new broker process must then refresh successfully with
what the store holds: the lease has expired, the stored version is whole, and the refresh token
it holds is the one the provider honours.

The one window no client can close, between the provider's rotation and our commit, is tested
too: there the connection must say ``needs_reconnect`` rather than fail silently.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from corral.broker._store import ConnectionStatus
from corral.broker.assembly import control_approval_signer, open_broker
from corral.broker.oauth import AuditEvents, TokenSource
from corral.broker.vault import ConnectionUnusable
from corral.core.settings import load_settings
from tests.broker._served import served_fixture  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
TENANT = "brightsmile"


def _setup(tmp: Path, served: tuple[dict[str, Any], str], provider: str) -> Path:
    fakes, root = served
    (tmp / "corral.toml").write_text(
        f'data_dir = "{tmp}"\ndeployment = "corral.test"\n[broker]\nrefresh_lease_s = 1.0\n'
    )
    settings = load_settings(tmp / "corral.toml")
    control_approval_signer(settings)
    parts = open_broker(settings)
    fake = fakes[provider]
    parts.broker.vault.connect(
        TENANT, f"{provider}-1", provider, fake.new_connection(),
        endpoints=fake.endpoints(f"{root}/{provider}"),
    )  # fmt: skip
    asyncio.run(parts.aclose())
    return tmp


def _kill_at(data_dir: Path, connection_id: str, step: str) -> str:
    marker = data_dir / f"marker-{step}"
    command = [sys.executable, "-m", "tests.broker._refresh_child", str(data_dir),
               connection_id, step, str(marker)]  # fmt: skip
    log = data_dir / f"child-{step}.log"
    with log.open("w") as stderr:
        child = subprocess.Popen(command, cwd=ROOT, stderr=stderr)
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, f"child died by itself: {log.read_text()}"
            assert time.monotonic() < deadline, "the child never reached its step"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    return marker.read_text()


async def _refresh_after(data_dir: Path, connection_id: str) -> tuple[int, AuditEvents, int]:
    """A new broker's access token (refreshing if the store has none), then a forced refresh
    with the stored refresh token: (version, events of the first, version after the second)."""
    parts = open_broker(load_settings(data_dir / "corral.toml"))
    try:
        vault = parts.broker.vault
        source = TokenSource(vault, parts.http, lease_s=1.0)
        await asyncio.sleep(1.05)  # the killed holder's lease expires
        events = AuditEvents()
        row, token = await source.access_token(vault.connection(TENANT, connection_id), events)
        forced, _ = await source.access_token(row, AuditEvents(), refused=token)
        return row.version, events, forced.version
    finally:
        await parts.aclose()


@pytest.mark.parametrize("provider", ["ghl", "calendly", "quickbooks"])
@pytest.mark.parametrize("step", ["leased", "requesting", "stored"])
def test_sigkill_at_a_refresh_step_loses_no_token(
    tmp_path: Path, served: tuple[dict[str, Any], str], provider: str, step: str
) -> None:
    data_dir = _setup(tmp_path, served, provider)
    assert _kill_at(data_dir, f"{provider}-1", step) == step
    version, events, forced = asyncio.run(_refresh_after(data_dir, f"{provider}-1"))
    # Killed before sending: version 1 is refreshed now, to 2. Killed after storing: the
    # child's version 2 and its access token are whole and used as they are.
    assert version == 2
    kinds = [e["kind"] for e in events.items]
    assert kinds == ([] if step == "stored" else ["credential.rotated"])
    assert forced == 3  # the stored refresh token is the one the provider honours


def test_the_unclosable_window_is_reported_not_silent(
    tmp_path: Path, served: tuple[dict[str, Any], str]
) -> None:
    data_dir = _setup(tmp_path, served, "ghl")
    assert _kill_at(data_dir, "ghl-1", "received") == "received"
    with pytest.raises(ConnectionUnusable, match="needs_reconnect"):
        asyncio.run(_refresh_after(data_dir, "ghl-1"))
    parts = open_broker(load_settings(data_dir / "corral.toml"))
    try:
        row = parts.broker.vault.connection(TENANT, "ghl-1")
        assert row.status is ConnectionStatus.NEEDS_RECONNECT
    finally:
        asyncio.run(parts.aclose())
