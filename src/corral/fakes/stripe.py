"""A local Stripe (API version 2023-08-16): PaymentIntents, their charges and refunds, in memory.

It serves, at its root, the operations ``specs/stripe/stripe_spec3.payments_refunds.json``
keeps: ``POST /v1/payment_intents``, ``POST /v1/refunds`` and ``GET`` of a payment intent, a
refund or a charge. Resources are built from the verbatim upstream fixtures
(``stripe_fixtures3.payments_refunds.json``), and the behaviour follows ``specs/NOTES.md``
("Stripe") and ``specs/stripe/stripe.supplement.json``:

- the secret key as Bearer (or Basic ``key:``); a missing or unknown key is 401;
- errors are ``{"error": {type, code, message, param, ...}}`` (``components.schemas.error``):
  ``parameter_missing``, ``parameter_invalid_integer``, ``resource_missing``,
  ``amount_too_small``, ``amount_too_large``, ``charge_already_refunded``, ``card_declined``;
- ``Idempotency-Key`` (``idempotency_semantics``): once execution begins, the first status and
  body are saved and replayed to a retry with the same parameters (``Idempotent-Replayed:
  true``); other parameters with the same key are an ``idempotency_error``; a request that
  fails parameter validation is not saved;
- ``POST /v1/payment_intents`` with ``confirm=true`` charges a test PaymentMethod
  (``test_mode.test_payment_methods``): ``pm_card_visa`` succeeds, the two declining cards
  answer 402 ``card_error``; only a succeeded PaymentIntent's charge can be refunded, and only
  up to what is left of it, in its own currency;
- a ``Stripe-Version`` other than 2023-08-16 is refused: this fake serves that version only.

Keys are never echoed, not even masked.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import parse_qsl

from babel.numbers import list_currencies
from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.connectors._base import Endpoints
from corral.core.clock import Clock, SystemClock
from corral.fakes._common import ASGIApp, Faults, recorded, token
from corral.fakes._contract import Exchange, spec_json

__all__ = ["StripeFake"]

_VERSION = "2023-08-16"
_MAX_KEY = 255
_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
_MINIMUM_CHARGE = {"usd": 50, "eur": 50, "cad": 50, "aud": 50, "gbp": 30, "jpy": 50}
"""Smallest PaymentIntent amounts (minor units) for common currencies; others need 1."""
_DECLINES = {
    "pm_card_chargeDeclined": ("generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
}
_SUCCEEDS = "pm_card_visa"
_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
)

Form = Mapping[str, str]


class _Refused(Exception):
    """An error answer. ``saved``: whether execution had begun, so an idempotency key keeps it
    (``idempotency_semantics.stored_result``); parameter errors are not saved."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        saved: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        error: dict[str, Any] = {"type": kind, "message": message}
        if code is not None:
            error |= {"code": code, "doc_url": f"https://stripe.com/docs/error-codes/{code}"}
        if param is not None:
            error["param"] = param
        self.status = status
        self.body = {"error": error | extra}
        self.saved = saved


def _invalid(
    message: str, *, code: str | None = None, param: str | None = None, saved: bool = False
) -> _Refused:
    return _Refused(400, "invalid_request_error", message, code=code, param=param, saved=saved)


def _missing(name: str) -> _Refused:
    return _invalid(f"Missing required param: {name}.", code="parameter_missing", param=name)


@cache
def _currencies() -> frozenset[str]:
    return frozenset(code.lower() for code in list_currencies())


def _template(name: str) -> dict[str, Any]:
    """A fresh copy of the upstream fixture of resource ``name``."""
    fixtures = spec_json("stripe", "stripe_fixtures3.payments_refunds.json")
    return copy.deepcopy(fixtures["resources"][name])


_Request = tuple[str, tuple[tuple[str, str], ...]]
"""What an idempotency key compares: the path and the sorted form parameters."""


@dataclass
class _Saved:
    """The first answer to an idempotency key, and the request it answered."""

    request: _Request
    status: int
    body: dict[str, Any]


@dataclass
class _Account:
    id: str
    customers: set[str] = field(default_factory=set)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    saved: dict[str, _Saved] = field(default_factory=dict)


class StripeFake:
    """Stripe for tests: each :meth:`new_connection` is a test-mode account and its secret key."""

    name = "stripe"

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.exchanges: list[Exchange] = []
        self.faults = Faults()
        self._keys: dict[str, _Account] = {}
        self._lock = threading.Lock()

    # --- the Fake protocol and state ------------------------------------------------------------

    def endpoints(self, root: str) -> Endpoints:
        return Endpoints(api=root)

    def new_connection(self) -> dict[str, str]:
        api_key = token("sk_test_", 24)
        with self._lock:
            self._keys[api_key] = _Account(token("acct_", 12))
        return {"api_key": api_key}

    def add_customer(self, api_key: str) -> str:
        """A customer of the key's account (``POST /v1/customers`` is not in the description)."""
        customer = token("cus_", 10)
        with self._lock:
            self._keys[api_key].customers.add(customer)
        return customer

    def add_paid_payment_intent(self, api_key: str, amount: int, currency: str = "usd") -> str:
        """A PaymentIntent paid with the test card (as ``POST /v1/payment_intents`` with
        ``confirm=true`` and ``payment_method=pm_card_visa`` makes one): something to refund."""
        form = {
            "amount": str(amount),
            "currency": currency,
            "confirm": "true",
            "payment_method": _SUCCEEDS,
        }
        with self._lock:
            return str(self._create_payment_intent(self._keys[api_key], form)["id"])

    def refunds(self, api_key: str) -> list[dict[str, Any]]:
        """Every refund of the key's account, oldest first (to check the fake's state)."""
        with self._lock:
            return copy.deepcopy(list(self._keys[api_key].refunds.values()))

    def payment_intents(self, api_key: str) -> list[dict[str, Any]]:
        """Every PaymentIntent of the key's account, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._keys[api_key].payment_intents.values()))

    def app(self) -> ASGIApp:
        api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        api.add_exception_handler(_Refused, self._render_refusal)
        api.add_exception_handler(StarletteHTTPException, self._render_http_error)
        api.post("/v1/payment_intents")(self._post_payment_intent)
        api.post("/v1/refunds")(self._post_refund)
        api.get("/v1/payment_intents/{intent}")(self._getter("payment_intent", "intent"))
        api.get("/v1/refunds/{refund}")(self._getter("refund", "refund"))
        api.get("/v1/charges/{charge}")(self._getter("charge", "charge"))
        return recorded(self, api)

    # --- rendering ------------------------------------------------------------------------------

    def _json(self, status: int, body: Mapping[str, Any], *, replayed: bool = False) -> Response:
        headers = {"Request-Id": token("req_", 10), "Stripe-Version": _VERSION}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(
            json.dumps(body), status_code=status, media_type="application/json", headers=headers
        )

    async def _render_refusal(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return self._json(exc.status, exc.body)

    async def _render_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = f"Unrecognized request URL ({request.method}: {request.url.path})."
        return self._json(
            exc.status_code, {"error": {"type": "invalid_request_error", "message": message}}
        )

    # --- auth and idempotency -------------------------------------------------------------------

    def _account(self, request: Request) -> _Account:
        """The account of the secret key (Bearer, or Basic with the key as user), and a version
        this fake serves."""
        key = _secret_key(request.headers.get("authorization", ""))
        if not key:
            raise _Refused(401, "invalid_request_error", _NO_KEY)
        account = self._keys.get(key)
        if account is None:
            raise _Refused(401, "invalid_request_error", "Invalid API Key provided.")
        version = request.headers.get("stripe-version", _VERSION)
        if version != _VERSION:
            raise _invalid(f"Invalid Stripe API version: {version} (this fake serves {_VERSION})")
        return account

    async def _post(
        self, request: Request, action: Callable[[_Account, Form], dict[str, Any]]
    ) -> Response:
        """Run ``action`` once per idempotency key; replay its saved answer to a retry."""
        account = self._account(request)
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= _MAX_KEY:
            raise _invalid(f"Idempotency-Key must be 1 to {_MAX_KEY} characters long.")
        pairs = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        fingerprint = (request.url.path, tuple(sorted(pairs)))
        with self._lock:
            saved = account.saved.get(key) if key is not None else None
            if saved is not None:
                return self._replay(saved, fingerprint, key or "")
            status, body = self._act(account, action, dict(pairs))
            if key is not None:
                account.saved[key] = _Saved(fingerprint, status, copy.deepcopy(body))
            return self._json(status, body)

    def _act(
        self, account: _Account, action: Callable[[_Account, Form], dict[str, Any]], form: Form
    ) -> tuple[int, dict[str, Any]]:
        try:
            return 200, action(account, form)
        except _Refused as refusal:
            if not refusal.saved:
                raise
            return refusal.status, refusal.body

    def _replay(self, saved: _Saved, fingerprint: _Request, key: str) -> Response:
        if saved.request != fingerprint:
            raise _Refused(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
            )
        return self._json(saved.status, saved.body, replayed=True)

    # --- PaymentIntents -------------------------------------------------------------------------

    async def _post_payment_intent(self, request: Request) -> Response:
        return await self._post(request, self._create_payment_intent)

    def _create_payment_intent(self, account: _Account, form: Form) -> dict[str, Any]:
        amount, currency = _charge_amount(form)
        customer = form.get("customer") or None
        if customer is not None and customer not in account.customers:
            message = f"No such customer: '{customer}'"
            raise _invalid(message, code="resource_missing", param="customer")
        method, confirm = _test_method(form)
        intent = self._new_payment_intent(amount, currency, customer, form.get("description"))
        account.payment_intents[intent["id"]] = intent
        if method is not None:
            intent |= {"payment_method": token("pm_", 18), "status": "requires_confirmation"}
            if confirm:
                self._confirm(account, intent, method)
        return intent

    def _new_payment_intent(
        self, amount: int, currency: str, customer: str | None, description: str | None
    ) -> dict[str, Any]:
        intent = _template("payment_intent")
        intent_id = token("pi_", 18)
        intent |= {
            "id": intent_id,
            "amount": amount,
            "canceled_at": None,
            "client_secret": f"{intent_id}_secret_{token('', 18)}",
            "created": int(self.clock.now().timestamp()),
            "currency": currency,
            "customer": customer,
            "description": description,
            "last_payment_error": None,
            "managed_payments": None,
            "next_action": None,
            "payment_method_configuration_details": None,
            "processing": None,
            "shipping": None,
            "status": "requires_payment_method",
            "transfer_data": None,
        }
        return intent

    def _confirm(self, account: _Account, intent: dict[str, Any], method: str) -> None:
        """Charge the test PaymentMethod: a charge and ``succeeded``, or a saved 402."""
        if method in _DECLINES:
            decline_code, message = _DECLINES[method]
            error = {"type": "card_error", "code": "card_declined", "decline_code": decline_code}
            intent |= {
                "status": "requires_payment_method",
                "last_payment_error": error | {"message": message},
            }
            raise _Refused(
                402,
                "card_error",
                message,
                code="card_declined",
                saved=True,
                decline_code=decline_code,
                payment_intent=copy.deepcopy(intent),
            )
        charge = self._new_charge(intent)
        account.charges[charge["id"]] = charge
        intent |= {
            "status": "succeeded",
            "amount_received": intent["amount"],
            "latest_charge": charge["id"],
        }

    def _new_charge(self, intent: dict[str, Any]) -> dict[str, Any]:
        charge = _template("charge")
        charge |= {
            "id": token("ch_", 18),
            "amount": intent["amount"],
            "amount_captured": intent["amount"],
            "amount_refunded": 0,
            "balance_transaction": token("txn_", 18),
            "captured": True,
            "created": int(self.clock.now().timestamp()),
            "currency": intent["currency"],
            "customer": intent["customer"],
            "description": intent["description"],
            "payment_intent": intent["id"],
            "payment_method": intent["payment_method"],
            "receipt_url": None,
            "refunded": False,
            "refunds": None,
            "shipping": None,
            "source": None,
            "status": "succeeded",
            "transfer_data": None,
        }
        return charge

    # --- refunds --------------------------------------------------------------------------------

    async def _post_refund(self, request: Request) -> Response:
        return await self._post(request, self._create_refund)

    def _create_refund(self, account: _Account, form: Form) -> dict[str, Any]:
        charge = self._charge_to_refund(account, form)
        amount = _integer(form, "amount") if "amount" in form else None
        reason = form.get("reason") or None
        if reason is not None and reason not in _REASONS:
            raise _invalid(f"Invalid reason: must be one of {', '.join(_REASONS)}", param="reason")
        if "currency" in form and _currency(form) != charge["currency"]:
            raise _invalid(
                f"The refund currency must be the charge's currency, {charge['currency']}.",
                param="currency",
            )
        refund = self._new_refund(charge, _refund_amount(charge, amount), reason)
        account.refunds[refund["id"]] = refund
        charge["amount_refunded"] += refund["amount"]
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return refund

    def _charge_to_refund(self, account: _Account, form: Form) -> dict[str, Any]:
        """The succeeded charge a refund is for: by ``payment_intent`` or by ``charge``."""
        if form.get("payment_intent"):
            intent = account.payment_intents.get(form["payment_intent"])
            if intent is None:
                raise _invalid(
                    f"No such payment_intent: '{form['payment_intent']}'",
                    code="resource_missing",
                    param="payment_intent",
                )
            charge = account.charges.get(intent["latest_charge"] or "")
            if intent["status"] != "succeeded" or charge is None:
                raise _invalid(
                    f"This PaymentIntent ({intent['id']}) does not have a successful charge to "
                    "refund.",
                    code="payment_intent_unexpected_state",
                    param="payment_intent",
                )
            return charge
        if form.get("charge"):
            found = account.charges.get(form["charge"])
            if found is None:
                raise _invalid(
                    f"No such charge: '{form['charge']}'", code="resource_missing", param="charge"
                )
            return found
        raise _invalid(
            "One of the following params should be provided for this request: payment_intent "
            "or charge.",
            code="parameter_missing",
        )

    def _new_refund(
        self, charge: dict[str, Any], amount: int, reason: str | None
    ) -> dict[str, Any]:
        refund = _template("refund")
        refund |= {
            "id": token("re_", 18),
            "amount": amount,
            "balance_transaction": token("txn_", 18),
            "charge": charge["id"],
            "created": int(self.clock.now().timestamp()),
            "currency": charge["currency"],
            "metadata": {},
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "status": "succeeded",
        }
        return refund

    # --- reads ----------------------------------------------------------------------------------

    def _getter(self, kind: str, param: str) -> Callable[[Request], Any]:
        """``GET /v1/<kind>s/{id}`` of the caller's account."""
        collections = {
            "payment_intent": "payment_intents",
            "refund": "refunds",
            "charge": "charges",
        }

        async def get(request: Request) -> Response:
            account = self._account(request)
            wanted = request.path_params[param]
            with self._lock:
                found = getattr(account, collections[kind]).get(wanted)
                body = copy.deepcopy(found)
            if body is None:
                raise _Refused(
                    404,
                    "invalid_request_error",
                    f"No such {kind}: '{wanted}'",
                    code="resource_missing",
                    param="id",
                )
            return self._json(200, body)

        return get


def _charge_amount(form: Form) -> tuple[int, str]:
    """A PaymentIntent's ``amount`` and ``currency``, at least the currency's minimum charge."""
    amount, currency = _integer(form, "amount"), _currency(form)
    minimum = _MINIMUM_CHARGE.get(currency, 1)
    if amount < minimum:
        message = f"Amount must be at least {minimum} {currency} (minor units)"
        raise _invalid(message, code="amount_too_small", param="amount")
    return amount, currency


def _test_method(form: Form) -> tuple[str | None, bool]:
    """The test PaymentMethod to charge (``test_mode.test_payment_methods``) and ``confirm``."""
    method, confirm = form.get("payment_method") or None, _boolean(form, "confirm")
    if method is not None and method != _SUCCEEDS and method not in _DECLINES:
        message = f"No such PaymentMethod: '{method}'"
        raise _invalid(message, code="resource_missing", param="payment_method")
    if confirm and method is None:
        raise _missing("payment_method")
    return method, confirm


def _refund_amount(charge: dict[str, Any], asked: int | None) -> int:
    """What a refund takes: ``asked``, or all that is left, never more than is left."""
    left = charge["amount"] - charge["amount_refunded"]
    if left == 0:
        message = f"Charge {charge['id']} has already been refunded."
        raise _invalid(message, code="charge_already_refunded", saved=True)
    if asked is not None and asked > left:
        message = f"Refund amount ({asked}) is greater than unrefunded amount on charge ({left})"
        raise _invalid(message, code="amount_too_large", param="amount", saved=True)
    return left if asked is None else asked


def _secret_key(header: str) -> str:
    """The key of a Bearer header, or the user of a Basic one; empty if neither."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[0]


def _integer(form: Form, name: str) -> int:
    """A positive integer parameter (``amount``)."""
    if not form.get(name):
        raise _missing(name)
    text = form[name]
    if not text.isdigit() or int(text) < 1:
        raise _invalid(
            f"Invalid positive integer: {text}", code="parameter_invalid_integer", param=name
        )
    return int(text)


def _currency(form: Form) -> str:
    text = form.get("currency", "")
    if not text:
        raise _missing("currency")
    if text.lower() not in _currencies():
        raise _invalid(f"Invalid currency: {text}.", param="currency")
    return text.lower()


def _boolean(form: Form, name: str) -> bool:
    text = form.get(name, "false")
    if text not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {text}", param=name)
    return text == "true"
