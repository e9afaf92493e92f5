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

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from corral.broker import _delegation_caveats, _delegation_errors, _delegation_token
from corral.broker._delegation_caveats import (
    MAX_TIME_MS,
    Bad,
    bad,
    check_int,
    request_caveats,
    wire_caveats,
)
from corral.broker._delegation_token import (
    ID,
    VERSION,
    Token,
    b64,
    chain_break,
    decode,
    encode,
    fresh_key,
    proof_matches,
    signed,
)
from corral.connectors import Effect
from corral.core.clock import Clock, format_time
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

# Public names defined in the private modules, assigned rather than imported so that they are
# defined here like the rest of the API: __all__ lists exactly the names this module defines
# (tests/broker/test_delegation.py checks it).
MAX_TTL_S = _delegation_token.MAX_TTL_S
MAX_TOKEN_BYTES = _delegation_token.MAX_TOKEN_BYTES
MAX_BLOCKS = _delegation_token.MAX_BLOCKS
TOKEN_PREFIX = _delegation_token.TOKEN_PREFIX
Caveats = _delegation_caveats.Caveats
DelegationError = _delegation_errors.DelegationError
MalformedDelegation = _delegation_errors.MalformedDelegation
InvalidDelegationRequest = _delegation_errors.InvalidDelegationRequest
BadSignature = _delegation_errors.BadSignature
Expired = _delegation_errors.Expired
NotYetValid = _delegation_errors.NotYetValid
WrongPrincipal = _delegation_errors.WrongPrincipal
WrongSandbox = _delegation_errors.WrongSandbox
NotAuthorized = _delegation_errors.NotAuthorized

MAX_SKEW_MS = 5000
"""How far in the future a token's ``iat_ms`` may be (clocks of broker replicas differ)."""

_ID_PREFIX = "dlg"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _ms(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("refusing a naive datetime: corral times are timezone-aware")
    return (when - _EPOCH) // _MS


def _at(ms: int) -> datetime:
    return _EPOCH + ms * _MS


# --- keys ---------------------------------------------------------------------------------------


class DelegationSigner:
    """The broker's delegation key (Ed25519) and its key id ``kid``, which tokens name."""

    __slots__ = ("_key", "kid", "public_key")

    def __init__(self, key: Ed25519PrivateKey, kid: str) -> None:
        if not isinstance(kid, str) or not ID.fullmatch(kid) or len(kid) > 64:
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


def _delegation(token: Token) -> Delegation:
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
        bad("ttl_s must be a number of seconds")
    if (isinstance(ttl_s, float) and not math.isfinite(ttl_s)) or ttl_s <= 0:
        bad("ttl_s must be a finite number of seconds above 0")
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
            if not isinstance(value, str) or not ID.fullmatch(value):
                bad(f"{name} must be 1-128 letters, digits or '._:@-'")
        ttl_ms = _ttl_ms(ttl_s)
        caveats = request_caveats(
            tools=tools,
            recipients=recipients,
            calendars=calendars,
            payment_intents=payment_intents,
            max_amount=max_amount,
            max_uses=max_uses,
            exp_ms=None,
        )
        if not caveats.tools:
            bad("tools must name at least one tool pattern")
        iat_ms = _ms(clock.now())
        delegation_id = ids.new(_ID_PREFIX)
        if not ID.fullmatch(delegation_id):
            bad("the id source gave an id that is not an identifier")
        holder = fresh_key(entropy)
        payload = {
            "v": VERSION,
            "kid": signer.kid,
            "id": delegation_id,
            "tenant": tenant,
            "agent": agent,
            "sandbox": sandbox,
            "iat_ms": iat_ms,
            "exp_ms": iat_ms + ttl_ms,
            "caveats": wire_caveats(caveats),
            "next": b64(holder.public_key().public_bytes_raw()),
        }
        sig = signer.sign(signed(payload))
        token = encode([{"payload": payload, "sig": b64(sig)}], holder)
    except Bad as exc:
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
        parsed = decode(token)
    except Bad as exc:
        raise MalformedDelegation(str(exc)) from None
    if not proof_matches(parsed):
        raise BadSignature(len(parsed.blocks) - 1, "the proof key does not match the last block")
    try:
        if len(parsed.blocks) >= MAX_BLOCKS:
            bad(f"the token already holds {MAX_BLOCKS} blocks")
        if ttl_s is not None:
            if exp_ms is not None or clock is None:
                bad("give ttl_s with a clock, or exp_ms, not both")
            exp_ms = _ms(clock.now()) + _ttl_ms(ttl_s)
        elif exp_ms is not None:
            check_int(exp_ms, "exp_ms", 0, MAX_TIME_MS)
        caveats = request_caveats(
            tools=tools,
            recipients=recipients,
            calendars=calendars,
            payment_intents=payment_intents,
            max_amount=max_amount,
            max_uses=max_uses,
            exp_ms=exp_ms,
        )
        if caveats == Caveats():
            bad("an attenuation must add at least one caveat")
        holder = fresh_key(entropy)
        payload = {
            "caveats": wire_caveats(caveats),
            "next": b64(holder.public_key().public_bytes_raw()),
            "prev": parsed.blocks[-1].sig_text,
        }
        sig = Ed25519PrivateKey.from_private_bytes(parsed.proof).sign(signed(payload))
        blocks = [{"payload": b.payload, "sig": b.sig_text} for b in parsed.blocks]
        blocks.append({"payload": payload, "sig": b64(sig)})
        return encode(blocks, holder)
    except Bad as exc:
        raise InvalidDelegationRequest(str(exc)) from None


def _check_chain(parsed: Token, keys: DelegationKeys) -> None:
    kid = parsed.authority["kid"]
    root = keys.get(kid)
    if root is None:
        raise BadSignature(0, f"signed by an unknown broker key {kid!r}", kid=kid)
    broken = chain_break(parsed, root)
    if broken is not None:
        block, reason = broken
        raise BadSignature(block, reason, kid=kid)


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
        parsed = decode(token)
    except Bad as exc:
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
