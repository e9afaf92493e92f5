"""Anchoring: every tenant log's latest checkpoint, folded into one root written once, immutably.

The anchors form a log of their own, the *anchor log* (origin ``<deployment>/anchors``), whose
leaves are tenant checkpoint bodies (``origin\\nsize\\nroot\\n``). Each anchoring round appends
the checkpoints that are new since the last round, signs the anchor log's checkpoint, and writes
it to the :class:`~corral.audit.anchor_store.AnchorStore` keyed by its size, write-once (a local
append-only file by default; DynamoDB with ``attribute_not_exists`` at scale). Because the anchor
log is append-only too, two anchors are linked by a consistency proof, so an anchor store cannot
be rolled back unnoticed, and a tenant proves its checkpoint was anchored with one inclusion
proof.

The round is crash-safe: the anchor log is committed to the audit database first, then put in
the anchor store; the next round re-puts any anchor-log checkpoint the store is missing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import sqlalchemy as sa

from corral.audit import merkle, note
from corral.audit.anchor_store import AnchorExists, AnchorRecord, AnchorStore
from corral.audit.keys import AuditKeys, anchor_origin
from corral.audit.store import LogStore, StoredCheckpoint
from corral.core.clock import Clock
from corral.core.errors import AuditError

__all__ = ["ANCHOR_LOG", "AnchorProof", "Anchorer"]

#: The store key of the anchor log. Not a valid tenant id (those start with a letter or digit).
ANCHOR_LOG = "~anchors"

_metadata = sa.MetaData()
#: Where each tenant checkpoint sits in the anchor log: the index behind anchor proofs.
anchor_leaves = sa.Table(
    "audit_anchor_leaves",
    _metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("size", sa.BigInteger, primary_key=True),
    sa.Column("leaf_index", sa.BigInteger, nullable=False, unique=True),
)


@dataclass(frozen=True)
class AnchorProof:
    """A tenant checkpoint, the anchor that includes it, and the inclusion proof between them."""

    leaf: bytes  # the tenant checkpoint body
    index: int  # its position in the anchor log
    anchor: AnchorRecord
    inclusion: list[bytes]


class Anchorer:
    """Runs anchoring rounds for one deployment; one anchorer at a time (store fencing)."""

    def __init__(
        self,
        store: LogStore,
        anchors: AnchorStore,
        keys: AuditKeys,
        *,
        deployment: str,
        clock: Clock,
    ) -> None:
        self._store = store
        self._anchors = anchors
        self._signer = keys.signer(anchor_origin(deployment))
        self._deployment = deployment
        self._clock = clock
        self._lock = threading.Lock()
        _metadata.create_all(store.engine)

    @property
    def verifier_key(self) -> str:
        return self._signer.vkey

    def anchor_now(self) -> AnchorRecord | None:
        """Anchor every checkpoint that is new since the last round; None if nothing changed."""
        with self._lock:
            self._repair()
            fresh = self._fresh_checkpoints()
            size = self._store.log_size(ANCHOR_LOG)
            signed = self._store.latest_checkpoint(ANCHOR_LOG)
            if not fresh and size == (signed.size if signed else 0):
                return None  # else a crash left leaves unsigned: sign them now
            tree = merkle.CompactRange.load(size, lambda ids: self._store.nodes(ANCHOR_LOG, ids))
            nodes: list[tuple[merkle.NodeId, bytes]] = []
            leaves: list[tuple[bytes, bytes | None]] = []
            for _, checkpoint in fresh:
                leaf = self._leaf(checkpoint)
                leaves.append((leaf, None))
                nodes.extend(tree.append(merkle.leaf_hash(leaf)))
            if fresh:
                self._store.append_batch(
                    ANCHOR_LOG, anchor_origin(self._deployment), size, leaves, nodes
                )
                with self._store.engine.begin() as conn:
                    conn.execute(
                        anchor_leaves.insert(),
                        [
                            {"tenant": tenant, "size": cp.size, "leaf_index": size + i}
                            for i, (tenant, cp) in enumerate(fresh)
                        ],
                    )
            record = self._sign(tree.size, tree.root())
            self._put(record)
            return record

    def _fresh_checkpoints(self) -> list[tuple[str, StoredCheckpoint]]:
        with self._store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(anchor_leaves.c.tenant, sa.func.max(anchor_leaves.c.size)).group_by(
                    anchor_leaves.c.tenant
                )
            ).all()
        done: dict[str, int] = {tenant: size for tenant, size in rows}
        fresh = []
        for tenant in sorted(self._store.tenants()):
            if tenant == ANCHOR_LOG:
                continue
            latest = self._store.latest_checkpoint(tenant)
            if latest is not None and latest.size > done.get(tenant, 0):
                fresh.append((tenant, latest))
        return fresh

    def _leaf(self, checkpoint: StoredCheckpoint) -> bytes:
        return _body(checkpoint.note)

    def _sign(self, size: int, root: bytes) -> AnchorRecord:
        now = self._clock.now()
        body = note.Checkpoint(anchor_origin(self._deployment), size, root).format()
        signed = note.sign(body, [self._signer])
        self._store.add_checkpoint(ANCHOR_LOG, size, root, signed, now)
        return AnchorRecord(self._deployment, size, root, now, signed)

    def _put(self, record: AnchorRecord) -> None:
        try:
            self._anchors.put(record)
        except AnchorExists:
            existing = self._anchors.get(record.deployment, record.size)
            if existing is None or (existing.root, existing.note) != (record.root, record.note):
                raise AuditError(
                    f"anchor store already holds a different anchor at size {record.size}"
                ) from None

    def _repair(self) -> None:
        """Put anchor-log checkpoints that a crash kept from reaching the anchor store."""
        latest = self._anchors.latest(self._deployment)
        after = latest.size if latest else 0
        for checkpoint in self._store.checkpoints(ANCHOR_LOG, after_size=after):
            self._put(
                AnchorRecord(
                    self._deployment,
                    checkpoint.size,
                    checkpoint.root,
                    checkpoint.at,
                    checkpoint.note,
                )
            )

    def proofs(self, tenant: str) -> list[AnchorProof]:
        """Each anchored checkpoint of ``tenant``, with the first anchor including it, and proof."""
        with self._store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(anchor_leaves.c.size, anchor_leaves.c.leaf_index)
                .where(anchor_leaves.c.tenant == tenant)
                .order_by(anchor_leaves.c.size)
            ).all()
        if not rows:
            return []
        proofs = []
        for _, index in rows:
            # The first anchor that includes the leaf: the anchor log's first checkpoint past it.
            first = self._store.checkpoints(ANCHOR_LOG, after_size=index, limit=1)
            if not first:
                continue  # appended, but the round that anchors it has not finished
            cp = first[0]
            record = AnchorRecord(self._deployment, cp.size, cp.root, cp.at, cp.note)
            leaf = self._store.entries(ANCHOR_LOG, index, index + 1)[0].leaf
            inclusion = self._store.inclusion_proof(ANCHOR_LOG, index, record.size)
            proofs.append(AnchorProof(leaf, index, record, inclusion))
        return proofs

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """A consistency proof between two anchors (sizes of the anchor log)."""
        return self._store.consistency_proof(ANCHOR_LOG, old_size, new_size)


def _body(signed: bytes) -> bytes:
    """The text of a signed note (up to the blank line), i.e. the checkpoint body."""
    text, sep, _ = signed.partition(b"\n\n")
    if not sep:
        raise AuditError("stored checkpoint is not a signed note")
    return text + b"\n"
