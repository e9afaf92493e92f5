"""The host side of the channel: one listening socket per sandbox, identity from the socket.

The host binds one Unix socket per sandbox and mounts only that socket into that sandbox, so a
connection's identity is where it arrived, not anything it says (the design Firecracker's
guest-initiated vsock gives for free: ``<uds_path>_<port>`` is per VM). Every request's
``params`` loses any ``tenant``/``agent``/``sandbox`` key before dispatch, and the handler is
given the channel's :class:`~corral.runtime.sandbox.Identity` instead: a forged identity is
ignored.

One connection at a time: a second connection while one is open is closed at once (a sandbox
has one agent). Requests run concurrently up to ``max_in_flight``; beyond that the guest is told
to slow down. A malformed frame gets a parse error and the connection is closed: nothing after
it can be trusted to be framed right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from corral.guest import wire
from corral.runtime.sandbox import Identity, SandboxError

__all__ = ["IDENTITY_KEYS", "Channel", "ChannelRefusal", "Handler"]

log = logging.getLogger(__name__)

IDENTITY_KEYS = frozenset({"tenant", "agent", "sandbox"})

Handler = Callable[[Identity, str, dict[str, Any]], Awaitable[Any]]
"""``handler(identity, method, params) -> result``; raise :class:`ChannelRefusal` to answer with
an error code, ``ValueError`` for invalid params. Notifications are dispatched too; their result
is dropped."""


class ChannelRefusal(SandboxError):
    """A handler's answer "no", sent to the guest as a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Channel:
    """One sandbox's channel. Create with :meth:`open`; the socket exists until :meth:`close`."""

    def __init__(
        self,
        path: Path,
        identity: Identity,
        handler: Handler,
        *,
        max_in_flight: int = 16,
        mode: int = 0o600,
    ) -> None:
        self.path = path
        self._identity = identity
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._mode = mode
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.refused_connections = 0

    @classmethod
    async def open(
        cls, path: Path, identity: Identity, handler: Handler, **options: Any
    ) -> Channel:
        channel = cls(path, identity, handler, **options)
        await channel._listen()
        return channel

    @property
    def identity(self) -> Identity:
        return self._identity

    def rebind(self, agent: str) -> Identity:
        """Hand a warm sandbox to ``agent``: same tenant and sandbox id, never another tenant."""
        self._identity = Identity(self._identity.tenant, agent, self._identity.sandbox)
        return self._identity

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the guest has connected and said ``sandbox.ready``."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a host → guest notification (``agent.start``, ``sandbox.stop``)."""
        writer = self._writer
        if writer is None:
            raise SandboxError(f"sandbox {self._identity.sandbox}: no guest is connected")
        await self._send(writer, wire.request(method, params))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _listen(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # Bound synchronously under a umask, so the socket is never, even briefly, reachable by
        # others; the umask is process-wide, so nothing may await while it is narrowed (another
        # sandbox's directories would be created under it).
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o777 & ~self._mode)
        try:
            listener.bind(str(self.path))
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, self._mode)
        listener.listen(16)
        self._server = await asyncio.start_unix_server(self._connection, sock=listener)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self.refused_connections += 1
            writer.close()
            return
        self._writer = writer
        try:
            await self._serve(reader, writer)
        finally:
            self._writer = None
            self._ready.clear()
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        in_flight = asyncio.Semaphore(self._max_in_flight)
        while True:
            try:
                message = await wire.read_frame(reader)
            except wire.WireError as exc:
                await self._send(writer, wire.error(None, wire.PARSE_ERROR, str(exc)))
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            if message is None:
                return
            problem = _invalid(message)
            if problem is not None:
                await self._send(
                    writer, wire.error(message.get("id"), wire.INVALID_REQUEST, problem)
                )
                continue
            method: str = message["method"]
            params = {k: v for k, v in message.get("params", {}).items() if k not in IDENTITY_KEYS}
            if method == "sandbox.ready":
                self._ready.set()
                continue
            if "id" in message and in_flight.locked():
                await self._send(
                    writer,
                    wire.error(
                        message["id"],
                        wire.REFUSED,
                        f"more than {self._max_in_flight} calls in flight from this sandbox",
                    ),
                )
                continue
            task = asyncio.create_task(self._dispatch(writer, in_flight, message, method, params))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _dispatch(
        self,
        writer: asyncio.StreamWriter,
        in_flight: asyncio.Semaphore,
        message: dict[str, Any],
        method: str,
        params: dict[str, Any],
    ) -> None:
        is_request = "id" in message
        async with in_flight:
            self.calls += 1
            try:
                value = await self._handler(self._identity, method, params)
                answer = wire.result(message.get("id"), value)
            except ChannelRefusal as exc:
                answer = wire.error(message.get("id"), exc.code, exc.message, exc.data)
            except ValueError as exc:
                answer = wire.error(message.get("id"), wire.INVALID_PARAMS, str(exc))
            except Exception:
                # The guest learns only that the host failed; the host's log has the trace.
                log.exception("channel %s: %s failed", self._identity.sandbox, method)
                answer = wire.error(message.get("id"), wire.INTERNAL_ERROR, "internal error")
        if is_request:
            with contextlib.suppress(ConnectionError, wire.WireError):
                await self._send(writer, answer)

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        async with self._write_lock:
            await wire.write_frame(writer, message)


def _invalid(message: dict[str, Any]) -> str | None:
    """What makes ``message`` not a JSON-RPC 2.0 request, or ``None``."""
    if message.get("jsonrpc") != "2.0":
        return 'not JSON-RPC 2.0: "jsonrpc" must be "2.0"'
    if not isinstance(message.get("method"), str) or not message["method"]:
        return '"method" must be a non-empty string'
    if "params" in message and not isinstance(message["params"], dict):
        return '"params" must be an object'
    if "id" in message and not isinstance(message["id"], int | str):
        return '"id" must be a number or a string'
    return None
