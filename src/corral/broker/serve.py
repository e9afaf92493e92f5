"""Run ``corral broker``: its API on a 0600 Unix socket, and on TCP with TLS when configured
(:mod:`corral.core.serving`)."""

from __future__ import annotations

import httpx

from corral.broker.app import create_app
from corral.broker.assembly import open_broker
from corral.core import serving
from corral.core.serving import Listen, serve
from corral.core.settings import Settings


async def serve_broker(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then stop every listener and remove the socket."""
    broker = settings.broker
    listen = Listen(settings.broker_socket(), broker.tcp_host, broker.tcp_port,
                    broker.tls_cert, broker.tls_key)  # fmt: skip
    parts = open_broker(settings, transport=transport)
    try:
        await serve(create_app(parts.broker), listen)
    finally:
        await parts.aclose()


def run(settings: Settings) -> None:
    serving.run(serve_broker(settings))
