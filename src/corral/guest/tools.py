"""The agent SDK: catalog tools as plain Python functions, relayed to the host over the channel.

Inside a sandbox (the channel is there; ``tests/guest`` runs this against a host)::

    from corral.guest import tools
    tools.delegations.auto()       # present a delegation on every call (below)
    sent = tools.twilio.send_sms(to="+15550100001", body="See you at 10")
    sent.verdict, sent.result      # ('allow', {'message_sid': 'SM...', 'status': 'queued'})

``tools.<provider>.<tool>(**args)`` is built on attribute access, not from the catalog: the
guest never imports :mod:`corral.connectors` (pydantic, httpx), and the host, which validates
every call against the agent's template and the tool's schema, is the only authority on which
tools exist. An argument whose catalog name is a Python keyword is passed with a trailing
underscore (``from_=...`` is sent as ``from``).

A refusal raises :class:`ToolRefused` (its ``verdict``, ``rules`` and ``explanation`` say why),
a refusal of the delegation presented with an allowed call its subclass
:class:`DelegationRefused`, a tool outside the agent's template :class:`ToolForbidden`,
anything else :class:`ChannelError`.

**Delegations.** The broker runs an allowed call only with a delegation: a token of at most
300 s for this agent and this sandbox, scoped to tools and arguments (``docs/broker.md``).
Either the SDK keeps them::

    tools.delegations.auto({"twilio.send_sms": {"recipients": ["+15550100001"]}}, ttl_s=300)
    tools.twilio.send_sms(to="+15550100001", body="See you at 10")

or the agent presents one itself, as it is (never renewed)::

    grant = tools.request_delegation("stripe.create_refund", {"max_uses": 1}, ttl_s=60)
    tools.stripe.create_refund(payment_intent="pi_1", amount=500, delegation=grant)

After :meth:`Delegations.auto`, every call without ``delegation=``:

- presents the delegation held for its tool and the tool's constraints, asking for one
  (``delegation.request`` with those constraints and ``ttl_s``) when none is held;
- asks for a new one once less than 60 s of it is left, or less than half of it for one of
  under 120 s: a 300 s delegation is renewed after 240 s, a 60 s one after 30 s. (A margin in
  proportion, such as 20 %, is never the larger: no delegation lives over 300 s.) 60 s covers
  the way to the broker many times over; a call held longer (a deferral, an escalation) is what
  the retry below is for. The age is counted on the sandbox's monotonic clock from when the
  request was sent, so a sandbox clock set apart from the broker's does not matter;
- when the broker refuses it as expired or revoked (a call held for deferral or escalation can
  outlive it), asks once for a new one and makes the call once more. The broker refuses a
  delegation before anything runs, so the first call did nothing. The host answers a repeated
  ``idempotency_key`` with its first answer (that refusal), so the retry is a new call, keyed
  ``<key>/renewed``: derived from the caller's key, so that running the whole call again after
  a crash replays both answers and still acts at most once. A second such refusal raises
  :class:`DelegationRefused` saying that the SDK gave up.

Threads share one :class:`Delegations`: threads that need the same delegation at once wait for
one request. ``tools.delegations`` is the module's; :class:`Delegations` takes its monotonic
clock and its client as arguments for other uses (tests).

The module connects on first use to ``$CORRAL_CHANNEL``; the host accepts one connection per
sandbox, so the runner hands its own connection over with :func:`set_client`.
"""

from __future__ import annotations

import builtins
import keyword
import os
import threading
import time
from dataclasses import dataclass

from corral.guest._client import (
    ChannelClient,
    ChannelError,
    DelegationRefused,
    ToolForbidden,
    ToolRefused,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = [
    "MAX_TTL_S",
    "PROVIDERS",
    "CallResult",
    "ChannelError",
    "Delegation",
    "DelegationRefused",
    "Delegations",
    "Provider",
    "ToolForbidden",
    "ToolFunction",
    "ToolInfo",
    "ToolRefused",
    "call",
    "client",
    "connect",
    "delegations",
    "list",
    "log",
    "request_delegation",
    "set_client",
]

MAX_TTL_S = 300.0
"""The longest a delegation lives (``DESIGN.md``); control refuses a longer ``ttl_s``."""


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
    name: str,
    args: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    *,
    delegation: str | Delegation | None = None,
) -> CallResult:
    """Call the catalog tool ``name`` (``"twilio.send_sms"``) with ``args``.

    ``idempotency_key`` makes a retry of the same logical call (after a crash, say) the same
    call for the broker; without one the host assigns a fresh key. ``delegation`` (a token or
    a :class:`Delegation`) is presented as it is; without one, the call presents
    ``tools.delegations``' once :meth:`Delegations.auto` was called, and none before.
    """
    if delegation is not None:
        return _call(client(), name, args, idempotency_key, _token_of(delegation))
    keeper = delegations
    if keeper.enabled:
        return keeper.call(name, args, idempotency_key)
    return _call(client(), name, args, idempotency_key, None)


def _call(
    channel: ChannelClient,
    name: str,
    args: Mapping[str, Any] | None,
    idempotency_key: str | None,
    token: str | None,
) -> CallResult:
    """One ``tools.call`` frame and its answer."""
    params: dict[str, Any] = {"tool": name, "args": dict(args or {})}
    if idempotency_key is not None:
        params["idempotency_key"] = idempotency_key
    if token is not None:
        params["delegation"] = token
    answer = channel.call("tools.call", params)
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


def _token_of(delegation: str | Delegation) -> str:
    token = delegation.token if isinstance(delegation, Delegation) else delegation
    if not isinstance(token, str):
        raise TypeError(f"delegation must be a token or a Delegation, not {delegation!r}")
    if not token:
        raise ValueError("delegation is an empty token")
    return token


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
    return _request(client(), tool, constraints, ttl_s)


def _request(
    channel: ChannelClient, tool: str, constraints: Mapping[str, Any] | None, ttl_s: float | None
) -> Delegation:
    params: dict[str, Any] = {"tool": tool}
    if constraints is not None:
        params["constraints"] = dict(constraints)
    if ttl_s is not None:
        params["ttl_s"] = ttl_s
    answer = channel.call("delegation.request", params)
    if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
        raise ChannelError(f"malformed delegation.request answer from the host: {answer!r}")
    return Delegation(token=answer["token"], expires_at=str(answer.get("expires_at", "")))


@dataclass(frozen=True, slots=True)
class _Held:
    grant: Delegation
    renew_at: float
    """On the keeper's monotonic clock: from then on a new one is asked for."""


class Delegations:
    """Delegations the SDK asks for, keeps, renews and presents by itself (see the module's
    docstring); thread-safe.

    ``tools.delegations`` is the module's, which :func:`call` uses once :meth:`auto` was
    called. ``monotonic`` (default :func:`time.monotonic`) times their lifetimes; ``client``
    (default: the module's :func:`client`) gives the channel to ask and call through.
    """

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        client: Callable[[], ChannelClient] | None = None,
    ) -> None:
        self._monotonic = monotonic
        self._channel = client
        self._lock = threading.Lock()
        self._enabled = False
        self._constraints: dict[str, dict[str, Any]] = {}
        self._ttl_s: float = MAX_TTL_S
        self._held: dict[tuple[str, str], _Held] = {}
        self._asking: dict[tuple[str, str], threading.Lock] = {}

    @property
    def enabled(self) -> bool:
        """Whether :meth:`auto` is on: the module's calls go through ``tools.delegations``."""
        return self._enabled

    def auto(
        self,
        constraints: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        ttl_s: float = MAX_TTL_S,
    ) -> None:
        """Present a delegation on every later call without ``delegation=``: for a tool,
        asked for with ``constraints.get(tool)`` (``recipients``, ``calendars``,
        ``payment_intents``, ``max_amount``, ``max_uses``) and ``ttl_s`` seconds (at most
        :data:`MAX_TTL_S`). Called again, it applies to the delegations asked for from then on.
        """
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
            raise TypeError(f"ttl_s must be a number of seconds, not {ttl_s!r}")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be above 0 and at most {MAX_TTL_S:g} s, not {ttl_s!r}")
        copied = {tool: dict(value) for tool, value in (constraints or {}).items()}
        for value in copied.values():
            _constraints_key(value)  # not JSON: TypeError now, not on some later call
        with self._lock:
            self._constraints, self._ttl_s, self._enabled = copied, ttl_s, True

    def off(self) -> None:
        """Stop presenting delegations automatically, and forget those held."""
        with self._lock:
            self._enabled = False
            self._held.clear()

    def get(self, tool: str) -> Delegation:
        """The delegation to present for ``tool``: the one held, or a new one if there is
        none or it is due for renewal."""
        return self._obtain(tool, stale=None)

    def call(
        self, tool: str, args: Mapping[str, Any] | None = None, idempotency_key: str | None = None
    ) -> CallResult:
        """Call ``tool`` presenting :meth:`get`'s delegation; if the broker refuses it as
        expired or revoked, renew it once and call once more (keyed ``<key>/renewed``)."""
        held = self.get(tool)
        try:
            return _call(self._client(), tool, args, idempotency_key, held.token)
        except DelegationRefused as refused:
            if not refused.renewable:
                raise
            first = refused.reason
        fresh = self._obtain(tool, stale=held.token)
        try:
            return _call(self._client(), tool, args, _renewed_key(idempotency_key), fresh.token)
        except DelegationRefused as again:
            if not again.renewable:
                raise
            raise DelegationRefused(
                f"{tool}: gave up: the broker refused its delegation ({first}), then the new"
                f" one too ({again.reason}): {again.message}",
                code=again.code,
                data=again.data,
            ) from again

    def _client(self) -> ChannelClient:
        return self._channel() if self._channel is not None else client()

    def _obtain(self, tool: str, stale: str | None) -> Delegation:
        """The held delegation unless it is ``stale`` or due for renewal; else a new one."""
        with self._lock:
            constraints = self._constraints.get(tool)
            ttl_s = self._ttl_s
            key = (tool, _constraints_key(constraints))
            asking = self._asking.setdefault(key, threading.Lock())
        with asking:  # one request per (tool, constraints) at a time; other callers wait for it
            with self._lock:
                held = self._held.get(key)
            if held is not None and held.grant.token != stale and self._monotonic() < held.renew_at:
                return held.grant
            sent_at = self._monotonic()
            grant = _request(self._client(), tool, constraints, ttl_s)
            with self._lock:
                self._held[key] = _Held(grant, sent_at + ttl_s - _renew_margin(ttl_s))
            return grant


def _renew_margin(life_s: float) -> float:
    """How long before its end a delegation of ``life_s`` seconds is renewed: 60 s, at most
    half of ``life_s`` (the module's docstring says why)."""
    return min(60.0, life_s / 2)


def _renewed_key(key: str | None) -> str | None:
    """The idempotency key of the retry of a call keyed ``key`` (the host takes 1-128
    characters): ``<key>/renewed``, or a digest of ``key`` if that would be too long."""
    if key is None:
        return None
    renewed = f"{key}/renewed"
    if len(renewed) <= 128:
        return renewed
    import hashlib

    return "renewed-" + hashlib.sha256(key.encode()).hexdigest()


def _constraints_key(constraints: Mapping[str, Any] | None) -> str:
    """The constraints in one canonical string (the cache key with the tool)."""
    import json

    return "" if constraints is None else json.dumps(constraints, sort_keys=True)


delegations = Delegations()
"""The module's :class:`Delegations`: ``tools.delegations.auto(...)`` switches it on."""


def log(message: str, level: str = "info") -> None:
    """Send a line to the host's log for this sandbox (no answer, no wait)."""
    client().notify("log", {"level": level, "message": message})


class ToolFunction:
    """``tools.<provider>.<tool>``: calling it calls the tool with keyword arguments."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(
        self,
        *,
        idempotency_key: str | None = None,
        delegation: str | Delegation | None = None,
        **kwargs: Any,
    ) -> CallResult:
        args: dict[str, Any] = {}
        for key, value in kwargs.items():
            wire_name = key[:-1] if key.endswith("_") and keyword.iskeyword(key[:-1]) else key
            if wire_name in args:
                raise TypeError(f"{self.name}() got {wire_name!r} twice")
            args[wire_name] = value
        return call(self.name, args, idempotency_key, delegation=delegation)

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
