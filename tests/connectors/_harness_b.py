"""Shared helpers for the Google Calendar, Calendly and HighLevel connector and fake tests.

- The three providers' contracts, built once: every exchange a test makes with a fake is held
  to the provider's published description (:func:`contract_problems`).
- :class:`InjectedFaults` remembers which answers a fault replaced: those bodies are the test's
  own (a lost answer is an empty 504), so only their requests are held to the contract.
- :func:`run` and :func:`connect` run a scenario against a fake in-process with a credential
  obtained from the provider's own ``refresh``.
"""

from __future__ import annotations

import asyncio
import copy
import warnings
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

import httpx

from corral.connectors._base import CallContext, Credential, Provider
from corral.core.clock import ManualClock
from corral.fakes._common import Fake, Faults
from corral.fakes._contract import (
    Contract,
    DiscoveryContract,
    Exchange,
    OpenAPIContract,
    spec_json,
)

T = TypeVar("T")

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
"""The fakes' clock at the start of every test: the bookings in the tests are after it."""

HIGHLEVEL_FILES = tuple(
    f"highlevel_{part}.trimmed.json" for part in ("contacts", "conversations", "calendars", "oauth")
)


def clock() -> ManualClock:
    return ManualClock(START)


class InjectedFaults(Faults):
    """:class:`Faults` that remember, per request in order, whether a fault replaced the
    answer (``lose_answer`` and ``fail`` do; ``delay`` keeps the fake's own answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.replaced: list[bool] = []

    def take(self, path: str) -> Any:
        fault = super().take(path)
        self.replaced.append(fault is not None and fault.status != 0)
        return fault


class _TokenOr:
    """One provider's contract from two descriptions: its token endpoint and its API."""

    def __init__(self, token_path: str, token: Contract, api: Contract) -> None:
        self._token_path, self._token, self._api = token_path, token, api

    def _for(self, exchange: Exchange) -> Contract:
        return self._token if exchange.path == self._token_path else self._api

    def request_problems(self, exchange: Exchange) -> list[str]:
        return self._for(exchange).request_problems(exchange)

    def response_problems(self, exchange: Exchange) -> list[str]:
        return self._for(exchange).response_problems(exchange)


class _BearerRequired:
    """Adds the check the shared contract skips for Google and Calendly: every API request
    carries ``Authorization: Bearer`` (the token endpoint authenticates the client instead).
    ``DiscoveryContract`` checks no auth; Calendly's operations accept ``oauth2`` or a bearer
    token, and openapi-core passes ``oauth2`` unchecked, warning "Unsupported scheme type"
    (silenced here, where the gap is covered)."""

    def __init__(self, contract: Contract, token_path: str) -> None:
        self._contract, self._token_path = contract, token_path

    def request_problems(self, exchange: Exchange) -> list[str]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning)
            problems = self._contract.request_problems(exchange)
        headers = {k.lower(): v for k, v in exchange.headers.items()}
        scheme = headers.get("authorization", "").partition(" ")[0].lower()
        if exchange.path != self._token_path and scheme != "bearer":
            problems.append(f"request {exchange.method} {exchange.path}: no bearer token")
        return problems

    def response_problems(self, exchange: Exchange) -> list[str]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning)
            return self._contract.response_problems(exchange)


@cache
def google_contract() -> Contract:
    """Discovery for ``/calendar/v3/...`` (errors against the supplement's ``GoogleApiError``),
    the OAuth supplement for ``/token``; discovery checks no auth, so bearer presence is
    checked here."""
    oauth_file = "google_oauth_token_and_errors.supplement.openapi.json"
    errors = spec_json("google-calendar", oauth_file)["components"]["schemas"]["GoogleApiError"]
    discovery = spec_json("google-calendar", "calendar.v3.discovery.trimmed.json")
    contract = _TokenOr(
        "/token",
        OpenAPIContract.from_files("google-calendar", oauth_file),
        DiscoveryContract(discovery, errors),
    )
    return _BearerRequired(contract, "/token")


CALENDLY_FILES = ("calendly_api_v2.trimmed.json", "calendly.supplement.openapi.json")
UNAUTHENTICATED_MESSAGE: tuple[str | int, ...] = (
    *("components", "responses", "UNAUTHENTICATED", "content", "application/json", "schema"),
    *("allOf", 1, "properties", "message"),
)
"""Where ``calendly_api_v2.trimmed.json`` declares the 401 message with ``enum`` as a string."""


@cache
def calendly_contract_as_published() -> Contract:
    return OpenAPIContract.from_files("calendly", *CALENDLY_FILES)


@cache
def calendly_contract() -> Contract:
    """The Calendly files with one named correction, proven needed by
    ``test_calendly.test_published_401_schema_refuses_its_own_message``: the trimmed file's
    ``UNAUTHENTICATED`` response declares ``message`` with ``"enum": "The access token is
    invalid"`` (a string, not a list), so openapi-core refuses that very message. The copy
    makes it the one-element list it means. Bearer presence is checked as well."""
    trimmed, supplement = (spec_json("calendly", name) for name in CALENDLY_FILES)
    corrected = copy.deepcopy(trimmed)
    node: Any = corrected
    for step in UNAUTHENTICATED_MESSAGE:
        node = node[step]
    node["enum"] = [node["enum"]]
    return _BearerRequired(OpenAPIContract([corrected, supplement]), "/oauth/token")


@cache
def ghl_contract_as_published() -> Contract:
    return OpenAPIContract.from_files("gohighlevel", *HIGHLEVEL_FILES)


@cache
def ghl_contract() -> Contract:
    """The HighLevel files with one named correction, proven needed by
    ``test_ghl.test_published_send_message_schema_is_over_strict``:
    ``highlevel_conversations.trimmed.json`` ``components.schemas.SendMessageBodyDto.required``
    lists ``subType`` and ``status``, which NOTES.md ("HighLevel") calls over-strict (a sent
    message has no status yet); only ``type`` and ``contactId`` stay required."""
    documents = [spec_json("gohighlevel", name) for name in HIGHLEVEL_FILES]
    conversations = copy.deepcopy(documents[1])
    conversations["components"]["schemas"]["SendMessageBodyDto"]["required"] = [
        "type",
        "contactId",
    ]
    return OpenAPIContract([documents[0], conversations, *documents[2:]])


def contract_problems(fake: Fake, contract: Contract) -> list[str]:
    """Every problem of every exchange the fake saw; an answer a fault replaced is the test's
    own, so only its request is checked."""
    faults = fake.faults
    replaced = faults.replaced if isinstance(faults, InjectedFaults) else []
    problems: list[str] = []
    for i, exchange in enumerate(fake.exchanges):
        problems += contract.request_problems(exchange)
        if i >= len(replaced) or not replaced[i]:
            problems += contract.response_problems(exchange)
    return problems


def root(fake: Fake) -> str:
    return f"http://{fake.name}.fake"


def run(fake: Fake, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``scenario`` with an httpx client wired to the fake in-process."""

    async def main() -> T:
        transport = httpx.ASGITransport(app=fake.app())
        async with httpx.AsyncClient(transport=transport) as http:
            return await scenario(http)

    return asyncio.run(main())


async def connect(
    http: httpx.AsyncClient,
    fake: Fake,
    provider: Provider,
    fields: dict[str, str],
    key: str = "call-1",
) -> CallContext:
    """A call context with a fresh access token from ``provider.refresh`` (and, for a rotating
    provider, the new refresh token in its fields, as the broker would store it)."""
    endpoints = fake.endpoints(root(fake))
    assert provider.refresh is not None
    grant = await provider.refresh(http, endpoints, Credential(fields=fields))
    stored = {**fields, "refresh_token": grant.refresh_token or fields["refresh_token"]}
    credential = Credential(fields=stored, access_token=grant.access_token)
    return CallContext(http, endpoints, credential, key)


def failing_client(error: type[httpx.TransportError]) -> httpx.AsyncClient:
    """A client whose every request fails with ``error`` (a transport failure)."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return httpx.AsyncClient(transport=httpx.MockTransport(fail))


def leaked(texts: Iterable[str], credential: Credential) -> list[str]:
    """The credential values that appear in any of ``texts`` (should be none)."""
    joined = "\n".join(texts)
    return [secret for secret in credential.secrets() if secret in joined]
