"""The capability broker: the only process that holds customer credentials.

An agent holds a :mod:`~corral.broker.delegation` (at most 300 s, scoped to tools and
arguments, bound to its sandbox); the control plane approves each call
(:mod:`~corral.broker.approval`); the :class:`Broker` checks both, opens the credential from the
:class:`~corral.broker.vault.Vault` (envelope encryption under a local key file or AWS KMS),
refreshes OAuth tokens (:mod:`~corral.broker.oauth`), calls the provider through its connector
and returns a scrubbed result (:mod:`~corral.broker.scrub`). ``corral broker serve`` runs it
behind :func:`create_app` on a Unix socket; other components use :class:`BrokerClient`.
``docs/broker.md`` is the manual.

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

from corral.broker.app import create_app
from corral.broker.approval import (
    ApprovalRefused,
    ApprovalSigner,
    ApprovalVerifier,
    call_hash,
)
from corral.broker.assembly import BrokerParts, open_broker
from corral.broker.client import BrokerClient, BrokerRefused, BrokerUnreachable, mint_call
from corral.broker.delegation import (
    MAX_TTL_S,
    Delegation,
    DelegationError,
    DelegationKeys,
    DelegationSigner,
    attenuate,
    mint,
    verify,
)
from corral.broker.envelope import (
    SEALED_MAGIC,
    EnvelopeError,
    Sealed,
    open_sealed,
    rewrap,
    seal,
)
from corral.broker.events import to_entries
from corral.broker.executor import Broker, Call, CallRefused, Execution
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
from corral.broker.scrub import Scrubber
from corral.broker.vault import Vault, VaultError

__all__ = [
    "DATA_KEY_BYTES",
    "LOCAL_BLOB_MAGIC",
    "MAX_TTL_S",
    "SEALED_MAGIC",
    "ApprovalRefused",
    "ApprovalSigner",
    "ApprovalVerifier",
    "AwsKmsKeyProvider",
    "Broker",
    "BrokerClient",
    "BrokerParts",
    "BrokerRefused",
    "BrokerUnreachable",
    "Call",
    "CallRefused",
    "Delegation",
    "DelegationError",
    "DelegationKeys",
    "DelegationSigner",
    "EncryptionContext",
    "EncryptionContextError",
    "EnvelopeError",
    "Execution",
    "KeyProvider",
    "KeyProviderUnavailable",
    "KeyUnwrapError",
    "LocalKeyProvider",
    "Scrubber",
    "Sealed",
    "Vault",
    "VaultError",
    "attenuate",
    "call_hash",
    "canonical_context",
    "create_app",
    "mint",
    "mint_call",
    "open_broker",
    "open_sealed",
    "rewrap",
    "seal",
    "to_entries",
    "verify",
]
