"""Key providers: who wraps the data keys that encrypt customer credentials.

>>> import tempfile
>>> from pathlib import Path
>>> tmp = tempfile.TemporaryDirectory()
>>> provider = LocalKeyProvider(Path(tmp.name) / "keys" / "broker.keys")
>>> context = {"tenant_id": "brightsmile", "connection_id": "stripe-1"}
>>> data_key, blob = provider.generate_data_key(context)
>>> provider.unwrap(blob, context) == data_key
True
>>> try:
...     provider.unwrap(blob, {"tenant_id": "oakplumbing", "connection_id": "stripe-1"})
... except KeyUnwrapError as exc:
...     print(exc.tenant_id, "-", exc.reason)
oakplumbing - wrong encryption context or tampered blob
>>> tmp.cleanup()

A :class:`KeyProvider` hands out fresh 32-byte AES-256 data keys together with the same key
wrapped under a master key, and unwraps such blobs again. Every call takes an **encryption
context**, a mapping of strings that MUST hold a non-empty ``tenant_id`` and ``connection_id``
(more keys are allowed). A blob unwraps only with the exact context it was wrapped with: the
context is the AES-GCM additional data (its RFC 8785 canonical form) locally, and KMS's
``EncryptionContext`` in AWS, where the key policy (``docs/broker-kms-key-policy.json``) also
lets a principal use only its own tenant's context. Two backends, written natively, pass one
conformance suite (``tests/broker/test_keys.py``):

- :class:`LocalKeyProvider` (the default): master keys in a key file, mode 0600.
- :class:`AwsKmsKeyProvider`: one shared AWS KMS key; plaintext data keys come from
  ``GenerateDataKey`` and go back through ``Decrypt``; ``rewrap`` is ``ReEncrypt``, so a
  rewrapped data key never leaves KMS.

Errors name the tenant, connection, key id and region, never key material.
``docs/broker-keys.md`` is the manual.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corral.core import aws
from corral.core.canonical import canonicalize
from corral.core.clock import Clock, SystemClock, format_time
from corral.core.errors import BrokerError

__all__ = [
    "DATA_KEY_BYTES",
    "LOCAL_BLOB_MAGIC",
    "AwsKmsKeyProvider",
    "EncryptionContext",
    "EncryptionContextError",
    "KeyProvider",
    "KeyProviderUnavailable",
    "KeyUnwrapError",
    "LocalKeyProvider",
    "canonical_context",
]

DATA_KEY_BYTES = 32
"""The size of every data key and every local master key (AES-256)."""
LOCAL_BLOB_MAGIC = b"cl1"
"""The version prefix of a :class:`LocalKeyProvider` blob."""

_NONCE_BYTES = 12
_TAG_BYTES = 16
_MAX_KEY_ID_BYTES = 255
_REQUIRED = ("tenant_id", "connection_id")

EncryptionContext = Mapping[str, str]
"""The encryption context: strings only, with non-empty ``tenant_id`` and ``connection_id``."""


class EncryptionContextError(BrokerError, ValueError):
    """An encryption context that is not a mapping of strings with both required keys."""


class KeyUnwrapError(BrokerError):
    """A wrapped data key did not unwrap: wrong context, tampered blob or unknown master key.

    Carries ``tenant_id``, ``connection_id`` (from the context given), ``reason`` and, when
    known, ``key_id``; never any key material.
    """

    def __init__(
        self, tenant_id: str, connection_id: str, reason: str, *, key_id: str | None = None
    ) -> None:
        super().__init__(
            f"cannot unwrap a data key of tenant {tenant_id!r} connection {connection_id!r}: "
            f"{reason}"
        )
        self.tenant_id = tenant_id
        self.connection_id = connection_id
        self.reason = reason
        self.key_id = key_id


class KeyProviderUnavailable(BrokerError):
    """The key provider cannot be used; ``where`` names the key file, or key id and region."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"key provider {where} is unavailable: {reason}")
        self.where = where
        self.reason = reason


def _checked(context: object) -> dict[str, str]:
    if not isinstance(context, Mapping):
        raise EncryptionContextError(
            f"encryption context must be a mapping, not {type(context).__name__}"
        )
    checked: dict[str, str] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EncryptionContextError(
                f"encryption context keys and values must be strings, got {key!r}: "
                f"{type(value).__name__}"
            )
        checked[key] = value
    for key in _REQUIRED:
        if not checked.get(key):
            raise EncryptionContextError(
                f"encryption context needs a non-empty {key!r} (has {sorted(checked)})"
            )
    extra = sorted(set(checked) - set(_REQUIRED))
    if extra:  # the KMS key policy allows exactly these keys (docs/broker-kms-key-policy.json)
        raise EncryptionContextError(f"encryption context has unknown keys {extra}")
    return checked


def canonical_context(context: EncryptionContext) -> bytes:
    """The RFC 8785 bytes of a validated context: the additional data bound to a blob.

    Raises :class:`EncryptionContextError` (a ``ValueError``) for a context that is not a
    mapping of exactly a non-empty ``tenant_id`` and ``connection_id``.
    """
    return canonicalize(_checked(context))


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps data keys under a master key, bound to an encryption context."""

    @property
    def key_id(self) -> str:
        """The master key new blobs are wrapped with (for rotation bookkeeping)."""
        ...

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, bytes]:
        """A fresh 32-byte data key and the same key wrapped under the current master key."""
        ...

    def unwrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        """The data key in ``blob``; raises :class:`KeyUnwrapError` if it does not unwrap."""
        ...

    def rewrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        """``blob``'s data key, unwrapped by whichever master key wrapped it, wrapped anew
        under the current one (same context)."""
        ...


# ---------------------------------------------------------------------------------------------
# Local key file


@dataclass(frozen=True)
class _MasterKey:
    id: str
    key: bytes
    created: str

    def __repr__(self) -> str:
        return f"_MasterKey(id={self.id!r}, created={self.created!r})"


class LocalKeyProvider:
    """Master keys in one local key file; data keys wrapped with AES-256-GCM.

    **Key file.** Created on first start with mode 0600 (its directory, if missing, with mode
    0700). One JSON object per line, ``{"created": RFC 3339, "id": str, "key_b64": base64 of
    32 bytes}``; the last line is the current master key, earlier lines are older keys kept to
    unwrap old blobs. Every write goes to a temporary file in the same directory that is
    fsynced, then renamed over the key file (the directory fsynced too), so a crash leaves the
    old file or the new one. The provider refuses (:class:`KeyProviderUnavailable`) a key file
    that group or others may access, a key that is not 32 bytes, and malformed lines.

    **Blob.** ``b"cl1" || len(key_id) (1 byte) || key_id (ASCII) || nonce (12 bytes) ||
    AES-256-GCM(master key, nonce, data key, aad) (32 + 16 bytes)``, where ``aad`` is the blob's
    header (magic, length, key id) followed by :func:`canonical_context`.

    **Rotation.** :meth:`rotate` appends a new current master key; :meth:`rewrap` moves a blob
    to it. A blob naming a key id this provider does not know makes it re-read the key file
    once (another process may have rotated) before it gives up.

    ``entropy(n)`` supplies master keys, key ids, data keys and nonces; ``clock`` stamps
    ``created``.
    """

    def __init__(
        self,
        path: Path,
        *,
        entropy: Callable[[int], bytes] = os.urandom,
        clock: Clock | None = None,
    ) -> None:
        self.path = Path(path)
        self._entropy = entropy
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        with self._lock:
            if not self.path.exists():
                self._create()
            self._keys = self._load()

    def __repr__(self) -> str:
        return f"LocalKeyProvider({str(self.path)!r}, key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        return self._keys[-1].id

    @property
    def key_ids(self) -> list[str]:
        """Every master key id in the file, oldest first; the last is the current one."""
        return [k.id for k in self._keys]

    # -- the key file

    def _unavailable(self, reason: str) -> KeyProviderUnavailable:
        return KeyProviderUnavailable(f"key file {str(self.path)!r}", reason)

    def _new_key(self, existing: list[_MasterKey]) -> _MasterKey:
        key = self._entropy(DATA_KEY_BYTES)
        if len(key) != DATA_KEY_BYTES:
            raise self._unavailable(f"entropy gave {len(key)} bytes, want {DATA_KEY_BYTES}")
        key_id = "local-" + self._entropy(8).hex()
        if any(k.id == key_id for k in existing):
            raise self._unavailable(f"entropy repeated the key id {key_id!r}")
        return _MasterKey(key_id, key, format_time(self._clock.now()))

    @staticmethod
    def _line(key: _MasterKey) -> bytes:
        record = {
            "created": key.created,
            "id": key.id,
            "key_b64": base64.b64encode(key.key).decode("ascii"),
        }
        return canonicalize(record) + b"\n"

    def _write_temp(self, keys: list[_MasterKey]) -> Path:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, b"".join(self._line(k) for k in keys))
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _fsync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self._write_temp([self._new_key([])])
            try:
                # link, not rename: two processes starting at once must not each install a
                # different first key; the loser reads the winner's file.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            self._fsync_dir()
        except OSError as exc:
            raise self._unavailable(f"cannot create it: {exc.strerror or exc}") from None

    def _load(self) -> list[_MasterKey]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise self._unavailable(f"cannot open it: {exc.strerror or exc}") from None
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise self._unavailable(
                    f"mode {mode:04o} lets group or others access it; want 0600 (chmod 600)"
                )
            with os.fdopen(os.dup(fd), "rb") as f:
                lines = f.read().splitlines()
        finally:
            os.close(fd)
        keys: list[_MasterKey] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            keys.append(self._parse_line(number, line))
        if not keys:
            raise self._unavailable("it holds no master key")
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise self._unavailable("it holds a master key id twice")
        return keys

    def _parse_line(self, number: int, line: bytes) -> _MasterKey:
        # Never echo the line: it holds key material.
        try:
            record = json.loads(line)
            key_id, key_b64, created = record["id"], record["key_b64"], record["created"]
        except (ValueError, TypeError, KeyError):
            raise self._unavailable(
                f"line {number} is not a {{created, id, key_b64}} JSON object"
            ) from None
        if not all(isinstance(v, str) for v in (key_id, key_b64, created)):
            raise self._unavailable(f"line {number} has a field that is not a string")
        if (
            not key_id.isascii()
            or not key_id.isprintable()
            or not 1 <= len(key_id) <= _MAX_KEY_ID_BYTES
        ):
            raise self._unavailable(f"line {number} has a malformed key id")
        try:
            key = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError):
            raise self._unavailable(f"key {key_id!r} is not valid base64") from None
        if len(key) != DATA_KEY_BYTES:
            raise self._unavailable(
                f"key {key_id!r} is {len(key)} bytes, want {DATA_KEY_BYTES} (AES-256)"
            )
        return _MasterKey(key_id, key, created)

    def rotate(self) -> str:
        """Add a new current master key (old ones stay, to unwrap old blobs); its id.

        Rotation across processes is not serialised: run one ``rotate`` at a time.
        """
        with self._lock:
            keys = self._load()
            keys.append(self._new_key(keys))
            try:
                tmp = self._write_temp(keys)
                os.replace(tmp, self.path)
                self._fsync_dir()
            except OSError as exc:
                raise self._unavailable(f"cannot rewrite it: {exc.strerror or exc}") from None
            self._keys = keys
            return keys[-1].id

    def _find(self, key_id: str) -> _MasterKey | None:
        for key in self._keys:
            if key.id == key_id:
                return key
        return None

    # -- wrapping

    def _wrap(self, data_key: bytes, aad_context: bytes) -> bytes:
        master = self._keys[-1]
        header = LOCAL_BLOB_MAGIC + bytes([len(master.id)]) + master.id.encode("ascii")
        nonce = self._entropy(_NONCE_BYTES)
        if len(nonce) != _NONCE_BYTES:
            raise self._unavailable(f"entropy gave a {len(nonce)}-byte nonce")
        wrapped = AESGCM(master.key).encrypt(nonce, data_key, header + aad_context)
        return header + nonce + wrapped

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, bytes]:
        aad = canonical_context(context)
        data_key = self._entropy(DATA_KEY_BYTES)
        if len(data_key) != DATA_KEY_BYTES:
            raise self._unavailable(f"entropy gave {len(data_key)} bytes for a data key")
        return data_key, self._wrap(data_key, aad)

    def unwrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        checked = _checked(context)
        aad = canonicalize(checked)

        def fail(reason: str, key_id: str | None = None) -> KeyUnwrapError:
            return KeyUnwrapError(
                checked["tenant_id"], checked["connection_id"], reason, key_id=key_id
            )

        if not isinstance(blob, bytes) or not blob.startswith(LOCAL_BLOB_MAGIC):
            raise fail(f"not a local key blob (want the {LOCAL_BLOB_MAGIC!r} prefix)")
        start = len(LOCAL_BLOB_MAGIC) + 1
        if len(blob) < start:
            raise fail("truncated blob")
        id_end = start + blob[start - 1]
        if len(blob) != id_end + _NONCE_BYTES + DATA_KEY_BYTES + _TAG_BYTES:
            raise fail(f"blob is {len(blob)} bytes, which does not fit its format")
        try:
            key_id = blob[start:id_end].decode("ascii")
        except UnicodeDecodeError:
            raise fail("the blob's key id is not ASCII") from None
        master = self._find(key_id)
        if master is None:
            with self._lock:  # another process may have rotated: read the file once more
                self._keys = self._load()
                master = self._find(key_id)
        if master is None:
            raise fail(f"unknown master key {key_id!r} (not in {self.path})", key_id)
        nonce = blob[id_end : id_end + _NONCE_BYTES]
        try:
            return AESGCM(master.key).decrypt(
                nonce, blob[id_end + _NONCE_BYTES :], blob[:id_end] + aad
            )
        except InvalidTag:
            raise fail("wrong encryption context or tampered blob", key_id) from None

    def rewrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        data_key = self.unwrap(blob, context)
        return self._wrap(data_key, canonical_context(context))


# ---------------------------------------------------------------------------------------------
# AWS KMS

# KMS error codes that say "not now" rather than "not this blob".
_UNAVAILABLE_CODES = frozenset(
    {
        "DependencyTimeoutException",
        "DisabledException",
        "ExpiredTokenException",
        "InternalFailure",
        "KMSInternalException",
        "KMSInvalidStateException",
        "KeyUnavailableException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ThrottlingException",
        "UnrecognizedClientException",
    }
)


class AwsKmsKeyProvider:
    """Data keys from one shared AWS KMS symmetric key, bound to the encryption context.

    ``client`` (a boto3 KMS client) wins over ``region`` and ``endpoint_url``, which only build
    the default client (default credential chain, 5 s connect timeout, 3 attempts). botocore
    errors are translated here: a connection or throttling failure becomes
    :class:`KeyProviderUnavailable`; a refused ``Decrypt``/``ReEncrypt`` (wrong context,
    tampered blob, unknown key, access denied) becomes :class:`KeyUnwrapError`. Messages name
    the key id and region. :meth:`rewrap` sends no ``SourceKeyId``: KMS reads the source key
    from the blob, so blobs of an older key move to this one.
    """

    def __init__(
        self,
        key_id: str,
        *,
        region: str = "us-west-2",
        client: Any = None,  # a boto3 KMS client (no KMS type stubs are installed)
        endpoint_url: str | None = None,
    ) -> None:
        if not isinstance(key_id, str) or not key_id:
            raise ValueError("key_id must be a non-empty KMS key id, ARN or alias")
        self._key_id = key_id
        if client is None:
            try:
                client = aws.client("kms", region=region, endpoint_url=endpoint_url)
            except (BotoCoreError, ValueError) as exc:
                raise KeyProviderUnavailable(f"KMS key {key_id!r} in {region}", str(exc)) from None
        self._client = client
        self.region: str = client.meta.region_name or region
        self.endpoint_url: str = client.meta.endpoint_url

    def __repr__(self) -> str:
        return f"AwsKmsKeyProvider({self._key_id!r}, region={self.region!r})"

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def _where(self) -> str:
        return f"KMS key {self._key_id!r} in {self.region} ({self.endpoint_url})"

    @contextlib.contextmanager
    def _translate(self, checked: dict[str, str] | None) -> Iterator[None]:
        """botocore errors to broker errors, once, at this edge.

        ``checked`` is the context of an unwrap (``None`` when generating a key).
        """
        try:
            yield
        except BotoCoreError as exc:
            raise KeyProviderUnavailable(self._where, str(exc)) from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            reason = f"{code}: {error.get('Message', '')}".rstrip(": ")
            if checked is None or code in _UNAVAILABLE_CODES:
                raise KeyProviderUnavailable(self._where, reason) from exc
            if code == "InvalidCiphertextException":
                reason = "wrong encryption context or tampered blob"
            raise KeyUnwrapError(
                checked["tenant_id"],
                checked["connection_id"],
                f"{reason} ({self._where})",
                key_id=self._key_id,
            ) from exc

    def _data_key(self, plaintext: object) -> bytes:
        if not isinstance(plaintext, bytes) or len(plaintext) != DATA_KEY_BYTES:
            raise KeyProviderUnavailable(self._where, "KMS returned a data key of the wrong size")
        return plaintext

    def generate_data_key(self, context: EncryptionContext) -> tuple[bytes, bytes]:
        checked = _checked(context)
        with self._translate(None):
            response = self._client.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=checked
            )
        return self._data_key(response["Plaintext"]), bytes(response["CiphertextBlob"])

    def unwrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        checked = _checked(context)
        with self._translate(checked):
            response = self._client.decrypt(
                CiphertextBlob=blob, EncryptionContext=checked, KeyId=self._key_id
            )
        return self._data_key(response["Plaintext"])

    def rewrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        checked = _checked(context)
        with self._translate(checked):
            response = self._client.re_encrypt(
                CiphertextBlob=blob,
                SourceEncryptionContext=checked,
                DestinationKeyId=self._key_id,
                DestinationEncryptionContext=checked,
            )
        return bytes(response["CiphertextBlob"])
