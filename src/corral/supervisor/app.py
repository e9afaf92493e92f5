"""``corral control``'s supervisor API: JSON over a Unix socket (TCP with TLS optional).

- ``POST /calls``: the host relays an agent's call with its identity
  (``{tenant, agent, sandbox, call_id, tool, args}``) → the verdict and its explanation,
  recorded in the ledger and the audit chain before the answer;
- with a ``delegation`` in the body, an allowed call is executed through ``corral broker`` and
  the answer carries its ``execution`` (status, result or error);
- ``POST /delegations``: a sandbox's agent asks for a delegation (control approves the mint,
  the broker mints; ``delegation.minted`` goes to the audit chain);
- ``GET /calls/{tenant}/{call_id}?wait=S``: a call's latest verdict, waiting up to ``S``
  seconds while it is held (deferred);
- ``POST /calls/{tenant}/{call_id}/outcome``: ``{status, result?, error?}`` of an executed call;
- ``GET /escalations?tenant=T``, ``POST /escalations/{tenant}/{call_id}/decision``:
  ``{decision: approve|deny, operator}``;
- ``POST /sandbox-events``: ``corral host`` reports a sandbox started or stopped
  (``{tenant, agent, sandbox, kind, backend, isolation?, exit_code?, reason?}``), appended to
  the tenant's audit chain;
- ``PUT /tenants/{tenant}/policy``: a tenant policy (``TOOLS.md``), refused with a message
  naming the field;
- ``GET /healthz``, ``GET /metrics``.

Problems are RFC 9457 documents naming what is wrong, as the broker's are.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

from corral.broker.client import BrokerRefused
from corral.core import heap
from corral.core.errors import CorralError, Pushback
from corral.core.problems import problem, validation_detail
from corral.supervisor.classifier import CallStateError, Decision, UnknownCall
from corral.supervisor.policy import PolicyError, load_policy
from corral.supervisor.service import Control, NoBroker


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CallBody(_Body):
    tenant: str = Field(min_length=1, max_length=128)
    agent: str = Field(min_length=1, max_length=128)
    sandbox: str = Field(min_length=1, max_length=128)
    call_id: str = Field(min_length=1, max_length=128)
    tool: str = Field(min_length=1, max_length=128)
    args: dict[str, Any]
    delegation: str | None = Field(None, min_length=1, max_length=16384)
    """The agent's delegation: with it, an allowed call is executed through the broker."""


class DelegationBody(_Body):
    tenant: str = Field(min_length=1, max_length=128)
    agent: str = Field(min_length=1, max_length=128)
    sandbox: str = Field(min_length=1, max_length=128)
    request_id: str = Field(min_length=1, max_length=128)
    tools: list[str] = Field(min_length=1, max_length=64)
    ttl_s: float = Field(300, gt=0, le=300)
    recipients: list[str] | None = None
    calendars: list[str] | None = None
    payment_intents: list[str] | None = None
    max_amount: dict[str, Any] | None = None
    max_uses: int | None = Field(None, ge=1)


class OutcomeBody(_Body):
    status: str = Field(pattern="^(succeeded|failed|unknown)$")
    result: dict[str, Any] | None = None
    error: str | None = Field(None, max_length=256)


class SandboxEventBody(_Body):
    tenant: str = Field(min_length=1, max_length=128)
    agent: str = Field(min_length=1, max_length=128)
    sandbox: str = Field(min_length=1, max_length=128)
    kind: str = Field(pattern="^sandbox\\.(started|stopped)$")
    backend: str = Field(min_length=1, max_length=64)
    isolation: str | None = Field(None, pattern="^(namespaces|gvisor|vm)$")
    exit_code: int | None = None
    reason: str | None = Field(None, max_length=256)


class DecisionBody(_Body):
    decision: str = Field(pattern="^(approve|deny)$")
    operator: str = Field(min_length=1, max_length=128)


class _CallsFastPath:
    """``POST /calls`` straight on ASGI; every other request goes to the FastAPI app.

    This route is on every agent call. FastAPI's layers (middleware stack, routing, dependency
    solving, ``jsonable_encoder``) cost about as much CPU as the decision itself, and the
    service is CPU-bound on one GIL; here the body is validated by the same pydantic model in
    one ``model_validate_json`` and the answer encoded with orjson. Problems are the same RFC
    9457 documents the rest of the API gives.
    """

    def __init__(self, api: FastAPI, decide: Callable[[CallBody], Awaitable[bytes]]) -> None:
        self.api = api
        self._decide = decide

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/calls" or scope["method"] != "POST":
            await self.api(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            answer = await self._decide(CallBody.model_validate_json(body))
        except ValidationError as exc:
            await problem(400, "bad_request", validation_detail(exc))(scope, receive, send)
            return
        except CallStateError as exc:
            await problem(409, "call_state", str(exc))(scope, receive, send)
            return
        except Pushback as exc:
            response = problem(503, "pushback", str(exc))
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
            await response(scope, receive, send)
            return
        except CorralError as exc:
            await problem(500, "internal", f"{type(exc).__name__}: {exc}")(scope, receive, send)
            return
        headers = [*_JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


_JSON_HEADERS = [(b"content-type", b"application/json")]

PRUNE_EVERY_S = 60.0
PRUNE_IDLE_LIMIT = 50
"""Oldest calls looked at per tenant per prune round (bounds the round's stall)."""


def create_app(control: Control, *, reconsider_every_s: float = 1.0) -> _CallsFastPath:
    """The control API over a built :class:`Control` (nothing runs at import). A background
    task decides held calls again every ``reconsider_every_s`` seconds."""
    registry = CollectorRegistry()
    verdicts = Counter(
        "corral_supervisor_verdicts", "Verdicts by verdict", ["verdict"], registry=registry
    )
    latency = Histogram(
        "corral_supervisor_decision_seconds",
        "POST /calls, audit included",
        registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def tick() -> None:
            last_prune = time.monotonic()
            while True:
                await asyncio.sleep(reconsider_every_s)
                await control.reconsider()
                now = time.monotonic()
                if now - last_prune > PRUNE_EVERY_S:
                    # Each decision forgets a few calls; this catches the idle tenants up.
                    control.prune(limit=PRUNE_IDLE_LIMIT)
                    last_prune = now

        async def settle() -> None:
            while True:
                await asyncio.sleep(heap.SETTLE_EVERY_S)
                heap.settle()

        with heap.policy():
            tasks = [asyncio.create_task(tick()), asyncio.create_task(settle())]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()

    app = FastAPI(title="corral control", version="1", lifespan=lifespan, docs_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(400, "bad_request", validation_detail(exc))

    @app.exception_handler(PolicyError)
    async def bad_policy(_request: Request, exc: PolicyError) -> JSONResponse:
        return problem(400, "invalid_policy", "; ".join(exc.problems))

    @app.exception_handler(UnknownCall)
    async def unknown(_request: Request, exc: UnknownCall) -> JSONResponse:
        return problem(404, "unknown_call", str(exc))

    @app.exception_handler(CallStateError)
    async def conflict(_request: Request, exc: CallStateError) -> JSONResponse:
        return problem(409, "call_state", str(exc))

    @app.exception_handler(Pushback)
    async def pushback(_request: Request, exc: Pushback) -> JSONResponse:
        response = problem(503, "pushback", str(exc))
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return response

    @app.exception_handler(BrokerRefused)
    async def broker_refused(_request: Request, exc: BrokerRefused) -> JSONResponse:
        return problem(exc.status if exc.status < 500 else 502, exc.code, exc.detail)

    @app.exception_handler(NoBroker)
    async def no_broker(_request: Request, exc: NoBroker) -> JSONResponse:
        return problem(503, "no_broker", str(exc))

    @app.exception_handler(CorralError)
    async def corral_error(_request: Request, exc: CorralError) -> JSONResponse:
        return problem(500, "internal", f"{type(exc).__name__}: {exc}")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "tenants": len(control.tenants),
            "held": len(control.held),
            "escalations": len(control.escalations),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def answer(tenant: str, decision: Decision) -> dict[str, Any]:
        execution = control.executions.get((tenant, decision.call_id))
        out = decision.to_json()
        if execution is not None:
            out["execution"] = execution.to_json()
        return out

    async def decide_call(body: CallBody) -> bytes:
        started = time.perf_counter()
        decision = await control.call(body.tenant, body.agent, body.call_id, body.tool, body.args,
                                      sandbox=body.sandbox, delegation=body.delegation)  # fmt: skip
        verdicts.labels(decision.verdict.value).inc()
        latency.observe(time.perf_counter() - started)
        return orjson.dumps(answer(body.tenant, decision))

    @app.get("/calls/{tenant}/{call_id}")
    async def call_state(tenant: str, call_id: str, wait: float = 0.0) -> dict[str, Any]:
        decision = await control.wait(tenant, call_id, min(max(wait, 0.0), 60.0))
        return answer(tenant, decision)

    @app.post("/delegations", status_code=201)
    async def delegations(body: DelegationBody) -> dict[str, Any]:
        request = body.model_dump(
            exclude={"tenant", "agent", "sandbox", "request_id"}, exclude_none=True
        )
        return await control.delegate(body.tenant, body.agent, body.sandbox, request,
                                      body.request_id)  # fmt: skip

    @app.post("/calls/{tenant}/{call_id}/outcome")
    async def outcome(tenant: str, call_id: str, body: OutcomeBody) -> dict[str, Any]:
        await control.outcome(tenant, call_id, body.status, body.result, body.error)
        return {"call_id": call_id, "status": body.status}

    @app.get("/escalations")
    async def escalations(tenant: str) -> dict[str, Any]:
        pending = [control.describe(e) for e in control.pending(tenant)]
        return {"tenant": tenant, "escalations": pending}

    @app.post("/escalations/{tenant}/{call_id}/decision")
    async def decide(tenant: str, call_id: str, body: DecisionBody) -> dict[str, Any]:
        await control.decide_escalation(tenant, call_id, body.decision, body.operator)
        return {"call_id": call_id, "decision": body.decision}

    @app.post("/sandbox-events", status_code=201)
    async def sandbox_event(body: SandboxEventBody) -> dict[str, Any]:
        index = await control.sandbox_event(
            body.tenant, body.agent, body.sandbox, body.kind, body.backend,
            isolation=body.isolation, exit_code=body.exit_code, reason=body.reason,
        )  # fmt: skip
        return {"tenant": body.tenant, "sandbox": body.sandbox, "kind": body.kind, "index": index}

    @app.put("/tenants/{tenant}/policy")
    async def policy(tenant: str, document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        control.set_policy(tenant, load_policy(document))
        return {"tenant": tenant, "policy": "accepted"}

    return _CallsFastPath(app, decide_call)
