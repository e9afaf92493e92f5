"""Stripe: create a refund and create a PaymentIntent (``TOOLS.md``), with a secret key.

The provider's truth is ``specs/stripe/stripe_spec3.payments_refunds.json`` (API version
**2023-08-16**): ``POST /v1/refunds`` and ``POST /v1/payment_intents`` take flat form fields
and answer a ``refund`` / ``payment_intent``, or the ``error`` envelope
(``{"error": {type, code, message, param, ...}}``) as their ``default`` response. Headers and
idempotency are in ``specs/stripe/stripe.supplement.json``.

Why the idempotency is ``native``: every request carries ``Idempotency-Key:
ctx.idempotency_key``, and Stripe saves the first answer to a key and replays it to any retry
with the same parameters (``idempotency_semantics.stored_result``). Reconciling an unknown
outcome is therefore sending the same request again: the answer is the first call's, or, if
the first never reached Stripe, this one's, and either way the refund or charge exists once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import httpx
from pydantic import Field

from corral.connectors._base import (
    JSON,
    Arguments,
    CallContext,
    ConnectorError,
    Credential,
    Effect,
    EffectKind,
    Endpoints,
    OutcomeUnknown,
    Provider,
    Tool,
)
from corral.connectors._fields import Currency, MinorAmount
from corral.connectors._http import Edge, json_object

__all__ = [
    "API_VERSION",
    "CREATE_PAYMENT_INTENT",
    "CREATE_REFUND",
    "PROVIDER",
    "CreatePaymentIntentArgs",
    "CreateRefundArgs",
]

_NAME = "stripe"

API_VERSION = "2023-08-16"
"""The ``Stripe-Version`` every request pins: the version of the packaged description."""

_RETRYABLE = frozenset({409, 429})
"""Statuses that provably did not act and may succeed later: 409 is another request with the
same key still running (``idempotency_semantics.not_saved_when``), 429 the rate limiter."""


# --- arguments and effects ----------------------------------------------------------------------


class CreateRefundArgs(Arguments):
    """``stripe.create_refund``: refund ``amount`` (minor units) of ``payment_intent``."""

    payment_intent: str = Field(pattern=r"^pi_[A-Za-z0-9]+$", max_length=255)
    amount: MinorAmount
    currency: Currency
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None


class CreatePaymentIntentArgs(Arguments):
    """``stripe.create_payment_intent``: a charge of ``amount``, for ``customer`` if given."""

    amount: MinorAmount
    currency: Currency
    customer: str | None = Field(default=None, pattern=r"^cus_[A-Za-z0-9]+$", max_length=255)
    description: str | None = Field(default=None, min_length=1, max_length=1000)


def _refund_effect(args: CreateRefundArgs) -> Effect:
    return Effect(
        EffectKind.REFUND, target=args.payment_intent, amount=args.amount, currency=args.currency
    )


def _charge_effect(args: CreatePaymentIntentArgs) -> Effect:
    return Effect(
        EffectKind.CHARGE, target=args.customer, amount=args.amount, currency=args.currency
    )


# --- the HTTP edge ------------------------------------------------------------------------------

_EDGE = Edge(_NAME, "Stripe")


async def _post(ctx: CallContext, path: str, form: Mapping[str, str]) -> dict[str, JSON]:
    """``POST`` a flat form to ``path`` with the key, version and idempotency key; the answer
    is the JSON object of a 2xx, anything else raises its :class:`ConnectorError`."""
    headers = {
        "Authorization": f"Bearer {ctx.credential.fields['api_key']}",
        "Stripe-Version": API_VERSION,
        "Idempotency-Key": ctx.idempotency_key,
    }
    response = await _EDGE.call(ctx, "POST", path, headers=headers, refusal=_refusal, data=form)
    return _EDGE.body(response)


def _refusal(response: httpx.Response, credential: Credential) -> ConnectorError:
    """A refusal in the ``error`` envelope; 409 and 429 are "try later" (:data:`_RETRYABLE`)."""
    status = response.status_code
    code, message = _error(json_object(response))
    text = f"HTTP {status}: {message}"
    return _EDGE.refusal(status, text, credential, code=code, retryable=status in _RETRYABLE)


def _error(body: dict[str, JSON] | None) -> tuple[str | None, str]:
    """``(code, message)`` of the ``error`` envelope; ``code`` falls back to ``type``
    (an ``idempotency_error`` has no code)."""
    error = body.get("error") if body is not None else None
    if not isinstance(error, dict):
        return None, "no error details"
    code = error.get("code") or error.get("type")
    message = error.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else "no error message",
    )


def _money_result(body: dict[str, JSON], id_key: str) -> dict[str, JSON]:
    """The allow-listed fields of a refund or PaymentIntent (never its ``client_secret``)."""
    result = {
        id_key: body.get("id"),
        "status": body.get("status"),
        "amount": body.get("amount"),
        "currency": body.get("currency"),
    }
    if not isinstance(result[id_key], str) or not isinstance(result["amount"], int):
        raise OutcomeUnknown(_NAME, "Stripe's answer names no id or amount")
    return result


# --- execution ----------------------------------------------------------------------------------


def _flat(fields: Mapping[str, object]) -> dict[str, str]:
    """The form fields that are set, as strings (flat fields only: no ``metadata[...]``)."""
    return {key: str(value) for key, value in fields.items() if value is not None}


async def _create_refund(ctx: CallContext, args: CreateRefundArgs) -> dict[str, JSON]:
    form = _flat(args.model_dump())
    return _money_result(await _post(ctx, "/v1/refunds", form), "refund_id")


async def _create_payment_intent(
    ctx: CallContext, args: CreatePaymentIntentArgs
) -> dict[str, JSON]:
    form = _flat(args.model_dump())
    return _money_result(await _post(ctx, "/v1/payment_intents", form), "payment_intent_id")


# --- declarations -------------------------------------------------------------------------------

CREATE_REFUND: Tool[CreateRefundArgs] = Tool(
    name="stripe.create_refund",
    operation="POST /v1/refunds",
    args=CreateRefundArgs,
    effect=_refund_effect,
    execute=_create_refund,
    reconcile=_EDGE.replayed(_create_refund),
    idempotency="native",
)

CREATE_PAYMENT_INTENT: Tool[CreatePaymentIntentArgs] = Tool(
    name="stripe.create_payment_intent",
    operation="POST /v1/payment_intents",
    args=CreatePaymentIntentArgs,
    effect=_charge_effect,
    execute=_create_payment_intent,
    reconcile=_EDGE.replayed(_create_payment_intent),
    idempotency="native",
)

PROVIDER = Provider(
    name=_NAME,
    auth="api_key",
    fields=("api_key",),
    endpoints=Endpoints(api="https://api.stripe.com"),
    tools=(CREATE_REFUND, CREATE_PAYMENT_INTENT),
)
