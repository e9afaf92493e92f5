"""``corral broker``'s HTTP API: JSON over a Unix socket (TCP with TLS optional).

Routes (thin: parse, one :class:`~corral.broker.executor.Broker` call, answer):

- ``POST /execute``: ``{delegation, approval, call}`` → the outcome (200 for every executed
  outcome, ``succeeded``, ``failed`` or ``unknown``; a refusal is a 4xx problem and nothing ran);
- ``POST /delegations``: ``{approval, request}`` → a delegation, minted for control on an
  agent's ``delegation.request`` (control approves the request like any call);
- ``POST /revocations``: ``{approval, request}`` → revoke a delegation, agent, tenant or
  connection's delegations, effective on the next call;
- ``GET /connections?tenant=T``: the tenant's connections, never a secret;
- ``GET /healthz`` and ``GET /metrics`` (Prometheus text).

Errors are RFC 9457 problem documents (``application/problem+json``) naming what is wrong.
They never carry request values: a validation error says which field, not what it held.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from corral.broker._store import RevocationKind
from corral.broker.client import mint_call, revoke_call
from corral.broker.delegation import DelegationError
from corral.broker.executor import Broker, Call, CallRefused
from corral.broker.keys import KeyProviderUnavailable
from corral.broker.oauth import RefreshBusy
from corral.core.clock import format_time
from corral.core.errors import BrokerError
from corral.core.problems import problem, validation_detail


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CallBody(_Body):
    tenant: str = Field(min_length=1, max_length=128)
    agent: str = Field(min_length=1, max_length=128)
    sandbox: str = Field(min_length=1, max_length=128)
    tool: str = Field(min_length=1, max_length=128)
    args: dict[str, Any]
    idempotency_key: str
    connection_id: str | None = None
    country: str = Field("US", min_length=2, max_length=2)


class ExecuteBody(_Body):
    delegation: str = Field(min_length=1, max_length=8192)
    approval: str = Field(min_length=1, max_length=2048)
    call: CallBody


class MintRequest(_Body):
    tenant: str = Field(min_length=1, max_length=128)
    agent: str = Field(min_length=1, max_length=128)
    sandbox: str = Field(min_length=1, max_length=128)
    tools: list[str] = Field(min_length=1, max_length=64)
    ttl_s: float = 300
    recipients: list[str] | None = None
    calendars: list[str] | None = None
    payment_intents: list[str] | None = None
    max_amount: dict[str, Any] | None = None
    max_uses: int | None = Field(None, ge=1)
    idempotency_key: str


class MintBody(_Body):
    approval: str
    request: MintRequest


class RevokeRequest(_Body):
    tenant: str = Field(min_length=1, max_length=128)
    kind: Literal["delegation", "agent", "tenant", "connection"]
    value: str = Field(min_length=1, max_length=256)
    reason: str | None = Field(None, max_length=256)
    idempotency_key: str


class RevokeBody(_Body):
    approval: str
    request: RevokeRequest


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.executions = Counter(
            "corral_broker_executions", "Executed calls by tool and outcome",
            ["tool", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.refusals = Counter(
            "corral_broker_refusals", "Refused requests by reason", ["code"], registry=self.registry
        )
        self.minted = Counter(
            "corral_broker_delegations_minted", "Delegations minted", registry=self.registry
        )
        self.latency = Histogram(
            "corral_broker_execute_seconds", "Time in /execute, provider included",
            ["tool"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip


def create_app(broker: Broker) -> FastAPI:
    """The broker's ASGI app over an already-built :class:`Broker` (nothing runs at import)."""
    metrics = _Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(title="corral broker", version="1", lifespan=lifespan, docs_url=None)

    @app.exception_handler(CallRefused)
    async def refused(_request: Request, exc: CallRefused) -> JSONResponse:
        metrics.refusals.labels(exc.code).inc()
        return problem(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.refusals.labels("bad_request").inc()
        return problem(400, "bad_request", validation_detail(exc))

    @app.exception_handler(KeyProviderUnavailable)
    @app.exception_handler(RefreshBusy)
    async def unavailable(_request: Request, exc: BrokerError) -> JSONResponse:
        metrics.refusals.labels("unavailable").inc()
        response = problem(503, "unavailable", str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        # Never the exception text: it may hold anything. The log has the type.
        metrics.refusals.labels("internal").inc()
        return problem(500, "internal", f"internal error ({type(exc).__name__})")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        broker.vault.store.connections("~healthcheck")
        return {"status": "ok", "key_provider": type(broker.vault.keys).__name__,
                "at": format_time(broker.clock.now())}  # fmt: skip

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/execute")
    async def execute(body: ExecuteBody, response: Response) -> dict[str, Any]:
        started = time.perf_counter()
        call = Call(**body.call.model_dump())
        execution = await broker.execute(body.delegation, body.approval, call)
        metrics.executions.labels(execution.tool, execution.status).inc()
        metrics.latency.labels(execution.tool).observe(time.perf_counter() - started)
        # W3C Server-Timing: the broker's own time, the wait for a provider slot, the provider.
        response.headers["Server-Timing"] = (
            f"broker;dur={execution.broker_ms:.3f}, queue;dur={execution.queue_ms:.3f}, "
            f"provider;dur={execution.provider_ms:.3f}"
        )
        return execution.to_json()

    @app.post("/delegations")
    async def delegations(body: MintBody) -> dict[str, Any]:
        request = body.request
        _approved(broker, body.approval, mint_call(request.model_dump(exclude_none=True)))
        try:
            minted, events = broker.mint(**request.model_dump(exclude={"idempotency_key"}))
        except (DelegationError, ValueError) as exc:
            raise CallRefused(400, "bad_delegation_request", str(exc)) from None
        metrics.minted.inc()
        return {"delegation": minted.token, "id": minted.id,
                "expires_at": format_time(minted.expires_at), "scope": minted.delegation.describe(),
                "events": events}  # fmt: skip

    @app.post("/revocations")
    async def revocations(body: RevokeBody) -> dict[str, Any]:
        request = body.request
        _approved(broker, body.approval, revoke_call(request.model_dump(exclude_none=True)))
        at = broker.revoke(
            request.tenant, RevocationKind(request.kind), request.value, request.reason
        )
        return {"revoked": {"kind": request.kind, "value": request.value},
                "revoked_at": format_time(at)}  # fmt: skip

    @app.get("/connections")
    async def connections(tenant: str) -> dict[str, Any]:
        rows = broker.vault.store.connections(tenant)
        return {"tenant": tenant, "connections": [row.public() for row in rows]}

    return app


def _approved(broker: Broker, approval: str, call: dict[str, Any]) -> None:
    try:
        broker.approvals.verify(approval, call, broker.clock)
    except BrokerError as exc:
        raise CallRefused(403, "approval_refused", str(exc)) from None
