"""The broker's client, for the control plane: the only way other components reach the broker.

``DESIGN.md``: the supervisor never imports broker internals; it talks to ``corral broker``
through this client, over the broker's Unix socket (or TCP with TLS). The transport is
injectable (``httpx.ASGITransport(app=create_app(...))`` in tests).

A refusal (4xx/5xx problem document) raises :class:`BrokerRefused` with the problem's code
and detail; an executed call, whatever its outcome, returns the broker's JSON answer.

Every request that changes something carries control's approval of a *call document* built
from it (:func:`mint_call`, :func:`revoke_call`, :func:`connect_call`, :func:`rotate_call`,
:func:`disconnect_call`); client and broker build the same document from the same request, so
control signs exactly what the broker will do.

**Credentials in call documents.** A connect or rotate request carries the credential's fields;
its call document carries only their names and :func:`credential_digest` of the values, never
a value. Control builds and signs that document and may keep or log it like any call it
approves: a secret must not ride along. The digest binds the approval to exactly these values
as firmly as the values would (change one and the document's hash, so the approval, no longer
matches). A SHA-256 can be tested against guesses, so it hides a secret as well as the secret
resists guessing: provider-issued keys and tokens (random, 128 bits or more) do. The tenant is
hashed with the fields, so the same key connected for two tenants gives unrelated digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from corral.core.canonical import canonicalize
from corral.core.errors import BrokerError

#: The version tag inside :func:`credential_digest`'s hashed document.
CREDENTIAL_DIGEST_V = "corral.credential.v1"


def _control_call(tool: str, request: dict[str, Any], agent: str, sandbox: str) -> dict[str, Any]:
    args = {
        k: v for k, v in request.items() if k not in ("tenant", "idempotency_key") and v is not None
    }
    return {
        "tenant": request.get("tenant"), "agent": agent, "sandbox": sandbox, "tool": tool,
        "args": args, "idempotency_key": request.get("idempotency_key"),
        "connection_id": None, "country": "US",
    }  # fmt: skip


def mint_call(request: dict[str, Any]) -> dict[str, Any]:
    """The call document control approves for a ``POST /delegations`` request (tool
    ``delegation.request``): the request's fields other than tenant and key are its args."""
    return _control_call("delegation.request", request, request["agent"], request["sandbox"])


def revoke_call(request: dict[str, Any]) -> dict[str, Any]:
    """The call document control approves for a ``POST /revocations`` request."""
    return _control_call("delegation.revoke", request, "-", "-")


def credential_digest(tenant: str, fields: Mapping[str, str]) -> str:
    """Hex SHA-256 of the RFC 8785 form of ``{"fields", "tenant", "v"}``: what a call document
    holds in place of a credential's values (see the module docstring)."""
    document = {"fields": dict(fields), "tenant": tenant, "v": CREDENTIAL_DIGEST_V}
    return hashlib.sha256(canonicalize(document)).hexdigest()


def _credential_call(
    tool: str, request: Mapping[str, Any], connection_id: str | None
) -> dict[str, Any]:
    skip = ("tenant", "idempotency_key", "connection_id", "fields")
    args: dict[str, Any] = {k: v for k, v in request.items() if k not in skip and v is not None}
    fields = request.get("fields")
    if fields is not None:
        args["fields"] = sorted(fields)
        args["fields_sha256"] = credential_digest(request["tenant"], fields)
    return {
        "tenant": request.get("tenant"), "agent": "-", "sandbox": "-", "tool": tool,
        "args": args, "idempotency_key": request.get("idempotency_key"),
        "connection_id": connection_id, "country": "US",
    }  # fmt: skip


def connect_call(request: Mapping[str, Any]) -> dict[str, Any]:
    """The call document control approves for a ``POST /connections`` request (tool
    ``credential.connect``): the connection id (``None``: the broker picks
    ``<provider>-<n>``), the provider, operator and endpoints as arguments, and the credential
    as its field names and :func:`credential_digest`, never its values."""
    return _credential_call("credential.connect", request, request.get("connection_id"))


def rotate_call(connection_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The call document for ``POST /connections/{connection_id}/rotate`` (tool
    ``credential.rotate``): the connection, the operator, the new fields' names and digest."""
    return _credential_call("credential.rotate", request, connection_id)


def disconnect_call(connection_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The call document for ``POST /connections/{connection_id}/disconnect`` (tool
    ``credential.disconnect``): the connection, the operator and the reason."""
    return _credential_call("credential.disconnect", request, connection_id)


class BrokerRefused(BrokerError):
    """The broker answered with a problem document (nothing was executed)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"broker refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class BrokerUnreachable(BrokerError):
    """No answer from the broker: for ``/execute`` the outcome is unknown."""


class BrokerClient:
    """Async client of ``corral broker``'s API."""

    def __init__(
        self,
        *,
        socket: Path | None = None,
        base_url: str = "http://broker",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if transport is None and socket is not None:
            # Few idle connections (see ControlRelay): each costs system calls on every request.
            limits = httpx.Limits(max_keepalive_connections=8, keepalive_expiry=5.0)
            transport = httpx.AsyncHTTPTransport(uds=str(socket), limits=limits)
        self._http = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=httpx.Timeout(timeout_s)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(f"broker unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                problem = response.json()
                code, detail = str(problem.get("title", "error")), str(problem.get("detail", ""))
                code = str(problem.get("type", "")).rsplit("/", 1)[-1] or code
            except ValueError:
                code, detail = "error", response.text[:200]
            raise BrokerRefused(response.status_code, code, detail)
        body: dict[str, Any] = response.json()
        return body

    async def execute(self, delegation: str, approval: str, call: dict[str, Any]) -> dict[str, Any]:
        body = {"delegation": delegation, "approval": approval, "call": call}
        return await self._request("POST", "/execute", json=body)

    async def mint(self, approval: str, request: dict[str, Any]) -> dict[str, Any]:
        return await self._request(
            "POST", "/delegations", json={"approval": approval, "request": request}
        )

    async def revoke(self, approval: str, request: dict[str, Any]) -> dict[str, Any]:
        return await self._request(
            "POST", "/revocations", json={"approval": approval, "request": request}
        )

    async def connections(self, tenant: str) -> dict[str, Any]:
        return await self._request("GET", "/connections", params={"tenant": tenant})

    async def connect(self, approval: str, request: dict[str, Any]) -> dict[str, Any]:
        """``POST /connections``: ``{"connection": <public row>, "events": [...], "replayed"}``;
        ``approval`` is control's over :func:`connect_call` of ``request``."""
        return await self._request(
            "POST", "/connections", json={"approval": approval, "request": request}
        )

    async def rotate(
        self, connection_id: str, approval: str, request: dict[str, Any]
    ) -> dict[str, Any]:
        """``POST /connections/{connection_id}/rotate``; ``approval`` over :func:`rotate_call`."""
        return await self._request(
            "POST",
            f"/connections/{quote(connection_id, safe='')}/rotate",
            json={"approval": approval, "request": request},
        )

    async def disconnect(
        self, connection_id: str, approval: str, request: dict[str, Any]
    ) -> dict[str, Any]:
        """``POST /connections/{connection_id}/disconnect``; ``approval`` over
        :func:`disconnect_call`."""
        return await self._request(
            "POST",
            f"/connections/{quote(connection_id, safe='')}/disconnect",
            json={"approval": approval, "request": request},
        )

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/healthz")
