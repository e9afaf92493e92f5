"""The capability broker: the only process that holds customer credentials.

So far this package holds the key providers (:mod:`~corral.broker.keys`: a local key file or
one shared AWS KMS key) and the envelope encryption of one credential version
(:mod:`~corral.broker.envelope`); the vault, delegations and connectors come next.
``docs/broker-keys.md`` is the manual.

>>> import tempfile
>>> from pathlib import Path
>>> from corral.broker import LocalKeyProvider, open_sealed, seal
>>> tmp = tempfile.TemporaryDirectory()
>>> provider = LocalKeyProvider(Path(tmp.name) / "broker.keys")
>>> context = {"tenant_id": "brightsmile", "connection_id": "twilio-1"}
>>> sealed = seal(b"api-key", context, provider)
>>> bytes(open_sealed(sealed, context, provider))
b'api-key'
>>> tmp.cleanup()
"""

from corral.broker.envelope import (
    SEALED_MAGIC,
    EnvelopeError,
    Sealed,
    open_sealed,
    rewrap,
    seal,
)
from corral.broker.keys import (
    DATA_KEY_BYTES,
    LOCAL_BLOB_MAGIC,
    AwsKmsKeyProvider,
    EncryptionContext,
    EncryptionContextError,
    KeyProvider,
    KeyProviderUnavailable,
    KeyUnwrapError,
    LocalKeyProvider,
    canonical_context,
)

__all__ = [
    "DATA_KEY_BYTES",
    "LOCAL_BLOB_MAGIC",
    "SEALED_MAGIC",
    "AwsKmsKeyProvider",
    "EncryptionContext",
    "EncryptionContextError",
    "EnvelopeError",
    "KeyProvider",
    "KeyProviderUnavailable",
    "KeyUnwrapError",
    "LocalKeyProvider",
    "Sealed",
    "canonical_context",
    "open_sealed",
    "rewrap",
    "seal",
]
