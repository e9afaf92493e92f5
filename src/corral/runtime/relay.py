"""The host's client to ``corral control``: a sandbox's tool calls and its start/stop events.

Every call the host relays carries the identity the host stamped on the channel, never one the
guest chose. The host names the call (``call_id``): a fresh time-ordered id, or, when the guest
gave an ``idempotency_key``, an id derived from it and the agent's identity, so that a guest's
retry of the same call is the same call to control, decided and run once (control answers a
repeated id with the decision it made; an older control with 409, and the relay then reads it).

A deferred call is held by control until what it waits for resolves, an escalated one until
the business owner decides; the relay waits with ``GET /calls/{tenant}/{call_id}?wait=S``
until the verdict is final (at most ``max_defer_s`` / ``max_escalation_s``; the agent's tool
call blocks meanwhile, as a person's would while the owner is asked). Only an allowed call is
answered with a result: the broker's, when the guest presented a ``delegation`` and control ran
the call (a failed run is refused; an unknown outcome is an error asking for a retry with the
same key). A denied call, or one still waiting at the limit, becomes a
:class:`~corral.runtime.channel.ChannelRefusal` naming the verdict, the rules and the calls it
conflicts with. ``delegation.request`` becomes ``POST /delegations``.

Locally control listens on a 0600 Unix socket (one keep-alive connection pool); between
machines the relay speaks HTTPS to ``host.control_url``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from corral.core.clock import SystemClock
from corral.core.ids import IdSource, RandomIds
from corral.core.settings import Settings
from corral.guest import wire
from corral.runtime.channel import ChannelRefusal
from corral.runtime.sandbox import Identity, IsolationLevel, SandboxError

__all__ = [
    "EVENT_KINDS",
    "ControlRelay",
    "ControlUnreachable",
    "NoControlRelay",
    "Relay",
    "derive_call_id",
    "explain",
]

log = logging.getLogger(__name__)

EVENT_KINDS = frozenset({"sandbox.started", "sandbox.stopped"})
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@runtime_checkable
class Relay(Protocol):
    """What the host needs from the control plane (tests may supply a simple one)."""

    async def call(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        """A guest's ``tools.call`` → ``{call_id, verdict, explanation, result?}``, or raise
        :class:`ChannelRefusal`."""
        ...

    async def delegation(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        """A guest's ``delegation.request`` → ``{token, expires_at}``, or raise
        :class:`ChannelRefusal`."""
        ...

    async def sandbox_event(
        self,
        identity: Identity,
        kind: str,
        backend: str,
        level: IsolationLevel,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Record a sandbox started or stopped (for the tenant's audit chain)."""
        ...

    async def aclose(self) -> None: ...


class ControlUnreachable(ChannelRefusal):
    """Control did not answer. The guest is told only that; the host's log has where and why."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(wire.INTERNAL_ERROR, message)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message} ({self.detail})"


def derive_call_id(identity: Identity, idempotency_key: str) -> str:
    """The call id of a guest's keyed call: the same for every retry by the same agent of the
    same tenant, different for anyone else (SHA-256 of the three, 130 bits in Crockford base32,
    the length of a generated id).

    >>> who = Identity("t1", "a1", "sbx-1")
    >>> derive_call_id(who, "k1") == derive_call_id(Identity("t1", "a1", "sbx-2"), "k1")
    True
    >>> derive_call_id(who, "k1") == derive_call_id(Identity("t2", "a1", "sbx-1"), "k1")
    False
    """
    digest = hashlib.sha256(
        b"corral call id\0"
        + b"\0".join(v.encode() for v in (identity.tenant, identity.agent, idempotency_key))
    ).digest()
    value = int.from_bytes(digest[:17], "big") >> 6  # 130 bits
    return "call_" + "".join(_CROCKFORD[(value >> s) & 31] for s in range(125, -1, -5))


def explain(decision: dict[str, Any]) -> str:
    """One sentence for the agent from control's decision (its rules, conflicts, reason)."""
    verdict = str(decision.get("verdict"))
    rules = ", ".join(decision.get("rules") or [])
    conflicts = ", ".join(decision.get("conflicts_with") or [])
    reason = decision.get("reason")
    if verdict == "allow":
        observed = ", ".join(decision.get("observed") or [])
        return "allowed" + (f" (observed, not enforced: {observed})" if observed else "")
    words = {
        "deny": "denied",
        "escalate": "escalated to the business owner; it has not run",
        "defer": "deferred",
    }.get(verdict, verdict)
    text = words + (f" by rule {rules}" if rules else "")
    if reason:
        text += f": {reason}"
    if conflicts:
        text += f"; conflicts with {conflicts}"
    return text


def _executed(answer: dict[str, Any], execution: dict[str, Any]) -> dict[str, Any]:
    """An allowed call that control executed: its result, or why there is none. A failed call
    did nothing (a refusal); an unknown outcome may have happened, so the guest is told to retry
    with the same idempotency key, which the broker deduplicates."""
    status = execution.get("status")
    if status == "succeeded":
        return {**answer, "result": execution.get("result") or {}}
    error = execution.get("error") or {}
    what = str(error.get("detail") or error.get("message") or error.get("code") or status)
    data = {**answer, "execution": execution}
    if status == "failed":
        raise ChannelRefusal(wire.REFUSED, f"allowed, but it failed: {what}", data)
    raise ChannelRefusal(
        wire.INTERNAL_ERROR,
        f"allowed, but its outcome is unknown ({what}); retry with the same idempotency_key",
        data,
    )


def _refusal(decision: dict[str, Any], explanation: str) -> ChannelRefusal:
    data = {
        "call_id": decision.get("call_id"),
        "verdict": decision.get("verdict"),
        "rules": decision.get("rules") or [],
        "conflicts_with": decision.get("conflicts_with") or [],
        "explanation": explanation,
    }
    return ChannelRefusal(wire.REFUSED, f"call {explanation}", data=data)


def _problem(response: httpx.Response) -> tuple[str, str]:
    """An RFC 9457 answer's ``(code, detail)``: its type's last segment and its detail."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200] or response.reason_phrase
    if not isinstance(body, dict):
        return "", response.reason_phrase
    code = str(body.get("type") or "").rsplit("/", 1)[-1]
    return code, str(body.get("detail") or body.get("title") or response.reason_phrase)


class ControlRelay:
    """:class:`Relay` over control's HTTP API (Unix socket, or HTTPS to ``url``)."""

    def __init__(
        self,
        socket: Path | None = None,
        *,
        url: str | None = None,
        ca: Path | None = None,
        ids: IdSource | None = None,
        wait_s: float = 25.0,
        max_defer_s: float = 330.0,
        max_escalation_s: float = 900.0,
        timeout_s: float = 30.0,
    ) -> None:
        if (socket is None) == (url is None):
            raise ValueError("ControlRelay needs exactly one of a socket path or an https URL")
        self.where = str(socket) if socket is not None else str(url)
        self._ids = ids or RandomIds(SystemClock())
        self._wait_s = wait_s
        self._max_defer_s = max_defer_s
        self._max_escalation_s = max_escalation_s
        # A long poll takes up to wait_s; the read timeout must outlast it.
        timeout = httpx.Timeout(timeout_s, read=max(timeout_s, wait_s + 10))
        # A small pool that forgets idle connections soon: httpcore checks every pooled
        # connection (a poll and a getpeername each) on each request, so 32 idle connections
        # left by a burst cost the host ~64 system calls per call at a gentle rate.
        limits = httpx.Limits(max_keepalive_connections=8, keepalive_expiry=5.0)
        if socket is not None:
            transport = httpx.AsyncHTTPTransport(uds=str(socket), limits=limits, retries=1)
            self._http = httpx.AsyncClient(
                transport=transport, base_url="http://control", timeout=timeout
            )
        else:
            verify: Any = str(ca) if ca is not None else True
            transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits, retries=1)
            self._http = httpx.AsyncClient(transport=transport, base_url=str(url), timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> ControlRelay:
        host = settings.host
        if host.control_url is not None:
            return cls(url=host.control_url, ca=host.control_ca, **options)
        return cls(host.control_socket or settings.control_socket(), **options)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json, params=params)
        except httpx.ConnectError as exc:
            raise ControlUnreachable(
                "the control plane is unreachable; the call was not decided",
                f"corral control at {self.where}: {exc or type(exc).__name__}",
            ) from exc
        except httpx.HTTPError as exc:
            raise ControlUnreachable(
                "no answer from the control plane; retry with the same idempotency_key",
                f"corral control at {self.where}: {type(exc).__name__}: {exc}",
            ) from exc

    @staticmethod
    def _refused(response: httpx.Response) -> ChannelRefusal:
        """Control's problem as the guest's refusal: its detail, its kind and status in data."""
        code, detail = _problem(response)
        data = {"status": response.status_code, "problem": code or None}
        if response.status_code >= 500 and response.status_code != 503:
            log.error("control answered %s: %s", response.status_code, detail)
            return ChannelRefusal(wire.INTERNAL_ERROR, "the control plane failed; see its log")
        if code == "pushback":
            detail = f"the control plane is busy, retry later: {detail}"
        return ChannelRefusal(wire.REFUSED, detail, data=data)

    async def call(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        tool, args = params.get("tool"), params.get("args", {})
        key = params.get("idempotency_key")
        if not isinstance(tool, str) or not tool:
            raise ValueError('"tool" must be a non-empty string')
        if not isinstance(args, dict):
            raise ValueError('"args" must be an object')
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            raise ValueError('"idempotency_key" must be a string of 1-128 characters')
        delegation = params.get("delegation")
        if delegation is not None and not isinstance(delegation, str):
            raise ValueError('"delegation" must be a token string')
        call_id = derive_call_id(identity, key) if key else self._ids.new("call")
        body = {"tenant": identity.tenant, "agent": identity.agent, "sandbox": identity.sandbox,
                "call_id": call_id, "tool": tool, "args": args}  # fmt: skip
        if delegation:
            body["delegation"] = delegation
        response = await self._request("POST", "/calls", json=body)
        if response.status_code == 409 and key:
            decision = await self._state(identity.tenant, call_id, 0.0)  # a retry: read it
        elif response.status_code != 200:
            raise self._refused(response)
        else:
            decision = response.json()
        started = time.monotonic()
        limits = {"defer": self._max_defer_s, "escalate": self._max_escalation_s}
        while (verdict := decision.get("verdict")) in limits:
            left = started + limits[verdict] - time.monotonic()
            if left <= 0:
                state = {"defer": "deferred", "escalate": "escalated"}[verdict]
                waited = f"; still {state} after {limits[verdict]:g} s"
                raise _refusal(decision, explain(decision) + waited)
            decision = await self._state(identity.tenant, call_id, min(self._wait_s, left))
        explanation = explain(decision)
        if decision.get("verdict") != "allow":
            raise _refusal(decision, explanation)
        answer = {"call_id": call_id, "verdict": "allow", "explanation": explanation}
        execution = decision.get("execution")
        if isinstance(execution, dict):  # control ran it through the broker
            return _executed(answer, execution)
        if decision.get("result") is not None:
            answer["result"] = decision["result"]
        return answer

    async def _state(self, tenant: str, call_id: str, wait_s: float) -> dict[str, Any]:
        response = await self._request(
            "GET", f"/calls/{tenant}/{call_id}", params={"wait": f"{wait_s:g}"}
        )
        if response.status_code != 200:
            raise self._refused(response)
        decision: dict[str, Any] = response.json()
        return decision

    async def delegation(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        """``delegation.request {tool, constraints?, ttl_s?, idempotency_key?}`` →
        ``POST /delegations``; the constraints (``recipients``, ``calendars``,
        ``payment_intents``, ``max_amount``, ``max_uses``) are control's to check."""
        tool, constraints = params.get("tool"), params.get("constraints") or {}
        key = params.get("idempotency_key")
        if not isinstance(tool, str) or not tool:
            raise ValueError('"tool" must be a non-empty string')
        if not isinstance(constraints, dict):
            raise ValueError('"constraints" must be an object')
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            raise ValueError('"idempotency_key" must be a string of 1-128 characters')
        request_id = derive_call_id(identity, f"delegation:{key}") if key else self._ids.new("dlg")
        body = {**constraints, "tenant": identity.tenant, "agent": identity.agent,
                "sandbox": identity.sandbox, "request_id": request_id, "tools": [tool]}  # fmt: skip
        if params.get("ttl_s") is not None:
            body["ttl_s"] = params["ttl_s"]
        response = await self._request("POST", "/delegations", json=body)
        if response.status_code in (404, 405):
            raise ChannelRefusal(
                wire.METHOD_NOT_FOUND, "this control plane does not issue delegations"
            )
        if response.status_code not in (200, 201):
            raise self._refused(response)
        minted: dict[str, Any] = response.json()
        return {"token": minted.get("delegation"), "expires_at": minted.get("expires_at"),
                "id": minted.get("id"), "scope": minted.get("scope")}  # fmt: skip

    async def sandbox_event(
        self,
        identity: Identity,
        kind: str,
        backend: str,
        level: IsolationLevel,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown sandbox event {kind!r}")
        body = {"tenant": identity.tenant, "agent": identity.agent, "sandbox": identity.sandbox,
                "kind": kind, "backend": backend, "isolation": level.label,
                "exit_code": exit_code, "reason": reason}  # fmt: skip
        response = await self._request("POST", "/sandbox-events", json=body)
        if response.status_code not in (200, 201):
            raise SandboxError(
                f"control refused the {kind} event of {identity.sandbox}: "
                f"{response.status_code} {_problem(response)[1]}"
            )


class NoControlRelay:
    """The relay when no control plane is configured (``corral sandbox exec`` alone): every
    call and delegation is refused, saying so; events are only logged."""

    def __init__(self, why: str = "no control plane is configured") -> None:
        self.why = why

    async def call(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        raise ChannelRefusal(wire.REFUSED, f"no control plane: {self.why}; the call was not made")

    async def delegation(self, identity: Identity, params: dict[str, Any]) -> dict[str, Any]:
        raise ChannelRefusal(wire.REFUSED, f"no control plane: {self.why}")

    async def sandbox_event(
        self,
        identity: Identity,
        kind: str,
        backend: str,
        level: IsolationLevel,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        log.info("%s %s (%s, %s) exit=%s %s", kind, identity.sandbox, backend, level.label,
                 exit_code, reason or "")  # fmt: skip

    async def aclose(self) -> None:
        return None
