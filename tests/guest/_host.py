"""A stand-in for the host's end of the channel, for the guest's tests.

Independent of ``corral.runtime.channel`` on purpose: it speaks the wire format from
``corral.guest.wire`` and nothing else, so the guest is tested against the protocol as written
in ``docs/runtime.md``. A thread accepts guests on a Unix socket in a short temporary directory
(``sun_path`` holds 108 bytes, pytest's ``tmp_path`` may not fit), records every message, and
answers each request in its own thread through ``handler(method, params)``, so answers can
arrive out of order.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from corral.guest import wire

Handler = Callable[[str, dict[str, Any]], Any]


class HostError(Exception):
    """Raise from a handler to answer with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class FakeHost:
    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda method, params: {})
        self.dir = tempfile.mkdtemp(prefix="cg-", dir="/tmp")
        self.path = os.path.join(self.dir, "channel.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.conn: socket.socket | None = None
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conn = conn
            self.connected.set()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while (message := wire.read_frame_sync(conn)) is not None:
                self.messages.put(message)
                if "id" in message and "method" in message:
                    threading.Thread(target=self._answer, args=(conn, message), daemon=True).start()
        except (OSError, wire.WireError):
            pass
        self.disconnected.set()

    def _answer(self, conn: socket.socket, message: dict[str, Any]) -> None:
        try:
            reply = wire.result(message["id"], self.handler(message["method"], message["params"]))
        except HostError as exc:
            reply = wire.error(message["id"], exc.code, exc.message, exc.data)
        with contextlib.suppress(OSError):
            self.send(reply, conn)

    def send(self, message: dict[str, Any], conn: socket.socket | None = None) -> None:
        """Write one message to the guest (the current connection by default)."""
        assert self.connected.wait(5), "no guest has connected"
        target = conn or self.conn
        assert target is not None
        with self._write_lock:
            wire.write_frame_sync(target, message)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.send(wire.request(method, params))

    def next_message(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.messages.get(timeout=timeout)

    def wait_for(self, method: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message with this method (earlier ones are dropped)."""
        while True:
            message = self.next_message(timeout)
            if message.get("method") == method:
                return message

    def drop(self) -> None:
        """Cut the guest's connection, as a crashed host would."""
        assert self.conn is not None
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        self.conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)
