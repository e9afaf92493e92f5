"""Run dynalite (npm, pinned in the repo's ``package.json``) as a real DynamoDB-compatible server.

``make install`` (``npm ci``) puts it in ``node_modules``. :func:`start` runs it in memory on a
free loopback port and waits until it accepts connections; :func:`client` builds a boto3
client for it with fake credentials passed explicitly (nothing is read from or written to
``os.environ``).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from tests._serving import free_port

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "node_modules" / ".bin" / "dynalite"
REGION = "us-west-2"


class DynaliteError(RuntimeError):
    """dynalite could not be started."""


def missing() -> str | None:
    """Why dynalite cannot run here, or ``None`` if it can."""
    if not BINARY.exists():
        return f"{BINARY.relative_to(ROOT)} not found"
    if shutil.which("node") is None:
        return "node is not on PATH"
    return None


@dataclass
class Dynalite:
    """A running dynalite server; :meth:`stop` ends it."""

    process: subprocess.Popen[bytes]
    endpoint_url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start(log: Path, *, timeout_s: float = 30.0, create_table_ms: int = 50) -> Dynalite:
    """Start dynalite in memory on a free port; raise :class:`DynaliteError` if it won't answer.

    ``create_table_ms`` is how long a new table stays CREATING (dynalite's default is 500).
    A port taken between choosing and binding it is retried twice with another port.
    """
    for _ in range(2):
        try:
            return _start(log, free_port(), timeout_s, create_table_ms)
        except DynaliteError as exc:
            if "EADDRINUSE" not in str(exc):
                raise
    return _start(log, free_port(), timeout_s, create_table_ms)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by SIGKILL (Linux only)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


def _start(log: Path, port: int, timeout_s: float, create_table_ms: int) -> Dynalite:
    command = [str(BINARY), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--createTableMs", str(create_table_ms)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=_die_with_parent,  # no orphaned server if pytest is killed
        )
    server = Dynalite(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise DynaliteError(
                f"dynalite exited with {process.returncode} before accepting connections: "
                f"{log.read_text(errors='replace').strip()[-2000:]}"
            )
        # Its banner, not just an open port: another process may have taken the port.
        if b"listening at" in log.read_bytes():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return server
            except OSError:
                pass
        if time.monotonic() >= deadline:
            server.stop()
            raise DynaliteError(
                f"dynalite did not accept connections on port {port} within {timeout_s:g} s: "
                f"{log.read_text(errors='replace').strip()[-2000:]}"
            )
        time.sleep(0.05)


def client(endpoint_url: str, **config: Any) -> DynamoDBClient:
    """A boto3 DynamoDB client for ``endpoint_url`` with fake credentials and ``config``."""
    options: dict[str, Any] = {"retries": {"max_attempts": 2, "mode": "standard"}}
    options.update(config)
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",  # dynalite accepts any credentials
        config=Config(**options),
    )
