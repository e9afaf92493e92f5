"""Build the broker from settings: its database, key material, keys it trusts, HTTP client.

Everything lives under the broker's own directory (``<data dir>/broker/`` by default):

- ``broker.db``: the SQLite store (or ``broker.database_url``, PostgreSQL at scale);
- ``broker.keys``: the local master key file (``broker.key_provider = "local"``), or one shared
  AWS KMS key (``"aws-kms"``, ``broker.kms_key_id``, region ``us-west-2`` by default);
- ``delegation.seed``: the seed of the Ed25519 key that signs delegations (0600);
- ``broker.sock``: the Unix socket the service listens on.

The control plane's approval key is the one thing the broker trusts from outside: the
``broker.approval_vkeys`` setting, or by default ``<data dir>/control/approval.pub``, which
``corral control`` writes on its first start (:func:`control_approval_signer`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from corral.audit import note
from corral.broker._store import BrokerStore
from corral.broker._timing import ProviderTransport
from corral.broker.approval import ApprovalSigner, ApprovalVerifier, load_or_create_signer
from corral.broker.delegation import DelegationKeys, DelegationSigner
from corral.broker.executor import Broker
from corral.broker.keys import AwsKmsKeyProvider, KeyProvider, LocalKeyProvider
from corral.broker.oauth import TokenSource
from corral.broker.vault import Vault
from corral.core.clock import Clock, SystemClock
from corral.core.errors import ConfigError
from corral.core.ids import IdSource, RandomIds
from corral.core.keyfile import load_or_create_seed
from corral.core.settings import Settings


def key_provider(settings: Settings, clock: Clock) -> KeyProvider:
    broker = settings.broker
    if broker.key_provider == "aws-kms":
        assert broker.kms_key_id is not None  # enforced by BrokerSettings
        return AwsKmsKeyProvider(
            broker.kms_key_id, region=broker.region, endpoint_url=broker.kms_endpoint_url
        )
    return LocalKeyProvider(settings.broker_dir / "broker.keys", clock=clock)


def delegation_signer(settings: Settings) -> DelegationSigner:
    seed = load_or_create_seed(settings.broker_dir / "delegation.seed")
    key = Ed25519PrivateKey.from_private_bytes(seed)
    kid = hashlib.sha256(key.public_key().public_bytes_raw()).hexdigest()[:16]
    return DelegationSigner(key, kid)


def control_approval_signer(settings: Settings) -> ApprovalSigner:
    """Control's approval key (created on first use); its vkey goes to ``approval.pub``."""
    path = settings.data_dir / "control" / "approval.key"
    return ApprovalSigner(load_or_create_signer(path, f"{settings.deployment}/control"))


def approval_vkeys(settings: Settings) -> list[str]:
    if settings.broker.approval_vkeys:
        return list(settings.broker.approval_vkeys)
    path: Path = settings.data_dir / "control" / "approval.pub"
    if not path.exists():
        raise ConfigError(
            f"no control approval key: set broker.approval_vkeys or start corral control once "
            f"(it writes {path})"
        )
    vkey = path.read_text("utf-8").strip()
    try:
        note.Verifier.from_key(vkey)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return [vkey]


@dataclass
class BrokerParts:
    broker: Broker
    store: BrokerStore
    http: httpx.AsyncClient

    async def aclose(self) -> None:
        await self.http.aclose()
        self.store.close()


def open_broker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    ids: IdSource | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> BrokerParts:
    """The broker's object graph. ``transport`` replaces the network (tests, ``corral demo``)."""
    clock = clock or SystemClock()
    # httpx logs every request URL at INFO, and provider URLs carry account identifiers
    # (Twilio's AccountSid, QuickBooks' realm id): the broker keeps them out of its logs.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    store = BrokerStore.from_url(
        settings.broker_database_url(), schema=settings.broker.database_schema
    )
    store.create_schema()
    vault = Vault(store, key_provider(settings, clock), clock)
    signer = delegation_signer(settings)
    http = httpx.AsyncClient(
        transport=ProviderTransport(
            transport or httpx.AsyncHTTPTransport(),
            max_in_flight=settings.broker.provider_max_in_flight,
        ),
        timeout=httpx.Timeout(settings.broker.provider_timeout_s),
        follow_redirects=False,
        headers={"user-agent": "corral-broker/0.1"},
    )
    broker = Broker(
        vault,
        signer=signer,
        delegation_keys=DelegationKeys.of(signer),
        approvals=ApprovalVerifier(
            approval_vkeys(settings), max_ttl_s=settings.broker.approval_max_ttl_s
        ),
        http=http,
        ids=ids or RandomIds(clock),
        tokens=TokenSource(vault, http, lease_s=settings.broker.refresh_lease_s),
    )
    return BrokerParts(broker, store, http)
