"""The provider edge the six connectors share: where HTTP outcomes become connector errors.

Errors are translated once, at the edge (``STYLE.md`` rule 4; the error tree is drawn in
:mod:`corral.connectors._base`). Every connector meets the same questions there, so this module
answers each of them once, for all six:

- a transport failure: was anything sent? (:meth:`Edge.send`)
- an answer other than 2xx: may it have acted (5xx), does it want a fresh token (401), may a
  later try succeed (429, or the provider's own "try later")? (:meth:`Edge.refusal`; for a
  token endpoint, :meth:`Edge.token_refusal`)
- a success answer that cannot be read: it may have acted, so the outcome is unknown
  (:meth:`Edge.body`, :meth:`Edge.read`);
- provider text in an error message: no credential value may leave (:func:`redact`);
- reconciling: a refusal while asking means "cannot tell", never "it did not happen"
  (:meth:`Edge.reconciler`), unless the ask is the call itself, replayed under the provider's
  idempotency key (:meth:`Edge.replayed`).

What stays in each provider module is what differs: its auth headers, how its error envelope
reads, and which of its refusals mean "try later".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from corral.connectors._base import (
    JSON,
    Arguments,
    AuthRejected,
    CallContext,
    ConnectorError,
    Credential,
    Endpoints,
    InvalidGrant,
    OutcomeUnknown,
    ProviderRejected,
    Reconcile,
    TokenGrant,
)

_A = TypeVar("_A", bound=Arguments)

REDACTED = "[redacted]"
TEXT_LIMIT = 500
"""The most characters of provider text an error message carries."""

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
"""Transport failures that happen before a request leaves: no connection, none free in the
pool, or a URL httpx cannot speak to."""


def redact(text: str, credential: Credential) -> str:
    """Provider text fit for an error message: every value of ``credential`` blanked out
    (identifiers too, see :meth:`Credential.secrets`), then cut to :data:`TEXT_LIMIT`."""
    for secret in credential.secrets():
        text = text.replace(secret, REDACTED)
    return text[:TEXT_LIMIT]


def json_object(response: httpx.Response, **loads: Any) -> dict[str, Any] | None:
    """The answer's body if it is a JSON object, else ``None``: how an error envelope or a token
    answer is read, since either may be anything. ``loads`` goes to :func:`json.loads`
    (``parse_float=Decimal``)."""
    try:
        body = response.json(**loads)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@dataclass(frozen=True, slots=True)
class Edge:
    """One provider's side of the edge: ``name`` is its errors' ``provider`` (``google_calendar``),
    ``label`` the name its messages use (``Google Calendar``)."""

    name: str
    label: str

    async def send(
        self, http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        """One request; a transport failure becomes the error that says whether it may have acted.

        A request that never left (:data:`_NOT_SENT`) did nothing: :class:`ProviderRejected`,
        retryable. Any other failure may have come after the provider read the request:
        :class:`OutcomeUnknown`.
        """
        try:
            return await http.request(method, url, **kwargs)
        except _NOT_SENT:
            raise ProviderRejected(
                self.name, f"could not reach {self.label}; nothing was sent", retryable=True
            ) from None
        except httpx.RequestError as exc:
            raise OutcomeUnknown(
                self.name, f"no answer from {self.label} ({type(exc).__name__}); it may have acted"
            ) from None

    async def call(
        self,
        ctx: CallContext,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        refusal: Callable[[httpx.Response, Credential], ConnectorError],
        accept: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """Send to ``ctx.endpoints.api + path`` with the provider's ``headers``; a 2xx answer or
        a status in ``accept`` is returned, any other raised as the provider's ``refusal``."""
        url = ctx.endpoints.api + path
        response = await self.send(ctx.http, method, url, headers=headers, **kwargs)
        if response.is_success or response.status_code in accept:
            return response
        raise refusal(response, ctx.credential)

    def refusal(
        self,
        status: int,
        text: str,
        credential: Credential,
        *,
        code: str | None = None,
        retryable: bool = False,
    ) -> ConnectorError:
        """The error for an API's answer with ``status`` (not 2xx), ``text`` being the provider's.

        5xx may have acted (:class:`OutcomeUnknown`); 401 wants a fresh token or key
        (:class:`AuthRejected`); anything else is a refusal (:class:`ProviderRejected`),
        retryable on 429 and where the provider says "try later" in its own way (``retryable``).
        """
        text = redact(text, credential)
        if status >= 500:
            return OutcomeUnknown(self.name, text, status=status, code=code)
        if status == 401:
            return AuthRejected(self.name, text, status=status, code=code)
        retryable = retryable or status == 429
        return ProviderRejected(self.name, text, status=status, code=code, retryable=retryable)

    def token_refusal(
        self, status: int, text: str, credential: Credential, *, code: str | None
    ) -> ConnectorError:
        """The error for a token endpoint's refusal (RFC 6749 §5.2): ``invalid_grant`` is an
        :class:`InvalidGrant`, 5xx may have acted, anything else is a :class:`ProviderRejected`
        (429 retryable). Never :class:`AuthRejected`: a refused client is no stale token."""
        text = redact(text, credential)
        if code == "invalid_grant":
            return InvalidGrant(self.name, text, status=status, code=code)
        if status >= 500:
            return OutcomeUnknown(self.name, text, status=status, code=code)
        return ProviderRejected(self.name, text, status=status, code=code, retryable=status == 429)

    async def refresh(
        self,
        http: httpx.AsyncClient,
        endpoints: Endpoints,
        credential: Credential,
        *,
        form: Mapping[str, str],
        auth: tuple[str, str] | None = None,
        refused: Callable[[httpx.Response, Credential], ConnectorError] | None = None,
    ) -> TokenGrant:
        """RFC 6749 §6: ``form`` posted to ``endpoints.token``, with ``auth`` as HTTP Basic client
        authentication where the provider wants it there rather than in the form.

        A §5.1 answer is a :class:`TokenGrant` (``refresh_token`` is ``None`` when the provider
        sent none); a refusal is :meth:`token_refusal`'s error, or ``refused``'s for a provider
        that does not answer in §5.2's words.
        """
        if endpoints.token is None:
            raise ProviderRejected(self.name, "the connection has no token endpoint")
        client = {} if auth is None else {"auth": auth}
        response = await self.send(http, "POST", endpoints.token, data=form, **client)
        body = json_object(response) or {}
        if response.is_success and "access_token" in body:
            return TokenGrant(
                access_token=str(body["access_token"]),
                expires_in=int(body["expires_in"]),
                refresh_token=body.get("refresh_token"),
            )
        if refused is not None:
            raise refused(response, credential)
        error = body.get("error")
        code = error if isinstance(error, str) else None
        text = str(body.get("error_description") or code or f"HTTP {response.status_code}")
        raise self.token_refusal(response.status_code, text, credential, code=code)

    def body(self, response: httpx.Response, **loads: Any) -> dict[str, Any]:
        """The JSON object of a success answer; any other body leaves the outcome unknown (the
        call may have acted, and its answer cannot say)."""
        body = json_object(response, **loads)
        if body is None:
            raise self._unreadable(response)
        return body

    def read(
        self, response: httpx.Response, build: Callable[[Any], dict[str, JSON]]
    ) -> dict[str, JSON]:
        """``build``'s result from a success answer's JSON object; an answer without what
        ``build`` needs leaves the outcome unknown, as one that is not JSON does."""
        body = self.body(response)
        try:
            return build(body)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            raise self._unreadable(response) from None

    def _unreadable(self, response: httpx.Response) -> OutcomeUnknown:
        status = response.status_code
        return OutcomeUnknown(self.name, f"unreadable answer (HTTP {status})", status=status)

    def reconciler(
        self, ask: Callable[[CallContext, _A], Awaitable[dict[str, JSON] | None]]
    ) -> Reconcile[_A]:
        """A reconcile that keeps :attr:`Tool.reconcile`'s contract around ``ask``: a refusal
        other than 401, or an answer it cannot read, means "cannot tell"
        (:class:`OutcomeUnknown`), never "it did not happen"; a 401 is left for the broker to
        refresh and ask again."""

        async def reconcile(ctx: CallContext, args: _A) -> dict[str, JSON] | None:
            try:
                return await ask(ctx, args)
            except AuthRejected:
                raise
            except ProviderRejected as exc:
                raise OutcomeUnknown(
                    self.name, f"cannot tell: {exc.message}", status=exc.status, code=exc.code
                ) from None
            except (KeyError, TypeError, AttributeError, ValueError):
                raise OutcomeUnknown(self.name, "cannot tell: unexpected answer") from None

        return reconcile

    def replayed(
        self, execute: Callable[[CallContext, _A], Awaitable[dict[str, JSON]]]
    ) -> Reconcile[_A]:
        """Reconcile by sending the same call again with the same idempotency key, for a
        provider that answers a repeated key with the first call's outcome.

        A refusal means the call did not act (``None``); a 401 is left for the broker to refresh
        and ask again; a "try later" refusal cannot tell yet (:class:`OutcomeUnknown`).
        """

        async def reconcile(ctx: CallContext, args: _A) -> dict[str, JSON] | None:
            try:
                return await execute(ctx, args)
            except AuthRejected:
                raise
            except ProviderRejected as exc:
                if exc.retryable:
                    raise OutcomeUnknown(
                        self.name, exc.message, status=exc.status, code=exc.code, retryable=True
                    ) from None
                return None

        return reconcile
