"""Serving an ASGI app the corral way: a 0600 Unix socket, optional TCP with TLS, clean stops.

Every corral service (``corral broker``, ``corral control``) listens on a Unix socket created
with mode 0600 inside its own 0700 directory: only the user corral runs as can reach it.
uvicorn's own ``uds=`` would chmod the socket to 0666 after binding, so the socket is bound
here and handed over. Between machines a service listens on TCP with TLS only.

One SIGTERM or SIGINT stops every listener, then the socket is removed and the process exits 0
(uvicorn alone re-raises the signal after its shutdown, which would skip that cleanup).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

# Keep-alive longer than a busy client's idle pooled connections live: uvicorn's default of
# 5 s closes connections a client may be about to reuse (a reset on its next call).
KEEP_ALIVE_S = 75


@dataclass(frozen=True, slots=True)
class Listen:
    """Where to listen: the Unix socket, and optionally TCP with a certificate and key."""

    socket: Path
    tcp_host: str | None = None
    tcp_port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are handled by serve(), for every listener at once


def _unix_listener(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    listener.listen(1024)
    return listener


def _config(app: Any, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False,
                          timeout_keep_alive=KEEP_ALIVE_S, **extra)  # fmt: skip


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop: about twice as fast per request as asyncio's
    default loop for these services (its transports and callbacks are C, not Python)."""
    uvloop.run(main)


async def serve(app: Any, listen: Listen) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; then stop and remove the socket."""
    listener = _unix_listener(listen.socket)
    servers: list[uvicorn.Server] = [_Server(_config(app))]
    if listen.tcp_host is not None:
        if listen.tls_cert is None or listen.tls_key is None:
            raise ValueError("TCP needs a TLS certificate and key")
        servers.append(_Server(_config(app, host=listen.tcp_host, port=listen.tcp_port,
                                       ssl_certfile=str(listen.tls_cert),
                                       ssl_keyfile=str(listen.tls_key))))  # fmt: skip
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    unix, *tcp = servers
    try:
        await asyncio.gather(unix.serve(sockets=[listener]), *(s.serve() for s in tcp))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        listener.close()
        if listen.socket.exists():
            listen.socket.unlink()
