"""Argument types shared by every tool, per the conventions of ``TOOLS.md``.

- :data:`PhoneNumber`: E.164 or national format, normalized to E.164 with the tenant's country
  (pydantic validation context ``{"country": "US"}``; ``US`` when absent), by phonenumbers.
- :data:`Email`: an address with one ``@``, kept as written; compare with :func:`email_key`.
- :data:`Timestamp`: RFC 3339 with a mandatory offset (``Z`` or ``±hh:mm``), as an aware datetime.
- :data:`Currency`: a lowercase ISO 4217 code babel knows (``usd``).
- :data:`MinorAmount`: a positive integer in the currency's minor unit.
- :data:`DecimalAmount`: a decimal string (``"120.50"``), exact, non-negative.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Annotated, Any

import phonenumbers
from babel.numbers import list_currencies
from pydantic import BeforeValidator, Field, StrictInt, ValidationInfo

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_DECIMAL = re.compile(r"\d{1,15}(\.\d{1,6})?\Z")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\Z")


def _phone(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise ValueError("a phone number must be a string")
    return _e164(value, (info.context or {}).get("country", "US"))


@lru_cache(maxsize=65536)
def _e164(value: str, country: str) -> str:
    """Cached: parsing costs ~60 us and a business texts the same few thousand numbers; every
    call of the supervisor and the broker parses its recipient. Errors are not cached."""
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _email(value: Any) -> str:
    if not isinstance(value, str) or not _EMAIL.match(value):
        raise ValueError("not an email address")
    return value


def email_key(address: str) -> str:
    """The form emails are compared in: case-insensitive (``TOOLS.md``)."""
    return address.casefold()


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 time with an offset, e.g. 2026-03-04T10:00:00-08:00")
    try:
        return datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise ValueError("not a valid date and time") from None


@lru_cache(maxsize=1)
def _currencies() -> frozenset[str]:
    return frozenset(code.lower() for code in list_currencies())


def _currency(value: Any) -> str:
    if not isinstance(value, str) or value not in _currencies():
        raise ValueError("must be a lowercase ISO 4217 currency code, e.g. usd")
    return value


def _decimal(value: Any) -> str:
    if not isinstance(value, str) or not _DECIMAL.match(value):
        raise ValueError('must be a non-negative decimal string, e.g. "120.50"')
    try:
        Decimal(value)
    except InvalidOperation:
        raise ValueError("not a decimal number") from None
    return value


PhoneNumber = Annotated[str, BeforeValidator(_phone)]
Email = Annotated[str, BeforeValidator(_email)]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Currency = Annotated[str, BeforeValidator(_currency)]
MinorAmount = Annotated[StrictInt, Field(gt=0)]
DecimalAmount = Annotated[str, BeforeValidator(_decimal)]
NonEmpty = Annotated[str, Field(min_length=1)]
