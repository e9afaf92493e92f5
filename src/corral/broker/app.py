"""``corral broker``'s HTTP API: JSON over a Unix socket (TCP with TLS optional).

Routes (thin: parse, one :class:`~corral.broker.executor.Broker` call, answer):

- ``POST /execute``: ``{delegation, approval, call}`` → the outcome (200 for every executed
  outcome, ``succeeded``, ``failed`` or ``unknown``; a refusal is a 4xx problem and nothing ran);
- ``POST /delegations``: ``{approval, request}`` → a delegation, minted for control on an
  agent's ``delegation.request`` (control approves the request like any call);
- ``POST /revocations``: ``{approval, request}`` → revoke a delegation, agent, tenant or
  connection's delegations, effective on the next call;
- ``GET /connections?tenant=T``: the tenant's connections, never a secret;
- ``POST /connections``: ``{approval, request}`` → connect a provider account (201);
- ``POST /connections/{connection_id}/rotate``: ``{approval, request}`` → replace its
  credential with new fields (a connection that needs reconnecting is active again);
- ``POST /connections/{connection_id}/disconnect``: ``{approval, request}`` → revoke the
  connection's delegations and delete its sealed credential (the row stays, ``revoked``);
- ``GET /healthz`` and ``GET /metrics`` (Prometheus text).

The three connection routes answer ``{"connection": <public row>, "events", "replayed"}``:
``events`` are the ``credential.*`` audit events for the caller to append, as the CLI does.
Control approves each as a call (:func:`~corral.broker.client.connect_call` and its
siblings) whose document holds the credential's field names and digest, never its values. An
idempotency key seen before answers with the first answer (``replayed``, no events again); a
key reused for another request is ``409 idempotency_conflict``. The answer is recorded after
the change (a refused request leaves nothing behind), so a crash in between lets a request run
again: connecting a named id or disconnecting is then refused, a rotation installs the same
fields again; only a connect that names no id would take the next free one.

Errors are RFC 9457 problem documents (``application/problem+json``) naming what is wrong.
They never carry request values: a validation error says which field, not what it held, and
a credential's values (or a field name it does not declare) are never repeated.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from corral.broker._store import (
    BrokerStore,
    ConnectionRow,
    ConnectionStatus,
    IntentRow,
    IntentState,
    RevocationKind,
)
from corral.broker.approval import call_hash
from corral.broker.client import (
    connect_call,
    disconnect_call,
    mint_call,
    revoke_call,
    rotate_call,
)
from corral.broker.delegation import DelegationError
from corral.broker.executor import Broker, Call, CallRefused
from corral.broker.keys import KeyProviderUnavailable
from corral.broker.oauth import RefreshBusy
from corral.broker.vault import (
    ConnectionUnusable,
    CredentialMoved,
    InvalidConnection,
    InvalidCredential,
    UnknownConnection,
)
from corral.connectors import Endpoints
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


_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"  # the vault's ids (``vault.check_id``)
_KEY = r"^[0-9A-Za-z_-]{8,50}$"  # an idempotency key, as ``/execute`` takes it
_URL = r"^https?://\S+$"
_MAX_FIELDS, _MAX_VALUE = 16, 8192


def _credential(fields: dict[str, Any]) -> dict[str, Any]:
    """Strings of bounded size, valid Unicode; the message never repeats a name or a value."""
    if len(fields) > _MAX_FIELDS:
        raise ValueError(f"a credential has at most {_MAX_FIELDS} fields")
    for name, value in fields.items():
        if not isinstance(value, str) or len(value) > _MAX_VALUE:
            raise ValueError(f"credential values must be strings of at most {_MAX_VALUE} chars")
        try:
            (name + value).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("credential fields must be valid Unicode text") from None
    return fields


Credential = Annotated[dict[str, Any], AfterValidator(_credential)]
ConnectionId = Annotated[str, PathParam(pattern=_ID)]


class ConnectRequest(_Body):
    tenant: str = Field(pattern=_ID)
    provider: str = Field(min_length=1, max_length=64)
    connection_id: str | None = Field(None, pattern=_ID)
    fields: Credential
    api_url: str | None = Field(None, max_length=2048, pattern=_URL)
    token_url: str | None = Field(None, max_length=2048, pattern=_URL)
    operator: str = Field(pattern=_ID)
    idempotency_key: str = Field(pattern=_KEY)


class ConnectBody(_Body):
    approval: str
    request: ConnectRequest


class RotateRequest(_Body):
    tenant: str = Field(pattern=_ID)
    fields: Credential
    operator: str = Field(pattern=_ID)
    idempotency_key: str = Field(pattern=_KEY)


class RotateBody(_Body):
    approval: str
    request: RotateRequest


class DisconnectRequest(_Body):
    tenant: str = Field(pattern=_ID)
    reason: str | None = Field(None, max_length=256)
    operator: str = Field(pattern=_ID)
    idempotency_key: str = Field(pattern=_KEY)


class DisconnectBody(_Body):
    approval: str
    request: DisconnectRequest


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
        self.connection_changes = Counter(
            "corral_broker_connection_changes", "Connections connected, rotated, disconnected",
            ["action"], registry=self.registry,
        )  # fmt: skip
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

    @app.post("/connections", status_code=201)
    async def connect(body: ConnectBody) -> dict[str, Any]:
        request = body.request
        call = connect_call(request.model_dump(exclude_none=True))
        _approved(broker, body.approval, call)
        if (replayed := _replayed(broker.vault.store, call)) is not None:
            return replayed
        vault = broker.vault
        with _refusals():
            spec = vault.provider(request.provider)
            endpoints = None
            if request.api_url or request.token_url:
                endpoints = Endpoints(
                    api=request.api_url or spec.endpoints.api,
                    token=request.token_url or spec.endpoints.token,
                )
            connection_id = request.connection_id or _free_id(
                vault.store, request.tenant, request.provider
            )
            if vault.store.connection(request.tenant, connection_id) is not None:
                raise CallRefused(
                    409, "connection_exists",
                    f"tenant {request.tenant!r} already has connection {connection_id!r}",
                )  # fmt: skip
            row = vault.connect(
                request.tenant, connection_id, request.provider, dict(request.fields),
                endpoints=endpoints,
            )  # fmt: skip
        event = _event("credential.connected", row.created_at, request.operator,
                       {"connection_id": row.connection_id, "provider": row.provider})  # fmt: skip
        metrics.connection_changes.labels("connect").inc()
        return _done(broker, call, row, [event])

    @app.post("/connections/{connection_id}/rotate")
    async def rotate(connection_id: ConnectionId, body: RotateBody) -> dict[str, Any]:
        request = body.request
        call = rotate_call(connection_id, request.model_dump(exclude_none=True))
        _approved(broker, body.approval, call)
        if (replayed := _replayed(broker.vault.store, call)) is not None:
            return replayed
        with _refusals():
            row = broker.vault.replace_credential(
                request.tenant, connection_id, dict(request.fields)
            )
        data = {"connection_id": connection_id, "provider": row.provider,
                "reason": f"credential replaced (version {row.version})"}  # fmt: skip
        metrics.connection_changes.labels("rotate").inc()
        return _done(broker, call, row, [_event("credential.rotated", row.updated_at,
                                                request.operator, data)])  # fmt: skip

    @app.post("/connections/{connection_id}/disconnect")
    async def disconnect(connection_id: ConnectionId, body: DisconnectBody) -> dict[str, Any]:
        request = body.request
        call = disconnect_call(connection_id, request.model_dump(exclude_none=True))
        _approved(broker, body.approval, call)
        if (replayed := _replayed(broker.vault.store, call)) is not None:
            return replayed
        tenant, reason = request.tenant, request.reason
        with _refusals():
            current = broker.vault.connection(tenant, connection_id)
            if current.status is ConnectionStatus.REVOKED:
                raise ConnectionUnusable(current)
            row = broker.vault.revoke(tenant, connection_id, reason)
        broker.revoke(tenant, RevocationKind.CONNECTION, connection_id, reason)
        data = {"connection_id": connection_id, "provider": row.provider, "reason": reason}
        metrics.connection_changes.labels("disconnect").inc()
        return _done(broker, call, row, [_event("credential.revoked", row.updated_at,
                                                request.operator, data)])  # fmt: skip

    return app


def _approved(broker: Broker, approval: str, call: dict[str, Any]) -> None:
    try:
        broker.approvals.verify(approval, call, broker.clock)
    except BrokerError as exc:
        raise CallRefused(403, "approval_refused", str(exc)) from None


# ------------------------------------------------------------------------------ connections


@contextmanager
def _refusals() -> Iterator[None]:
    """The vault's refusals as problems; each of them wrote nothing."""
    try:
        yield
    except UnknownConnection as exc:
        raise CallRefused(404, "unknown_connection", str(exc)) from None
    except ConnectionUnusable as exc:
        raise CallRefused(409, f"connection_{exc.row.status.value}", str(exc)) from None
    except CredentialMoved as exc:
        raise CallRefused(409, "credential_moved", str(exc)) from None
    except InvalidCredential as exc:  # never the names it does not know: one may be a key
        raise CallRefused(400, "invalid_connection", exc.redacted) from None
    except InvalidConnection as exc:
        raise CallRefused(400, "invalid_connection", str(exc)) from None


def _free_id(store: BrokerStore, tenant: str, provider: str) -> str:
    """``<provider>-<n>``, the smallest ``n`` none of the tenant's connections (revoked ones
    included) has."""
    taken = {row.connection_id for row in store.connections(tenant)}
    return next(name for n in itertools.count(1) if (name := f"{provider}-{n}") not in taken)


def _event(kind: str, at: datetime, operator: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "at": format_time(at), "actor": {"kind": "operator", "id": operator},
            "data": data}  # fmt: skip


def _replayed(store: BrokerStore, call: dict[str, Any]) -> dict[str, Any] | None:
    """The first answer to this idempotency key, or None if the key is new."""
    seen = store.intent(call["tenant"], call["idempotency_key"])
    if seen is None:
        return None
    if seen.call_hash != call_hash(call) or seen.state is not IntentState.SUCCEEDED:
        raise CallRefused(
            409, "idempotency_conflict", "idempotency_key was used for a different request"
        )
    answer: dict[str, Any] = orjson.loads(seen.result or b"{}")
    return {**answer, "events": [], "replayed": True}


def _done(
    broker: Broker, call: dict[str, Any], row: ConnectionRow, events: list[dict[str, Any]]
) -> dict[str, Any]:
    """Record the answer under the request's idempotency key (after the change: a refused
    request leaves nothing behind), then answer with the events."""
    answer = {"connection": row.public()}
    now = broker.clock.now()
    broker.vault.store.begin_intent(
        IntentRow(
            tenant=row.tenant, idempotency_key=call["idempotency_key"], call_hash=call_hash(call),
            tool=call["tool"], connection_id=row.connection_id, state=IntentState.SUCCEEDED,
            result=orjson.dumps(answer).decode("utf-8"), created_at=now, updated_at=now,
        )
    )  # fmt: skip
    return {**answer, "events": events, "replayed": False}
