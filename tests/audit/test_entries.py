"""Entries: schemas, canonical leaves, parsing back, and personal payloads behind commitments."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.audit import entries
from corral.audit.demo import demo_day
from corral.audit.entries import (
    ActionRequested,
    ActionRequestedData,
    Actor,
    EntryError,
    PersonalPayload,
    UnknownEntry,
    parse_entry,
    seal,
    split_personal_args,
)
from corral.core.canonical import canonicalize

DAY = list(demo_day())
AT = datetime(2026, 3, 3, 17, 14, tzinfo=UTC)


def _request(**changes: Any) -> ActionRequested:
    fields: dict[str, Any] = {
        "id": "ent_1",
        "tenant": "brightsmile",
        "at": AT,
        "actor": Actor(kind="agent", id="receptionist-1", role="receptionist"),
        "data": ActionRequestedData(call_id="c1", tool="twilio.send_sms", args={"n": 1}),
    }
    return ActionRequested(**(fields | changes))


def test_every_kind_round_trips() -> None:
    revoked = entries.CredentialRevoked(
        id="ent_r",
        tenant="brightsmile",
        at=AT,
        actor=Actor(kind="operator", id="owner"),
        data=entries.CredentialData(connection_id="conn-1", provider="stripe", reason="closed"),
    )
    notice = entries.TemplateNotice(
        id="ent_n",
        tenant="brightsmile",
        at=AT,
        actor=Actor(kind="system", id="corral-templates"),
        data=entries.TemplateNoticeData(
            activation_id="act_1",
            template="dental-front-desk",
            version="1.0.0",
            notice="sunsetting",
            sunset_at=AT + timedelta(days=10),
        ),
    )
    every = [entry for entry, _ in DAY] + [revoked, notice]
    assert {entry.kind for entry in every} == set(entries.ENTRY_KINDS)
    for entry in every:
        leaf = entry.leaf()
        assert parse_entry(leaf) == entry
        assert canonicalize(json.loads(leaf)) == leaf


def test_times_have_one_spelling() -> None:
    pst = timezone(timedelta(hours=-8))
    a = _request(at=datetime(2026, 3, 3, 9, 14, tzinfo=pst)).leaf()
    b = _request(at=AT).leaf()
    assert a == b and b'"at":"2026-03-03T17:14:00.000000Z"' in a
    with pytest.raises(ValueError, match="UTC offset"):
        _request(at=datetime(2026, 3, 3, 9, 14))


def _mutated(change: Any) -> bytes:
    raw = json.loads(_request().leaf())
    change(raw)
    return canonicalize(raw)


@pytest.mark.parametrize(
    ("leaf", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"kind":"action.requested", "v":1}', "not in RFC 8785 canonical form"),
        (b'{"kind":"a","kind":"b","v":1}', "not in RFC 8785 canonical form"),
        (b'{"kind":"a","v":true}', "integer 'v'"),
        (_mutated(lambda r: r.update(extra=1)), "does not fit its schema: extra"),
        (_mutated(lambda r: r["data"].pop("tool")), "data.tool"),
        (_mutated(lambda r: r.update(at="2026-03-03T17:14:00Z")), "does not round-trip"),
        (_mutated(lambda r: r["actor"].update(kind="robot")), "actor.kind"),
        (_mutated(lambda r: r["data"].update(call_id=7)), "data.call_id"),
    ],
    ids=[
        "garbage", "not-utf8", "array", "whitespace", "duplicate-key", "bool-version",
        "unknown-field", "missing-field", "other-time-spelling", "unknown-actor", "int-for-str",
    ],
)  # fmt: skip
def test_bad_leaves_are_refused_with_a_reason(leaf: bytes, message: str) -> None:
    with pytest.raises(EntryError, match=message):
        parse_entry(leaf)


def test_unknown_kinds_and_versions_parse_as_unknown() -> None:
    newer = _mutated(lambda r: r.update(v=2))
    other = canonicalize({"kind": "payroll.run", "v": 1, "x": [1]})
    for leaf in (newer, other):
        entry = parse_entry(leaf)
        assert isinstance(entry, UnknownEntry) and entry.leaf() == leaf


def test_seal_commits_and_payload_round_trips() -> None:
    entry, payload = seal(_request(), {"args": {"to": "+15550101234"}}, salt=b"\x01" * 32)
    assert payload is not None and payload.matches(entry.personal)
    assert PersonalPayload.from_bytes(payload.to_bytes()) == payload
    assert b"+1555" not in entry.leaf()
    other_salt = seal(_request(), {"args": {"to": "+15550101234"}}, salt=b"\x02" * 32)[0]
    assert other_salt.personal != entry.personal  # the salt hides guessable payloads
    other = PersonalPayload(salt=payload.salt, data={"args": {"to": "+15550109999"}})
    assert not other.matches(entry.personal)
    assert seal(_request(), None) == (_request(), None)


@pytest.mark.parametrize("raw", [b"{}", b"not json", b'{"salt":"AA==","data":{}}'])
def test_malformed_payloads_are_refused(raw: bytes) -> None:
    with pytest.raises(EntryError, match="personal payload is malformed"):
        PersonalPayload.from_bytes(raw)


def test_split_personal_args() -> None:
    public, personal = split_personal_args(
        {"to": "+1555", "body": "hi", "calendar_id": "lee", "amount": 5}
    )
    assert public == {"calendar_id": "lee", "amount": 5}
    assert personal == {"to": "+1555", "body": "hi"}


json_leaf = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)  # fmt: skip


@given(args=st.dictionaries(st.text(min_size=1, max_size=8), json_leaf, max_size=4))
def test_any_arguments_round_trip(args: dict[str, Any]) -> None:
    entry = _request(data=ActionRequestedData(call_id="c1", tool="x.y", args=args))
    try:
        leaf = entry.leaf()
    except ValueError:
        return  # lone surrogates cannot be written: refused when the leaf is made
    assert parse_entry(leaf) == entry


@given(st.binary(max_size=200))
def test_parse_entry_never_raises_anything_but_entry_error(data: bytes) -> None:
    with contextlib.suppress(EntryError):
        parse_entry(data)


def test_a_payload_spelled_another_way_is_refused() -> None:
    payload = PersonalPayload(salt=b"\x01" * 32, data={"args": {"to": "+15550101234"}})
    raw = json.loads(payload.to_bytes())
    salt = raw["salt"]  # 32 bytes: 44 characters, the last before "=" has 2 unused bits
    raw["salt"] = salt[:42] + chr(ord(salt[42]) + 1) + "="
    respelled = canonicalize(raw)
    assert PersonalPayload(salt=b"\x01" * 32, data={}).salt == b"\x01" * 32
    with pytest.raises(EntryError, match="not in canonical form"):
        PersonalPayload.from_bytes(respelled)
    with pytest.raises(EntryError, match="not in canonical form"):
        PersonalPayload.from_bytes(payload.to_bytes().replace(b'{"data"', b'{ "data"'))
