"""The audit chain: a verifiable, per-tenant log that the owner can read and anyone can check.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from pathlib import Path
>>> from corral.audit import AuditChain, AuditKeys, LocalAnchorStore, LogStore, verify_bundle
>>> from corral.audit.demo import demo_day
>>> from corral.core.clock import ManualClock
>>> tmp = Path(tempfile.mkdtemp())
>>> clock = ManualClock(datetime(2026, 3, 3, 16, 0, tzinfo=timezone.utc))
>>> store = LogStore.from_url(f"sqlite:///{tmp / 'audit.db'}"); store.create_schema()
>>> with AuditChain(deployment="example.com", store=store, keys=AuditKeys(bytes(32)),
...                 anchors=LocalAnchorStore(tmp / "anchors.db"), clock=clock) as chain:
...     for entry, payload in list(demo_day())[:5]:
...         seq = chain.sequencer.append("brightsmile", entry, payload)
...     manifest = chain.export("brightsmile", tmp / "bundle")
>>> verify_bundle(tmp / "bundle").entries
5

Modules: :mod:`~corral.audit.merkle` (RFC 6962), :mod:`~corral.audit.note` (C2SP signed notes
and checkpoints), :mod:`~corral.audit.entries`, :mod:`~corral.audit.store`,
:mod:`~corral.audit.log` (the sequencer), :mod:`~corral.audit.anchor` and
:mod:`~corral.audit.anchor_store`, :mod:`~corral.audit.export` / :mod:`~corral.audit.verify`
(the bundle), :mod:`~corral.audit.replay`, :mod:`~corral.audit.prose`. ``docs/audit.md`` is
the manual.
"""

from corral.audit.anchor import Anchorer, AnchorProof
from corral.audit.anchor_store import (
    AnchorExists,
    AnchorRecord,
    AnchorStore,
    AnchorStoreUnavailable,
    DynamoDBAnchorStore,
    LocalAnchorStore,
    open_anchor_store,
)
from corral.audit.chain import AuditChain, open_chain
from corral.audit.entries import Entry, EntryError, PersonalPayload, parse_entry, seal
from corral.audit.export import export_bundle
from corral.audit.keys import AuditKeys, anchor_origin, log_origin
from corral.audit.log import Sequencer
from corral.audit.prose import ERASED, RENDERER_VERSION, RenderContext, render_timeline
from corral.audit.replay import ReplayReport, replay
from corral.audit.store import LogStore, StoreConflict, StoredCheckpoint, StoredEntry
from corral.audit.verify import Report, VerificationError, verify_bundle

__all__ = [
    "ERASED",
    "RENDERER_VERSION",
    "AnchorExists",
    "AnchorProof",
    "AnchorRecord",
    "AnchorStore",
    "AnchorStoreUnavailable",
    "Anchorer",
    "AuditChain",
    "AuditKeys",
    "DynamoDBAnchorStore",
    "Entry",
    "EntryError",
    "LocalAnchorStore",
    "LogStore",
    "PersonalPayload",
    "RenderContext",
    "ReplayReport",
    "Report",
    "Sequencer",
    "StoreConflict",
    "StoredCheckpoint",
    "StoredEntry",
    "VerificationError",
    "anchor_origin",
    "export_bundle",
    "log_origin",
    "open_anchor_store",
    "open_chain",
    "parse_entry",
    "render_timeline",
    "replay",
    "seal",
    "verify_bundle",
]
