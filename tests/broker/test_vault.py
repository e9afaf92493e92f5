"""The vault on SQLite and PostgreSQL: sealed at rest, bound to its tenant and connection,
refusing bad input and corrupted rows with a clear error, rotating keys while serving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from corral.broker._store import BrokerStore, ConnectionStatus, access_tokens, credentials
from corral.broker.envelope import EnvelopeError, Sealed, rewrap
from corral.broker.keys import KeyUnwrapError, LocalKeyProvider
from corral.broker.vault import (
    ConnectionUnusable,
    CredentialMoved,
    InvalidConnection,
    InvalidCredential,
    UnknownConnection,
    Vault,
    context_of,
)
from corral.connectors import Endpoints
from corral.core.clock import ManualClock
from tests.broker._backends import broker_store_fixture, broker_url_fixture  # noqa: F401

SECRET = "sk_test_VAULTcanary0123456789"


@pytest.fixture(name="vault")
def vault_fixture(broker_store: BrokerStore, tmp_path: Path) -> Vault:
    clock = ManualClock(datetime(2026, 3, 3, 17, 0, tzinfo=UTC))
    return Vault(broker_store, LocalKeyProvider(tmp_path / "broker.keys"), clock)


def _raw_rows(store: BrokerStore) -> list[bytes]:
    with store.read("test") as conn:
        return [bytes(r.sealed) for r in conn.execute(sa.select(credentials.c.sealed))]


def test_credentials_are_sealed_at_rest_and_open_for_a_call(vault: Vault) -> None:
    row = vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET},
                        endpoints=Endpoints(api="http://stripe.fake/"))  # fmt: skip
    assert row.api_url == "http://stripe.fake" and row.version == 1
    assert all(SECRET.encode() not in blob for blob in _raw_rows(vault.store))
    with vault.open_credential(row, None) as credential:
        assert credential.fields["api_key"] == SECRET
        assert SECRET not in repr(credential)
    assert credential.fields == {}  # cleared when the call is done


def test_another_tenants_row_does_not_open(vault: Vault) -> None:
    vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    vault.connect("t2", "stripe-1", "stripe", {"api_key": "sk_test_other000000000000"})
    stolen = vault.store.credential("t1", "stripe-1", 1)
    assert stolen is not None
    with vault.store.write("test") as conn:  # an attacker with the database copies a row over
        conn.execute(credentials.update().where(credentials.c.tenant == "t2").values(sealed=stolen))
    with pytest.raises(KeyUnwrapError):
        vault.read_fields(vault.connection("t2", "stripe-1"))


def test_a_corrupted_row_is_a_clear_error_and_changes_nothing(vault: Vault) -> None:
    row = vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    blob = bytearray(vault.store.credential("t1", "stripe-1", 1) or b"")
    blob[-1] ^= 1
    with vault.store.write("test") as conn:
        conn.execute(credentials.update().values(sealed=bytes(blob)))
    with pytest.raises(EnvelopeError, match="tampered"):
        vault.read_fields(row)
    with vault.store.write("test") as conn:
        conn.execute(credentials.update().values(sealed=b"garbage"))
    with pytest.raises(EnvelopeError):
        vault.read_fields(row)
    assert vault.connection("t1", "stripe-1").status is ConnectionStatus.ACTIVE


@pytest.mark.parametrize(
    ("provider", "fields", "message"),
    [
        ("paypal", {"api_key": "x"}, "unknown provider 'paypal'"),
        ("stripe", {}, "missing api_key"),
        ("stripe", {"api_key": "x", "secret": "y"}, "unknown secret"),
        ("quickbooks", {"client_id": "a", "client_secret": "b", "refresh_token": "c"},
         "missing realm_id"),
    ],
)  # fmt: skip
def test_connect_refuses_bad_input(
    vault: Vault, provider: str, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidConnection, match=message):
        vault.connect("t1", "c-1", provider, fields)
    assert vault.store.connections("t1") == []


def test_a_refused_credential_has_a_form_that_repeats_no_unknown_name() -> None:
    with pytest.raises(InvalidCredential) as refused:
        Vault.check_fields("twilio", {"auth_token": "t", "sk_live_PASTED": "x", "sid": "y"})
    assert str(refused.value) == (
        "twilio credential: missing account_sid; unknown sid, sk_live_PASTED"
    )
    assert refused.value.redacted == (
        "twilio credential: missing account_sid; "
        "2 unknown fields (it takes account_sid, auth_token, from_number)"
    )


def test_ids_duplicates_and_lookups(vault: Vault) -> None:
    with pytest.raises(InvalidConnection, match="tenant must be"):
        vault.connect("bad tenant!", "c-1", "stripe", {"api_key": SECRET})
    vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    with pytest.raises(InvalidConnection, match="already has"):
        vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    with pytest.raises(UnknownConnection):
        vault.connection_for("t1", "twilio", None)
    assert vault.connection_for("t1", "stripe", None).connection_id == "stripe-1"


def test_a_revoked_connection_does_not_open(vault: Vault) -> None:
    vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    row = vault.revoke("t1", "stripe-1", "owner disconnected")
    with (
        pytest.raises(ConnectionUnusable, match="revoked: owner disconnected"),
        vault.open_credential(row, None),
    ):
        pass  # pragma: no cover


def _sealed_state(store: BrokerStore) -> list[Any]:
    with store.read("test") as conn:
        return [
            *[tuple(r) for r in conn.execute(sa.select(credentials))],
            *[tuple(r) for r in conn.execute(sa.select(access_tokens))],
            *store.connections(),
        ]


def test_replacing_a_credential_installs_a_new_version_and_reconnects(vault: Vault) -> None:
    row = vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    vault.mark_needs_reconnect(row, "the provider refused the stored credential (HTTP 401)")
    replaced = vault.replace_credential("t1", "stripe-1", {"api_key": SECRET + "new"})
    assert replaced.version == 2 and replaced.status is ConnectionStatus.ACTIVE
    assert replaced.status_reason is None
    assert vault.read_fields(replaced) == (2, {"api_key": SECRET + "new"})
    assert all(SECRET.encode() not in blob for blob in _raw_rows(vault.store))


@pytest.mark.parametrize(
    ("tenant", "cid", "fields", "error", "message"),
    [
        ("t2", "stripe-1", {"api_key": "sk"}, UnknownConnection, "tenant 't2' has no connection"),
        ("t1", "stripe-9", {"api_key": "sk"}, UnknownConnection, "no connection 'stripe-9'"),
        ("t1", "stripe-1", {"auth_token": "x"}, InvalidCredential, "missing api_key; unknown au"),
        ("t1", "stripe-1", {"api_key": ""}, InvalidConnection, "missing api_key"),
    ],
)  # fmt: skip
def test_a_refused_replacement_changes_nothing(
    vault: Vault, tenant: str, cid: str, fields: dict[str, str], error: type, message: str
) -> None:
    vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    before = _sealed_state(vault.store)
    with pytest.raises(error, match=message):
        vault.replace_credential(tenant, cid, fields)
    assert _sealed_state(vault.store) == before


def test_a_replacement_that_loses_the_race_writes_nothing(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    before = _sealed_state(vault.store)
    monkeypatch.setattr(vault.store, "swap_credential", lambda *_a, **_k: False)
    with pytest.raises(CredentialMoved, match="changed while its credential"):
        vault.replace_credential("t1", "stripe-1", {"api_key": "sk_other"})
    assert _sealed_state(vault.store) == before


def test_disconnecting_deletes_every_sealed_version_and_refuses_replacement(vault: Vault) -> None:
    fields = {"client_id": "c", "client_secret": SECRET, "refresh_token": "r"}
    row = vault.connect("t1", "gcal-1", "google_calendar", fields)
    row = vault.replace_credential("t1", "gcal-1", {**fields, "refresh_token": "r2"})
    token = vault.seal_token(row, "access-token")
    vault.store.put_access_token("t1", "gcal-1", 2, token, row.created_at + timedelta(hours=1))
    vault.connect("t1", "stripe-1", "stripe", {"api_key": SECRET})
    revoked = vault.revoke("t1", "gcal-1", "owner disconnected")
    assert revoked.status is ConnectionStatus.REVOKED and revoked.version == 2  # the record
    assert vault.store.credential("t1", "gcal-1", 1) is None
    assert vault.store.credential("t1", "gcal-1", 2) is None
    assert vault.store.access_token("t1", "gcal-1") is None
    assert vault.store.credential_keys() == [("t1", "stripe-1", 1)]  # the other one stays
    with pytest.raises(ConnectionUnusable, match="revoked"):
        vault.replace_credential("t1", "gcal-1", fields)
    assert vault.rotate_key() == 1


def test_rotation_rewraps_every_row_and_old_and_new_both_open(vault: Vault) -> None:
    for n in range(3):
        vault.connect("t1", f"stripe-{n}", "stripe", {"api_key": f"{SECRET}{n}"})
    keys = vault.keys
    assert isinstance(keys, LocalKeyProvider)
    old = keys.key_id
    new = keys.rotate()
    # Mid-rotation: one row rewrapped, the others still under the old key; all open.
    first = vault.connection("t1", "stripe-0")
    blob = vault.store.credential("t1", "stripe-0", 1)
    assert blob is not None
    moved = rewrap(Sealed.from_bytes(blob), context_of("t1", "stripe-0"), keys)
    vault.store.replace_sealed("t1", "stripe-0", 1, moved.to_bytes())
    for n in range(3):
        fields = vault.read_fields(vault.connection("t1", f"stripe-{n}"))[1]
        assert fields["api_key"] == f"{SECRET}{n}"
    assert vault.rotate_key() == 3
    assert all(new.encode() in blob and old.encode() not in blob for blob in _raw_rows(vault.store))
    assert vault.read_fields(first)[1]["api_key"] == f"{SECRET}0"
