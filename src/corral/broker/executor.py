"""The broker's work: mint delegations and execute approved, delegated calls, exactly once.

:meth:`Broker.execute` checks, in order, and refuses at the first failure without acting:

1. the call's shape: a catalog tool, a well-formed idempotency key;
2. **control's approval** of exactly this call (:mod:`corral.broker.approval`);
3. the **delegation**: signature chain, expiry, tenant/agent/sandbox binding
   (:mod:`corral.broker.delegation`);
4. the arguments against the tool's schema, then the delegation's scope over the call's effect;
5. **revocation** of the delegation, its agent, its tenant or the connection (one indexed
   query, so a revocation holds on the very next call, on every replica);
6. the **intent log**: a key seen before answers with its first outcome; a call that was
   started but never finished is reconciled with the provider (or re-sent with the same
   idempotency key where the provider deduplicates), never blindly repeated;
7. one **use** of the delegation (``max_uses``);

then opens the credential, refreshes the OAuth access token if needed, calls the provider and
records the outcome. Everything returned (result, error text, audit events) goes through the
call's :class:`~corral.broker.scrub.Scrubber`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx
import orjson

from corral.broker import delegation as dl
from corral.broker._store import (
    ConnectionRow,
    ConnectionStatus,
    DelegationUse,
    IntentRow,
    IntentState,
    RevocationKind,
    UsesExhausted,
)
from corral.broker._timing import provider_time
from corral.broker.approval import ApprovalVerifier, call_hash
from corral.broker.oauth import AuditEvents, TokenSource
from corral.broker.scrub import Scrubber
from corral.broker.vault import Vault
from corral.connectors import (
    AuthRejected,
    CallContext,
    ConnectorError,
    Credential,
    Endpoints,
    OutcomeUnknown,
    ProviderRejected,
    Tool,
    catalog,
)
from corral.core.clock import Clock, format_time
from corral.core.errors import BrokerError
from corral.core.ids import IdSource
from corral.core.money import Money

log = logging.getLogger("corral.broker")

_IDEMPOTENCY_KEY = re.compile(r"[0-9A-Za-z_-]{8,50}\Z")
Outcome = Literal["succeeded", "failed", "unknown"]


class CallRefused(BrokerError):
    """The broker will not run this call; nothing was sent to the provider.

    ``status`` is the HTTP status the service answers with; ``code`` a stable slug.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call as control relays it (the host stamped tenant, agent and sandbox)."""

    tenant: str
    agent: str
    sandbox: str
    tool: str
    args: Mapping[str, Any]
    idempotency_key: str
    connection_id: str | None = None
    country: str = "US"

    def document(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "agent": self.agent,
            "sandbox": self.sandbox,
            "tool": self.tool,
            "args": dict(self.args),
            "idempotency_key": self.idempotency_key,
            "connection_id": self.connection_id,
            "country": self.country,
        }


@dataclass(slots=True)
class Execution:
    """What :meth:`Broker.execute` answers (scrubbed)."""

    status: Outcome
    tool: str
    idempotency_key: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    replayed: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    provider_ms: float = 0.0
    queue_ms: float = 0.0
    broker_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "tool": self.tool,
            "idempotency_key": self.idempotency_key,
            "result": self.result,
            "error": self.error,
            "replayed": self.replayed,
            "events": self.events,
        }


class Broker:
    """Mint and execute; the object graph the service and the CLI share."""

    def __init__(
        self,
        vault: Vault,
        *,
        signer: dl.DelegationSigner,
        delegation_keys: dl.DelegationKeys,
        approvals: ApprovalVerifier,
        http: httpx.AsyncClient,
        ids: IdSource,
        tokens: TokenSource | None = None,
    ) -> None:
        self.vault = vault
        self.signer = signer
        self.delegation_keys = delegation_keys
        self.approvals = approvals
        self.http = http
        self.ids = ids
        self.tokens = tokens or TokenSource(vault, http)

    @property
    def clock(self) -> Clock:
        return self.vault.clock

    # ---------------------------------------------------------------------- minting

    def mint(
        self,
        *,
        tenant: str,
        agent: str,
        sandbox: str,
        tools: list[str],
        ttl_s: float,
        recipients: list[str] | None = None,
        calendars: list[str] | None = None,
        payment_intents: list[str] | None = None,
        max_amount: dict[str, Any] | None = None,
        max_uses: int | None = None,
    ) -> tuple[dl.Minted, list[dict[str, Any]]]:
        """A delegation (lifetime ``min(ttl_s, 300)``) and its ``delegation.minted`` event."""
        limit = None
        if max_amount is not None:
            try:
                limit = Money(**max_amount)
            except (TypeError, ValueError) as exc:
                raise dl.InvalidDelegationRequest(f"max_amount: {exc}") from None
        minted = dl.mint(
            self.signer,
            tenant=tenant,
            agent=agent,
            sandbox=sandbox,
            tools=tools,
            recipients=recipients,
            calendars=calendars,
            payment_intents=payment_intents,
            max_amount=limit,
            max_uses=max_uses,
            ttl_s=ttl_s,
            clock=self.clock,
            ids=self.ids,
        )
        events = AuditEvents()
        scope = minted.caveats.to_json()
        scope.pop("exp_ms", None)
        constraints = {k: v for k, v in scope.items() if k != "tools"}
        if minted.delegation.max_uses is not None:
            constraints["max_uses"] = minted.delegation.max_uses
        events.add(
            "delegation.minted",
            self.clock.now(),
            {
                "delegation_id": minted.id,
                "agent": agent,
                "sandbox": sandbox,
                "tools": list(scope.get("tools", tools)),
                "expires_at": format_time(minted.expires_at),
                "constraints": constraints,
            },
        )
        return minted, events.items

    def revoke(
        self, tenant: str, kind: RevocationKind, value: str, reason: str | None = None
    ) -> datetime:
        """Revoke a delegation (by id), an agent, a tenant or a connection's delegations."""
        at = self.clock.now()
        self.vault.store.revoke(tenant, kind, value, at, reason)
        return at

    # --------------------------------------------------------------------- executing

    def _tool(self, name: str) -> Tool[Any]:
        tool = catalog().get(name)
        if tool is None:
            raise CallRefused(400, "unknown_tool", f"unknown tool {name!r}: not in the catalog")
        return tool

    def _delegation(self, token: str, call: Call) -> dl.Delegation:
        try:
            return dl.verify(
                token,
                self.delegation_keys,
                tenant=call.tenant,
                agent=call.agent,
                sandbox=call.sandbox,
                now=self.clock.now(),
            )
        except dl.Expired as exc:
            # Its own code: the one refusal an agent cures by asking for a new delegation.
            raise CallRefused(403, "delegation_expired", f"delegation refused: {exc}") from None
        except dl.DelegationError as exc:
            raise CallRefused(403, "delegation_refused", f"delegation refused: {exc}") from None

    def _check_revoked(self, call: Call, grant: dl.Delegation, row: ConnectionRow) -> None:
        found = self.vault.store.revoked(
            call.tenant,
            [
                (RevocationKind.DELEGATION, grant.id),
                (RevocationKind.AGENT, call.agent),
                (RevocationKind.TENANT, call.tenant),
                (RevocationKind.CONNECTION, row.connection_id),
            ],
        )
        for kind, value, revoked_at in found:
            if kind is RevocationKind.DELEGATION or revoked_at >= grant.issued_at:
                raise CallRefused(
                    403,
                    "revoked",
                    f"{kind.value} {value!r} was revoked at {format_time(revoked_at)}",
                )

    def _connection(self, call: Call, tool: Tool[Any]) -> ConnectionRow:
        try:
            row = self.vault.connection_for(call.tenant, tool.provider, call.connection_id)
        except LookupError as exc:
            raise CallRefused(404, "unknown_connection", str(exc)) from None
        except BrokerError as exc:
            raise CallRefused(409, "ambiguous_connection", str(exc)) from None
        if row.status is not ConnectionStatus.ACTIVE:
            raise CallRefused(
                409,
                f"connection_{row.status.value}",
                f"connection {row.connection_id!r} is {row.status.value}"
                + (f": {row.status_reason}" if row.status_reason else ""),
            )
        return row

    async def execute(self, delegation: str, approval: str, call: Call) -> Execution:
        """Run ``call`` if everything allows it (see the module docstring), exactly once."""
        started = time.perf_counter()
        with provider_time() as waited:
            execution = await self._execute(delegation, approval, call)
        execution.provider_ms = waited.provider * 1000
        execution.queue_ms = waited.queue * 1000
        elapsed_ms = (time.perf_counter() - started) * 1000
        execution.broker_ms = elapsed_ms - execution.provider_ms - execution.queue_ms
        log.info(
            "execute tenant=%s agent=%s tool=%s status=%s broker_ms=%.1f provider_ms=%.1f",
            call.tenant, call.agent, call.tool, execution.status,
            execution.broker_ms, execution.provider_ms,
        )  # fmt: skip
        return execution

    async def _execute(self, delegation: str, approval: str, call: Call) -> Execution:
        tool = self._tool(call.tool)
        if not isinstance(call.idempotency_key, str) or not _IDEMPOTENCY_KEY.match(
            call.idempotency_key
        ):
            raise CallRefused(
                400,
                "bad_idempotency_key",
                "idempotency_key must be 8-50 characters of [0-9A-Za-z_-]",
            )
        document = call.document()
        try:
            self.approvals.verify(approval, document, self.clock)
        except BrokerError as exc:
            raise CallRefused(403, "approval_refused", str(exc)) from None
        grant = self._delegation(delegation, call)
        try:
            args = tool.parse_args(call.args, country=call.country)
        except ConnectorError as exc:
            raise CallRefused(400, "invalid_arguments", str(exc)) from None
        try:
            grant.authorize(tool.name, tool.effect(args))
        except dl.DelegationError as exc:
            raise CallRefused(403, "not_delegated", str(exc)) from None
        row = self._connection(call, tool)
        self._check_revoked(call, grant, row)

        digest = call_hash(document)
        now = self.clock.now()
        intent = IntentRow(
            tenant=call.tenant,
            idempotency_key=call.idempotency_key,
            call_hash=digest,
            tool=tool.name,
            connection_id=row.connection_id,
            state=IntentState.STARTED,
            result=None,
            created_at=now,
            updated_at=now,
        )
        use = DelegationUse(grant.id, call.tenant, grant.max_uses, grant.expires_at)
        try:
            seen = self.vault.store.begin_intent(intent, use=use)
        except UsesExhausted as exc:
            raise CallRefused(403, "max_uses", str(exc)) from None
        events = AuditEvents()
        if seen is None:
            execution = await self._run(tool, args, row, call, events, reconcile=False)
        elif seen.call_hash != digest:
            raise CallRefused(
                409, "idempotency_conflict", "idempotency_key was used for a different call"
            )
        elif seen.state in (IntentState.SUCCEEDED, IntentState.FAILED):
            return self._replay(seen)
        else:
            # Started before and never finished (a crash or timeout), or ended unknown. Where the
            # provider deduplicates on the key (or nothing changes), sending again is how the
            # first outcome is learned; otherwise the provider is asked first.
            reconcile = tool.idempotency == "intent_log"
            execution = await self._run(tool, args, row, call, events, reconcile=reconcile)
        return execution

    def _replay(self, seen: IntentRow) -> Execution:
        stored = orjson.loads(seen.result or b"{}")
        return Execution(
            status=seen.state.value,  # type: ignore[arg-type]
            tool=seen.tool,
            idempotency_key=seen.idempotency_key,
            result=stored.get("result"),
            error=stored.get("error"),
            replayed=True,
        )

    async def _run(
        self,
        tool: Tool[Any],
        args: Any,
        row: ConnectionRow,
        call: Call,
        events: AuditEvents,
        *,
        reconcile: bool,
    ) -> Execution:
        scrubber = Scrubber()
        status: Outcome
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        try:
            status, result = await self._call_provider(
                tool, args, row, call, events, scrubber, reconcile=reconcile
            )
        except OutcomeUnknown as exc:
            status, error = "unknown", _error(exc, scrubber)
        except ProviderRejected as exc:
            status, error = "failed", _error(exc, scrubber)
        except BrokerError as exc:
            message = scrubber.text(str(exc))
            status, error = "failed", {"code": type(exc).__name__, "message": message}
        state = IntentState(status)
        clean_result = scrubber.json(result) if result is not None else None
        self.vault.store.finish_intent(
            call.tenant, call.idempotency_key, state, _outcome_json(clean_result, error),
            self.clock.now(),
        )  # fmt: skip
        return Execution(
            status=status,
            tool=tool.name,
            idempotency_key=call.idempotency_key,
            result=clean_result,
            error=error,
            events=scrubber.json(events.items),
        )

    async def _call_provider(
        self,
        tool: Tool[Any],
        args: Any,
        row: ConnectionRow,
        call: Call,
        events: AuditEvents,
        scrubber: Scrubber,
        *,
        reconcile: bool,
    ) -> tuple[Outcome, dict[str, Any] | None]:
        provider = self.vault.provider(row.provider)
        token: str | None = None
        for attempt in (1, 2):
            if provider.auth == "oauth":
                row, token = await self.tokens.access_token(
                    row, events, refused=token if attempt == 2 else None
                )
                scrubber.add(token)
            with self.vault.open_credential(row, token) as credential:
                for secret in credential.secrets():
                    scrubber.add(secret)
                ctx = CallContext(
                    http=self.http,
                    endpoints=Endpoints(api=row.api_url, token=row.token_url),
                    credential=Credential(fields=credential.fields, access_token=token),
                    idempotency_key=call.idempotency_key,
                )
                try:
                    if reconcile:
                        return await self._reconcile(tool, args, ctx, call, scrubber)
                    return "succeeded", await tool.execute(ctx, args)
                except AuthRejected:
                    if provider.auth == "oauth" and attempt == 1:
                        continue  # the access token was refused early: refresh once, retry
                    reason = "the provider refused the stored credential (HTTP 401)"
                    self.vault.mark_needs_reconnect(row, reason)
                    events.add(
                        "credential.revoked", self.clock.now(),
                        {"connection_id": row.connection_id, "provider": row.provider,
                         "reason": f"needs_reconnect: {reason}"},
                    )  # fmt: skip
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reconcile(
        self, tool: Tool[Any], args: Any, ctx: CallContext, call: Call, scrubber: Scrubber
    ) -> tuple[Outcome, dict[str, Any] | None]:
        """Ask the provider whether an unfinished call happened; act only if it provably did
        not."""
        if tool.reconcile is None:
            raise OutcomeUnknown(
                tool.provider,
                "an earlier attempt may have acted and this provider cannot be asked; "
                "the outcome stays unknown until the owner checks",
            )
        try:
            found = await tool.reconcile(ctx, args)
        except AuthRejected:
            raise
        except ProviderRejected as exc:
            # A refusal while *asking* says nothing about whether the first attempt acted:
            # the outcome stays unknown rather than becoming "failed".
            raise OutcomeUnknown(
                tool.provider, f"could not ask the provider: {exc.message}"
            ) from None
        if found is not None:
            return "succeeded", found
        return "succeeded", await tool.execute(ctx, args)


def _error(exc: ConnectorError, scrubber: Scrubber) -> dict[str, Any]:
    return {
        "code": exc.code or type(exc).__name__,
        "status": exc.status,
        "message": scrubber.text(exc.message),
        "retryable": exc.retryable,
    }


def _outcome_json(result: dict[str, Any] | None, error: dict[str, Any] | None) -> str:
    return orjson.dumps({"result": result, "error": error}).decode("utf-8")
