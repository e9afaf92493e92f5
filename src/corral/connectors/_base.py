"""What a tool declaration is: the one place a catalog tool is described.

A connector module (``corral.connectors.<provider>``) declares its tools once, as :class:`Tool`
values, and its provider once, as a :class:`Provider`. That one declaration feeds argument
validation (a pydantic model that forbids unknown names), the JSON Schema the MCP server lists,
the supervisor's :class:`Effect`, the prose (``tool.<name>.do``/``.did`` in
``corral.audit._wording``) and the broker's execution over httpx.

Execution contract, for every ``Tool.execute(ctx, args)``:

- it sends at most one state-changing request, to ``ctx.endpoints.api`` (never a hard-coded
  host), with the credential from ``ctx.credential`` and, where the provider has one, the
  idempotency key ``ctx.idempotency_key`` (Stripe ``Idempotency-Key``, QuickBooks ``requestid``,
  a Google event id derived from it);
- it returns a small allow-listed result (ids and states an agent may see, never the provider's
  whole body), or raises one of the :class:`ConnectorError` leaves below. Provider text that goes
  into an error message is the provider's error *message* only, never request headers or bodies.

Errors, translated once at this edge (``STYLE.md`` rule 4)::

    ConnectorError
    ├── InvalidArguments (ValueError)  the call does not fit the tool's schema; nothing was sent
    ├── ProviderRejected               the provider answered no: the outcome is ``failed``
    │   └── AuthRejected               401 / expired access token: refresh and try once more
    ├── InvalidGrant                   the token endpoint refused the refresh token
    └── OutcomeUnknown                 sent, but no answer (timeout, reset, 5xx): ``unknown``
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from corral.core.errors import CorralError

JSON: TypeAlias = Any
"""A JSON value (what :func:`corral.core.canonical.canonicalize` accepts)."""


# --- errors -------------------------------------------------------------------------------------


class ConnectorError(CorralError):
    """Base of errors raised by :mod:`corral.connectors`.

    ``provider`` names the provider; ``status`` is the HTTP status when there was one; ``code`` is
    the provider's own error code (Stripe ``error.code``, Twilio ``code``, QuickBooks
    ``Fault.Error[0].code``, ...) when it gave one.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable


class InvalidArguments(ConnectorError, ValueError):
    """The call's arguments do not fit the tool's schema; ``errors`` names each bad field."""

    def __init__(self, tool: str, errors: list[str]) -> None:
        super().__init__(
            tool.split(".", 1)[0], f"invalid arguments for {tool}: {'; '.join(errors)}"
        )
        self.tool = tool
        self.errors = errors


class ProviderRejected(ConnectorError):
    """The provider answered and refused: nothing happened, the outcome is ``failed``.

    ``retryable`` is true for 429 and "try later" answers that provably did not act.
    """


class AuthRejected(ProviderRejected):
    """The provider refused the access token or key (HTTP 401): refresh, then try once more."""


class InvalidGrant(ConnectorError):
    """The token endpoint refused the refresh token (``invalid_grant``): re-read it, retry once,
    else the connection needs a reconnect by its owner."""


class OutcomeUnknown(ConnectorError):
    """The request was (or may have been) sent and no answer came: it may have acted.

    The outcome is ``unknown`` and is settled by :attr:`Tool.reconcile`, never by a blind retry.
    """


# --- effects ------------------------------------------------------------------------------------


class EffectKind(enum.StrEnum):
    """What a call does to the world, in the supervisor's words (``SUPERVISOR.md``)."""

    MESSAGE = "message"
    CONTACT_UPDATE = "contact_update"
    BOOKING = "booking"
    CANCELLATION = "cancellation"
    READ = "read"
    REFUND = "refund"
    CHARGE = "charge"
    INVOICE = "invoice"


@dataclass(frozen=True, slots=True)
class Effect:
    """The business keys of one call, from its validated arguments alone.

    - ``recipient``: messages: E.164 (``+15550100001``), a lowercase email, or
      ``ghl_contact:<contact_id>``.
    - ``resource`` and ``start``/``end``: bookings: the calendar key (``google_calendar:<id>``,
      ``calendly:<event_type URI>``, ``ghl:<calendar_id>``) and the half-open ``[start, end)``.
    - ``target``: what a call acts on by id: a cancellation's event
      (``google_calendar:<calendar_id>/<event_id>`` or ``calendly:<event_uuid>``), a refund's
      ``payment_intent``, a charge's ``customer`` (``None`` without one), an invoice's
      ``customer_id``.
    - ``amount``/``currency``: minor units and lowercase ISO 4217 (refunds, charges); invoices
      carry their exact decimal total in ``total`` instead.
    - ``body``: a message's text as given (the supervisor normalizes it).

    Local day and calendar groups depend on the tenant's policy; the supervisor derives them.
    """

    kind: EffectKind
    recipient: str | None = None
    resource: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    target: str | None = None
    amount: int | None = None
    currency: str | None = None
    total: str | None = None
    body: str | None = None


# --- execution ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a connection's provider lives: its API base URL and, for OAuth, its token URL.

    The defaults are the real services; a connection may point at ``corral.fakes`` or a
    provider's sandbox instead (``api`` has no trailing slash).
    """

    api: str
    token: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """The plaintext of one credential version, in memory only while a call needs it.

    ``fields`` holds what the provider's :attr:`Provider.fields` lists (e.g. ``account_sid`` and
    ``auth_token``; ``client_id``, ``client_secret``, ``refresh_token`` and ``realm_id``);
    ``access_token`` is the current OAuth access token, if the provider uses OAuth.
    """

    fields: Mapping[str, str]
    access_token: str | None = None

    def __repr__(self) -> str:
        return f"Credential(fields={sorted(self.fields)}, access_token=<redacted>)"

    def secrets(self) -> list[str]:
        """Every value a scrubber must never let out (identifiers included: cheap to hide)."""
        values = [v for v in self.fields.values() if v]
        if self.access_token:
            values.append(self.access_token)
        return values


@dataclass(frozen=True, slots=True)
class CallContext:
    """What an execution gets from the broker; connectors own nothing else."""

    http: httpx.AsyncClient
    endpoints: Endpoints
    credential: Credential
    idempotency_key: str
    """Unique per logical call, ``[0-9A-Za-z_-]{1,50}``; the same on every retry of that call."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A token endpoint's answer (RFC 6749 §5.1), reduced to what the broker stores.

    ``refresh_token`` is ``None`` when the provider did not send a new one (Google: the old one
    stays valid). ``refresh_token_expires_in`` is QuickBooks' ``x_refresh_token_expires_in``.
    """

    access_token: str = field(repr=False)
    expires_in: int
    refresh_token: str | None = field(default=None, repr=False)
    refresh_token_expires_in: int | None = None


A = TypeVar("A", bound=BaseModel)

Execute: TypeAlias = Callable[[CallContext, A], Awaitable[dict[str, JSON]]]
Reconcile: TypeAlias = Callable[[CallContext, A], Awaitable[dict[str, JSON] | None]]
Refresh: TypeAlias = Callable[[httpx.AsyncClient, Endpoints, Credential], Awaitable[TokenGrant]]


class Arguments(BaseModel):
    """Base of every tool's argument model: unknown names are an error (``TOOLS.md``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True, slots=True)
class Tool(Generic[A]):
    """One catalog tool, declared once (``TOOLS.md``).

    - ``name``: ``<provider>.<operation>``, e.g. ``twilio.send_sms``.
    - ``operation``: the provider operation, exactly as ``TOOLS.md`` writes it.
    - ``args``: the argument model (an :class:`Arguments` subclass). Validation takes the
      tenant's ``country`` as pydantic context, for national-format phone numbers.
    - ``effect``: the call's :class:`Effect`, from validated arguments only.
    - ``execute``: the provider call (the contract is in this module's docstring).
    - ``reconcile``: asks the provider whether a call with these arguments and this idempotency
      key already happened: its result if so, ``None`` if it provably did not; raises
      :class:`OutcomeUnknown` when the provider cannot tell. ``None`` as the attribute means the
      provider offers no way to ask.
    - ``idempotency``: ``"native"`` when the provider itself deduplicates on
      ``ctx.idempotency_key``; ``"intent_log"`` when only the broker's intent log protects a
      retry; ``"read_only"`` for reads.
    """

    name: str
    operation: str
    args: type[A]
    effect: Callable[[A], Effect]
    execute: Execute[A]
    reconcile: Reconcile[A] | None
    idempotency: Literal["native", "intent_log", "read_only"]

    @property
    def provider(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def prose_key(self) -> str:
        """The wording key of this tool's sentence (``tool.<name>``, ``.do`` and ``.did``)."""
        return f"tool.{self.name}"

    def parse_args(self, raw: Mapping[str, JSON], *, country: str = "US") -> A:
        """Validate ``raw`` arguments; :class:`InvalidArguments` names every bad field."""
        if not isinstance(raw, Mapping):
            raise InvalidArguments(self.name, ["arguments must be a JSON object"])
        try:
            return self.args.model_validate(dict(raw), context={"country": country})
        except ValidationError as exc:
            raise InvalidArguments(self.name, _describe(exc)) from None

    def json_schema(self) -> dict[str, JSON]:
        """The arguments' JSON Schema, by alias (what the MCP server lists)."""
        return self.args.model_json_schema(by_alias=True)


def _describe(exc: ValidationError) -> list[str]:
    """One line per error: ``<field path>: <message>`` (never the rejected value itself)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "(arguments)"
        lines.append(f"{where}: {error['msg']}")
    return lines


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider: its connection fields, endpoints, OAuth refresh and tools.

    - ``name``: the tool-name prefix (``twilio``, ``stripe``, ``google_calendar``, ``calendly``,
      ``quickbooks``, ``ghl``).
    - ``auth``: ``"api_key"`` (static secret) or ``"oauth"`` (refresh token, access tokens).
    - ``fields``: the credential fields a connection must supply, in order; ``optional_fields``
      those it may supply (e.g. Twilio's default ``from`` number).
    - ``endpoints``: the real service's :class:`Endpoints`.
    - ``refresh``: for OAuth, exchanges ``credential.fields["refresh_token"]`` for a
      :class:`TokenGrant`; raises :class:`InvalidGrant` on ``invalid_grant``.
    - ``rotates_refresh_token``: whether a successful refresh invalidates the old refresh token.
    """

    name: str
    auth: Literal["api_key", "oauth"]
    fields: tuple[str, ...]
    endpoints: Endpoints
    tools: tuple[Tool[Any], ...]
    optional_fields: tuple[str, ...] = ()
    refresh: Refresh | None = None
    rotates_refresh_token: bool = False
