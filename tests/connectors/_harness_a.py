"""Test helpers for the Twilio, Stripe and QuickBooks connectors and fakes.

The contract check every connector test ends with: each exchange a fake saw must fit the
provider's description, requests and responses. Three things are settled here, not in
:mod:`corral.fakes._contract`, and each is a fact about a description or a test, not a
loosening:

- an error status the operation does not declare (the trimmed Twilio file declares no error
  response at all) is checked against the provider's error envelope schema instead;
- the empty ``504`` that :meth:`Faults.lose_answer` puts in place of an answer is not the
  provider's, so only its request is checked;
- Stripe's ``expand`` query parameters lose ``style: deepObject``, which openapi-core 0.19
  cannot deserialize even when the parameter is absent (an ``expand`` list is flat anyway).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

import httpx
from jsonschema import Draft202012Validator

from corral.connectors._base import Credential
from corral.fakes._common import Fake
from corral.fakes._contract import Exchange, OpenAPIContract, spec_json

T = TypeVar("T")

START = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
"""The fakes' clock starts here (a Wednesday, 9 AM in Los Angeles)."""


@dataclass(frozen=True)
class Spec:
    """One provider's description file and the schema of its error envelope."""

    provider_dir: str
    file: str
    error_schema: str

    def document(self) -> Any:
        return spec_json(self.provider_dir, self.file)


TWILIO = Spec("twilio", "twilio_api_v2010.messages.json", "twilio.error")
STRIPE = Spec("stripe", "stripe_spec3.payments_refunds.json", "error")
QUICKBOOKS = Spec("quickbooks", "qbo_v3.supplement.openapi.json", "FaultEnvelope")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def client(fake: Fake) -> httpx.AsyncClient:
    """An httpx client that calls the fake's app in-process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app()))


# --- the contract check -------------------------------------------------------------------------


def _flat_deep_objects(document: Any) -> Any:
    checkable = copy.deepcopy(document)
    for item in checkable.get("paths", {}).values():
        for operation in item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("style") == "deepObject":
                    del parameter["style"]
    return checkable


@cache
def _contract(spec: Spec) -> OpenAPIContract:
    return OpenAPIContract([_flat_deep_objects(spec.document())])


def _operation(document: Any, exchange: Exchange) -> Any:
    for template, item in document.get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, exchange.path) and exchange.method.lower() in item:
            return item[exchange.method.lower()]
    return None


def _declares(document: Any, exchange: Exchange) -> bool:
    """Whether the operation declares a response for the exchange's status."""
    operation = _operation(document, exchange)
    responses = operation.get("responses", {}) if operation is not None else {}
    status = exchange.status
    return any(key in responses for key in (str(status), f"{status // 100}XX", "default"))


def _envelope_problems(spec: Spec, exchange: Exchange) -> list[str]:
    where = f"response {exchange.status} to {exchange.method} {exchange.path}"
    try:
        body = json.loads(exchange.response_body)
    except ValueError:
        return [f"{where}: error body is not JSON"]
    schema = {
        "$ref": f"#/components/schemas/{spec.error_schema}",
        "components": spec.document()["components"],
    }
    return [f"{where}: {e.message}" for e in Draft202012Validator(schema).iter_errors(body)]


def _lost(exchange: Exchange) -> bool:
    """The answer ``Faults.lose_answer`` replaced: an empty 504 no fake sends itself."""
    return exchange.status == 504 and not exchange.response_body


def contract_problems(spec: Spec, exchanges: Iterable[Exchange]) -> list[str]:
    """Every way the exchanges do not fit the provider's description (empty when they fit)."""
    contract, document = _contract(spec), spec.document()
    problems: list[str] = []
    for exchange in exchanges:
        problems += contract.request_problems(exchange)
        if _lost(exchange):
            continue
        if _declares(document, exchange):
            problems += contract.response_problems(exchange)
        else:
            problems += _envelope_problems(spec, exchange)
    return problems


def assert_fits_contract(fake: Fake, spec: Spec) -> None:
    problems = contract_problems(spec, fake.exchanges)
    assert not problems, "\n".join(problems)


# --- secrets ------------------------------------------------------------------------------------


def assert_no_secrets(texts: Iterable[str], credential: Credential) -> None:
    """No credential value (identifiers included) appears in any of ``texts``."""
    for text in texts:
        for secret in credential.secrets():
            assert secret not in text, "a credential value leaked"
