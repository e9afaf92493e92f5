"""The audit chain assembled from settings: store, keys, sequencer, anchor store and anchorer.

Entry points (the CLI, ``corral control``) build one :class:`AuditChain`; tests build their own
from parts. Nothing here runs at import.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

from corral.audit.anchor import Anchorer
from corral.audit.anchor_store import AnchorStore, open_anchor_store
from corral.audit.bundle import Manifest
from corral.audit.export import export_bundle
from corral.audit.keys import AuditKeys, log_origin
from corral.audit.log import Sequencer
from corral.audit.store import LogStore
from corral.core.clock import Clock
from corral.core.settings import Settings

__all__ = ["AuditChain", "open_chain"]


class AuditChain:
    """One deployment's audit chain; a context manager that closes what it opened."""

    def __init__(
        self,
        *,
        deployment: str,
        store: LogStore,
        keys: AuditKeys,
        anchors: AnchorStore,
        clock: Clock,
        checkpoint_interval_s: float = 1.0,
        max_batch: int = 1024,
        max_pending: int = 100_000,
        anchor_interval_s: float = 60.0,
    ) -> None:
        self.deployment = deployment
        self.store = store
        self.keys = keys
        self.anchors = anchors
        self.clock = clock
        self.sequencer = Sequencer(
            store,
            deployment=deployment,
            signer_for=keys.signer,
            clock=clock,
            checkpoint_interval_s=checkpoint_interval_s,
            max_batch=max_batch,
            max_pending=max_pending,
        )
        self.anchorer = Anchorer(store, anchors, keys, deployment=deployment, clock=clock)
        self._anchor_interval_s = anchor_interval_s
        self._stop = threading.Event()
        self._anchor_thread: threading.Thread | None = None

    def log_key(self, tenant: str) -> str:
        """The verifier key (vkey) of a tenant's checkpoints: what the owner pins."""
        return self.keys.signer(log_origin(self.deployment, tenant)).vkey

    def export(self, tenant: str, out: Path, *, renderer_version: str | None = None) -> Manifest:
        """Checkpoint and anchor the tenant's log now, then export it up to that checkpoint."""
        self.sequencer.checkpoint(tenant)
        self.anchorer.anchor_now()
        return export_bundle(
            self.store,
            self.keys,
            self.anchorer,
            deployment=self.deployment,
            tenant=tenant,
            out=out,
            renderer_version=renderer_version,
        )

    def start_anchoring(self) -> None:
        """Anchor every ``anchor_interval_s`` seconds in a background thread until closed."""
        if self._anchor_thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self._anchor_interval_s):
                self.anchorer.anchor_now()

        self._anchor_thread = threading.Thread(target=loop, name="audit-anchor", daemon=True)
        self._anchor_thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._anchor_thread is not None:
            self._anchor_thread.join()
        self.sequencer.close()
        self.store.close()

    def __enter__(self) -> AuditChain:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_chain(settings: Settings, clock: Clock) -> AuditChain:
    """Build the chain from settings: audit database, seed file and anchor store."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = LogStore.from_url(settings.audit_database_url())
    store.create_schema()
    audit = settings.audit
    return AuditChain(
        deployment=settings.deployment,
        store=store,
        keys=AuditKeys.load_or_create(data_dir / "keys" / "audit.seed"),
        anchors=open_anchor_store(audit.anchor, data_dir),
        clock=clock,
        checkpoint_interval_s=audit.checkpoint_interval_s,
        max_batch=audit.max_batch,
        max_pending=audit.max_pending,
        anchor_interval_s=audit.anchor.interval_s,
    )
