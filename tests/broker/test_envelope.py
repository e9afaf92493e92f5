"""Envelope encryption of one credential version, over the local key provider."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.broker.envelope import (
    SEALED_MAGIC,
    EnvelopeError,
    Sealed,
    open_sealed,
    rewrap,
    seal,
)
from corral.broker.keys import (
    EncryptionContextError,
    KeyUnwrapError,
    LocalKeyProvider,
)
from corral.core.errors import BrokerError

CONTEXT = {"tenant_id": "brightsmile", "connection_id": "quickbooks-1"}
SECRET = b"refresh-token-\xf0\x9f\x94\x91-AB12cd34EF56gh78"


@pytest.fixture
def provider(tmp_path: Path) -> LocalKeyProvider:
    return LocalKeyProvider(tmp_path / "broker.keys")


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x80
    return bytes(changed)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plaintext=st.binary(max_size=4096))
def test_round_trip(provider: LocalKeyProvider, plaintext: bytes) -> None:
    sealed = seal(plaintext, CONTEXT, provider)
    opened = open_sealed(sealed, CONTEXT, provider)
    assert isinstance(opened, bytearray)
    assert opened == plaintext
    assert len(sealed.ciphertext) == len(plaintext) + 16
    assert sealed.key_id == provider.key_id
    assert Sealed.from_bytes(sealed.to_bytes()) == sealed


def test_each_seal_uses_a_fresh_data_key(provider: LocalKeyProvider) -> None:
    first, second = seal(SECRET, CONTEXT, provider), seal(SECRET, CONTEXT, provider)
    assert first.wrapped_key != second.wrapped_key
    assert first.ciphertext != second.ciphertext


def test_injected_entropy_gives_the_nonce(provider: LocalKeyProvider) -> None:
    sealed = seal(SECRET, CONTEXT, provider, entropy=lambda n: b"\x07" * n)
    assert sealed.nonce == b"\x07" * 12
    with pytest.raises(EnvelopeError, match="nonce"):
        seal(SECRET, CONTEXT, provider, entropy=lambda n: b"\x07" * (n - 1))


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param({"tenant_id": "oakplumbing", "connection_id": "quickbooks-1"}, id="tenant"),
        pytest.param({"tenant_id": "brightsmile", "connection_id": "quickbooks-2"}, id="conn"),
    ],
)
def test_another_context_fails(provider: LocalKeyProvider, wrong: dict[str, str]) -> None:
    sealed = seal(SECRET, CONTEXT, provider)
    with pytest.raises(KeyUnwrapError) as caught:
        open_sealed(sealed, wrong, provider)
    assert caught.value.tenant_id == wrong["tenant_id"]


def test_malformed_context_is_refused(provider: LocalKeyProvider) -> None:
    with pytest.raises(EncryptionContextError):
        seal(SECRET, {"tenant_id": "brightsmile"}, provider)
    sealed = seal(SECRET, CONTEXT, provider)
    with pytest.raises(EncryptionContextError):
        open_sealed(sealed, {"connection_id": "quickbooks-1"}, provider)


@pytest.mark.parametrize(
    ("field", "error"),
    [
        ("ciphertext", EnvelopeError),
        ("nonce", EnvelopeError),
        ("wrapped_key", KeyUnwrapError),
    ],
)
@pytest.mark.parametrize("where", [0, -1])
def test_tampering_fails(
    provider: LocalKeyProvider, field: str, error: type[BrokerError], where: int
) -> None:
    sealed = seal(SECRET, CONTEXT, provider)
    value: bytes = getattr(sealed, field)
    fields = {
        "wrapped_key": sealed.wrapped_key,
        "nonce": sealed.nonce,
        "ciphertext": sealed.ciphertext,
        "key_id": sealed.key_id,
    }
    fields[field] = flip(value, where % len(value))
    with pytest.raises(error) as caught:
        open_sealed(Sealed(**fields), CONTEXT, provider)  # type: ignore[arg-type]
    assert "brightsmile" in str(caught.value)


def test_tampered_key_id_alone_does_not_matter(provider: LocalKeyProvider) -> None:
    # key_id is bookkeeping: the wrapped key names the master key that unwraps it.
    sealed = seal(SECRET, CONTEXT, provider)
    relabelled = Sealed(sealed.wrapped_key, sealed.nonce, sealed.ciphertext, key_id="other")
    assert open_sealed(relabelled, CONTEXT, provider) == SECRET


def test_to_bytes_layout(provider: LocalKeyProvider) -> None:
    sealed = seal(SECRET, CONTEXT, provider)
    data = sealed.to_bytes()
    key_id = sealed.key_id.encode()
    assert data == (
        SEALED_MAGIC
        + bytes([len(key_id)])
        + key_id
        + struct.pack(">H", len(sealed.wrapped_key))
        + sealed.wrapped_key
        + sealed.nonce
        + sealed.ciphertext
    )
    assert Sealed.from_bytes(bytearray(data)) == sealed


def _valid() -> bytes:
    return Sealed(b"w" * 60, b"n" * 12, b"c" * 20, "local-1").to_bytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "not a sealed credential", id="empty"),
        pytest.param(b"ce2" + _valid()[3:], "want b'ce1'", id="version"),
        pytest.param(b"ce1", "truncated in its key id length", id="no-key-id-length"),
        pytest.param(b"ce1\x07local", "truncated in its key id", id="short-key-id"),
        pytest.param(b"ce1\x00" + _valid()[11:], "key_id must be 1 to 255", id="empty-key-id"),
        pytest.param(b"ce1\x02\xff\xfe" + _valid()[12:], "not UTF-8", id="key-id-not-utf8"),
        pytest.param(_valid()[:11] + b"\x00", "truncated in its wrapped key length", id="wlen"),
        pytest.param(_valid()[:11] + b"\x01\x00" + b"w" * 60, "wrapped key", id="wrapped"),
        pytest.param(_valid()[:-21], "truncated in its nonce", id="nonce"),
        pytest.param(_valid()[:-5], "at least the 16-byte GCM tag", id="short-ciphertext"),
    ],
)
def test_malformed_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message) as caught:
        Sealed.from_bytes(data)
    assert isinstance(caught.value, ValueError)


def test_from_bytes_refuses_a_str() -> None:
    with pytest.raises(EnvelopeError, match="must be bytes"):
        Sealed.from_bytes("ce1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"wrapped_key": b""}, id="empty-wrapped"),
        pytest.param({"wrapped_key": b"w" * 65536}, id="long-wrapped"),
        pytest.param({"nonce": b"n" * 11}, id="short-nonce"),
        pytest.param({"ciphertext": b"c" * 15}, id="short-ciphertext"),
        pytest.param({"key_id": ""}, id="empty-key-id"),
        pytest.param({"key_id": "k" * 256}, id="long-key-id"),
        pytest.param({"nonce": "n" * 12}, id="nonce-not-bytes"),
    ],
)
def test_sealed_checks_its_fields(fields: dict[str, object]) -> None:
    values: dict[str, object] = {
        "wrapped_key": b"w",
        "nonce": b"n" * 12,
        "ciphertext": b"c" * 16,
        "key_id": "local-1",
    }
    values.update(fields)
    with pytest.raises(EnvelopeError):
        Sealed(**values)  # type: ignore[arg-type]


def test_rewrap_keeps_ciphertext_and_opens(provider: LocalKeyProvider) -> None:
    sealed = seal(SECRET, CONTEXT, provider)
    old_id = sealed.key_id
    new_id = provider.rotate()
    moved = rewrap(sealed, CONTEXT, provider)
    assert moved.ciphertext == sealed.ciphertext
    assert moved.nonce == sealed.nonce
    assert moved.wrapped_key != sealed.wrapped_key
    assert (sealed.key_id, moved.key_id) == (old_id, new_id)
    assert open_sealed(moved, CONTEXT, provider) == SECRET
    assert open_sealed(sealed, CONTEXT, provider) == SECRET  # readers of the old row still work
    with pytest.raises(KeyUnwrapError):
        rewrap(sealed, {"tenant_id": "oakplumbing", "connection_id": "quickbooks-1"}, provider)


def test_plaintext_never_appears_in_repr_or_errors(provider: LocalKeyProvider) -> None:
    sealed = seal(SECRET, CONTEXT, provider)
    texts = [repr(sealed), str(sealed)]
    tampered = Sealed(sealed.wrapped_key, sealed.nonce, flip(sealed.ciphertext, 0), sealed.key_id)
    other = {"tenant_id": "oakplumbing", "connection_id": "quickbooks-1"}
    for call in (
        lambda: open_sealed(tampered, CONTEXT, provider),
        lambda: open_sealed(sealed, other, provider),
        lambda: Sealed.from_bytes(sealed.to_bytes()[:-40]),
    ):
        with pytest.raises(BrokerError) as caught:
            call()
        texts += [str(caught.value), repr(caught.value), repr(caught.value.__cause__)]
    for text in texts:
        for needle in (SECRET, SECRET.hex().encode(), b"AB12cd34EF56gh78"):
            assert needle.decode("latin-1") not in text
    assert "brightsmile" not in repr(sealed)
    assert repr(sealed).startswith(f"Sealed(key_id={sealed.key_id!r}, wrapped_key=<")
