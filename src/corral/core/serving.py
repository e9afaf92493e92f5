"""Serving an ASGI app the corral way: a 0600 Unix socket, optional TCP with TLS, clean stops.

Every corral service (``corral broker``, ``corral control``) listens on a Unix socket created
with mode 0600 inside its own 0700 directory: only the user corral runs as can reach it.
uvicorn's own ``uds=`` would chmod the socket to 0666 after binding, so the socket is bound
here and handed over. Between machines a service listens on TCP with TLS only. The one
exception is :attr:`Listen.http_loopback`, plain HTTP on a loopback address only, for a browser
on the same machine (``corral control``'s dashboard): browsers give ``http://127.0.0.1`` the
secure-context APIs (WebCrypto) they give HTTPS, and no other machine can connect.

One SIGTERM or SIGINT stops every listener, then the socket is removed and the process exits 0
(uvicorn alone re-raises the signal after its shutdown, which would skip that cleanup).
"""

from __future__ import annotations

import asyncio
import ipaddress
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

from corral.core.errors import ConfigError

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
    http_loopback: tuple[str, int] | None = None
    """Also serve plain HTTP at this (loopback IP, port); any other address is refused."""


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


def _loopback_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to a loopback address, or :class:`ConfigError` saying why not (bound
    here so a port in use is one clear error before anything is served)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"plain HTTP needs a loopback IP address, not {host!r}") from None
    if not address.is_loopback:
        raise ConfigError(f"plain HTTP is served on loopback addresses only, not {host}")
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1024)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    return listener


def _config(app: Any, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False,
                          timeout_keep_alive=KEEP_ALIVE_S, **extra)  # fmt: skip


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop: about twice as fast per request as asyncio's
    default loop for these services (its transports and callbacks are C, not Python)."""
    uvloop.run(main)


async def serve(app: Any, listen: Listen, *, loopback_app: Any = None) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; then stop and remove the socket.

    ``loopback_app`` is what :attr:`Listen.http_loopback` serves (default ``app``); it runs
    without a lifespan there, so ``app``'s background tasks start once, on the socket's server.
    """
    loopback = None if listen.http_loopback is None else _loopback_listener(*listen.http_loopback)
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
    runs = [unix.serve(sockets=[listener]), *(s.serve() for s in tcp)]
    if loopback is not None:
        plain = _Server(_config(loopback_app or app, lifespan="off"))
        servers.append(plain)
        runs.append(plain.serve(sockets=[loopback]))
    try:
        await asyncio.gather(*runs)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        listener.close()
        if loopback is not None:
            loopback.close()
        if listen.socket.exists():
            listen.socket.unlink()
