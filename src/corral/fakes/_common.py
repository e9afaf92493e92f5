"""What every provider fake shares: recording, fault injection and an OAuth token authority.

A fake is a :class:`Fake`: an ASGI app plus the handles a test needs: the exchanges it saw
(for contract tests and the canary scan), :class:`Faults` to inject (an answer lost after the
fake acted, a delay past the client's timeout, a provider error), and ``new_connection()``,
which creates an account in the fake and returns the credential fields a corral connection
needs for it.

:class:`OAuthAuthority` implements RFC 6749 refresh with each provider's rotation rule: a
rotating provider issues a new refresh token on every refresh and refuses the used one with
``invalid_grant``, as Calendly, HighLevel and QuickBooks do (``specs/NOTES.md``).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qsl

from corral.connectors._base import Endpoints
from corral.core.clock import Clock, SystemClock
from corral.fakes._contract import Exchange

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Fake(Protocol):
    """One provider's local sandbox."""

    name: str
    exchanges: list[Exchange]
    faults: Faults

    def app(self) -> ASGIApp:
        """The ASGI app, serving the provider's paths at its root."""
        ...

    def endpoints(self, root: str) -> Endpoints:
        """The connection endpoints for this fake served at ``root`` (no trailing slash)."""
        ...

    def new_connection(self) -> dict[str, str]:
        """Create an account in the fake; return credential fields valid for it."""
        ...


def token(prefix: str, nbytes: int = 18) -> str:
    """A fresh random secret or id with a provider-looking prefix (``sk_test_``, ``AC``)."""
    return prefix + secrets.token_urlsafe(nbytes).replace("-", "x").replace("_", "y")


@dataclass
class _Fault:
    path_contains: str
    status: int
    body: bytes
    delay_s: float
    act: bool


class Faults:
    """Failures to inject into the next matching request, each used once.

    - ``lose_answer(path)``: the fake acts, then answers ``504`` with an empty body (the
      connection broke after the provider acted: the outcome is unknown to the caller);
    - ``delay(path, seconds)``: the fake acts, then waits before answering (a client timeout);
    - ``fail(path, status, body)``: the fake answers with this error without acting.
    """

    def __init__(self) -> None:
        self._pending: list[_Fault] = []
        self._lock = threading.Lock()

    def lose_answer(self, path_contains: str) -> None:
        self._add(_Fault(path_contains, 504, b"", 0.0, act=True))

    def delay(self, path_contains: str, seconds: float) -> None:
        self._add(_Fault(path_contains, 0, b"", seconds, act=True))

    def fail(self, path_contains: str, status: int, body: bytes) -> None:
        self._add(_Fault(path_contains, status, body, 0.0, act=False))

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._pending.append(fault)

    def take(self, path: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._pending):
                if fault.path_contains in path:
                    return self._pending.pop(i)
        return None


def recorded(fake: Fake, inner: ASGIApp) -> ASGIApp:
    """Wrap ``inner`` so that every HTTP exchange is appended to ``fake.exchanges`` and faults
    apply. Paths are recorded relative to the fake's root (a mount's ``root_path`` removed)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        relative = path[len(root) :] if root and path.startswith(root) else path
        fault = fake.faults.take(relative)
        status = 0
        headers: dict[str, str] = {}
        out: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers.update(
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                )
            elif message["type"] == "http.response.body":
                out.append(message.get("body", b""))

        if fault is None or fault.act:
            await inner(scope, replay, capture)
        if fault is not None and fault.act and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault is not None and fault.status:
            status, headers, out = fault.status, {"content-type": "application/json"}, [fault.body]
        request_headers = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        fake.exchanges.append(
            Exchange(
                scope["method"],
                relative,
                query,
                request_headers,
                body,
                status,
                headers,
                b"".join(out),
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in headers.items()
                    if k.lower() != "content-length"
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"".join(out)})

    return app


@dataclass
class _Refresh:
    client_id: str
    subject: str
    used: bool = False


@dataclass
class _Access:
    subject: str
    expires_at: datetime


@dataclass
class OAuthAuthority:
    """Clients, refresh tokens and access tokens of one fake provider (RFC 6749 §6).

    ``rotate``: a refresh returns a new refresh token and the used one is refused afterwards
    (``invalid_grant``); otherwise the refresh token stays valid (Google).
    """

    rotate: bool
    access_ttl_s: int
    clock: Clock = field(default_factory=SystemClock)
    access_prefix: str = "at_"
    refresh_prefix: str = "rt_"
    clients: dict[str, str] = field(default_factory=dict)
    _refresh: dict[str, _Refresh] = field(default_factory=dict)
    _access: dict[str, _Access] = field(default_factory=dict)
    _access_ever: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_client(self) -> tuple[str, str]:
        client_id, secret = token("client_"), token("secret_", 24)
        with self._lock:
            self.clients[client_id] = secret
        return client_id, secret

    def grant(self, client_id: str, subject: str) -> str:
        """A refresh token for ``subject`` (as after the user's consent)."""
        refresh = token(self.refresh_prefix, 24)
        with self._lock:
            self._refresh[refresh] = _Refresh(client_id, subject)
        return refresh

    def client_ok(self, client_id: str, secret: str) -> bool:
        expected = self.clients.get(client_id)
        return expected is not None and secrets.compare_digest(expected, secret)

    def refresh(self, client_id: str, refresh_token: str) -> tuple[str, str | None] | None:
        """``(access_token, new refresh token or None)``, or ``None`` for ``invalid_grant``."""
        with self._lock:
            record = self._refresh.get(refresh_token)
            if record is None or record.used or record.client_id != client_id:
                return None
            access = token(self.access_prefix, 24)
            self._access_ever.append(access)
            self._access[access] = _Access(
                record.subject, self.clock.now() + timedelta(seconds=self.access_ttl_s)
            )
            if not self.rotate:
                return access, None
            record.used = True
            new = token(self.refresh_prefix, 24)
            self._refresh[new] = _Refresh(client_id, record.subject)
            return access, new

    def subject(self, access_token: str) -> str | None:
        """Whose valid access token this is, or ``None`` (unknown or expired)."""
        with self._lock:
            record = self._access.get(access_token)
        if record is None or record.expires_at <= self.clock.now():
            return None
        return record.subject

    def expire_access_tokens(self) -> None:
        """Make every access token expired (forces the next call to refresh)."""
        with self._lock:
            self._access.clear()

    def issued(self) -> list[str]:
        """Every refresh and access token this authority ever issued, used ones included (the
        canary scan looks for each of them in what the broker lets out)."""
        with self._lock:
            return [*self._refresh, *self._access_ever]

    def revoke(self, refresh_token: str) -> None:
        with self._lock:
            self._refresh.pop(refresh_token, None)
