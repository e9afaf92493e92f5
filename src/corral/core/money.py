"""Money as Stripe writes it: an integer amount in the currency's minor unit and a lowercase
ISO 4217 code.

>>> Money(1999, "usd").decimal
Decimal('19.99')
>>> Money(500, "jpy").decimal
Decimal('500')
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from babel.core import get_global

__all__ = ["Money", "minor_unit_digits"]


def minor_unit_digits(currency: str) -> int:
    """Decimal digits of the currency's minor unit (2 for usd, 0 for jpy, 3 for kwd), from CLDR."""
    code = currency.upper()
    if code not in get_global("all_currencies"):
        raise ValueError(f"unknown ISO 4217 currency: {currency!r}")
    fractions = get_global("currency_fractions")
    return int(fractions.get(code, fractions["DEFAULT"])[0])


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise ValueError(f"money amount must be an integer of minor units: {self.amount!r}")
        if self.currency != self.currency.lower():
            raise ValueError(f"currency must be lowercase ISO 4217: {self.currency!r}")
        minor_unit_digits(self.currency)

    @property
    def decimal(self) -> Decimal:
        return Decimal(self.amount).scaleb(-minor_unit_digits(self.currency))
