"""The guest's end of the channel: a blocking, thread-safe JSON-RPC client.

Blocking rather than ``asyncio`` because agent code is mostly plain synchronous Python and the
SDK must not impose an event loop on it; the MCP server runs these calls in worker threads.
One reader thread owns the socket's receiving side: it matches each response to its waiting
caller by id, so calls from several threads share the one connection the host allows, and it
delivers the host's notifications (``agent.start``, ``sandbox.stop``) while calls are in flight.

:mod:`corral.guest.wire` is imported on first connect, not at import: it also serves the host's
``asyncio`` side, and importing ``asyncio`` would cost an agent that never calls a tool tens of
milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType
    from typing import Any, Self

__all__ = [
    "ChannelClient",
    "ChannelError",
    "DelegationRefused",
    "ToolForbidden",
    "ToolRefused",
]

CHANNEL_ENV = "CORRAL_CHANNEL"
"""The environment variable naming the channel socket inside a sandbox."""

_MAX_PENDING_NOTIFICATIONS = 64


class ChannelError(Exception):
    """The host answered a request with an error, or the channel failed.

    ``code`` is the JSON-RPC error code, or ``None`` when there was no answer at all (the
    connection was lost, refused or timed out); ``data`` is the error's ``data`` member.
    """

    def __init__(self, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.data = data


class ToolRefused(ChannelError):
    """The supervisor or the broker refused the call (``-32001``): nothing was done.

    ``verdict``, ``rules`` and ``explanation`` come from the error's ``data``, so an agent can
    tell a policy refusal (``quiet_hours``) from a conflict and react to the rule that fired.
    """

    @property
    def verdict(self) -> str | None:
        value = self._field("verdict")
        return value if isinstance(value, str) else None

    @property
    def rules(self) -> list[str]:
        value = self._field("rules")
        if not isinstance(value, list):
            return []
        return [rule if isinstance(rule, str) else str(rule) for rule in value]

    @property
    def explanation(self) -> str:
        value = self._field("explanation")
        return value if isinstance(value, str) else self.message

    @property
    def call_id(self) -> str | None:
        value = self._field("call_id")
        return value if isinstance(value, str) else None

    def _field(self, name: str) -> Any:
        return self.data.get(name) if isinstance(self.data, dict) else None


class DelegationRefused(ToolRefused):
    """The supervisor allowed the call, but the broker refused the delegation presented with
    it, so nothing ran: ``data["execution"]["error"]`` holds the broker's problem code
    (``docs/broker.md``).

    :attr:`reason` is ``"expired"`` or ``"revoked"`` — a new delegation may succeed — or the
    broker's code for a refusal a new delegation would not cure (``not_delegated``: the call is
    outside its scope; ``max_uses``; ``delegation_refused``: signature, tenant, agent, sandbox).
    """

    @property
    def problem(self) -> str:
        """The broker's problem code (``delegation_refused``, ``revoked``, ...)."""
        code = _execution_error(self.data).get("code")
        return code if isinstance(code, str) else ""

    @property
    def reason(self) -> str:
        code = self.problem
        return "expired" if code == "delegation_expired" else code

    @property
    def renewable(self) -> bool:
        """Whether a new delegation may succeed where this one was refused."""
        return self.reason in ("expired", "revoked")


_DELEGATION_PROBLEMS = frozenset(
    {"delegation_refused", "delegation_expired", "not_delegated", "revoked", "max_uses"}
)
"""The broker's problem codes about the delegation itself (``docs/broker.md``, 403)."""


def _execution_error(data: Any) -> dict[str, Any]:
    """``data["execution"]["error"]`` of a refusal of an executed call, or ``{}``."""
    execution = data.get("execution") if isinstance(data, dict) else None
    error = execution.get("error") if isinstance(execution, dict) else None
    return error if isinstance(error, dict) else {}


class ToolForbidden(ChannelError):
    """The sandbox may not do this (``-32003``): e.g. a tool outside the agent's template."""


class _Pending:
    """One request waiting for its response."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: ChannelError | None = None


class ChannelClient:
    """One connection to the host over the sandbox's channel socket.

    Notification handlers run on the reader thread, so they must return quickly and must not
    make calls on this client (that would wait for a response only the reader thread can
    read; :meth:`call` refuses it). A notification that arrives before any handler for its
    method is registered is kept and handed to the first handler :meth:`on` registers, so a
    host that sends ``agent.start`` right after ``sandbox.ready`` is never missed.
    """

    def __init__(self, sock: socket.socket) -> None:
        """Wrap an already connected socket; most callers want :meth:`connect`."""
        self._sock = sock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._deliver_lock = threading.RLock()  # handlers run one at a time, in arrival order
        self._pending: dict[int, _Pending] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._unhandled: list[tuple[str, dict[str, Any]]] = []
        self._close_handlers: list[Callable[[ChannelError], None]] = []
        self._closed: ChannelError | None = None
        self._host_error: ChannelError | None = None
        self._reader = threading.Thread(target=self._read_loop, name="corral-channel", daemon=True)
        self._reader.start()

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 5.0,
        handlers: Mapping[str, Callable[[dict[str, Any]], None]] | None = None,
    ) -> ChannelClient:
        """Connect to ``path`` (default: ``$CORRAL_CHANNEL``) and send ``sandbox.ready``.

        The host binds the socket before it starts the sandbox, but a backend may bridge it
        (vsock on Firecracker) a moment after the guest starts: a missing or refusing socket is
        retried for up to ``timeout`` seconds. ``handlers`` are registered before
        ``sandbox.ready`` is sent.
        """
        if path is None:
            path = os.environ.get(CHANNEL_ENV)
            if not path:
                raise ChannelError(f"no channel: ${CHANNEL_ENV} is not set")
        target = os.fspath(path)
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(target)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise ChannelError(f"cannot connect to the channel {target}: {exc}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
            except OSError as exc:
                sock.close()
                raise ChannelError(f"cannot connect to the channel {target}: {exc}") from None
        client = cls(sock)
        for method, handler in (handlers or {}).items():
            client.on(method, handler)
        client.notify("sandbox.ready", {})
        return client

    # --- notifications from the host -----------------------------------------------------------

    def on(self, method: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler(params)`` for each ``method`` notification from the host."""
        with self._deliver_lock:  # a newer notification waits until the early ones are handled
            with self._lock:
                self._handlers[method] = handler
                early = [params for name, params in self._unhandled if name == method]
                self._unhandled = [item for item in self._unhandled if item[0] != method]
            for params in early:
                self._deliver(handler, method, params)

    def on_close(self, handler: Callable[[ChannelError], None]) -> None:
        """Call ``handler(error)`` once when the connection ends (at once if it already has)."""
        with self._lock:
            closed = self._closed
            if closed is None:
                self._close_handlers.append(handler)
        if closed is not None:
            handler(closed)

    # --- requests to the host ------------------------------------------------------------------

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request and wait for its result.

        Raises :class:`ToolRefused`, :class:`ToolForbidden` or :class:`ChannelError` (the host's
        error, a lost connection, or no answer within ``timeout`` seconds); params that are not
        JSON raise ``TypeError``, and a message over 1 MiB :class:`~corral.guest.wire.WireError`,
        before anything is sent.
        """
        from corral.guest import wire

        if threading.current_thread() is self._reader:
            raise RuntimeError("a notification handler cannot make calls on its own channel")
        pending = _Pending()
        with self._lock:
            if self._closed is not None:
                raise ChannelError(self._closed.message)
            request_id = next(self._ids)
            self._pending[request_id] = pending
        try:
            self._send(wire.request(method, dict(params or {}), id=request_id))
            if not pending.done.wait(timeout):
                raise ChannelError(f"no answer to {method} within {timeout} s")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.value

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send a notification (no answer comes back)."""
        from corral.guest import wire

        if self._closed is not None:
            raise ChannelError(self._closed.message)
        self._send(wire.request(method, dict(params or {})))

    def _send(self, message: dict[str, Any]) -> None:
        from corral.guest import wire

        frame = wire.encode(message)  # WireError (too large) before anything is written
        try:
            with self._write_lock:
                self._sock.sendall(frame)
        except OSError as exc:
            raise ChannelError(f"channel lost while sending: {exc}") from None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def close(self) -> None:
        """Close the connection; waiting callers get :class:`ChannelError`. Idempotent."""
        with contextlib.suppress(OSError):  # already shut down, or never fully connected
            self._sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)
        self._finish(ChannelError("channel closed"))
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the reader thread ---------------------------------------------------------------------

    def _read_loop(self) -> None:
        from corral.guest import wire

        reason = "channel closed by the host"
        try:
            while True:
                message = wire.read_frame_sync(self._sock)
                if message is None:
                    break
                self._dispatch(message)
        except (wire.WireError, OSError) as exc:
            reason = f"channel lost: {exc}"
        except Exception as exc:  # a bug here must fail the waiting callers, not strand them
            reason = f"channel reader failed: {exc!r}"
        if self._host_error is not None:
            reason = f"{reason} after an error: {self._host_error.message}"
        self._finish(ChannelError(reason))

    def _dispatch(self, message: dict[str, Any]) -> None:
        from corral.guest import wire

        method = message.get("method")
        if isinstance(method, str):
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            if "id" in message:
                # The protocol has no host→guest requests; answer as JSON-RPC requires.
                error = wire.error(message["id"], wire.METHOD_NOT_FOUND, f"unknown method {method}")
                with contextlib.suppress(ChannelError):  # the read side will see the loss
                    self._send(error)
                return
            with self._lock:
                handler = self._handlers.get(method)
                if handler is None:
                    if len(self._unhandled) < _MAX_PENDING_NOTIFICATIONS:
                        self._unhandled.append((method, params))
                    return
            self._deliver(handler, method, params)
            return
        request_id = message.get("id")
        if request_id is None and "error" in message:
            # An error about no request of ours (our frame was unreadable); the host closes next.
            self._host_error = _error_from(message["error"])
            return
        with self._lock:  # popped here, so a close that follows cannot overwrite this answer
            pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is None:
            return  # an answer to a call that timed out, or to nothing: nobody waits for it
        if "error" in message:
            pending.error = _error_from(message["error"])
        else:
            pending.value = message.get("result")
        pending.done.set()

    def _deliver(self, handler: Callable[[dict[str, Any]], None], method: str, params: Any) -> None:
        """Run a handler; its failure is reported, never allowed to kill the reader thread."""
        with self._deliver_lock:
            try:
                handler(params)
            except Exception as exc:
                print(f"corral: the {method} handler failed: {exc!r}", file=sys.stderr)

    def _finish(self, error: ChannelError) -> None:
        with self._lock:
            if self._closed is not None:
                return
            self._closed = error
            waiting = list(self._pending.values())
            close_handlers, self._close_handlers = self._close_handlers, []
        for pending in waiting:
            pending.error = error
            pending.done.set()
        for handler in close_handlers:
            try:
                handler(error)
            except Exception as exc:
                print(f"corral: a close handler failed: {exc!r}", file=sys.stderr)


def _error_from(error: Any) -> ChannelError:
    """The typed exception for a JSON-RPC error object."""
    from corral.guest import wire

    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return ChannelError(f"malformed error from the host: {error!r}")
    code: int = error["code"]
    message = error.get("message")
    text = message if isinstance(message, str) else f"error {code}"
    data = error.get("data")
    if code == wire.REFUSED:
        if _execution_error(data).get("code") in _DELEGATION_PROBLEMS:
            return DelegationRefused(text, code=code, data=data)
        return ToolRefused(text, code=code, data=data)
    if code == wire.FORBIDDEN:
        return ToolForbidden(text, code=code, data=data)
    return ChannelError(text, code=code, data=data)
