"""The six provider sandboxes (:mod:`corral.fakes`) on a loopback port, seeded for tenants.

In-process but over real HTTP: the broker reaches them the way it reaches the real services
(``httpx`` to a base URL per connection), while the demo keeps the fakes' objects to seed what
their published APIs cannot create (a paid PaymentIntent to refund, a Calendly event type,
QuickBooks customers) and to learn every secret they issued, for the credential scan.
The server runs in a thread on a socket bound here (port 0: no race for a free port).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from corral.connectors import Endpoints
from corral.fakes import Fake, combined_app, create_fakes

__all__ = ["Accounts", "ProviderWorld"]


@dataclass
class Accounts:
    """One tenant's account at each provider: the credential fields and the endpoints."""

    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    endpoints: dict[str, Endpoints] = field(default_factory=dict)


class ProviderWorld:
    """The fakes served on ``127.0.0.1:<port>``, each under ``/<provider>``."""

    def __init__(self) -> None:
        self.fakes: dict[str, Fake] = create_fakes()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.root = ""
        self._accounts: list[Accounts] = []

    def __enter__(self) -> ProviderWorld:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Serve; the root URL once it accepts connections."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self._socket = listener
        config = uvicorn.Config(
            combined_app(self.fakes), log_level="warning", access_log=False, timeout_keep_alive=75
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name="providers", daemon=True
        )
        self._thread.start()
        self.root = f"http://127.0.0.1:{listener.getsockname()[1]}"
        while not server.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        return self.root

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()

    def fake(self, name: str) -> Any:
        """A provider's fake (typed loosely: each has its own seeding methods)."""
        return self.fakes[name]

    def open_accounts(self, *, calendar_id: str | None = None) -> Accounts:
        """A new account at every provider (Google: owning ``calendar_id`` if given)."""
        accounts = Accounts()
        for name, fake in self.fakes.items():
            if name == "google_calendar" and calendar_id is not None:
                fields = self.fake(name).new_connection(calendar_id=calendar_id)
            else:
                fields = fake.new_connection()
            accounts.fields[name] = dict(fields)
            accounts.endpoints[name] = fake.endpoints(f"{self.root}/{name}")
        self._accounts.append(accounts)
        return accounts

    def secrets(self) -> set[str]:
        """Every credential field the fakes handed out (account ids included, as the broker's
        scrubber treats them) and every token they issued since: what must never reach an
        agent."""
        found: set[str] = set()
        for accounts in self._accounts:
            for fields in accounts.fields.values():
                found |= {value for value in fields.values() if len(value) >= 8}
        for fake in self.fakes.values():
            authority = getattr(fake, "oauth", None)
            if authority is not None:
                found |= set(authority.issued())
        return found
