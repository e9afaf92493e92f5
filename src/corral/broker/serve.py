"""Run ``corral broker``: uvicorn on a Unix socket, and on TCP with TLS when configured.

The socket is the local boundary: it is created with mode 0600 inside the broker's 0700
directory, so only the user corral runs as (control's user on one machine) can reach it.
Between machines the broker listens on TCP with TLS only (``BrokerSettings`` refuses TCP
without a certificate and key).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import uvicorn

from corral.broker.app import create_app
from corral.broker.assembly import open_broker
from corral.core.settings import Settings


def _servers(settings: Settings, socket: Path, app: object) -> list[uvicorn.Server]:
    servers = [
        uvicorn.Server(uvicorn.Config(app, uds=str(socket), log_level="warning", access_log=False))  # type: ignore[arg-type]
    ]
    broker = settings.broker
    if broker.tcp_host is not None:
        servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    app,  # type: ignore[arg-type]
                    host=broker.tcp_host,
                    port=broker.tcp_port,
                    ssl_certfile=str(broker.tls_cert),
                    ssl_keyfile=str(broker.tls_key),
                    log_level="warning",
                    access_log=False,
                )
            )
        )
    return servers


async def serve(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
    """Serve until cancelled or signalled (uvicorn handles SIGINT/SIGTERM)."""
    socket = settings.broker_socket()
    socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if socket.exists():
        socket.unlink()
    parts = open_broker(settings, transport=transport)
    app = create_app(parts.broker)
    old_umask = os.umask(0o177)  # the socket is created 0600
    try:
        servers = _servers(settings, socket, app)
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        os.umask(old_umask)
        await parts.aclose()
        if socket.exists():
            socket.unlink()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
