"""Control's approval covers exactly one call, briefly, and only control can give it."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.audit import note
from corral.broker.approval import (
    ApprovalRefused,
    ApprovalSigner,
    ApprovalVerifier,
    call_hash,
    load_or_create_signer,
)
from corral.broker.client import (
    connect_call,
    credential_digest,
    disconnect_call,
    rotate_call,
)
from corral.core.canonical import canonicalize
from corral.core.clock import ManualClock
from corral.core.errors import ConfigError

T0 = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)
CALL: dict[str, Any] = {
    "tenant": "brightsmile", "agent": "billing-1", "sandbox": "sbx-1",
    "tool": "stripe.create_refund",
    "args": {"payment_intent": "pi_1", "amount": 500, "currency": "usd"},
    "idempotency_key": "idem-00000001", "connection_id": None, "country": "US",
}  # fmt: skip


def _signer(name: str = "corral.test/control", fill: int = 7) -> ApprovalSigner:
    skey, _ = note.generate_key(name, entropy=lambda n: bytes([fill]) * n)
    return ApprovalSigner(note.Signer.from_key(skey))


SIGNER = _signer()
VERIFIER = ApprovalVerifier([SIGNER.vkey], max_ttl_s=60)


def test_an_approval_verifies_for_its_call() -> None:
    clock = ManualClock(T0)
    approval = SIGNER.approve(CALL, approval_id="apv-1", clock=clock)
    checked = VERIFIER.verify(approval, CALL, clock)
    assert checked.call == call_hash(CALL) and checked.approval_id == "apv-1"


@given(
    field=st.sampled_from(sorted(CALL)),
    value=st.one_of(st.text(max_size=8), st.integers(), st.none()),
)
def test_any_change_to_the_call_voids_the_approval(field: str, value: object) -> None:
    clock = ManualClock(T0)
    approval = SIGNER.approve(CALL, approval_id="apv-1", clock=clock)
    changed = {**CALL, field: value}
    if changed == CALL:
        return
    with pytest.raises(ApprovalRefused, match=r"another|cannot be approved"):
        VERIFIER.verify(approval, changed, clock)


_SECRETS = st.dictionaries(
    st.sampled_from(["api_key", "account_sid", "auth_token", "refresh_token", "client_secret"]),
    st.text(string.ascii_uppercase + string.digits + "_-", min_size=8, max_size=40),
    min_size=1,
)


@given(fields=_SECRETS, which=st.integers(min_value=0), extra=st.text(min_size=1, max_size=4))
def test_a_credential_call_holds_no_value_and_any_changed_value_voids_it(
    fields: dict[str, str], which: int, extra: str
) -> None:
    """The call documents hold the fields' names and digest, never a value (a value, uppercase,
    cannot hide in the lowercase document by chance); changing any value voids the approval."""
    clock = ManualClock(T0)
    request = {"tenant": "brightsmile", "provider": "stripe", "fields": fields,
               "operator": "own_lee", "idempotency_key": "connect-00000001"}  # fmt: skip
    documents = [connect_call(request), rotate_call("stripe-1", request)]
    for document in documents:
        text = canonicalize(document).decode("utf-8")
        assert not [value for value in fields.values() if value in text]
        assert document["args"]["fields"] == sorted(fields)
        assert document["args"]["fields_sha256"] == credential_digest("brightsmile", fields)
    name = sorted(fields)[which % len(fields)]
    changed = {**request, "fields": {**fields, name: fields[name] + extra}}
    for document, again in zip(
        documents, [connect_call(changed), rotate_call("stripe-1", changed)], strict=True
    ):
        approval = SIGNER.approve(document, approval_id="apv-1", clock=clock)
        with pytest.raises(ApprovalRefused, match="another call"):
            VERIFIER.verify(approval, again, clock)


def test_credential_calls_are_bound_to_their_kind_tenant_and_connection() -> None:
    fields = {"api_key": "sk_test_x"}
    request = {"tenant": "brightsmile", "fields": fields, "operator": "own_lee",
               "idempotency_key": "change-00000001"}  # fmt: skip
    hashes = {
        call_hash(connect_call({**request, "provider": "stripe"})),
        call_hash(connect_call({**request, "provider": "stripe", "connection_id": "stripe-1"})),
        call_hash(rotate_call("stripe-1", request)),
        call_hash(rotate_call("stripe-2", request)),
        call_hash(disconnect_call("stripe-1", {**request, "fields": None})),
        call_hash(rotate_call("stripe-1", {**request, "tenant": "quickfix"})),
    }
    assert len(hashes) == 6
    assert credential_digest("brightsmile", fields) != credential_digest("quickfix", fields)
    assert disconnect_call("stripe-1", {**request, "fields": None})["args"] == {
        "operator": "own_lee"
    }


def test_a_changed_argument_voids_the_approval() -> None:
    clock = ManualClock(T0)
    approval = SIGNER.approve(CALL, approval_id="apv-1", clock=clock)
    bigger = {**CALL, "args": {**CALL["args"], "amount": 50_000}}
    with pytest.raises(ApprovalRefused, match="another call"):
        VERIFIER.verify(approval, bigger, clock)


def test_expiry_is_checked_to_the_millisecond() -> None:
    clock = ManualClock(T0)
    approval = SIGNER.approve(CALL, approval_id="apv-1", clock=clock, ttl_s=30)
    clock.set(T0 + timedelta(seconds=30) - timedelta(milliseconds=1))
    VERIFIER.verify(approval, CALL, clock)
    clock.set(T0 + timedelta(seconds=30))
    with pytest.raises(ApprovalRefused, match="expired"):
        VERIFIER.verify(approval, CALL, clock)


def test_a_long_lived_or_future_approval_is_refused() -> None:
    clock = ManualClock(T0)
    with pytest.raises(ApprovalRefused, match="lifetime"):
        VERIFIER.verify(SIGNER.approve(CALL, approval_id="a", clock=clock, ttl_s=3600), CALL, clock)
    future = SIGNER.approve(CALL, approval_id="a", clock=ManualClock(T0 + timedelta(minutes=1)))
    with pytest.raises(ApprovalRefused, match="future"):
        VERIFIER.verify(future, CALL, clock)


def test_an_approval_by_another_key_or_tampered_is_refused() -> None:
    clock = ManualClock(T0)
    other = _signer(fill=9).approve(CALL, approval_id="apv-1", clock=clock)
    with pytest.raises(ApprovalRefused, match="not signed by a known control key"):
        VERIFIER.verify(other, CALL, clock)
    good = SIGNER.approve(CALL, approval_id="apv-1", clock=clock)
    tampered = good.replace('"v":1', '"v":2')
    with pytest.raises(ApprovalRefused):
        VERIFIER.verify(tampered, CALL, clock)
    for bad in ["", "not a note", "x" * 5000]:
        with pytest.raises(ApprovalRefused):
            VERIFIER.verify(bad, CALL, clock)


def test_the_verifier_needs_a_valid_key() -> None:
    with pytest.raises(ConfigError):
        ApprovalVerifier([])
    with pytest.raises(ConfigError, match="bad control approval key"):
        ApprovalVerifier(["nonsense"])


def test_signer_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "control" / "approval.key"
    first = load_or_create_signer(path, "corral.test/control")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.with_suffix(".pub").read_text().strip() == first.vkey
    assert load_or_create_signer(path, "corral.test/control").vkey == first.vkey
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_signer(path, "corral.test/control")
