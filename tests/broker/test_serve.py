"""``corral broker serve`` and ``corral fakes serve`` as real processes, over real sockets.

The broker runs as its own process on its Unix socket (mode 0600) and, with a certificate, on
TCP with TLS; the client is :class:`corral.broker.BrokerClient`, which also connects, replaces
and disconnects an account over the socket. The providers are the fakes served over TCP.
SIGTERM stops the broker and removes its socket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.broker import BrokerClient, BrokerRefused
from corral.broker.assembly import control_approval_signer, open_broker
from corral.broker.client import connect_call, disconnect_call, rotate_call
from corral.core.clock import SystemClock
from corral.core.settings import load_settings
from tests._serving import free_port
from tests.broker._served import served_fixture  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
TENANT = "brightsmile"
LOCALHOST = ipaddress.ip_address("127.0.0.1")


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the TLS listener's identity in this test)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral broker test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOCALHOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class Running:
    socket: Path
    port: int
    cert: Path
    child: subprocess.Popen[bytes]


@pytest.fixture(name="broker_process")
def broker_process_fixture(tmp_path: Path, served: tuple[dict[str, Any], str]) -> Iterator[Running]:
    fakes, root = served
    cert, key = _certificate(tmp_path)
    port = free_port()
    (tmp_path / "corral.toml").write_text(
        f'data_dir = "{tmp_path}"\ndeployment = "corral.test"\n[broker]\n'
        f'tcp_host = "127.0.0.1"\ntcp_port = {port}\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    settings = load_settings(tmp_path / "corral.toml")
    control_approval_signer(settings)
    parts = open_broker(settings)
    fields = fakes["twilio"].new_connection()
    parts.broker.vault.connect(TENANT, "twilio-1", "twilio", dict(fields),
                               endpoints=fakes["twilio"].endpoints(f"{root}/twilio"))  # fmt: skip
    asyncio.run(parts.aclose())
    log = tmp_path / "broker.log"
    command = [sys.executable, "-m", "corral.cli", "--config", str(tmp_path / "corral.toml"),
               "broker", "serve"]  # fmt: skip
    with log.open("w") as stderr:
        child = subprocess.Popen(command, cwd=ROOT, stderr=stderr)
    socket = settings.broker_socket()
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert child.poll() is None, f"broker died: {log.read_text()}"
        assert time.monotonic() < deadline, "the broker's socket never appeared"
        time.sleep(0.02)
    try:
        yield Running(socket, port, cert, child)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait(15)


def test_the_broker_process_serves_its_socket_and_tls(
    tmp_path: Path, broker_process: Running
) -> None:
    socket, port, cert = broker_process.socket, broker_process.port, broker_process.cert
    assert socket.stat().st_mode & 0o777 == 0o600
    settings = load_settings(tmp_path / "corral.toml")
    control = control_approval_signer(settings)
    parts = open_broker(settings)
    minted, _ = parts.broker.mint(tenant=TENANT, agent="agent-1", sandbox="sbx-1",
                                  tools=["twilio.send_sms"], ttl_s=60)  # fmt: skip
    asyncio.run(parts.aclose())
    call = {
        "tenant": TENANT, "agent": "agent-1", "sandbox": "sbx-1", "tool": "twilio.send_sms",
        "args": {"to": "+13105550123", "body": "over the socket"},
        "idempotency_key": "serve-test-0001", "connection_id": None, "country": "US",
    }  # fmt: skip
    approval = control.approve(call, approval_id="apv-1", clock=SystemClock())

    async def talk() -> tuple[dict[str, Any], dict[str, Any], BrokerRefused]:
        async with BrokerClient(socket=socket) as client:
            health = await client.health()
            done = await client.execute(minted.token, approval, call)
            try:
                await client.execute(
                    minted.token, "not an approval", {**call, "idempotency_key": "x" * 9}
                )
            except BrokerRefused as exc:
                refused = exc
        return health, done, refused

    health, done, refused = asyncio.run(talk())
    assert health["status"] == "ok"
    assert done["status"] == "succeeded" and done["result"]["message_sid"].startswith("SM")
    assert refused.status == 403 and refused.code == "approval_refused"

    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as tls:
        assert tls.get(f"https://127.0.0.1:{port}/healthz").json()["status"] == "ok"
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=True) as untrusted:
        untrusted.get(f"https://127.0.0.1:{port}/healthz")  # not a publicly trusted certificate


def test_an_account_is_connected_replaced_and_disconnected_over_the_socket(
    tmp_path: Path, broker_process: Running, served: tuple[dict[str, Any], str]
) -> None:
    fakes, root = served
    control = control_approval_signer(load_settings(tmp_path / "corral.toml"))
    first, second = fakes["stripe"].new_connection(), fakes["stripe"].new_connection()

    def approve(document: dict[str, Any]) -> str:
        key = document["idempotency_key"]
        return control.approve(document, approval_id=f"apv-{key}", clock=SystemClock())

    base = {"tenant": TENANT, "operator": "own_lee"}
    connect = {**base, "provider": "stripe", "fields": first, "api_url": f"{root}/stripe",
               "idempotency_key": "serve-connect-1"}  # fmt: skip
    rotate = {**base, "fields": second, "idempotency_key": "serve-rotate-1"}
    leave = {**base, "reason": "closed", "idempotency_key": "serve-leave-1"}

    async def talk() -> list[Any]:
        async with BrokerClient(socket=broker_process.socket) as client:
            made = await client.connect(approve(connect_call(connect)), connect)
            turned = await client.rotate(
                "stripe-1", approve(rotate_call("stripe-1", rotate)), rotate
            )
            try:
                await client.rotate("stripe-1", approve(connect_call(connect)), rotate)
            except BrokerRefused as exc:
                refused = exc
            middle = await client.connections(TENANT)
            gone = await client.disconnect(
                "stripe-1", approve(disconnect_call("stripe-1", leave)), leave
            )
            after = await client.connections(TENANT)
        return [made, turned, refused, middle, gone, after]

    made, turned, refused, middle, gone, after = asyncio.run(talk())
    assert made["connection"]["connection_id"] == "stripe-1"
    assert made["connection"]["api_url"] == f"{root}/stripe"
    assert [e["kind"] for e in made["events"]] == ["credential.connected"]
    assert turned["connection"]["credential_version"] == 2
    assert [e["kind"] for e in turned["events"]] == ["credential.rotated"]
    assert refused.status == 403 and refused.code == "approval_refused"
    stripe = [row for row in middle["connections"] if row["provider"] == "stripe"]
    assert [(r["status"], r["credential_version"]) for r in stripe] == [("active", 2)]
    assert gone["connection"]["status"] == "revoked"
    assert [e["kind"] for e in gone["events"]] == ["credential.revoked"]
    statuses = {row["connection_id"]: row["status"] for row in after["connections"]}
    assert statuses == {"stripe-1": "revoked", "twilio-1": "active"}
    said = json.dumps([made, turned, refused.detail, middle, gone, after])
    assert first["api_key"] not in said and second["api_key"] not in said


def test_sigterm_stops_the_broker_and_removes_its_socket(broker_process: Running) -> None:
    broker_process.child.send_signal(signal.SIGTERM)
    assert broker_process.child.wait(15) == 0
    assert not broker_process.socket.exists()


def test_corral_fakes_serve_prints_working_connections() -> None:
    port = free_port()
    command = [sys.executable, "-m", "corral.cli", "fakes", "serve", "--port", str(port)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        lines = [json.loads(child.stdout.readline()) for _ in range(6)]
        assert sorted(line["provider"] for line in lines) == [
            "calendly", "ghl", "google_calendar", "quickbooks", "stripe", "twilio"]  # fmt: skip
        stripe = next(line for line in lines if line["provider"] == "stripe")
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = httpx.post(f"{stripe['api_url']}/v1/payment_intents",
                                    data={"amount": "500", "currency": "usd"},
                                    auth=(stripe["fields"]["api_key"], ""))  # fmt: skip
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "corral fakes serve never listened"
                time.sleep(0.05)
        assert answer.status_code == 200 and answer.json()["object"] == "payment_intent"
        refused = httpx.post(f"{stripe['api_url']}/v1/payment_intents", data={"amount": "5"})
        assert refused.status_code == 401 and refused.json()["error"]["type"]
    finally:
        child.send_signal(signal.SIGINT)
        child.wait(15)
