"""What a delegation allows: its caveats, how they match a call, and how blocks intersect.

Split from :mod:`corral.broker.delegation` so that the rules of scope read in one place, apart
from the token format (:mod:`corral.broker._delegation_token`) and the operations: tool
patterns, the constraint each kind of effect meets (:meth:`Caveats.refusal`), intersection, and
the one normal form of each caveat value, read strictly from a token (:func:`read_caveats`) or
checked from a mint or attenuation request (:func:`request_caveats`).

A value that does not fit raises :class:`Bad`, here and in the token format; each entry point
of :mod:`corral.broker.delegation` turns it into its own error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

from babel.numbers import list_currencies

from corral.connectors import Effect, EffectKind
from corral.core.money import Money

MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime holds
_MAX_INT = 2**53 - 1
_MAX_USES = 1_000_000

_SEGMENT = r"[a-z][a-z0-9_]{0,63}"
PATTERN = re.compile(rf"\*|{_SEGMENT}\.(?:\*|{_SEGMENT})")
_CHAR = r"[^\s\x00-\x1f\x7f]"
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_GHL_CONTACT = re.compile(rf"ghl_contact:{_CHAR}{{1,128}}")
_EMAIL = re.compile(rf"(?:(?!@){_CHAR}){{1,64}}@(?:(?!@){_CHAR}){{1,255}}")
_CALENDAR = re.compile(
    rf"(?:google_calendar|ghl):(?:(?!/){_CHAR}){{1,256}}|calendly:{_CHAR}{{1,512}}"
)
_PAYMENT_INTENT = re.compile(rf"{_CHAR}{{1,255}}")

_CAVEAT_FIELDS = frozenset(
    {"tools", "recipients", "calendars", "payment_intents", "max_amount", "max_uses", "exp_ms"}
)
_AMOUNT_FIELDS = frozenset({"amount", "currency"})


# --- checking values ----------------------------------------------------------------------------


class Bad(ValueError):
    """A value that does not fit; turned into the caller-facing error at each entry point."""


def bad(reason: str) -> NoReturn:
    raise Bad(reason)


def safe_name(value: object) -> str:
    """A short, safe rendering of a field name taken from a token (never a whole value)."""
    text = str(value)
    return repr(text if len(text) <= 32 else text[:32] + "...")


def check_int(value: object, what: str, low: int, high: int = _MAX_INT) -> int:
    if type(value) is not int or not low <= value <= high:
        bad(f"{what} must be an integer from {low} to {high}")
    return value


# --- matching -----------------------------------------------------------------------------------


def _covers(outer: str, inner: str) -> bool:
    """Whether every tool that pattern ``inner`` matches is matched by pattern ``outer``."""
    return (
        outer == inner
        or outer == "*"
        or (outer[-2:] == ".*" and inner[: len(outer) - 1] == outer[:-1])
    )


def _matches(pattern: str, tool: str) -> bool:
    """``*`` matches every tool, ``provider.*`` one more dotted segment, anything else itself."""
    if pattern == "*":
        return True
    if pattern[-2:] == ".*":
        stem = pattern[:-1]
        return tool.startswith(stem) and len(tool) > len(stem) and "." not in tool[len(stem) :]
    return pattern == tool


def _meet(left: frozenset[str], right: frozenset[str]) -> frozenset[str]:
    """The patterns matching exactly the tools both sets match, without redundant ones."""
    met = set()
    for a in left:
        for b in right:
            if _covers(a, b):
                met.add(b)
            elif _covers(b, a):
                met.add(a)
    return frozenset(p for p in met if not any(q != p and _covers(q, p) for q in met))


def _recipient_key(value: str) -> str:
    """How a message recipient is compared: emails case-insensitively, everything else exactly."""
    if "@" in value and not value.startswith("ghl_contact:"):
        return value.casefold()
    return value


def _calendar(effect: Effect) -> str | None:
    """The calendar a booking, read or cancellation touches, when the effect names it.

    A cancellation's target names its calendar only for Google (``google_calendar:<cal>/<event>``);
    ``calendly:<uuid>`` does not, and gives ``None``.
    """
    if effect.kind is not EffectKind.CANCELLATION:
        return effect.resource
    target = effect.target
    if target is None or not target.startswith("google_calendar:"):
        return None
    calendar, slash, event = target.partition("/")
    named = slash and event and "/" not in event and calendar != "google_calendar:"
    return calendar if named else None


_CALENDAR_KINDS = (EffectKind.BOOKING, EffectKind.READ, EffectKind.CANCELLATION)
_MONEY_KINDS = (EffectKind.REFUND, EffectKind.CHARGE)


@dataclass(frozen=True, slots=True)
class Caveats:
    """One block's constraints, or (from :meth:`intersect`) the effective ones of a chain.

    ``None`` means unconstrained; an empty set allows nothing of what the constraint governs.
    ``max_amount`` is a set of limits, at most one per currency (one on the wire per block).
    """

    tools: frozenset[str] | None = None
    recipients: frozenset[str] | None = None
    calendars: frozenset[str] | None = None
    payment_intents: frozenset[str] | None = None
    max_amount: frozenset[Money] | None = None
    max_uses: int | None = None
    exp_ms: int | None = None

    def refusal(self, tool: str, effect: Effect) -> str | None:
        """The name of the caveat that refuses this call, or ``None`` if these allow it."""
        if self.tools is not None and not any(_matches(p, tool) for p in self.tools):
            return "tools"
        kind = effect.kind
        if (
            kind is EffectKind.MESSAGE
            and self.recipients is not None
            and (
                effect.recipient is None or _recipient_key(effect.recipient) not in self.recipients
            )
        ):
            return "recipients"
        if (
            kind in _CALENDAR_KINDS
            and self.calendars is not None
            and _calendar(effect) not in self.calendars
        ):
            return "calendars"
        if (
            kind is EffectKind.REFUND
            and self.payment_intents is not None
            and effect.target not in self.payment_intents
        ):
            return "payment_intents"
        if kind in _MONEY_KINDS and self.max_amount is not None:
            amount = effect.amount
            if type(amount) is not int or not any(
                limit.currency == effect.currency and amount <= limit.amount
                for limit in self.max_amount
            ):
                return "max_amount"
        return None

    def intersect(self, other: Caveats) -> Caveats:
        """The caveats that allow exactly what both allow."""

        def both(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
            return b if a is None else a if b is None else a & b

        def least(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else min(a, b)

        tools = (
            other.tools
            if self.tools is None
            else self.tools
            if other.tools is None
            else _meet(self.tools, other.tools)
        )
        money = self.max_amount
        if money is None:
            money = other.max_amount
        elif other.max_amount is not None:
            money = frozenset(
                Money(min(a.amount, b.amount), a.currency)
                for a in money
                for b in other.max_amount
                if a.currency == b.currency
            )
        return Caveats(
            tools=tools,
            recipients=both(self.recipients, other.recipients),
            calendars=both(self.calendars, other.calendars),
            payment_intents=both(self.payment_intents, other.payment_intents),
            max_amount=money,
            max_uses=least(self.max_uses, other.max_uses),
            exp_ms=least(self.exp_ms, other.exp_ms),
        )

    def to_json(self) -> dict[str, Any]:
        """The constrained fields as JSON (sorted lists; ``max_amount`` a list of limits)."""
        out: dict[str, Any] = {}
        for name in ("tools", "recipients", "calendars", "payment_intents"):
            values = getattr(self, name)
            if values is not None:
                out[name] = sorted(values)
        if self.max_amount is not None:
            out["max_amount"] = [
                {"amount": m.amount, "currency": m.currency}
                for m in sorted(self.max_amount, key=lambda m: m.currency)
            ]
        if self.max_uses is not None:
            out["max_uses"] = self.max_uses
        if self.exp_ms is not None:
            out["exp_ms"] = self.exp_ms
        return out


# --- normal forms: read from a token, or checked from a request ---------------------------------


@lru_cache(maxsize=1)
def _currencies() -> frozenset[str]:
    return frozenset(code.lower() for code in list_currencies())


def _check_pattern(value: str) -> str:
    if not PATTERN.fullmatch(value):
        bad("a tool pattern is an exact tool name (provider.tool), provider.* or *")
    return value


def _check_recipient(value: str) -> str:
    if _E164.fullmatch(value) or _GHL_CONTACT.fullmatch(value):
        return value
    if _EMAIL.fullmatch(value):
        return value.casefold()
    return bad("a recipient is an E.164 number, an email or ghl_contact:<id>")


def _check_calendar(value: str) -> str:
    if not _CALENDAR.fullmatch(value):
        bad("a calendar is google_calendar:<id>, calendly:<event type URI> or ghl:<id>")
    return value


def _check_payment_intent(value: str) -> str:
    if not _PAYMENT_INTENT.fullmatch(value):
        bad("a payment intent is a provider id without spaces")
    return value


def _check_money(amount: object, currency: object) -> Money:
    minor = check_int(amount, "max_amount.amount", 0)
    if not isinstance(currency, str) or currency not in _currencies():
        bad("max_amount.currency must be a lowercase ISO 4217 code, e.g. usd")
    return Money(minor, currency)


_CHECKS: dict[str, Callable[[str], str]] = {
    "tools": _check_pattern,
    "recipients": _check_recipient,
    "calendars": _check_calendar,
    "payment_intents": _check_payment_intent,
}


def _read_set(value: object, name: str) -> frozenset[str]:
    """A caveat list as it must be on the wire: strings in normal form, sorted, no repeats."""
    if type(value) is not list:
        bad(f"caveat {name} must be a list")
    check = _CHECKS[name]
    for item in value:
        if type(item) is not str or check(item) != item:
            bad(f"caveat {name} holds a value that is not in normal form")
    if value != sorted(set(value)):
        bad(f"caveat {name} must be sorted, without repeats")
    return frozenset(value)


def read_caveats(obj: object, *, block: int) -> Caveats:
    if type(obj) is not dict:
        bad(f"block {block}: caveats must be an object")
    extra = obj.keys() - _CAVEAT_FIELDS
    if extra:
        bad(f"block {block}: unknown caveat {safe_name(min(extra))}")
    sets = {name: _read_set(obj[name], name) for name in _CHECKS if name in obj}
    money = None
    if "max_amount" in obj:
        limit = obj["max_amount"]
        if type(limit) is not dict or limit.keys() != _AMOUNT_FIELDS:
            bad(f"block {block}: max_amount must be {{amount, currency}}")
        money = frozenset({_check_money(limit["amount"], limit["currency"])})
    max_uses = obj.get("max_uses")
    if max_uses is not None or "max_uses" in obj:
        check_int(max_uses, "max_uses", 1, _MAX_USES)
    exp_ms = obj.get("exp_ms")
    if exp_ms is not None or "exp_ms" in obj:
        if block == 0:
            bad("block 0 carries its expiry as exp_ms, not as a caveat")
        check_int(exp_ms, "exp_ms", 0, MAX_TIME_MS)
    if block == 0 and not sets.get("tools"):
        bad("block 0 must name at least one tool pattern")
    return Caveats(max_amount=money, max_uses=max_uses, exp_ms=exp_ms, **sets)


def wire_caveats(caveats: Caveats) -> dict[str, Any]:
    """One block's caveats as signed: ``max_amount`` is one ``{amount, currency}`` object."""
    out = caveats.to_json()
    if "max_amount" in out:
        (out["max_amount"],) = out["max_amount"]
    return out


def _request_set(values: Iterable[str] | None, name: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        bad(f"{name} must be a list of strings, not a single value")
    check = _CHECKS[name]
    out = set()
    for item in values:
        if not isinstance(item, str):
            bad(f"{name} must hold strings")
        out.add(check(item))
    return frozenset(out)


def request_caveats(
    *,
    tools: Iterable[str] | None,
    recipients: Iterable[str] | None,
    calendars: Iterable[str] | None,
    payment_intents: Iterable[str] | None,
    max_amount: Money | None,
    max_uses: int | None,
    exp_ms: int | None,
) -> Caveats:
    money = None
    if max_amount is not None:
        if not isinstance(max_amount, Money):
            bad("max_amount must be a corral.core.money.Money")
        money = frozenset({_check_money(max_amount.amount, max_amount.currency)})
    if max_uses is not None:
        check_int(max_uses, "max_uses", 1, _MAX_USES)
    return Caveats(
        tools=_request_set(tools, "tools"),
        recipients=_request_set(recipients, "recipients"),
        calendars=_request_set(calendars, "calendars"),
        payment_intents=_request_set(payment_intents, "payment_intents"),
        max_amount=money,
        max_uses=max_uses,
        exp_ms=exp_ms,
    )
