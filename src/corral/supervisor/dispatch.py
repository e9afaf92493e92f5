"""Control's side of execution: on ``allow``, ask the broker to run exactly the decided call.

``DESIGN.md`` step 4: control asks the broker to execute with the agent's delegation and
control's own signed approval of exactly this call; the broker checks both, runs the call and
returns a scrubbed result with the audit events it produced. The :class:`Dispatcher` builds the
call document the approval covers (the call id is its idempotency key, so a retried dispatch
never acts twice), signs it, and turns the broker's answer into an :class:`Execution`:

- the broker ran the call: its status (``succeeded``, ``failed``, ``unknown``), result or error;
- the broker refused (a delegation that does not cover the call, expired, revoked, presented
  from another sandbox): ``failed``, with the broker's problem code (nothing ran);
- no answer from the broker: ``unknown`` (it may have run; the broker's intent log knows).

Delegations are obtained the same way (``delegation.request``): control approves the mint
request and the broker mints. Control, not the dispatcher, records outcomes in the ledger and
the audit chain (:meth:`corral.supervisor.service.Control.call`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.broker.client import BrokerClient, BrokerRefused, BrokerUnreachable, mint_call
from corral.core.clock import Clock

__all__ = ["Approver", "Dispatcher", "Execution", "idempotency_key"]


class Approver(Protocol):
    """Control's approval key (``corral.broker.approval.ApprovalSigner`` satisfies it)."""

    def approve(
        self, call: Mapping[str, Any], *, approval_id: str, clock: Clock, ttl_s: float = ...
    ) -> str: ...


@dataclass(frozen=True)
class Execution:
    status: str
    """``succeeded``, ``failed`` or ``unknown``."""
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    """Audit events the broker reported (credential refreshed, connection needs reconnecting)."""
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "result": self.result, "error": self.error,
                "replayed": self.replayed}  # fmt: skip


def idempotency_key(tenant: str, call_id: str) -> str:
    """The broker's idempotency key for a call: derived from its id, so every dispatch of one
    call (a retry, a restart) is the same request to the broker and acts at most once; hashed,
    because call ids may use characters the broker's keys do not allow.

    >>> idempotency_key("brightsmile", "c1")
    'call-787175a473495b4f8e4be45bca15112f8c6693dc'
    """
    digest = hashlib.sha256(f"{tenant}\x00{call_id}".encode()).hexdigest()
    return f"call-{digest[:40]}"


class Dispatcher:
    """Executes allowed calls through ``corral broker``."""

    def __init__(
        self, broker: BrokerClient, approver: Approver, clock: Clock, *, country: str = "US"
    ) -> None:
        self.broker = broker
        self.approver = approver
        self.clock = clock
        self.country = country

    def call_document(
        self, tenant: str, agent: str, sandbox: str, call_id: str, tool: str,
        args: Mapping[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        """The call the approval covers: the broker hashes these fields."""
        return {"tenant": tenant, "agent": agent, "sandbox": sandbox, "tool": tool,
                "args": dict(args), "idempotency_key": idempotency_key(tenant, call_id),
                "connection_id": None, "country": self.country}  # fmt: skip

    async def execute(
        self, tenant: str, agent: str, sandbox: str, call_id: str, tool: str,
        args: Mapping[str, Any], delegation: str,
    ) -> Execution:  # fmt: skip
        call = self.call_document(tenant, agent, sandbox, call_id, tool, args)
        approval = self.approver.approve(
            call, approval_id=f"apv-{call['idempotency_key']}", clock=self.clock
        )
        try:
            answer = await self.broker.execute(delegation, approval, call)
        except BrokerRefused as exc:
            error = {"code": exc.code, "message": exc.detail}
            return Execution("failed", error=error)
        except BrokerUnreachable as exc:
            return Execution("unknown", error={"code": "broker_unreachable", "message": str(exc)})
        return Execution(
            status=str(answer.get("status", "unknown")),
            result=dict(answer.get("result") or {}),
            error=answer.get("error"),
            events=list(answer.get("events") or []),
            replayed=bool(answer.get("replayed")),
        )

    async def delegate(
        self, tenant: str, agent: str, sandbox: str, request: Mapping[str, Any], key: str
    ) -> dict[str, Any]:
        """Mint a delegation for the sandbox's agent: ``{delegation, id, expires_at, scope,
        events}``. Raises :class:`BrokerRefused` for a request the broker will not mint."""
        body = {**dict(request), "tenant": tenant, "agent": agent, "sandbox": sandbox,
                "idempotency_key": key}  # fmt: skip
        approval = self.approver.approve(mint_call(body), approval_id=f"apv-{key}",
                                         clock=self.clock)  # fmt: skip
        return await self.broker.mint(approval, body)
