"""What the connector tests share (and the fake tests use): a clock, scenarios run against a
fake in-process, and the contract check every connector test ends with.

The contract check: every exchange a fake saw must fit the provider's published description,
request and response (:func:`contract_problems`; :func:`checked` runs it after a test). An
answer a fault put in the fake's place is the test's own, and :class:`InjectedFaults` remembers
which answers those were. A lost answer (an empty 504 no provider sends) is never checked. An
error body the test wrote is checked where the tests write it in the provider's own envelope
(Twilio, Stripe, QuickBooks: ``check_written=True``); the Google Calendar, Calendly and
HighLevel tests write bodies for statuses their descriptions do not declare, so there only the
request is checked.

Each description is checked as published, except where a test proves it wrong about the
provider or where the checker cannot read it; each such correction is named where it is made:

- Twilio, Stripe, QuickBooks (:class:`EnvelopeContract`): an error status the operation does
  not declare (the trimmed Twilio file declares no error response at all) is checked against
  the provider's error envelope schema instead;
- Google Calendar and Calendly (:class:`_BearerRequired`): the discovery document checks no
  auth, and openapi-core passes Calendly's ``oauth2`` scheme unchecked, so bearer presence is
  checked here;
- Calendly (:func:`calendly_contract`): the 401 ``message`` declares ``enum`` as a string;
- HighLevel (:func:`ghl_contract`): ``SendMessageBodyDto`` requires two fields a sent message
  has no value for.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, TypeVar

import httpx
from jsonschema import Draft202012Validator

from corral.connectors._base import CallContext, Credential, Provider, Tool
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
F = TypeVar("F", bound=Fake)

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAKES_START = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
"""The clock start of the Twilio, Stripe and QuickBooks fake tests (a Wednesday, 9 AM in Los
Angeles): they count days from it."""
"""The fakes' clock at the start of every test: the bookings in the tests are after it."""


def clock() -> ManualClock:
    return ManualClock(START)


# --- running against a fake ---------------------------------------------------------------------


def root(fake: Fake) -> str:
    return f"http://{fake.name}.fake"


def run(fake: Fake, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``scenario`` with an httpx client wired to the fake in-process."""

    async def main() -> T:
        transport = httpx.ASGITransport(app=fake.app())
        async with httpx.AsyncClient(transport=transport) as http:
            return await scenario(http)

    return asyncio.run(main())


def call(
    fake: Fake,
    tool: Tool[Any],
    raw: Mapping[str, Any],
    credential: Credential,
    *,
    key: str = "call-1",
    reconcile: bool = False,
) -> dict[str, Any] | None:
    """``tool`` with ``raw`` arguments against ``fake`` as the connection ``credential`` holds,
    under the idempotency key ``key``: executed, or with ``reconcile`` reconciled."""

    async def scenario(http: httpx.AsyncClient) -> dict[str, Any] | None:
        ctx = CallContext(http, fake.endpoints(root(fake)), credential, key)
        args = tool.parse_args(raw)
        if reconcile:
            assert tool.reconcile is not None
            return await tool.reconcile(ctx, args)
        return await tool.execute(ctx, args)

    return run(fake, scenario)


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


def failing_client(error: type[httpx.RequestError]) -> httpx.AsyncClient:
    """A client whose every request fails with ``error`` (a transport failure)."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return httpx.AsyncClient(transport=httpx.MockTransport(fail))


def problems_sending(
    fake: Fake, contract: Contract, method: str, path: str, **kwargs: Any
) -> list[str]:
    """What ``contract`` finds wrong with one request sent straight to ``fake`` (no connector)
    and its answer: how a test shows that the contract check can fail."""
    run(fake, lambda http: http.request(method, root(fake) + path, **kwargs))
    return contract_problems(contract, fake.exchanges)


def leaked(texts: Iterable[str], credential: Credential) -> list[str]:
    """The credential values that appear in any of ``texts`` (should be none)."""
    joined = "\n".join(texts)
    return [secret for secret in credential.secrets() if secret in joined]


# --- the contract check -------------------------------------------------------------------------

Answer = Literal["lost", "written"] | None
"""Who answered a request in the fake's place: ``"lost"``, :meth:`Faults.lose_answer`'s empty
504; ``"written"``, a :meth:`Faults.fail` body the test wrote; ``None``, nobody (the fake
answered itself, also after a :meth:`Faults.delay`)."""


class InjectedFaults(Faults):
    """:class:`Faults` that remember, per request in order, the :data:`Answer` a fault gave."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[Answer] = []

    def take(self, path: str) -> Any:
        fault = super().take(path)
        if fault is None or not fault.status:
            self.answers.append(None)
        else:
            self.answers.append("lost" if fault.act else "written")
        return fault


def contract_problems(
    contract: Contract,
    exchanges: Iterable[Exchange],
    answers: Sequence[Answer] = (),
    *,
    check_written: bool = False,
) -> list[str]:
    """Every way the exchanges do not fit ``contract`` (empty when they fit). ``answers`` are
    the :attr:`InjectedFaults.answers` of the same requests: a lost answer is not checked, and a
    written one only with ``check_written``."""
    problems: list[str] = []
    for i, exchange in enumerate(exchanges):
        problems += contract.request_problems(exchange)
        answer = answers[i] if i < len(answers) else None
        if answer is None or (answer == "written" and check_written):
            problems += contract.response_problems(exchange)
    return problems


@contextmanager
def checked(fake: F, contract: Contract, *, check_written: bool = False) -> Iterator[F]:
    """``fake`` with :class:`InjectedFaults`; on leaving, every exchange it saw must fit
    ``contract`` (a fixture's body: ``with checked(...) as fake: yield fake``)."""
    faults = InjectedFaults()
    fake.faults = faults
    yield fake
    problems = contract_problems(
        contract, fake.exchanges, faults.answers, check_written=check_written
    )
    assert not problems, "\n".join(problems)


# --- Twilio, Stripe, QuickBooks -----------------------------------------------------------------


@cache
def _openapi(provider_dir: str, file: str) -> OpenAPIContract:
    return OpenAPIContract.from_files(provider_dir, file)


@dataclass(frozen=True)
class EnvelopeContract:
    """One OpenAPI file, with the error statuses its operations do not declare checked against
    the provider's error envelope schema ``components.schemas.<error_schema>``."""

    provider_dir: str
    file: str
    error_schema: str

    def request_problems(self, exchange: Exchange) -> list[str]:
        return _openapi(self.provider_dir, self.file).request_problems(exchange)

    def response_problems(self, exchange: Exchange) -> list[str]:
        if self._declares(exchange):
            return _openapi(self.provider_dir, self.file).response_problems(exchange)
        where = f"response {exchange.status} to {exchange.method} {exchange.path}"
        try:
            body = json.loads(exchange.response_body)
        except ValueError:
            return [f"{where}: error body is not JSON"]
        document = spec_json(self.provider_dir, self.file)
        schema = {
            "$ref": f"#/components/schemas/{self.error_schema}",
            "components": document["components"],
        }
        return [f"{where}: {e.message}" for e in Draft202012Validator(schema).iter_errors(body)]

    def _declares(self, exchange: Exchange) -> bool:
        """Whether the operation declares a response for the exchange's status."""
        status, responses = exchange.status, {}
        for template, item in spec_json(self.provider_dir, self.file).get("paths", {}).items():
            pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, exchange.path) and exchange.method.lower() in item:
                responses = item[exchange.method.lower()].get("responses", {})
                break
        return any(key in responses for key in (str(status), f"{status // 100}XX", "default"))


TWILIO = EnvelopeContract("twilio", "twilio_api_v2010.messages.json", "twilio.error")
STRIPE = EnvelopeContract("stripe", "stripe_spec3.payments_refunds.json", "error")
QUICKBOOKS = EnvelopeContract("quickbooks", "qbo_v3.supplement.openapi.json", "FaultEnvelope")


# --- Google Calendar, Calendly, HighLevel -------------------------------------------------------


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


HIGHLEVEL_FILES = tuple(
    f"highlevel_{part}.trimmed.json" for part in ("contacts", "conversations", "calendars", "oauth")
)


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
