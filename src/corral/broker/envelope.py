"""Envelope encryption of one credential version under its own data key.

>>> import tempfile
>>> from pathlib import Path
>>> from corral.broker.keys import LocalKeyProvider
>>> tmp = tempfile.TemporaryDirectory()
>>> provider = LocalKeyProvider(Path(tmp.name) / "broker.keys")
>>> context = {"tenant_id": "brightsmile", "connection_id": "quickbooks-1"}
>>> sealed = seal(b"realm-9130354", context, provider)
>>> stored = sealed.to_bytes()
>>> secret = open_sealed(Sealed.from_bytes(stored), context, provider)
>>> bytes(secret)
b'realm-9130354'
>>> secret[:] = bytes(len(secret))  # zero it once the provider call is done
>>> tmp.cleanup()

:func:`seal` asks the key provider for a fresh 32-byte data key, encrypts the plaintext with
AES-256-GCM under it (random 96-bit nonce, additional data = the RFC 8785 canonical encryption
context) and keeps only the wrapped data key. :func:`open_sealed` unwraps the data key with the
same context and decrypts. :func:`rewrap` moves the wrapped data key to the provider's current
master key; the nonce and ciphertext stay byte for byte the same.

There is **no data-key cache**: each open unwraps (one KMS ``Decrypt`` with AWS). A cache,
bounded in time and size, is a later decision.

**Serialized form** (:meth:`Sealed.to_bytes`)::

    b"ce1" || len(key_id) (1 byte) || key_id (UTF-8) || len(wrapped_key) (2 bytes, big-endian)
    || wrapped_key || nonce (12 bytes) || ciphertext (AES-GCM output, 16-byte tag at the end)

``key_id`` is the master key the data key was wrapped under when sealed or last rewrapped:
bookkeeping for rotation. It is not authenticated; the wrapped key itself says which master key
unwraps it.

**Zeroing, honestly.** :func:`open_sealed` returns a ``bytearray`` so that a caller can
overwrite it when done. That shortens how long the plaintext sits in memory; it does not
guarantee it is gone: the data key and the plaintext also pass through immutable ``bytes``
objects (cryptography returns ``bytes``; so does KMS via botocore) that Python frees but does
not wipe, and the allocator, swap or a core dump may keep copies. The broker's process
isolation, not zeroing, is what keeps credentials from agents.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corral.broker.keys import (
    DATA_KEY_BYTES,
    EncryptionContext,
    KeyProvider,
    canonical_context,
)
from corral.core.errors import BrokerError

__all__ = [
    "SEALED_MAGIC",
    "EnvelopeError",
    "Sealed",
    "open_sealed",
    "rewrap",
    "seal",
]

SEALED_MAGIC = b"ce1"
"""The version prefix of :meth:`Sealed.to_bytes`."""

_NONCE_BYTES = 12
_TAG_BYTES = 16
_MAX_KEY_ID_BYTES = 255
_MAX_WRAPPED_BYTES = 0xFFFF


class EnvelopeError(BrokerError, ValueError):
    """A sealed credential that is malformed, or whose ciphertext does not authenticate."""


@dataclass(frozen=True, repr=False)
class Sealed:
    """One encrypted credential version: its wrapped data key, nonce and ciphertext.

    Requires a non-empty ``wrapped_key`` of at most 65535 bytes, a 12-byte ``nonce``, a
    ``ciphertext`` of at least 16 bytes (the GCM tag) and a non-empty ``key_id`` of at most 255
    UTF-8 bytes; anything else raises :class:`EnvelopeError`.
    """

    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes
    key_id: str

    def __post_init__(self) -> None:
        for name in ("wrapped_key", "nonce", "ciphertext"):
            value = getattr(self, name)
            if not isinstance(value, bytes):
                raise EnvelopeError(f"{name} must be bytes, not {type(value).__name__}")
        if not 1 <= len(self.wrapped_key) <= _MAX_WRAPPED_BYTES:
            raise EnvelopeError(
                f"wrapped key must be 1 to {_MAX_WRAPPED_BYTES} bytes, got {len(self.wrapped_key)}"
            )
        if len(self.nonce) != _NONCE_BYTES:
            raise EnvelopeError(f"nonce must be {_NONCE_BYTES} bytes, got {len(self.nonce)}")
        if len(self.ciphertext) < _TAG_BYTES:
            raise EnvelopeError(
                f"ciphertext must be at least the {_TAG_BYTES}-byte GCM tag, "
                f"got {len(self.ciphertext)} bytes"
            )
        if not isinstance(self.key_id, str):
            raise EnvelopeError(f"key_id must be a str, not {type(self.key_id).__name__}")
        try:
            key_id_bytes = len(self.key_id.encode("utf-8"))
        except UnicodeEncodeError:
            raise EnvelopeError("key_id is not encodable as UTF-8") from None
        if not 1 <= key_id_bytes <= _MAX_KEY_ID_BYTES:
            raise EnvelopeError(f"key_id must be 1 to {_MAX_KEY_ID_BYTES} UTF-8 bytes")

    def __repr__(self) -> str:
        return (
            f"Sealed(key_id={self.key_id!r}, wrapped_key=<{len(self.wrapped_key)} bytes>, "
            f"nonce=<{len(self.nonce)} bytes>, ciphertext=<{len(self.ciphertext)} bytes>)"
        )

    def to_bytes(self) -> bytes:
        """The versioned serialized form (see the module docstring)."""
        key_id = self.key_id.encode("utf-8")
        return b"".join(
            (
                SEALED_MAGIC,
                bytes([len(key_id)]),
                key_id,
                struct.pack(">H", len(self.wrapped_key)),
                self.wrapped_key,
                self.nonce,
                self.ciphertext,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Sealed:
        """Parse :meth:`to_bytes` output; raises :class:`EnvelopeError` naming what is wrong."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeError(f"sealed credential must be bytes, not {type(data).__name__}")
        raw = bytes(data)
        if not raw.startswith(SEALED_MAGIC):
            raise EnvelopeError(
                f"not a sealed credential: starts with {raw[:3]!r}, want {SEALED_MAGIC!r}"
            )
        at = len(SEALED_MAGIC)

        def take(n: int, what: str) -> bytes:
            nonlocal at
            if len(raw) - at < n:
                raise EnvelopeError(
                    f"sealed credential truncated in its {what}: "
                    f"needs {n} bytes at offset {at}, has {len(raw) - at}"
                )
            chunk = raw[at : at + n]
            at += n
            return chunk

        key_id_len = take(1, "key id length")[0]
        try:
            key_id = take(key_id_len, "key id").decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError("sealed credential's key id is not UTF-8") from None
        (wrapped_len,) = struct.unpack(">H", take(2, "wrapped key length"))
        wrapped_key = take(wrapped_len, "wrapped key")
        nonce = take(_NONCE_BYTES, "nonce")
        return cls(wrapped_key=wrapped_key, nonce=nonce, ciphertext=raw[at:], key_id=key_id)


def seal(
    plaintext: bytes,
    context: EncryptionContext,
    provider: KeyProvider,
    *,
    entropy: Callable[[int], bytes] = os.urandom,
) -> Sealed:
    """Encrypt ``plaintext`` under a fresh data key bound to ``context``.

    ``entropy(12)`` gives the nonce; a fresh data key per call means a nonce is never reused
    under one key, whatever the source.

    Raises :class:`~corral.broker.keys.EncryptionContextError` for a malformed context and
    whatever the provider raises (:class:`~corral.broker.keys.KeyProviderUnavailable`).
    """
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise TypeError(f"plaintext must be bytes, not {type(plaintext).__name__}")
    aad = canonical_context(context)
    key_id = provider.key_id
    data_key, wrapped_key = provider.generate_data_key(context)
    if len(data_key) != DATA_KEY_BYTES:
        raise EnvelopeError(f"key provider gave a {len(data_key)}-byte data key")
    nonce = entropy(_NONCE_BYTES)
    if len(nonce) != _NONCE_BYTES:
        raise EnvelopeError(f"entropy gave a {len(nonce)}-byte nonce, want {_NONCE_BYTES}")
    ciphertext = AESGCM(data_key).encrypt(nonce, bytes(plaintext), aad)
    return Sealed(wrapped_key=wrapped_key, nonce=nonce, ciphertext=ciphertext, key_id=key_id)


def open_sealed(sealed: Sealed, context: EncryptionContext, provider: KeyProvider) -> bytearray:
    """The plaintext of ``sealed`` as a ``bytearray`` the caller should zero when done.

    Raises :class:`~corral.broker.keys.KeyUnwrapError` if the data key does not unwrap with
    ``context`` (another tenant or connection, a tampered wrapped key) and
    :class:`EnvelopeError` if the nonce or ciphertext was tampered with.
    """
    if not isinstance(sealed, Sealed):
        raise TypeError(f"sealed must be a Sealed, not {type(sealed).__name__}")
    aad = canonical_context(context)
    data_key = provider.unwrap(sealed.wrapped_key, context)
    try:
        plaintext = AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise EnvelopeError(
            f"sealed credential of tenant {context['tenant_id']!r} connection "
            f"{context['connection_id']!r} does not authenticate: tampered nonce or ciphertext"
        ) from None
    return bytearray(plaintext)


def rewrap(sealed: Sealed, context: EncryptionContext, provider: KeyProvider) -> Sealed:
    """``sealed`` with its data key rewrapped under the provider's current master key.

    Only ``wrapped_key`` and ``key_id`` change; ``nonce`` and ``ciphertext`` are untouched, so
    a store can swap the row in place while readers keep opening either version.
    """
    if not isinstance(sealed, Sealed):
        raise TypeError(f"sealed must be a Sealed, not {type(sealed).__name__}")
    key_id = provider.key_id
    wrapped_key = provider.rewrap(sealed.wrapped_key, context)
    return Sealed(
        wrapped_key=wrapped_key, nonce=sealed.nonce, ciphertext=sealed.ciphertext, key_id=key_id
    )
