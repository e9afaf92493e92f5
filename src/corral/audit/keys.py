"""The audit chain's signing keys: one secret seed per deployment, one Ed25519 key per log.

Each tenant log signs its checkpoints with its own key, named after its origin
(``<deployment>/tenants/<tenant>``), and the anchor log with ``<deployment>/anchors``. Keeping a
key per log means a tenant's published verifier key vouches for that tenant's log only. All keys
derive from one 32-byte seed with HKDF-SHA256 (RFC 5869, ``info`` = purpose + origin), so there
is one secret to keep and back up; it is created on first start in the data directory, mode
0600, and never has a default (fail closed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corral.audit.note import Signer
from corral.core.errors import ConfigError
from corral.core.keyfile import load_or_create_seed

__all__ = ["AuditKeys", "anchor_origin", "log_origin"]

_SEED_SIZE = 32
_INFO = b"corral.audit.signing-key.v1\x00"


def log_origin(deployment: str, tenant: str) -> str:
    """The origin line (and key name) of a tenant's log."""
    return f"{deployment}/tenants/{tenant}"


def anchor_origin(deployment: str) -> str:
    """The origin line (and key name) of the deployment's anchor log."""
    return f"{deployment}/anchors"


class AuditKeys:
    """Derives checkpoint signers from the deployment's seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != _SEED_SIZE:
            raise ConfigError(f"audit seed must be {_SEED_SIZE} bytes, got {len(seed)}")
        self._seed = seed
        self._cache: dict[str, Signer] = {}

    @classmethod
    def load_or_create(
        cls, path: Path, *, entropy: Callable[[int], bytes] = os.urandom
    ) -> AuditKeys:
        """Read the seed file, creating it (mode 0600, parent 0700) if it does not exist.

        Refuses a seed file that others can read: a leaked seed lets anyone sign checkpoints.
        """
        return cls(load_or_create_seed(path, _SEED_SIZE, entropy=entropy))

    def signer(self, origin: str) -> Signer:
        """The Ed25519 signer of the log with this origin (key name = origin)."""
        signer = self._cache.get(origin)
        if signer is None:
            hkdf = HKDF(hashes.SHA256(), _SEED_SIZE, salt=None, info=_INFO + origin.encode())
            signer = Signer(origin, hkdf.derive(self._seed))
            self._cache[origin] = signer
        return signer
