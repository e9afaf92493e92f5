"""The agent SDK: catalog tools as plain Python functions, relayed to the host over the channel.

Inside a sandbox (the channel is there; ``tests/guest`` runs this against a host)::

    from corral.guest import tools
    sent = tools.twilio.send_sms(to="+15550100001", body="See you at 10")
    sent.verdict, sent.result      # ('allow', {'message_sid': 'SM...', 'status': 'queued'})

``tools.<provider>.<tool>(**args)`` is built on attribute access, not from the catalog: the
guest never imports :mod:`corral.connectors` (pydantic, httpx), and the host, which validates
every call against the agent's template and the tool's schema, is the only authority on which
tools exist. An argument whose catalog name is a Python keyword is passed with a trailing
underscore (``from_=...`` is sent as ``from``).

A refusal raises :class:`ToolRefused` (its ``verdict``, ``rules`` and ``explanation`` say why), a
tool outside the agent's template :class:`ToolForbidden`, anything else :class:`ChannelError`.

The module connects on first use to ``$CORRAL_CHANNEL``; the host accepts one connection per
sandbox, so the runner hands its own connection over with :func:`set_client`.
"""

from __future__ import annotations

import builtins
import keyword
import os
import threading
from dataclasses import dataclass

from corral.guest._client import ChannelClient, ChannelError, ToolForbidden, ToolRefused

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = [
    "PROVIDERS",
    "CallResult",
    "ChannelError",
    "Delegation",
    "Provider",
    "ToolForbidden",
    "ToolFunction",
    "ToolInfo",
    "ToolRefused",
    "call",
    "client",
    "connect",
    "list",
    "log",
    "request_delegation",
    "set_client",
]


@dataclass(frozen=True, slots=True)
class CallResult:
    """What the host answered for one allowed call."""

    call_id: str
    """The call's id in the supervisor's ledger and the audit chain."""
    verdict: str
    result: Any
    """The tool's allow-listed result (ids and states), ``None`` when there is none."""
    explanation: str
    """The supervisor's explanation of the verdict, in words."""


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """One tool the agent may call, as ``tools.list`` describes it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    """The arguments' JSON Schema."""


@dataclass(frozen=True, slots=True)
class Delegation:
    """A delegation token minted for this sandbox (``docs/broker-delegations.md``)."""

    token: str
    expires_at: str


_client: ChannelClient | None = None
_client_lock = threading.Lock()


def client() -> ChannelClient:
    """The module's client, connecting to ``$CORRAL_CHANNEL`` on first use.

    A lost connection is not silently replaced: calls raise :class:`ChannelError` until
    :func:`connect` or ``set_client(None)``, so the host never sees a sandbox reappear.
    """
    global _client
    with _client_lock:
        if _client is None:
            _client = ChannelClient.connect()
        return _client


def connect(path: str | os.PathLike[str] | None = None, *, timeout: float = 5.0) -> ChannelClient:
    """Connect to ``path`` (default ``$CORRAL_CHANNEL``) and use it from now on."""
    new = ChannelClient.connect(path, timeout=timeout)
    set_client(new)
    return new


def set_client(new: ChannelClient | None) -> None:
    """Use ``new`` for every later call (``None``: connect again on next use); the previous
    client is closed unless it is ``new``."""
    global _client
    with _client_lock:
        old, _client = _client, new
    if old is not None and old is not new:
        old.close()


def call(
    name: str, args: Mapping[str, Any] | None = None, idempotency_key: str | None = None
) -> CallResult:
    """Call the catalog tool ``name`` (``"twilio.send_sms"``) with ``args``.

    ``idempotency_key`` makes a retry of the same logical call (after a crash, say) the same
    call for the broker; without one the host assigns a fresh key.
    """
    params: dict[str, Any] = {"tool": name, "args": dict(args or {})}
    if idempotency_key is not None:
        params["idempotency_key"] = idempotency_key
    answer = client().call("tools.call", params)
    if (
        not isinstance(answer, dict)
        or not isinstance(answer.get("call_id"), str)
        or not isinstance(answer.get("verdict"), str)
    ):
        raise ChannelError(f"malformed tools.call answer from the host: {answer!r}")
    explanation = answer.get("explanation")
    return CallResult(
        call_id=answer["call_id"],
        verdict=answer["verdict"],
        result=answer.get("result"),
        explanation=explanation if isinstance(explanation, str) else "",
    )


def list() -> builtins.list[ToolInfo]:
    """The tools this agent may call, from the host (its template, not the whole catalog)."""
    answer = client().call("tools.list", {})
    entries = answer.get("tools") if isinstance(answer, dict) else None
    if not isinstance(entries, builtins.list):
        raise ChannelError(f"malformed tools.list answer from the host: {answer!r}")
    found = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ChannelError(f"malformed tool in the host's tools.list: {entry!r}")
        schema = entry.get("input_schema")
        description = entry.get("description")
        found.append(
            ToolInfo(
                name=entry["name"],
                description=description if isinstance(description, str) else "",
                input_schema=schema if isinstance(schema, dict) else {"type": "object"},
            )
        )
    return found


def request_delegation(
    tool: str, constraints: Mapping[str, Any] | None = None, ttl_s: float | None = None
) -> Delegation:
    """Ask the host for a delegation token for ``tool``, narrowed by ``constraints``."""
    params: dict[str, Any] = {"tool": tool}
    if constraints is not None:
        params["constraints"] = dict(constraints)
    if ttl_s is not None:
        params["ttl_s"] = ttl_s
    answer = client().call("delegation.request", params)
    if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
        raise ChannelError(f"malformed delegation.request answer from the host: {answer!r}")
    return Delegation(token=answer["token"], expires_at=str(answer.get("expires_at", "")))


def log(message: str, level: str = "info") -> None:
    """Send a line to the host's log for this sandbox (no answer, no wait)."""
    client().notify("log", {"level": level, "message": message})


class ToolFunction:
    """``tools.<provider>.<tool>``: calling it calls the tool with keyword arguments."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *, idempotency_key: str | None = None, **kwargs: Any) -> CallResult:
        args: dict[str, Any] = {}
        for key, value in kwargs.items():
            wire_name = key[:-1] if key.endswith("_") and keyword.iskeyword(key[:-1]) else key
            if wire_name in args:
                raise TypeError(f"{self.name}() got {wire_name!r} twice")
            args[wire_name] = value
        return call(self.name, args, idempotency_key=idempotency_key)

    def __repr__(self) -> str:
        return f"<corral tool {self.name}>"


class Provider:
    """``tools.<provider>``: a namespace whose attributes are that provider's tools."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, operation: str) -> ToolFunction:
        if not _is_name(operation):
            raise AttributeError(operation)
        return ToolFunction(f"{self.name}.{operation}")

    def __repr__(self) -> str:
        return f"<corral tools of {self.name}>"


def _is_name(name: str) -> bool:
    """A catalog name segment (``send_sms``), not a dunder or private probe (``__wrapped__``)."""
    return name.isidentifier() and not name.startswith("_") and name.islower()


PROVIDERS = ("twilio", "stripe", "google_calendar", "calendly", "quickbooks", "ghl")
"""The catalog's providers (kept equal to ``corral.connectors`` by a test; the guest does not
import the connectors). Only these are namespaces, so a typo fails at once and tools that
probe modules for attributes (pytest's ``pytest_plugins``, ``__wrapped__``) find nothing."""


def __getattr__(name: str) -> Provider:
    """``tools.twilio`` and every other provider namespace (PEP 562)."""
    if name not in PROVIDERS:
        raise AttributeError(
            f"module {__name__!r} has no attribute {name!r} (providers: {', '.join(PROVIDERS)})"
        )
    return Provider(name)
