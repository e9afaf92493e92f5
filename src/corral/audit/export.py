"""Export a tenant log as a self-contained bundle (:mod:`corral.audit.bundle`).

The bundle stops at the latest signed checkpoint, so everything in it is covered by a signature;
callers that want the newest entries included ask the sequencer for a checkpoint first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from corral.audit import merkle
from corral.audit.anchor import Anchorer
from corral.audit.bundle import (
    AnchorItem,
    CheckpointItem,
    ConsistencyItem,
    EntryItem,
    Manifest,
    PersonalItem,
    write_bundle,
)
from corral.audit.keys import AuditKeys, log_origin
from corral.audit.store import LogStore
from corral.core.errors import AuditError

__all__ = ["export_bundle"]

_CHUNK = 10_000


def export_bundle(
    store: LogStore,
    keys: AuditKeys,
    anchorer: Anchorer | None,
    *,
    deployment: str,
    tenant: str,
    out: Path,
    renderer_version: str | None = None,
) -> Manifest:
    """Write ``tenant``'s log up to its latest checkpoint into the directory ``out``."""
    origin = log_origin(deployment, tenant)
    latest = store.latest_checkpoint(tenant)
    if latest is None:
        raise AuditError(f"tenant {tenant!r} has no signed checkpoint yet: nothing to export")
    size = latest.size
    checkpoints = [cp for cp in store.checkpoints(tenant) if cp.size <= size]
    manifest = Manifest(
        deployment=deployment,
        tenant=tenant,
        origin=origin,
        size=size,
        log_key=keys.signer(origin).vkey,
        anchor_key=anchorer.verifier_key if anchorer is not None else None,
        renderer_version=renderer_version,
    )
    personal: list[PersonalItem] = []

    def entries() -> Iterator[EntryItem]:
        for start in range(0, size, _CHUNK):
            for stored in store.entries(tenant, start, min(start + _CHUNK, size)):
                if stored.personal is not None:
                    personal.append(PersonalItem(stored.seq, stored.personal))
                yield EntryItem(stored.seq, stored.leaf, merkle.leaf_hash(stored.leaf))

    consistency = [
        ConsistencyItem(a.size, b.size, store.consistency_proof(tenant, a.size, b.size))
        for a, b in itertools.pairwise(checkpoints)
    ]
    anchors: list[AnchorItem] = []
    if anchorer is not None:
        previous = 0
        for proof in anchorer.proofs(tenant):
            if proof.anchor.size <= previous:
                continue  # two checkpoints first anchored in the same round: keep the first
            tenant_size = int(proof.leaf.split(b"\n")[1])
            if tenant_size > size:
                break
            link = anchorer.consistency(previous, proof.anchor.size) if previous else []
            anchors.append(
                AnchorItem(proof.anchor.note, proof.leaf, proof.index, proof.inclusion, link)
            )
            previous = proof.anchor.size
    # Entries are written first (streamed), which fills ``personal`` before it is written.
    write_bundle(
        out,
        manifest,
        entries(),
        _Deferred(personal),
        [CheckpointItem(cp.size, cp.note) for cp in checkpoints],
        consistency,
        anchors,
    )
    return manifest


class _Deferred:
    """An iterable read only when iterated: lets the entry pass fill the payload list first."""

    def __init__(self, items: list[PersonalItem]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[PersonalItem]:
        return iter(self._items)
