"""Delegations: minting, offline attenuation, verification and the constraint table."""

from __future__ import annotations

import ast
import base64
import doctest
import inspect
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.broker import delegation as module
from corral.broker.delegation import (
    MAX_BLOCKS,
    MAX_TOKEN_BYTES,
    MAX_TTL_S,
    TOKEN_PREFIX,
    BadSignature,
    Caveats,
    Delegation,
    DelegationError,
    DelegationKeys,
    DelegationSigner,
    Expired,
    InvalidDelegationRequest,
    MalformedDelegation,
    Minted,
    NotAuthorized,
    NotYetValid,
    WrongPrincipal,
    WrongSandbox,
    attenuate,
    generate_signer,
    mint,
    verify,
)
from corral.connectors import Effect, EffectKind
from corral.core.canonical import canonicalize
from corral.core.clock import ManualClock
from corral.core.errors import BrokerError
from corral.core.ids import SequentialIds
from corral.core.money import Money

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
START = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)
WHO: dict[str, Any] = {"tenant": "brightsmile", "agent": "receptionist-1", "sandbox": "sbx-7"}
SIGNER = generate_signer("broker-1", entropy=lambda n: bytes(range(n)))
OTHER_SIGNER = generate_signer("broker-2", entropy=lambda n: bytes(range(1, n + 1)))
KEYS = DelegationKeys.of(SIGNER)

CATALOG = [
    "twilio.send_sms",
    "ghl.send_message",
    "ghl.upsert_contact",
    "ghl.book_appointment",
    "google_calendar.insert_event",
    "google_calendar.delete_event",
    "google_calendar.list_events",
    "calendly.book",
    "calendly.cancel_event",
    "stripe.create_refund",
    "stripe.create_payment_intent",
    "quickbooks.create_invoice",
]
PROVIDER_PATTERNS = sorted({f"{name.split('.')[0]}.*" for name in CATALOG})
PATTERNS = [*CATALOG, *PROVIDER_PATTERNS, "*"]
LEE = "google_calendar:lee@brightsmile.example"
KIM = "google_calendar:kim@brightsmile.example"
ET1 = "calendly:https://api.calendly.com/event_types/ET1"
RECIPIENTS = [
    "+15550100001",
    "+15550100002",
    "pat@example.com",
    "Lee@Example.com",
    "ghl_contact:c1",
]
CALENDARS = [LEE, KIM, ET1, "ghl:cal-1"]
PAYMENT_INTENTS = ["pi_1", "pi_2", "pi_3"]


def clock() -> ManualClock:
    return ManualClock(START)


def new(
    *, at: ManualClock | None = None, signer: DelegationSigner = SIGNER, **caveats: Any
) -> Minted:
    caveats.setdefault("tools", ["twilio.send_sms"])
    caveats.setdefault("ttl_s", 300)
    return mint(signer, **WHO, clock=at or clock(), ids=SequentialIds(), **caveats)


def check(token: str, *, now: datetime = START, keys: DelegationKeys = KEYS) -> Delegation:
    return verify(token, keys, **WHO, now=now)


def sms(to: str | None) -> Effect:
    return Effect(EffectKind.MESSAGE, recipient=to)


def open_token(token: str) -> dict[str, Any]:
    body = token[len(TOKEN_PREFIX) :]
    parsed: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return parsed


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def seal(obj: Any, *, canonical: bool = True) -> str:
    raw = canonicalize(obj) if canonical else json.dumps(obj).encode()
    return TOKEN_PREFIX + b64(raw)


def allowed(delegation: Delegation, tool: str, effect: Effect) -> bool:
    try:
        delegation.authorize(tool, effect)
    except NotAuthorized:
        return False
    return True


# --- round trip and lifetime --------------------------------------------------------------------


def test_round_trip() -> None:
    minted = new(recipients=["+15550100001"], max_uses=3)
    delegation = check(minted.token)
    assert delegation == minted.delegation
    assert delegation.id == minted.id == "dlg_0000000001"
    assert (delegation.tenant, delegation.agent, delegation.sandbox) == tuple(WHO.values())
    assert delegation.issued_at == START
    assert delegation.expires_at == minted.expires_at == START + timedelta(seconds=MAX_TTL_S)
    assert delegation.max_uses == 3 and delegation.blocks == 1 and delegation.kid == "broker-1"
    assert minted.token.startswith(TOKEN_PREFIX) and len(minted.token) < 1024
    delegation.authorize("twilio.send_sms", sms("+15550100001"))
    assert minted.caveats == delegation.caveats
    assert delegation.caveats.tools == frozenset({"twilio.send_sms"})


def test_describe_is_json_without_secrets() -> None:
    minted = new(recipients=["Pat@Example.com"], max_amount=Money(500, "usd"), max_uses=2)
    token = attenuate(minted.token, tools=["*"], calendars=[LEE])
    described = check(token).describe()
    text = canonicalize(described).decode()
    assert described == {
        "id": "dlg_0000000001",
        "kid": "broker-1",
        "tenant": "brightsmile",
        "agent": "receptionist-1",
        "sandbox": "sbx-7",
        "issued_at": "2026-03-03T17:00:00.000000Z",
        "expires_at": "2026-03-03T17:05:00.000000Z",
        "blocks": 2,
        "tools": ["twilio.send_sms"],
        "recipients": ["pat@example.com"],
        "calendars": [LEE],
        "max_amount": [{"amount": 500, "currency": "usd"}],
        "max_uses": 2,
    }
    assert check(new().token).describe()["max_uses"] is None
    proof = open_token(token)["proof"]
    assert proof not in text and token[len(TOKEN_PREFIX) :] not in text
    assert minted.token not in repr(minted) and minted.token not in repr(minted.delegation)
    assert "redacted" in repr(SIGNER)


TTLS = st.one_of(
    st.integers(min_value=1, max_value=10**40),
    st.floats(min_value=1e-6, max_value=1e308, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=100, deadline=None)
@given(ttl_s=TTLS)
def test_lifetime_is_at_most_300_s_whatever_is_asked(ttl_s: float) -> None:
    minted = new(ttl_s=ttl_s)
    lifetime = minted.expires_at - START
    assert timedelta(milliseconds=1) <= lifetime <= timedelta(seconds=MAX_TTL_S)
    expected_ms = max(1, round(min(ttl_s, MAX_TTL_S) * 1000))
    assert lifetime == timedelta(milliseconds=expected_ms)
    payload = open_token(minted.token)["blocks"][0]["payload"]
    assert 0 < payload["exp_ms"] - payload["iat_ms"] <= 300_000
    assert check(minted.token).expires_at == minted.expires_at


@pytest.mark.parametrize(
    "ttl_s", [0, -1, -0.5, math.nan, math.inf, -math.inf, True, "300", None], ids=repr
)
def test_a_lifetime_that_is_not_a_positive_finite_number_is_refused(ttl_s: Any) -> None:
    with pytest.raises(InvalidDelegationRequest, match="ttl_s") as caught:
        new(ttl_s=ttl_s)
    assert isinstance(caught.value, ValueError)


@settings(max_examples=50, deadline=None)
@given(
    elapsed_ms=st.integers(min_value=0, max_value=299_999),
    asked=st.one_of(
        st.fixed_dictionaries({"ttl_s": TTLS}),
        st.fixed_dictionaries({"exp_ms": st.integers(0, 253_402_300_799_999)}),
    ),
)
def test_attenuation_never_extends_the_lifetime(elapsed_ms: int, asked: dict[str, Any]) -> None:
    at = clock()
    minted = new(at=at)
    at.advance(timedelta(milliseconds=elapsed_ms))
    token = attenuate(minted.token, clock=at, **asked)
    now_ms = int(START.timestamp() * 1000) + elapsed_ms
    if "ttl_s" in asked:
        asked_ms = now_ms + max(1, round(min(asked["ttl_s"], MAX_TTL_S) * 1000))
    else:
        asked_ms = asked["exp_ms"]
    expected = min(minted.expires_at, EPOCH + timedelta(milliseconds=asked_ms))
    if at.now() < expected:
        assert check(token, now=at.now()).expires_at == expected <= minted.expires_at
    else:
        with pytest.raises(Expired):
            check(token, now=at.now())
    with pytest.raises(Expired):
        check(token, now=minted.expires_at)


def test_a_later_expiry_in_a_later_block_does_nothing() -> None:
    minted = new(ttl_s=60)
    later = attenuate(minted.token, exp_ms=int(START.timestamp() * 1000) + 10**9)
    assert check(later).expires_at == minted.expires_at == START + timedelta(seconds=60)
    sooner = attenuate(later, ttl_s=10, clock=clock())
    assert check(sooner).expires_at == START + timedelta(seconds=10)


def test_expiry_is_exact_to_the_millisecond() -> None:
    at = clock()
    minted = new(at=at, ttl_s=1.5)
    exp = START + timedelta(milliseconds=1500)
    assert check(minted.token, now=exp - timedelta(milliseconds=1)).expires_at == exp
    assert check(minted.token, now=exp - timedelta(microseconds=1)).expires_at == exp
    with pytest.raises(Expired) as caught:
        check(minted.token, now=exp)
    assert caught.value.expired_at == exp and caught.value.delegation_id == minted.id
    with pytest.raises(Expired):
        check(minted.token, now=exp + timedelta(days=1))
    narrowed = attenuate(minted.token, ttl_s=0.25, clock=at)
    check(narrowed, now=START + timedelta(milliseconds=249))
    with pytest.raises(Expired):
        check(narrowed, now=START + timedelta(milliseconds=250))


def test_a_token_from_the_future_beyond_the_skew_is_refused() -> None:
    minted = new()
    check(minted.token, now=START - timedelta(milliseconds=5000))
    with pytest.raises(NotYetValid) as caught:
        check(minted.token, now=START - timedelta(milliseconds=5001))
    assert caught.value.issued_at == START


def test_verify_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="naive"):
        verify(new().token, KEYS, **WHO, now=START.replace(tzinfo=None))


# --- narrowing never widens ---------------------------------------------------------------------


def _norm(recipient: str) -> str:
    return recipient.lower() if "@" in recipient else recipient


def reference_allows(caveats: dict[str, Any], tool: str, effect: Effect) -> bool:
    """The constraint table, transcribed literally (one block)."""
    provider, _, operation = tool.partition(".")
    if "tools" in caveats and not any(
        p in ("*", tool) or (p == f"{provider}.*" and operation and "." not in operation)
        for p in caveats["tools"]
    ):
        return False
    kind = effect.kind
    if kind == EffectKind.MESSAGE and "recipients" in caveats:
        if effect.recipient is None:
            return False
        if _norm(effect.recipient) not in {_norm(r) for r in caveats["recipients"]}:
            return False
    if (
        kind in (EffectKind.BOOKING, EffectKind.READ)
        and "calendars" in caveats
        and effect.resource not in caveats["calendars"]
    ):
        return False
    if kind == EffectKind.CANCELLATION and "calendars" in caveats:
        # only a Google event id names its calendar: google_calendar:<calendar>/<event>
        parts = (effect.target or "").split("/")
        if not parts[0].startswith("google_calendar:") or len(parts) != 2 or not parts[1]:
            return False
        if parts[0] not in caveats["calendars"]:
            return False
    if (
        kind == EffectKind.REFUND
        and "payment_intents" in caveats
        and effect.target not in caveats["payment_intents"]
    ):
        return False
    if kind in (EffectKind.REFUND, EffectKind.CHARGE) and "max_amount" in caveats:
        limit: Money = caveats["max_amount"]
        if effect.currency != limit.currency or effect.amount is None:
            return False
        if effect.amount > limit.amount:
            return False
    return True


MONEY = st.builds(Money, st.integers(0, 5000), st.sampled_from(["usd", "eur"]))
NOTHING: dict[str, st.SearchStrategy[Any]] = {}
OPTIONAL_CAVEATS: dict[str, st.SearchStrategy[Any]] = {
    "recipients": st.lists(st.sampled_from(RECIPIENTS), max_size=3),
    "calendars": st.lists(st.sampled_from(CALENDARS), max_size=3),
    "payment_intents": st.lists(st.sampled_from(PAYMENT_INTENTS), max_size=2),
    "max_amount": MONEY,
    "max_uses": st.integers(1, 10),
}
ROOTS = st.fixed_dictionaries(
    {"tools": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3)},
    optional=OPTIONAL_CAVEATS,
)
ATTENUATIONS = st.fixed_dictionaries(
    NOTHING,
    optional={
        "tools": st.lists(st.sampled_from(PATTERNS), max_size=3),
        "ttl_s": st.floats(min_value=0.001, max_value=10_000),
        **OPTIONAL_CAVEATS,
    },
).filter(bool)
EFFECTS = st.one_of(
    st.builds(sms, st.sampled_from([*RECIPIENTS, "lee@example.com", "+15550100009", None])),
    st.builds(
        Effect,
        st.sampled_from([EffectKind.BOOKING, EffectKind.READ]),
        resource=st.sampled_from([*CALENDARS, "ghl:cal-2", None]),
    ),
    st.builds(
        Effect,
        st.just(EffectKind.CANCELLATION),
        target=st.sampled_from([f"{LEE}/ev1", f"{KIM}/ev2", "calendly:uuid-1", LEE, None]),
    ),
    st.builds(
        Effect,
        st.sampled_from([EffectKind.REFUND, EffectKind.CHARGE]),
        target=st.sampled_from([*PAYMENT_INTENTS, "pi_9", None]),
        amount=st.one_of(st.none(), st.integers(0, 6000)),
        currency=st.sampled_from(["usd", "eur", "gbp", None]),
    ),
    st.builds(
        Effect,
        st.sampled_from([EffectKind.INVOICE, EffectKind.CONTACT_UPDATE]),
        target=st.just("c1"),
    ),
)
CALLS = st.tuples(st.sampled_from(CATALOG), EFFECTS)


@settings(max_examples=150, deadline=None)
@given(
    root=ROOTS,
    chain=st.lists(ATTENUATIONS, max_size=4),
    calls=st.lists(CALLS, min_size=1, max_size=25),
)
def test_narrowing_never_widens(
    root: dict[str, Any], chain: list[dict[str, Any]], calls: list[tuple[str, Effect]]
) -> None:
    at = clock()
    tokens = [new(at=at, **root).token]
    for request in chain:
        tokens.append(attenuate(tokens[-1], clock=at, **request))
    views = [check(token) for token in tokens]
    blocks = [root, *chain]
    for index, view in enumerate(views):
        assert view.blocks == index + 1
        uses = [b["max_uses"] for b in blocks[: index + 1] if "max_uses" in b]
        assert view.max_uses == (min(uses) if uses else None)
        if index:
            assert view.expires_at <= views[index - 1].expires_at
    for tool, effect in calls:
        verdicts = [allowed(view, tool, effect) for view in views]
        for index, verdict in enumerate(verdicts):
            # what a narrower token allows, every wider one allows
            assert not verdict or all(verdicts[:index])
            # exactly the calls that every block allows (so a narrowing does refuse)
            expected = all(reference_allows(b, tool, effect) for b in blocks[: index + 1])
            assert verdict == expected, (index, tool, effect)
            # the effective caveats (describe) agree with the block-by-block check
            assert (views[index].caveats.refusal(tool, effect) is None) == verdict


def test_asking_for_more_adds_nothing() -> None:
    minted = new(recipients=["+15550100001"], max_amount=Money(100, "usd"), max_uses=1)
    wider = attenuate(
        minted.token,
        tools=["*"],
        recipients=["+15550100001", "+15550100002"],
        max_amount=Money(10**9, "usd"),
        max_uses=1000,
    )
    view = check(wider)
    assert view.max_uses == 1
    view.authorize("twilio.send_sms", sms("+15550100001"))
    for tool, effect, caveat in [
        ("twilio.send_sms", sms("+15550100002"), "recipients"),
        ("stripe.create_refund", Effect(EffectKind.REFUND, amount=1, currency="usd"), "tools"),
    ]:
        with pytest.raises(NotAuthorized) as caught:
            view.authorize(tool, effect)
        assert (caught.value.caveat, caught.value.block) == (caveat, 0)
    assert view.caveats.tools == frozenset({"twilio.send_sms"})
    assert view.caveats.recipients == frozenset({"+15550100001"})
    assert view.caveats.max_amount == frozenset({Money(100, "usd")})


def test_a_narrowing_names_the_block_that_refuses() -> None:
    minted = new(tools=["twilio.*", "stripe.*"])
    token = attenuate(minted.token, tools=["twilio.send_sms"])
    token = attenuate(token, recipients=["pat@example.com"])
    view = check(token)
    view.authorize("twilio.send_sms", sms("PAT@example.COM"))
    with pytest.raises(NotAuthorized) as caught:
        view.authorize("stripe.create_refund", Effect(EffectKind.REFUND))
    assert (caught.value.tool, caught.value.caveat, caught.value.block) == (
        "stripe.create_refund",
        "tools",
        1,
    )
    with pytest.raises(NotAuthorized) as caught:
        view.authorize("twilio.send_sms", sms("+15550100001"))
    assert (caught.value.caveat, caught.value.block) == ("recipients", 2)
    assert "recipients (block 2)" in str(caught.value)


def test_money_limits_in_two_currencies_allow_no_money() -> None:
    minted = new(tools=["stripe.*"], max_amount=Money(500, "usd"))
    view = check(attenuate(minted.token, max_amount=Money(500, "eur")))
    assert view.caveats.max_amount == frozenset()
    for currency in ("usd", "eur"):
        refund = Effect(EffectKind.REFUND, amount=1, currency=currency)
        assert not allowed(view, "stripe.create_refund", refund)
        assert view.caveats.refusal("stripe.create_refund", refund) == "max_amount"
    assert view.describe()["max_amount"] == []


# --- binding ------------------------------------------------------------------------------------


def test_presented_from_another_sandbox_it_is_refused() -> None:
    minted = new()
    with pytest.raises(WrongSandbox) as caught:
        verify(minted.token, KEYS, **{**WHO, "sandbox": "sbx-8"}, now=START)
    assert (caught.value.expected, caught.value.presented) == ("sbx-7", "sbx-8")
    assert caught.value.delegation_id == minted.id
    narrowed = attenuate(minted.token, max_uses=1)
    with pytest.raises(WrongSandbox):
        verify(narrowed, KEYS, **{**WHO, "sandbox": "sbx-8"}, now=START)


@pytest.mark.parametrize(("field", "value"), [("tenant", "oakplumbing"), ("agent", "billing-1")])
def test_another_tenant_or_agent_is_refused(field: str, value: str) -> None:
    with pytest.raises(WrongPrincipal) as caught:
        verify(new().token, KEYS, **{**WHO, field: value}, now=START)
    assert (caught.value.field, caught.value.expected, caught.value.presented) == (
        field,
        WHO[field],
        value,
    )


# --- tampering ----------------------------------------------------------------------------------

TWO_BLOCKS = attenuate(
    new(recipients=["+15550100001"]).token, ttl_s=60, clock=clock(), entropy=lambda n: b"\x07" * n
)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(min_value=0), char=st.characters())
def test_any_changed_character_is_refused(index: int, char: str) -> None:
    for token in (new().token, TWO_BLOCKS):
        position = index % len(token)
        if token[position] == char:
            continue
        changed = token[:position] + char + token[position + 1 :]
        with pytest.raises(DelegationError):
            check(changed)


def _chain(length: int, seed: int = 1) -> list[str]:
    tokens = [new(recipients=["+15550100001"], max_uses=seed).token]
    for _ in range(length - 1):
        tokens.append(attenuate(tokens[-1], max_uses=seed))
    return tokens


def test_blocks_cannot_be_dropped_reordered_or_spliced() -> None:
    tokens = _chain(3)
    token = open_token(tokens[-1])
    other = open_token(_chain(3, seed=2)[-1])
    b0, b1, b2 = token["blocks"]
    c0, _, c2 = other["blocks"]
    cases = {
        "drop-last": {**token, "blocks": [b0, b1]},
        "drop-middle": {**token, "blocks": [b0, b2]},
        "swap": {**token, "blocks": [b0, b2, b1]},
        "splice-tail": {**token, "blocks": [b0, b1, c2], "proof": other["proof"]},
        "splice-head": {**token, "blocks": [c0, b1, b2]},
        "splice-rebound": {
            **token,
            "blocks": [b0, b1, {**c2, "payload": {**c2["payload"], "prev": b1["sig"]}}],
            "proof": other["proof"],
        },
        "other-proof": {**token, "proof": other["proof"]},
        "earlier-proof": {**token, "proof": open_token(tokens[1])["proof"]},
    }
    for desc, case in cases.items():
        with pytest.raises(BadSignature) as caught:
            check(seal(case))
        assert caught.value.block >= 0, desc


def test_a_proof_that_does_not_match_is_refused() -> None:
    token = open_token(new().token)
    forged = seal({**token, "proof": b64(b"\x01" * 32)})
    with pytest.raises(BadSignature, match="proof key does not match"):
        check(forged)
    with pytest.raises(BadSignature, match="proof key does not match"):
        attenuate(forged, max_uses=1)


def test_unknown_key_id_or_wrong_key_is_refused() -> None:
    token = new().token
    with pytest.raises(BadSignature, match="unknown broker key") as caught:
        check(token, keys=DelegationKeys.of(OTHER_SIGNER))
    assert caught.value.kid == "broker-1" and caught.value.block == 0
    impostor = DelegationKeys({"broker-1": OTHER_SIGNER.public_key})
    with pytest.raises(BadSignature, match="broker's signature"):
        check(token, keys=impostor)


def test_key_rotation_two_kids_both_verify() -> None:
    both = DelegationKeys.of(SIGNER, OTHER_SIGNER)
    assert both.kids() == ["broker-1", "broker-2"] and "broker-2" in both
    old, current = new(signer=SIGNER), new(signer=OTHER_SIGNER)
    assert check(old.token, keys=both).kid == "broker-1"
    assert check(attenuate(current.token, max_uses=1), keys=both).kid == "broker-2"
    with pytest.raises(BadSignature):
        check(old.token, keys=DelegationKeys.of(OTHER_SIGNER))


# --- malformed tokens ---------------------------------------------------------------------------


def _edit(edit: Any) -> str:
    token = open_token(TWO_BLOCKS)
    edit(token)
    return seal(token)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def edit(obj: Any) -> None:
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return edit


def _delete(path: tuple[Any, ...]) -> Any:
    def edit(obj: Any) -> None:
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]

    return edit


P0 = ("blocks", 0, "payload")
P1 = ("blocks", 1, "payload")
BODY = TWO_BLOCKS[len(TOKEN_PREFIX) :]
DUPLICATE = json.dumps(open_token(TWO_BLOCKS), separators=(",", ":"))[:-1] + ',"proof":"AA"}'
NINE = open_token(TWO_BLOCKS)
NINE["blocks"] = [NINE["blocks"][0]] + [NINE["blocks"][1]] * 8
MALFORMED = {
    "not-a-string": (b"cdl1.", "is a string"),
    "oversized": (TOKEN_PREFIX + "A" * MAX_TOKEN_BYTES, "at most 8192"),
    "no-prefix": (BODY, "does not start with 'cdl1.'"),
    "other-version": ("cdl2." + BODY, "does not start with"),
    "not-base64": (TOKEN_PREFIX + "!!!!", "not base64url"),
    "padded-base64": (TWO_BLOCKS + "=", "not base64url"),
    "standard-base64": (TOKEN_PREFIX + "ab+/", "not base64url"),
    "non-canonical-base64": (TOKEN_PREFIX + "QR", "not canonical base64url"),
    "not-json": (TOKEN_PREFIX + b64(b"not json"), "not strict JSON"),
    "not-utf8": (TOKEN_PREFIX + b64(b'{"a":"\xff"}'), "not strict JSON"),
    "duplicate-key": (TOKEN_PREFIX + b64(DUPLICATE.encode()), "duplicate JSON object key"),
    "whitespace": (seal(open_token(TWO_BLOCKS), canonical=False), "not canonical JSON"),
    "not-an-object": (seal([1]), "the token must be an object"),
    "extra-envelope-field": (_edit(_set(("extra",), 1)), "unknown field 'extra'"),
    "missing-proof": (_edit(_delete(("proof",))), "lacks the field 'proof'"),
    "extra-block-field": (_edit(_set(("blocks", 1, "kid"), "x")), "block 1 has an unknown field"),
    "extra-payload-field": (_edit(_set((*P0, "scope"), [])), "unknown field 'scope'"),
    "extra-caveat": (_edit(_set((*P1, "caveats", "uses"), 1)), "unknown caveat 'uses'"),
    "no-blocks": (_edit(_set(("blocks",), [])), "1 to 8 blocks"),
    "nine-blocks": (seal(NINE), "1 to 8 blocks"),
    "blocks-not-a-list": (_edit(_set(("blocks",), {})), "1 to 8 blocks"),
    "version-2": (_edit(_set((*P0, "v"), 2)), "unsupported format version"),
    "version-true": (_edit(_set((*P0, "v"), True)), "unsupported format version"),
    "tenant-not-an-id": (_edit(_set((*P0, "tenant"), "bright smile")), "tenant is not an id"),
    "iat-string": (_edit(_set((*P0, "iat_ms"), "1")), "iat_ms must be an integer"),
    "exp-negative": (_edit(_set((*P0, "exp_ms"), -1)), "exp_ms must be an integer"),
    "lifetime-over-300s": (
        _edit(
            lambda t: t["blocks"][0]["payload"].update(
                exp_ms=t["blocks"][0]["payload"]["iat_ms"] + 300_001
            )
        ),
        "1 ms to 300 s",
    ),
    "lifetime-zero": (
        _edit(
            lambda t: t["blocks"][0]["payload"].update(exp_ms=t["blocks"][0]["payload"]["iat_ms"])
        ),
        "1 ms to 300 s",
    ),
    "block-0-without-tools": (_edit(_delete((*P0, "caveats", "tools"))), "at least one tool"),
    "block-0-empty-tools": (_edit(_set((*P0, "caveats", "tools"), [])), "at least one tool"),
    "block-0-exp-caveat": (_edit(_set((*P0, "caveats", "exp_ms"), 1)), "carries its expiry"),
    "bad-pattern": (_edit(_set((*P0, "caveats", "tools"), ["twilio"])), "a tool pattern is"),
    "unsorted": (
        _edit(_set((*P0, "caveats", "tools"), ["twilio.send_sms", "stripe.*"])),
        "sorted, without repeats",
    ),
    "repeated": (_edit(_set((*P1, "caveats", "tools"), ["*", "*"])), "sorted, without repeats"),
    "email-not-folded": (
        _edit(_set((*P0, "caveats", "recipients"), ["Pat@example.com"])),
        "not in normal form",
    ),
    "max-uses-zero": (_edit(_set((*P1, "caveats", "max_uses"), 0)), "max_uses must be"),
    "amount-float": (
        _edit(_set((*P1, "caveats", "max_amount"), {"amount": 1.5, "currency": "usd"})),
        "max_amount.amount",
    ),
    "currency-upper": (
        _edit(_set((*P1, "caveats", "max_amount"), {"amount": 1, "currency": "USD"})),
        "max_amount.currency",
    ),
    "short-sig": (_edit(_set(("blocks", 0, "sig"), b64(b"x" * 63))), "must be 64 bytes"),
    "short-next": (_edit(_set((*P0, "next"), b64(b"x" * 31))), "must be 32 bytes"),
    "short-prev": (_edit(_set((*P1, "prev"), b64(b"x" * 65))), "must be 64 bytes"),
    "short-proof": (_edit(_set(("proof",), b64(b"x" * 33))), "must be 32 bytes"),
}


@pytest.mark.parametrize(("token", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_tokens_are_refused_before_any_signature(token: Any, message: str) -> None:
    with pytest.raises(MalformedDelegation) as caught:
        check(token)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, BrokerError)
    assert caught.value.reason in str(caught.value)
    if isinstance(token, str) and len(token) > len(TOKEN_PREFIX) + 40:
        assert token[len(TOKEN_PREFIX) :][:40] not in str(caught.value)
    with pytest.raises(MalformedDelegation):
        attenuate(token, max_uses=1)


def test_at_most_8_blocks_and_8_kib() -> None:
    token = new().token
    for _ in range(MAX_BLOCKS - 1):
        token = attenuate(token, max_uses=5)
    assert check(token).blocks == MAX_BLOCKS
    with pytest.raises(InvalidDelegationRequest, match="already holds 8 blocks"):
        attenuate(token, max_uses=1)
    many = [f"+1555{n:07d}" for n in range(600)]
    with pytest.raises(InvalidDelegationRequest, match="at most 8192"):
        new(recipients=many)


# --- the constraint table -----------------------------------------------------------------------

GOOGLE_EVENT = f"{LEE}/ev1"
SMS, GHL_MSG = "twilio.send_sms", "ghl.send_message"
BOOK, INSERT, LIST, DELETE = (
    "calendly.book",
    "google_calendar.insert_event",
    "google_calendar.list_events",
    "google_calendar.delete_event",
)
CANCEL, REFUND, CHARGE = (
    "calendly.cancel_event",
    "stripe.create_refund",
    "stripe.create_payment_intent",
)
INVOICE = "quickbooks.create_invoice"
USD500 = Money(500, "usd")


def every(**caveats: Any) -> dict[str, Any]:
    return {"tools": ["*"], **caveats}


def booking(resource: str | None) -> Effect:
    return Effect(EffectKind.BOOKING, resource=resource)


def read(resource: str | None) -> Effect:
    return Effect(EffectKind.READ, resource=resource)


def cancellation(target: str | None) -> Effect:
    return Effect(EffectKind.CANCELLATION, target=target)


def refund(
    target: str | None = "pi_1", amount: int | None = 1, currency: str | None = "usd"
) -> Effect:
    return Effect(EffectKind.REFUND, target=target, amount=amount, currency=currency)


def charge(amount: int, currency: str = "usd") -> Effect:
    return Effect(EffectKind.CHARGE, amount=amount, currency=currency)


TABLE: list[tuple[str, dict[str, Any], str, Effect, str | None]] = [
    # desc, caveats, tool, effect, the caveat that refuses it (None: allowed)
    ("tools-exact", {}, SMS, sms("+1"), None),
    ("tools-other", {}, GHL_MSG, sms("+1"), "tools"),
    ("tools-provider", {"tools": ["stripe.*"]}, REFUND, refund(), None),
    ("tools-provider-other", {"tools": ["stripe.*"]}, SMS, sms("+1"), "tools"),
    ("tools-provider-prefix", {"tools": ["ghl.*"]}, "ghl_x.send", sms("+1"), "tools"),
    ("tools-provider-one-segment", {"tools": ["ghl.*"]}, "ghl.send.x", sms("+1"), "tools"),
    ("tools-star", every(), INVOICE, Effect(EffectKind.INVOICE), None),
    ("recipients-in", {"recipients": ["+15550100001"]}, SMS, sms("+15550100001"), None),
    ("recipients-out", {"recipients": ["+15550100001"]}, SMS, sms("+15550100002"), "recipients"),
    (
        "recipients-email-case",
        {"recipients": ["Pat@Example.com"]},
        SMS,
        sms("pat@example.COM"),
        None,
    ),
    ("recipients-ghl", every(recipients=["ghl_contact:c1"]), GHL_MSG, sms("ghl_contact:c1"), None),
    (
        "recipients-ghl-exact",
        every(recipients=["ghl_contact:c1"]),
        GHL_MSG,
        sms("ghl_contact:C1"),
        "recipients",
    ),
    ("recipients-unknown", {"recipients": ["+15550100001"]}, SMS, sms(None), "recipients"),
    ("recipients-empty", {"recipients": []}, SMS, sms("+15550100001"), "recipients"),
    ("recipients-not-booking", every(recipients=[]), BOOK, booking(ET1), None),
    ("calendars-booking-in", every(calendars=[ET1]), BOOK, booking(ET1), None),
    ("calendars-booking-out", every(calendars=[ET1]), INSERT, booking(LEE), "calendars"),
    ("calendars-booking-unknown", every(calendars=[ET1]), BOOK, booking(None), "calendars"),
    ("calendars-read-in", every(calendars=[LEE]), LIST, read(LEE), None),
    ("calendars-read-out", every(calendars=[LEE]), LIST, read(KIM), "calendars"),
    ("calendars-read-unknown", every(calendars=[LEE]), LIST, read(None), "calendars"),
    ("calendars-cancel-in", every(calendars=[LEE]), DELETE, cancellation(GOOGLE_EVENT), None),
    (
        "calendars-cancel-out",
        every(calendars=[KIM]),
        DELETE,
        cancellation(GOOGLE_EVENT),
        "calendars",
    ),
    (
        "calendars-cancel-calendly",
        every(calendars=[ET1]),
        CANCEL,
        cancellation("calendly:u1"),
        "calendars",
    ),
    (
        "calendars-cancel-empty-event",
        every(calendars=[LEE]),
        DELETE,
        cancellation(f"{LEE}/"),
        "calendars",
    ),
    ("calendars-cancel-no-event", every(calendars=[LEE]), DELETE, cancellation(LEE), "calendars"),
    ("calendars-cancel-unknown", every(calendars=[LEE]), DELETE, cancellation(None), "calendars"),
    ("cancel-calendly-unconstrained", every(), CANCEL, cancellation("calendly:u1"), None),
    ("calendars-not-message", {"calendars": []}, SMS, sms("+15550100001"), None),
    ("intents-in", every(payment_intents=["pi_1"]), REFUND, refund("pi_1"), None),
    ("intents-out", every(payment_intents=["pi_1"]), REFUND, refund("pi_2"), "payment_intents"),
    ("intents-unknown", every(payment_intents=["pi_1"]), REFUND, refund(None), "payment_intents"),
    ("intents-not-charge", every(payment_intents=[]), CHARGE, charge(5), None),
    ("amount-refund-at-max", every(max_amount=USD500), REFUND, refund(amount=500), None),
    ("amount-refund-over", every(max_amount=USD500), REFUND, refund(amount=501), "max_amount"),
    (
        "amount-refund-other-currency",
        every(max_amount=USD500),
        REFUND,
        refund(currency="eur"),
        "max_amount",
    ),
    ("amount-refund-unknown", every(max_amount=USD500), REFUND, refund(amount=None), "max_amount"),
    ("amount-charge-under", every(max_amount=USD500), CHARGE, charge(499), None),
    ("amount-charge-over", every(max_amount=USD500), CHARGE, charge(501), "max_amount"),
    (
        "amount-charge-other-currency",
        every(max_amount=USD500),
        CHARGE,
        charge(1, "eur"),
        "max_amount",
    ),
    (
        "amount-not-invoice",
        every(max_amount=Money(0, "usd")),
        INVOICE,
        Effect(EffectKind.INVOICE, total="9.00"),
        None,
    ),
    ("amount-not-message", {"max_amount": Money(0, "usd")}, SMS, sms("+15550100001"), None),
]


@pytest.mark.parametrize(
    ("caveats", "tool", "effect", "refused_by"),
    [case[1:] for case in TABLE],
    ids=[case[0] for case in TABLE],
)
def test_the_constraint_table(
    caveats: dict[str, Any], tool: str, effect: Effect, refused_by: str | None
) -> None:
    block = {"tools": ["twilio.send_sms"], **caveats}
    assert reference_allows(block, tool, effect) == (refused_by is None)
    minted = check(new(**block).token)
    # the same caveats in an attenuation refuse the same calls, from block 1
    narrowed = check(attenuate(new(tools=["*"]).token, **block))
    for index, view in enumerate((minted, narrowed)):
        if refused_by is None:
            view.authorize(tool, effect)
        else:
            with pytest.raises(NotAuthorized) as caught:
                view.authorize(tool, effect)
            assert (caught.value.caveat, caught.value.block) == (refused_by, index)
        assert view.caveats.refusal(tool, effect) == refused_by


# --- requests that cannot be issued --------------------------------------------------------------

BAD_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "no-tools": ({"tools": []}, "at least one tool pattern"),
    "tools-as-string": ({"tools": "twilio.send_sms"}, "not a single value"),
    "tool-without-operation": ({"tools": ["twilio"]}, "tool pattern"),
    "tool-upper": ({"tools": ["Twilio.send_sms"]}, "tool pattern"),
    "tool-star-first": ({"tools": ["*.send_sms"]}, "tool pattern"),
    "tool-three-segments": ({"tools": ["twilio.*.x"]}, "tool pattern"),
    "recipient-national": ({"recipients": ["(415) 555-0100"]}, "recipient"),
    "recipient-not-string": ({"recipients": [15550100001]}, "must hold strings"),
    "calendar-unknown-provider": ({"calendars": ["outlook:x"]}, "calendar"),
    "calendar-google-with-slash": ({"calendars": ["google_calendar:a/b"]}, "calendar"),
    "intent-with-space": ({"payment_intents": ["pi 1"]}, "payment intent"),
    "max-uses-zero": ({"max_uses": 0}, "max_uses"),
    "max-uses-bool": ({"max_uses": True}, "max_uses"),
    "amount-negative": ({"max_amount": Money(-1, "usd")}, "max_amount.amount"),
    "amount-not-money": ({"max_amount": (5, "usd")}, "Money"),
    "tenant-with-space": ({"tenant": "bright smile"}, "tenant"),
}


@pytest.mark.parametrize(("request_", "message"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_requests_that_cannot_be_issued(request_: dict[str, Any], message: str) -> None:
    who = {**WHO, **{k: v for k, v in request_.items() if k in WHO}}
    caveats = {k: v for k, v in request_.items() if k not in WHO}
    caveats.setdefault("tools", ["twilio.send_sms"])
    with pytest.raises(InvalidDelegationRequest, match=message):
        mint(SIGNER, **who, ttl_s=60, clock=clock(), ids=SequentialIds(), **caveats)
    if "tenant" not in request_ and request_ != {"tools": []}:
        with pytest.raises(InvalidDelegationRequest, match=message):
            attenuate(new().token, **caveats)


def test_attenuation_requests_that_cannot_be_issued() -> None:
    token = new().token
    with pytest.raises(InvalidDelegationRequest, match="at least one caveat"):
        attenuate(token)
    with pytest.raises(InvalidDelegationRequest, match="with a clock"):
        attenuate(token, ttl_s=10)
    with pytest.raises(InvalidDelegationRequest, match="not both"):
        attenuate(token, ttl_s=10, exp_ms=1, clock=clock())
    with pytest.raises(InvalidDelegationRequest, match="ttl_s"):
        attenuate(token, ttl_s=0, clock=clock())
    # an empty set is a valid narrowing: it allows nothing of what it governs
    view = check(attenuate(token, tools=[]))
    assert not allowed(view, "twilio.send_sms", sms("+15550100001"))


# --- errors -------------------------------------------------------------------------------------


def test_error_messages_never_contain_the_token_or_the_proof() -> None:
    token = TWO_BLOCKS
    proof = open_token(token)["proof"]
    body = token[len(TOKEN_PREFIX) :]
    errors: list[DelegationError] = []
    attempts: list[Callable[[], object]] = [
        lambda: check(token, now=START + timedelta(hours=1)),
        lambda: check(token, now=START - timedelta(hours=1)),
        lambda: verify(token, KEYS, **{**WHO, "sandbox": "x"}, now=START),
        lambda: verify(token, KEYS, **{**WHO, "agent": "x"}, now=START),
        lambda: check(token, keys=DelegationKeys.of(OTHER_SIGNER)),
        lambda: check(seal({**open_token(token), "proof": b64(b"\x02" * 32)})),
        lambda: check(token).authorize("stripe.create_refund", Effect(EffectKind.REFUND)),
        lambda: check(token[:-1]),
        lambda: check(token + "A"),
        lambda: attenuate(token, tools=[proof]),
        lambda: attenuate(token, recipients=[proof]),
        *(lambda token=t: check(token) for t, _ in MALFORMED.values()),
    ]
    for attempt in attempts:
        with pytest.raises(DelegationError) as caught:
            attempt()
        errors.append(caught.value)
    for error in errors:
        for text in (str(error), repr(error), error.diagnostics()):
            assert proof not in text and body not in text and body[:24] not in text


def test_the_error_tree() -> None:
    refusals: list[type[DelegationError]] = [
        BadSignature,
        Expired,
        NotYetValid,
        WrongPrincipal,
        WrongSandbox,
        NotAuthorized,
    ]
    for leaf in refusals:
        assert issubclass(leaf, DelegationError) and not issubclass(leaf, ValueError)
    for bad_input in (MalformedDelegation, InvalidDelegationRequest):
        assert issubclass(bad_input, DelegationError) and issubclass(bad_input, ValueError)
    assert issubclass(DelegationError, BrokerError)


# --- housekeeping -------------------------------------------------------------------------------


def test_injected_entropy_makes_minting_deterministic() -> None:
    first = new(entropy=lambda n: b"\x05" * n)
    second = new(entropy=lambda n: b"\x05" * n)
    assert first.token == second.token
    assert new().token != new().token


def test_caveats_default_is_unconstrained() -> None:
    anything = Caveats()
    assert anything.refusal("stripe.create_refund", Effect(EffectKind.REFUND)) is None
    assert anything.to_json() == {}


def test_all_is_the_sorted_public_names() -> None:
    tree = ast.parse(inspect.getsource(module))
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {t.id for t in targets if isinstance(t, ast.Name)}
    public = {name for name in defined if not name.startswith("_")}
    assert sorted(module.__all__) == sorted(public)
    assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), n))


def test_the_example_in_the_docs_is_real() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "broker-delegations.md"
    text = docs.read_text(encoding="utf-8")
    (shown,) = re.findall(r"^cdl1\.[A-Za-z0-9_-]+$", text, re.M)
    demo = generate_signer("broker-1", entropy=bytes)
    minted = mint(
        demo, **WHO, tools=["twilio.send_sms"], recipients=["+15550100001"], ttl_s=300,
        clock=clock(), ids=SequentialIds(), entropy=lambda n: b"\x01" * n,
    )  # fmt: skip
    assert minted.token == shown
    assert f"({len(shown)} bytes)" in text
    assert b64(demo.public_key.public_bytes_raw()) in text
    narrowed = attenuate(shown, ttl_s=60, clock=clock(), entropy=lambda n: b"\x02" * n)
    assert f"the token is {len(narrowed)} bytes" in text
    assert open_token(narrowed)["blocks"][1]["sig"] in text
    check(narrowed, keys=DelegationKeys.of(demo))


def test_doctests() -> None:
    assert doctest.testmod(module).failed == 0
