"""Run ``corral broker``: uvicorn on a Unix socket, and on TCP with TLS when configured.

The socket is the local boundary: it is created with mode 0600 inside the broker's 0700
directory, so only the user corral runs as (control's user on one machine) can reach it.
Between machines the broker listens on TCP with TLS only (``BrokerSettings`` refuses TCP
without a certificate and key).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from corral.broker.app import create_app
from corral.broker.assembly import open_broker
from corral.core.settings import Settings


def _unix_listener(path: Path) -> socket.socket:
    """The Unix socket, bound with mode 0600 from the start (uvicorn's own ``uds=`` would chmod
    it to 0666 after binding)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    listener.listen(1024)
    return listener


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve`: one SIGTERM stops every listener,
    then the socket is removed and the process exits 0 (uvicorn alone re-raises the signal
    after its own shutdown, which would skip that cleanup)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _servers(settings: Settings, app: object) -> list[uvicorn.Server]:
    # keep-alive longer than a busy client's idle connections live: uvicorn's default 5 s
    # closes pooled connections that a client may be about to reuse (a reset on its next call).
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=75)  # type: ignore[arg-type]
    servers: list[uvicorn.Server] = [_Server(config)]
    broker = settings.broker
    if broker.tcp_host is not None:
        servers.append(
            _Server(
                uvicorn.Config(
                    app,  # type: ignore[arg-type]
                    host=broker.tcp_host,
                    port=broker.tcp_port,
                    ssl_certfile=str(broker.tls_cert),
                    ssl_keyfile=str(broker.tls_key),
                    log_level="warning",
                    access_log=False,
                    timeout_keep_alive=75,
                )
            )
        )
    return servers


async def serve(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then stop every listener and remove the socket."""
    path = settings.broker_socket()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        path.unlink()
    parts = open_broker(settings, transport=transport)
    app = create_app(parts.broker)
    listener = _unix_listener(path)
    unix, *tcp = servers = _servers(settings, app)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop, servers)
    try:
        await asyncio.gather(unix.serve(sockets=[listener]), *(server.serve() for server in tcp))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        listener.close()
        await parts.aclose()
        if path.exists():
            path.unlink()


def _stop(servers: list[uvicorn.Server]) -> None:
    for server in servers:
        server.should_exit = True


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
