"""Delegations: short-lived, action-scoped capabilities that the broker mints for one sandbox.

>>> from datetime import UTC, datetime
>>> from corral.connectors import Effect, EffectKind
>>> from corral.core.clock import ManualClock
>>> from corral.core.ids import SequentialIds
>>> clock = ManualClock(datetime(2026, 3, 3, 17, 0, tzinfo=UTC))
>>> signer = generate_signer("broker-1")
>>> minted = mint(signer, tenant="brightsmile", agent="receptionist-1", sandbox="sbx-7",
...               tools=["twilio.send_sms"], recipients=["+15550100001"], ttl_s=3600,
...               clock=clock, ids=SequentialIds())
>>> minted.id, minted.expires_at.isoformat()  # 3600 s asked, 300 s given
('dlg_0000000001', '2026-03-03T17:05:00+00:00')
>>> narrowed = attenuate(minted.token, ttl_s=60, clock=clock)  # offline: no broker key needed
>>> keys = DelegationKeys.of(signer)
>>> who = {"tenant": "brightsmile", "agent": "receptionist-1", "sandbox": "sbx-7"}
>>> delegation = verify(narrowed, keys, **who, now=clock.now())
>>> delegation.expires_at.isoformat(), delegation.blocks
('2026-03-03T17:01:00+00:00', 2)
>>> def sms(to):
...     return Effect(EffectKind.MESSAGE, recipient=to)
>>> delegation.authorize("twilio.send_sms", sms("+15550100001"))
>>> try:
...     delegation.authorize("twilio.send_sms", sms("+15550100002"))
... except NotAuthorized as exc:
...     print(exc.caveat, exc.block)
recipients 0
>>> try:
...     verify(narrowed, keys, **{**who, "sandbox": "sbx-8"}, now=clock.now())
... except WrongSandbox as exc:
...     print(exc)
delegation dlg_0000000001 is bound to sandbox 'sbx-7', not 'sbx-8'

A token is Ed25519 over RFC 8785 canonical JSON, with Biscuit-style offline attenuation: a
chain of signed blocks. ``docs/broker-delegations.md`` is the manual; in short::

    cdl1.<base64url, no padding, of canonical {"blocks": [block, ...], "proof": <b64url 32 B>}>
    block   = {"payload": {...}, "sig": <b64url 64-byte Ed25519 signature>}
    block 0 = {"v": 1, "kid", "id", "tenant", "agent", "sandbox", "iat_ms", "exp_ms",
               "caveats", "next"}                        signed by the broker key named by kid
    block i = {"caveats", "next", "prev": <sig of block i-1>}   signed by block i-1's next key
    proof   = the private key of the last block's next (lets the holder append, nothing else)

Every signature covers ``b"corral-delegation-v1\\n" + canonical(payload)``. A call is allowed
only if every block's caveats allow it (an intersection), so appending a block narrows and
never widens. The lifetime is at most :data:`MAX_TTL_S` and a later block may only shorten it.
Uses (``max_uses``) and revocation are state: the broker's store checks them by :attr:`id`.

Errors (messages name the delegation, never the token or the proof key)::

    DelegationError (BrokerError)
    ├── MalformedDelegation (ValueError)       not a well-formed token, before any crypto
    ├── InvalidDelegationRequest (ValueError)  a mint or attenuation that cannot be issued
    ├── BadSignature                            a block, the chain or the proof does not verify
    ├── Expired / NotYetValid                   outside [iat - 5 s skew, exp)
    ├── WrongPrincipal                          another tenant or agent presented it
    ├── WrongSandbox                            another sandbox presented it
    └── NotAuthorized                           the call is outside scope (caveat, block)
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache, reduce
from typing import Any, NoReturn

from babel.numbers import list_currencies
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from corral.connectors import Effect, EffectKind
from corral.core.canonical import canonicalize, loads_strict
from corral.core.clock import Clock, format_time
from corral.core.errors import BrokerError, CanonicalizationError
from corral.core.ids import IdSource
from corral.core.money import Money

__all__ = [
    "MAX_BLOCKS",
    "MAX_SKEW_MS",
    "MAX_TOKEN_BYTES",
    "MAX_TTL_S",
    "TOKEN_PREFIX",
    "BadSignature",
    "Caveats",
    "Delegation",
    "DelegationError",
    "DelegationKeys",
    "DelegationSigner",
    "Expired",
    "InvalidDelegationRequest",
    "MalformedDelegation",
    "Minted",
    "NotAuthorized",
    "NotYetValid",
    "WrongPrincipal",
    "WrongSandbox",
    "attenuate",
    "generate_signer",
    "mint",
    "verify",
]

MAX_TTL_S = 300
"""The longest lifetime of a delegation, in seconds; asking for more gets this."""
MAX_TOKEN_BYTES = 8192
"""The largest token accepted (checked before anything is decoded)."""
MAX_BLOCKS = 8
"""The most blocks a token may hold: the authority plus seven attenuations."""
MAX_SKEW_MS = 5000
"""How far in the future a token's ``iat_ms`` may be (clocks of broker replicas differ)."""
TOKEN_PREFIX = "cdl1."  # noqa: S105 (a format tag, not a secret)
"""Every token starts with this: corral delegation, format 1."""

_MAX_TTL_MS = MAX_TTL_S * 1000
_MAX_INT = 2**53 - 1
_MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime holds
_MAX_USES = 1_000_000
_SIG_CONTEXT = b"corral-delegation-v1\n"
_VERSION = 1
_ID_PREFIX = "dlg"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_SEGMENT = r"[a-z][a-z0-9_]{0,63}"
_PATTERN = re.compile(rf"\*|{_SEGMENT}\.(?:\*|{_SEGMENT})")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_CHAR = r"[^\s\x00-\x1f\x7f]"
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_GHL_CONTACT = re.compile(rf"ghl_contact:{_CHAR}{{1,128}}")
_EMAIL = re.compile(rf"(?:(?!@){_CHAR}){{1,64}}@(?:(?!@){_CHAR}){{1,255}}")
_CALENDAR = re.compile(
    rf"(?:google_calendar|ghl):(?:(?!/){_CHAR}){{1,256}}|calendly:{_CHAR}{{1,512}}"
)
_PAYMENT_INTENT = re.compile(rf"{_CHAR}{{1,255}}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

_ENVELOPE_FIELDS = frozenset({"blocks", "proof"})
_BLOCK_FIELDS = frozenset({"payload", "sig"})
_AUTHORITY_FIELDS = frozenset(
    {"v", "kid", "id", "tenant", "agent", "sandbox", "iat_ms", "exp_ms", "caveats", "next"}
)
_ATTENUATION_FIELDS = frozenset({"caveats", "next", "prev"})
_CAVEAT_FIELDS = frozenset(
    {"tools", "recipients", "calendars", "payment_intents", "max_amount", "max_uses", "exp_ms"}
)
_AMOUNT_FIELDS = frozenset({"amount", "currency"})


# --- errors -------------------------------------------------------------------------------------


class DelegationError(BrokerError):
    """Base of the errors of :mod:`corral.broker.delegation`.

    ``delegation_id`` is the token's ``id`` once it is known (after the structure checks).
    """

    delegation_id: str | None = None


class MalformedDelegation(DelegationError, ValueError):
    """Not a well-formed token: refused before any signature is checked. ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed delegation: {reason}")
        self.reason = reason


class InvalidDelegationRequest(DelegationError, ValueError):
    """A mint or an attenuation that cannot be issued (bad lifetime, pattern, recipient...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot issue this delegation: {reason}")
        self.reason = reason


class BadSignature(DelegationError):
    """A block's signature, the chain between blocks or the proof key does not verify.

    ``block`` is the index of the block at fault; ``kid`` the broker key id block 0 names.
    """

    def __init__(self, block: int, reason: str, *, kid: str | None = None) -> None:
        super().__init__(f"delegation signature does not verify: block {block}: {reason}")
        self.block = block
        self.reason = reason
        self.kid = kid


class Expired(DelegationError):
    """The delegation's effective expiry (the earliest ``exp_ms`` of its blocks) has passed."""

    def __init__(self, delegation_id: str, expired_at: datetime, now: datetime) -> None:
        super().__init__(
            f"delegation {delegation_id} expired at {format_time(expired_at)}"
            f" (now {format_time(now)})"
        )
        self.delegation_id = delegation_id
        self.expired_at = expired_at
        self.now = now


class NotYetValid(DelegationError):
    """The delegation was issued further in the future than the allowed clock skew."""

    def __init__(self, delegation_id: str, issued_at: datetime, now: datetime) -> None:
        super().__init__(
            f"delegation {delegation_id} is issued at {format_time(issued_at)}, in the future"
            f" (now {format_time(now)})"
        )
        self.delegation_id = delegation_id
        self.issued_at = issued_at
        self.now = now


class WrongPrincipal(DelegationError):
    """Presented by another tenant or agent than the one it was minted for.

    ``field`` is ``"tenant"`` or ``"agent"``; ``expected`` is the token's value, ``presented``
    the one the host stamped.
    """

    def __init__(self, delegation_id: str, field: str, expected: str, presented: str) -> None:
        super().__init__(
            f"delegation {delegation_id} belongs to {field} {expected!r}, not {presented!r}"
        )
        self.delegation_id = delegation_id
        self.field = field
        self.expected = expected
        self.presented = presented


class WrongSandbox(DelegationError):
    """Presented from another sandbox than the one that asked for it."""

    def __init__(self, delegation_id: str, expected: str, presented: str) -> None:
        super().__init__(
            f"delegation {delegation_id} is bound to sandbox {expected!r}, not {presented!r}"
        )
        self.delegation_id = delegation_id
        self.expected = expected
        self.presented = presented


class NotAuthorized(DelegationError):
    """The call is outside the delegation's scope: ``caveat`` of block ``block`` refused it."""

    def __init__(self, delegation_id: str, tool: str, caveat: str, block: int) -> None:
        shown = tool if _PATTERN.fullmatch(tool) else "this tool"
        super().__init__(
            f"delegation {delegation_id} does not allow this call of {shown}:"
            f" outside its {caveat} (block {block})"
        )
        self.delegation_id = delegation_id
        self.tool = tool
        self.caveat = caveat
        self.block = block


class _Bad(ValueError):
    """A value that does not fit; turned into the caller-facing error at each entry point."""


def _bad(reason: str) -> NoReturn:
    raise _Bad(reason)


def _name(value: object) -> str:
    """A short, safe rendering of a field name taken from a token (never a whole value)."""
    text = str(value)
    return repr(text if len(text) <= 32 else text[:32] + "...")


# --- keys ---------------------------------------------------------------------------------------


class DelegationSigner:
    """The broker's delegation key (Ed25519) and its key id ``kid``, which tokens name."""

    __slots__ = ("_key", "kid", "public_key")

    def __init__(self, key: Ed25519PrivateKey, kid: str) -> None:
        if not isinstance(kid, str) or not _ID.fullmatch(kid) or len(kid) > 64:
            raise ValueError("a key id is 1-64 letters, digits or '._:@-'")
        self._key = key
        self.kid = kid
        self.public_key = key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"DelegationSigner(kid={self.kid!r}, key=<redacted>)"


def generate_signer(kid: str, *, entropy: Callable[[int], bytes] = os.urandom) -> DelegationSigner:
    """A fresh signer (for tests, demos and ``corral up``'s local key)."""
    return DelegationSigner(Ed25519PrivateKey.from_private_bytes(entropy(32)), kid)


class DelegationKeys:
    """The broker public keys a verifier accepts, by key id (several while a key rotates)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def of(cls, *signers: DelegationSigner) -> DelegationKeys:
        return cls({signer.kid: signer.public_key for signer in signers})

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def kids(self) -> list[str]:
        return sorted(self._keys)


# --- caveats ------------------------------------------------------------------------------------


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


@lru_cache(maxsize=1)
def _currencies() -> frozenset[str]:
    return frozenset(code.lower() for code in list_currencies())


def _check_pattern(value: str) -> str:
    if not _PATTERN.fullmatch(value):
        _bad("a tool pattern is an exact tool name (provider.tool), provider.* or *")
    return value


def _check_recipient(value: str) -> str:
    if _E164.fullmatch(value) or _GHL_CONTACT.fullmatch(value):
        return value
    if _EMAIL.fullmatch(value):
        return value.casefold()
    return _bad("a recipient is an E.164 number, an email or ghl_contact:<id>")


def _check_calendar(value: str) -> str:
    if not _CALENDAR.fullmatch(value):
        _bad("a calendar is google_calendar:<id>, calendly:<event type URI> or ghl:<id>")
    return value


def _check_payment_intent(value: str) -> str:
    if not _PAYMENT_INTENT.fullmatch(value):
        _bad("a payment intent is a provider id without spaces")
    return value


def _check_int(value: object, what: str, low: int, high: int = _MAX_INT) -> int:
    if type(value) is not int or not low <= value <= high:
        _bad(f"{what} must be an integer from {low} to {high}")
    return value


def _check_money(amount: object, currency: object) -> Money:
    minor = _check_int(amount, "max_amount.amount", 0)
    if not isinstance(currency, str) or currency not in _currencies():
        _bad("max_amount.currency must be a lowercase ISO 4217 code, e.g. usd")
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
        _bad(f"caveat {name} must be a list")
    check = _CHECKS[name]
    for item in value:
        if type(item) is not str or check(item) != item:
            _bad(f"caveat {name} holds a value that is not in normal form")
    if value != sorted(set(value)):
        _bad(f"caveat {name} must be sorted, without repeats")
    return frozenset(value)


def _read_caveats(obj: object, *, block: int) -> Caveats:
    if type(obj) is not dict:
        _bad(f"block {block}: caveats must be an object")
    extra = obj.keys() - _CAVEAT_FIELDS
    if extra:
        _bad(f"block {block}: unknown caveat {_name(min(extra))}")
    sets = {name: _read_set(obj[name], name) for name in _CHECKS if name in obj}
    money = None
    if "max_amount" in obj:
        limit = obj["max_amount"]
        if type(limit) is not dict or limit.keys() != _AMOUNT_FIELDS:
            _bad(f"block {block}: max_amount must be {{amount, currency}}")
        money = frozenset({_check_money(limit["amount"], limit["currency"])})
    max_uses = obj.get("max_uses")
    if max_uses is not None or "max_uses" in obj:
        _check_int(max_uses, "max_uses", 1, _MAX_USES)
    exp_ms = obj.get("exp_ms")
    if exp_ms is not None or "exp_ms" in obj:
        if block == 0:
            _bad("block 0 carries its expiry as exp_ms, not as a caveat")
        _check_int(exp_ms, "exp_ms", 0, _MAX_TIME_MS)
    if block == 0 and not sets.get("tools"):
        _bad("block 0 must name at least one tool pattern")
    return Caveats(max_amount=money, max_uses=max_uses, exp_ms=exp_ms, **sets)


def _wire(caveats: Caveats) -> dict[str, Any]:
    """One block's caveats as signed: ``max_amount`` is one ``{amount, currency}`` object."""
    out = caveats.to_json()
    if "max_amount" in out:
        (out["max_amount"],) = out["max_amount"]
    return out


def _request_set(values: Iterable[str] | None, name: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        _bad(f"{name} must be a list of strings, not a single value")
    check = _CHECKS[name]
    out = set()
    for item in values:
        if not isinstance(item, str):
            _bad(f"{name} must hold strings")
        out.add(check(item))
    return frozenset(out)


def _request_caveats(
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
            _bad("max_amount must be a corral.core.money.Money")
        money = frozenset({_check_money(max_amount.amount, max_amount.currency)})
    if max_uses is not None:
        _check_int(max_uses, "max_uses", 1, _MAX_USES)
    return Caveats(
        tools=_request_set(tools, "tools"),
        recipients=_request_set(recipients, "recipients"),
        calendars=_request_set(calendars, "calendars"),
        payment_intents=_request_set(payment_intents, "payment_intents"),
        max_amount=money,
        max_uses=max_uses,
        exp_ms=exp_ms,
    )


# --- the token ----------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: object, what: str, size: int | None = None) -> bytes:
    """Strict, canonical base64url without padding (one accepted spelling per value)."""
    if type(text) is not str or not _B64URL.fullmatch(text):
        _bad(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        _bad(f"{what} is not base64url")
    if _b64(raw) != text:
        _bad(f"{what} is not canonical base64url")
    if size is not None and len(raw) != size:
        _bad(f"{what} must be {size} bytes")
    return raw


def _ms(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("refusing a naive datetime: corral times are timezone-aware")
    return (when - _EPOCH) // _MS


def _at(ms: int) -> datetime:
    return _EPOCH + ms * _MS


@dataclass(frozen=True, slots=True)
class _Block:
    payload: dict[str, Any]
    sig_text: str
    sig: bytes
    next_key: bytes
    caveats: Caveats


@dataclass(frozen=True, slots=True)
class _Token:
    blocks: tuple[_Block, ...]
    proof: bytes

    @property
    def authority(self) -> dict[str, Any]:
        return self.blocks[0].payload


def _read_fields(obj: object, fields: frozenset[str], where: str) -> dict[str, Any]:
    if type(obj) is not dict:
        _bad(f"{where} must be an object")
    if obj.keys() != fields:
        missing = fields - obj.keys()
        if missing:
            _bad(f"{where} lacks the field {_name(min(missing))}")
        _bad(f"{where} has an unknown field {_name(min(obj.keys() - fields))}")
    return obj


def _read_authority(payload: dict[str, Any]) -> None:
    if type(payload["v"]) is not int or payload["v"] != _VERSION:
        _bad(f"block 0: unsupported format version (this verifier reads v {_VERSION})")
    for name in ("kid", "id", "tenant", "agent", "sandbox"):
        if type(payload[name]) is not str or not _ID.fullmatch(payload[name]):
            _bad(f"block 0: {name} is not an identifier")
    iat = _check_int(payload["iat_ms"], "iat_ms", 0, _MAX_TIME_MS)
    exp = _check_int(payload["exp_ms"], "exp_ms", 0, _MAX_TIME_MS)
    if not 0 < exp - iat <= _MAX_TTL_MS:
        _bad(f"block 0: the lifetime exp_ms - iat_ms must be 1 ms to {MAX_TTL_S} s")


def _decode(token: object) -> _Token:
    """Every check that needs no key: size, prefix, encoding, JSON, shape, block count, values."""
    if type(token) is not str:
        _bad("a delegation token is a string")
    if len(token) > MAX_TOKEN_BYTES:
        _bad(f"the token is {len(token)} bytes; at most {MAX_TOKEN_BYTES} are accepted")
    if not token.startswith(TOKEN_PREFIX):
        _bad(f"not a corral delegation (it does not start with {TOKEN_PREFIX!r})")
    raw = _unb64(token[len(TOKEN_PREFIX) :], "the token body")
    try:
        obj = loads_strict(raw)
        canonical = canonicalize(obj) == raw
    except CanonicalizationError as exc:
        _bad(f"the token body is not strict JSON ({str(exc)[:100]})")
    if not canonical:
        _bad("the token body is not canonical JSON (RFC 8785)")
    envelope = _read_fields(obj, _ENVELOPE_FIELDS, "the token")
    raw_blocks = envelope["blocks"]
    if type(raw_blocks) is not list or not 1 <= len(raw_blocks) <= MAX_BLOCKS:
        _bad(f"the token must hold 1 to {MAX_BLOCKS} blocks")
    blocks = []
    for index, raw_block in enumerate(raw_blocks):
        block = _read_fields(raw_block, _BLOCK_FIELDS, f"block {index}")
        fields = _AUTHORITY_FIELDS if index == 0 else _ATTENUATION_FIELDS
        payload = _read_fields(block["payload"], fields, f"block {index}: the payload")
        if index == 0:
            _read_authority(payload)
        else:
            _unb64(payload["prev"], f"block {index}: prev", 64)
        caveats = _read_caveats(payload["caveats"], block=index)
        if index == 0:
            caveats = replace(caveats, exp_ms=payload["exp_ms"])
        blocks.append(
            _Block(
                payload=payload,
                sig_text=block["sig"],
                sig=_unb64(block["sig"], f"block {index}: sig", 64),
                next_key=_unb64(payload["next"], f"block {index}: next", 32),
                caveats=caveats,
            )
        )
    proof = _unb64(envelope["proof"], "the proof", 32)
    return _Token(tuple(blocks), proof)


def _encode(blocks: list[dict[str, Any]], proof: Ed25519PrivateKey) -> str:
    body = canonicalize({"blocks": blocks, "proof": _b64(proof.private_bytes_raw())})
    token = TOKEN_PREFIX + _b64(body)
    if len(token) > MAX_TOKEN_BYTES:
        _bad(f"the token would be {len(token)} bytes; at most {MAX_TOKEN_BYTES} are accepted")
    return token


def _signed(payload: dict[str, Any]) -> bytes:
    return _SIG_CONTEXT + canonicalize(payload)


def _proof_matches(token: _Token) -> bool:
    try:
        key = Ed25519PrivateKey.from_private_bytes(token.proof)
    except ValueError:
        return False
    return key.public_key().public_bytes_raw() == token.blocks[-1].next_key


def _fresh_key(entropy: Callable[[int], bytes]) -> Ed25519PrivateKey:
    seed = entropy(32)
    if len(seed) != 32:
        raise ValueError("entropy must return the number of bytes asked for")
    return Ed25519PrivateKey.from_private_bytes(seed)


# --- the verified view --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delegation:
    """A verified delegation: who may use it, until when, and what it allows.

    ``max_uses`` is the smallest over its blocks (``None``: unlimited). Uses and revocation are
    checked by the broker's store, keyed by :attr:`id`; :meth:`authorize` checks the scope.
    """

    id: str
    kid: str
    tenant: str
    agent: str
    sandbox: str
    issued_at: datetime
    expires_at: datetime
    max_uses: int | None
    blocks: int
    block_caveats: tuple[Caveats, ...] = field(repr=False)

    @property
    def caveats(self) -> Caveats:
        """The effective caveats: the intersection of every block's."""
        return reduce(Caveats.intersect, self.block_caveats)

    def authorize(self, tool: str, effect: Effect) -> None:
        """Return if every block allows calling ``tool`` with ``effect``; else
        :class:`NotAuthorized` names the first block (and its caveat) that refuses it."""
        for index, caveats in enumerate(self.block_caveats):
            caveat = caveats.refusal(tool, effect)
            if caveat is not None:
                raise NotAuthorized(self.id, tool, caveat, index)

    def describe(self) -> dict[str, Any]:
        """Who, until when, and the effective scope, as JSON (``corral broker delegate --json``
        and audit entries): ``tools`` and each constraint at the top level, absent when
        unconstrained (see :meth:`Caveats.to_json`); ``max_uses`` is ``null`` when unlimited.

        It holds no secret: neither the token, nor its signatures, nor the proof key.
        """
        scope = self.caveats.to_json()
        scope.pop("exp_ms", None)  # the same instant as expires_at
        return {
            "id": self.id,
            "kid": self.kid,
            "tenant": self.tenant,
            "agent": self.agent,
            "sandbox": self.sandbox,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "blocks": self.blocks,
            **scope,
            "max_uses": self.max_uses,
        }


def _delegation(token: _Token) -> Delegation:
    authority = token.authority
    caveats = tuple(block.caveats for block in token.blocks)
    effective = reduce(Caveats.intersect, caveats)
    assert effective.exp_ms is not None  # block 0 always has one
    return Delegation(
        id=authority["id"],
        kid=authority["kid"],
        tenant=authority["tenant"],
        agent=authority["agent"],
        sandbox=authority["sandbox"],
        issued_at=_at(authority["iat_ms"]),
        expires_at=_at(effective.exp_ms),
        max_uses=effective.max_uses,
        blocks=len(token.blocks),
        block_caveats=caveats,
    )


@dataclass(frozen=True, slots=True)
class Minted:
    """A new delegation: the bearer ``token`` (a secret: keep it out of logs) and its view."""

    token: str = field(repr=False)
    delegation: Delegation

    @property
    def id(self) -> str:
        return self.delegation.id

    @property
    def expires_at(self) -> datetime:
        return self.delegation.expires_at

    @property
    def caveats(self) -> Caveats:
        return self.delegation.caveats


# --- the operations -----------------------------------------------------------------------------


def _ttl_ms(ttl_s: float) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        _bad("ttl_s must be a number of seconds")
    if (isinstance(ttl_s, float) and not math.isfinite(ttl_s)) or ttl_s <= 0:
        _bad("ttl_s must be a finite number of seconds above 0")
    return max(1, round(min(ttl_s, MAX_TTL_S) * 1000))


def mint(
    signer: DelegationSigner,
    *,
    tenant: str,
    agent: str,
    sandbox: str,
    tools: Iterable[str],
    recipients: Iterable[str] | None = None,
    calendars: Iterable[str] | None = None,
    payment_intents: Iterable[str] | None = None,
    max_amount: Money | None = None,
    max_uses: int | None = None,
    ttl_s: float,
    clock: Clock,
    ids: IdSource,
    entropy: Callable[[int], bytes] = os.urandom,
) -> Minted:
    """Mint a delegation for one (tenant, agent, sandbox), signed with the broker's key.

    The lifetime is ``min(ttl_s, MAX_TTL_S)``, to the nearest millisecond (at least 1 ms).
    ``tools`` must name at least one pattern; the other constraints are unconstrained when
    ``None``, and allow nothing of what they govern when empty. Recipient emails are stored
    case-folded. Raises :class:`InvalidDelegationRequest` for anything that cannot be issued.
    """
    try:
        for name, value in (("tenant", tenant), ("agent", agent), ("sandbox", sandbox)):
            if not isinstance(value, str) or not _ID.fullmatch(value):
                _bad(f"{name} must be 1-128 letters, digits or '._:@-'")
        ttl_ms = _ttl_ms(ttl_s)
        caveats = _request_caveats(
            tools=tools,
            recipients=recipients,
            calendars=calendars,
            payment_intents=payment_intents,
            max_amount=max_amount,
            max_uses=max_uses,
            exp_ms=None,
        )
        if not caveats.tools:
            _bad("tools must name at least one tool pattern")
        iat_ms = _ms(clock.now())
        delegation_id = ids.new(_ID_PREFIX)
        if not _ID.fullmatch(delegation_id):
            _bad("the id source gave an id that is not an identifier")
        holder = _fresh_key(entropy)
        payload = {
            "v": _VERSION,
            "kid": signer.kid,
            "id": delegation_id,
            "tenant": tenant,
            "agent": agent,
            "sandbox": sandbox,
            "iat_ms": iat_ms,
            "exp_ms": iat_ms + ttl_ms,
            "caveats": _wire(caveats),
            "next": _b64(holder.public_key().public_bytes_raw()),
        }
        sig = signer.sign(_signed(payload))
        token = _encode([{"payload": payload, "sig": _b64(sig)}], holder)
    except _Bad as exc:
        raise InvalidDelegationRequest(str(exc)) from None
    view = Delegation(
        id=delegation_id,
        kid=signer.kid,
        tenant=tenant,
        agent=agent,
        sandbox=sandbox,
        issued_at=_at(iat_ms),
        expires_at=_at(iat_ms + ttl_ms),
        max_uses=max_uses,
        blocks=1,
        block_caveats=(replace(caveats, exp_ms=iat_ms + ttl_ms),),
    )
    return Minted(token, view)


def attenuate(
    token: str,
    *,
    tools: Iterable[str] | None = None,
    recipients: Iterable[str] | None = None,
    calendars: Iterable[str] | None = None,
    payment_intents: Iterable[str] | None = None,
    max_amount: Money | None = None,
    max_uses: int | None = None,
    ttl_s: float | None = None,
    exp_ms: int | None = None,
    clock: Clock | None = None,
    entropy: Callable[[int], bytes] = os.urandom,
) -> str:
    """Append a block of caveats, offline: no broker key is needed, only the token's proof.

    The result allows only what the token allowed *and* what the new caveats allow: asking for
    more than the token has (another tool, a later expiry, more uses) adds nothing. ``ttl_s``
    (from ``clock.now()``) or ``exp_ms`` (epoch milliseconds) may shorten the lifetime.

    Raises :class:`MalformedDelegation` for a token that does not parse, :class:`BadSignature`
    when its proof does not match its last block (block 0's broker signature is not checked
    here: that needs the broker's keys), and :class:`InvalidDelegationRequest` for caveats
    that cannot be issued, no caveat at all, or a token already holding :data:`MAX_BLOCKS`.
    """
    try:
        parsed = _decode(token)
    except _Bad as exc:
        raise MalformedDelegation(str(exc)) from None
    if not _proof_matches(parsed):
        raise BadSignature(len(parsed.blocks) - 1, "the proof key does not match the last block")
    try:
        if len(parsed.blocks) >= MAX_BLOCKS:
            _bad(f"the token already holds {MAX_BLOCKS} blocks")
        if ttl_s is not None:
            if exp_ms is not None or clock is None:
                _bad("give ttl_s with a clock, or exp_ms, not both")
            exp_ms = _ms(clock.now()) + _ttl_ms(ttl_s)
        elif exp_ms is not None:
            _check_int(exp_ms, "exp_ms", 0, _MAX_TIME_MS)
        caveats = _request_caveats(
            tools=tools,
            recipients=recipients,
            calendars=calendars,
            payment_intents=payment_intents,
            max_amount=max_amount,
            max_uses=max_uses,
            exp_ms=exp_ms,
        )
        if caveats == Caveats():
            _bad("an attenuation must add at least one caveat")
        holder = _fresh_key(entropy)
        payload = {
            "caveats": _wire(caveats),
            "next": _b64(holder.public_key().public_bytes_raw()),
            "prev": parsed.blocks[-1].sig_text,
        }
        sig = Ed25519PrivateKey.from_private_bytes(parsed.proof).sign(_signed(payload))
        blocks = [{"payload": b.payload, "sig": b.sig_text} for b in parsed.blocks]
        blocks.append({"payload": payload, "sig": _b64(sig)})
        return _encode(blocks, holder)
    except _Bad as exc:
        raise InvalidDelegationRequest(str(exc)) from None


def _check_chain(parsed: _Token, keys: DelegationKeys) -> None:
    kid = parsed.authority["kid"]
    root = keys.get(kid)
    if root is None:
        raise BadSignature(0, f"signed by an unknown broker key {kid!r}", kid=kid)
    try:
        root.verify(parsed.blocks[0].sig, _signed(parsed.authority))
    except InvalidSignature:
        raise BadSignature(0, "the broker's signature does not verify", kid=kid) from None
    for index in range(1, len(parsed.blocks)):
        before, block = parsed.blocks[index - 1], parsed.blocks[index]
        if block.payload["prev"] != before.sig_text:
            raise BadSignature(index, f"it does not follow block {index - 1}", kid=kid)
        try:
            Ed25519PublicKey.from_public_bytes(before.next_key).verify(
                block.sig, _signed(block.payload)
            )
        except (InvalidSignature, ValueError):
            raise BadSignature(
                index, f"not signed by the key block {index - 1} names", kid=kid
            ) from None
    if not _proof_matches(parsed):
        raise BadSignature(
            len(parsed.blocks) - 1, "the proof key does not match the last block", kid=kid
        )


def verify(
    token: str,
    keys: DelegationKeys,
    *,
    tenant: str,
    agent: str,
    sandbox: str,
    now: datetime,
) -> Delegation:
    """Check a presented token and return what it allows.

    ``tenant``, ``agent`` and ``sandbox`` are what the host stamped on the call, never what the
    agent says. In order: size, encoding, strict canonical JSON and shape, block count (all
    before any signature: :class:`MalformedDelegation`); block 0 under the broker key its
    ``kid`` names, each later block under the previous block's ``next`` key and bound to its
    signature, and the proof key against the last ``next`` (:class:`BadSignature`); tenant and
    agent (:class:`WrongPrincipal`); sandbox (:class:`WrongSandbox`); time, in milliseconds:
    ``iat_ms`` at most :data:`MAX_SKEW_MS` ahead of ``now`` (:class:`NotYetValid`) and ``now``
    before the earliest ``exp_ms`` of any block (:class:`Expired`).
    """
    now_ms = _ms(now)
    try:
        parsed = _decode(token)
    except _Bad as exc:
        raise MalformedDelegation(str(exc)) from None
    _check_chain(parsed, keys)
    delegation = _delegation(parsed)
    if delegation.tenant != tenant:
        raise WrongPrincipal(delegation.id, "tenant", delegation.tenant, tenant)
    if delegation.agent != agent:
        raise WrongPrincipal(delegation.id, "agent", delegation.agent, agent)
    if delegation.sandbox != sandbox:
        raise WrongSandbox(delegation.id, delegation.sandbox, sandbox)
    if parsed.authority["iat_ms"] > now_ms + MAX_SKEW_MS:
        raise NotYetValid(delegation.id, delegation.issued_at, now)
    if now_ms >= _ms(delegation.expires_at):
        raise Expired(delegation.id, delegation.expires_at, now)
    return delegation
