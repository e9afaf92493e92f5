"""The broker's client, for the control plane: the only way other components reach the broker.

``DESIGN.md``: the supervisor never imports broker internals; it talks to ``corral broker``
through this client, over the broker's Unix socket (or TCP with TLS). The transport is
injectable (``httpx.ASGITransport(app=create_app(...))`` in tests).

A refusal (4xx/5xx problem document) raises :class:`BrokerRefused` with the problem's code
and detail; an executed call, whatever its outcome, returns the broker's JSON answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from corral.core.errors import BrokerError


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
            transport = httpx.AsyncHTTPTransport(uds=str(socket))
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

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/healthz")
