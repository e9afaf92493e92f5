"""Replay a stored tenant log: recompute what was signed and what was said, report differences.

Two things can drift from the entries they came from, and replay checks both:

* **checkpoints**: each stored checkpoint must be signed by the log's key and name the root that
  the stored entries give at its size (recomputed leaf by leaf), and the stored tree nodes must
  give the same root (a damaged node would make proofs lie);
* **prose**: the timeline rendered now must equal the timeline saved when it was last rendered
  (``<data dir>/prose/<tenant>.<locale>.txt``, with the renderer version and context in its
  first line). Same entries and renderer version must give byte-identical text; a different
  renderer version is reported as such, not as tampering.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from corral.audit import merkle, note
from corral.audit.entries import EntryError, PersonalPayload, parse_entry
from corral.audit.keys import AuditKeys, log_origin
from corral.audit.prose import (
    ERASED,
    RENDERER_VERSION,
    Personal,
    ProseError,
    RenderContext,
    render_timeline,
)
from corral.audit.store import LogStore
from corral.core.errors import AuditError

__all__ = [
    "ReplayReport",
    "prose_snapshot_path",
    "read_log",
    "refresh_prose",
    "render_log",
    "replay",
    "save_prose",
]

_CHUNK = 10_000


@dataclass
class ReplayReport:
    tenant: str
    entries: int = 0
    checkpoints: int = 0
    prose_lines: int = 0
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def read_log(
    store: LogStore, tenant: str, size: int | None = None
) -> Iterator[tuple[int, bytes, Personal]]:
    """(seq, leaf, personal) for each stored entry; ``ERASED`` where a payload was erased."""
    end = store.log_size(tenant) if size is None else size
    for start in range(0, end, _CHUNK):
        for stored in store.entries(tenant, start, min(start + _CHUNK, end)):
            personal: Personal = None
            if stored.personal is not None:
                personal = PersonalPayload.from_bytes(stored.personal)
            elif stored.erased:
                personal = ERASED
            yield stored.seq, stored.leaf, personal


def render_log(
    store: LogStore, tenant: str, ctx: RenderContext, size: int | None = None
) -> list[str]:
    """The tenant's timeline (its first ``size`` entries) as text lines, oldest first."""
    items = ((parse_entry(leaf), personal) for _, leaf, personal in read_log(store, tenant, size))
    return [line.text for line in render_timeline(items, ctx)]


def prose_snapshot_path(data_dir: Path, tenant: str, ctx: RenderContext) -> Path:
    return data_dir / "prose" / f"{tenant}.{ctx.locale}.txt"


def _header(ctx: RenderContext, size: int) -> str:
    return (
        f"# corral prose renderer={RENDERER_VERSION} locale={ctx.locale}"
        f" timezone={ctx.timezone} country={ctx.country} size={size}"
    )


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def save_prose(path: Path, ctx: RenderContext, size: int, lines: list[str]) -> None:
    """Save a rendering of the first ``size`` entries, for a later replay to compare with.

    Only each line's SHA-256 is kept, not its text: the prose holds personal details, and a
    copy of them here would outlive their erasure (:func:`refresh_prose` re-saves after one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [_header(ctx, size), *(_digest(line) for line in lines)]
    path.write_text("\n".join(body) + "\n", encoding="utf-8")


def refresh_prose(data_dir: Path, store: LogStore, tenant: str) -> int:
    """Re-save every saved rendering of ``tenant`` (after an erasure changed its prose)."""
    refreshed = 0
    for path in sorted((data_dir / "prose").glob(f"{tenant}.*.txt")):
        fields = _header_fields(path.read_text(encoding="utf-8").split("\n", 1)[0])
        try:
            ctx = RenderContext(fields["timezone"], fields["locale"], fields["country"])
            size = int(fields["size"])
        except (KeyError, ValueError, ProseError):
            continue  # not a rendering this version wrote: leave it for replay to report
        save_prose(path, ctx, size, render_log(store, tenant, ctx, size))
        refreshed += 1
    return refreshed


def _check_checkpoints(
    store: LogStore, keys: AuditKeys, deployment: str, tenant: str, report: ReplayReport
) -> None:
    origin = log_origin(deployment, tenant)
    if store.origin(tenant) != origin:
        report.differences.append(
            f"log origin is {store.origin(tenant)!r}, but this deployment's would be {origin!r}"
        )
        return
    verifier = keys.signer(origin).verifier()
    checkpoints = store.checkpoints(tenant)
    wanted = {cp.size for cp in checkpoints}
    roots = {0: merkle.EMPTY_ROOT}
    tree = merkle.CompactRange()
    computed: list[tuple[merkle.NodeId, bytes]] = []
    differing: list[merkle.NodeId] = []
    for _, leaf, _ in read_log(store, tenant):
        computed.extend(tree.append(merkle.leaf_hash(leaf)))
        if tree.size in wanted:
            roots[tree.size] = tree.root()
        if len(computed) >= _CHUNK:
            differing += _differing_nodes(store, tenant, computed)
            computed.clear()
    differing += _differing_nodes(store, tenant, computed)
    report.entries = tree.size
    for stored in checkpoints:
        item = f"checkpoint at size {stored.size}"
        try:
            cp, _ = note.open_checkpoint(stored.note, origin, verifier)
        except ValueError as exc:
            report.differences.append(f"{item}: signature does not verify: {exc}")
            continue
        if cp.size != stored.size or cp.root != stored.root:
            report.differences.append(f"{item}: the signed note disagrees with its stored row")
        elif roots.get(stored.size) != cp.root:
            report.differences.append(f"{item}: the entries now give a different root")
        report.checkpoints += 1
    if differing:
        first = differing[0]
        report.differences.append(
            f"tree nodes: {len(differing)} stored nodes differ from the entries'"
            f" (first: level {first.level}, index {first.index}), so proofs would lie"
        )


def _differing_nodes(
    store: LogStore, tenant: str, computed: list[tuple[merkle.NodeId, bytes]]
) -> list[merkle.NodeId]:
    """The nodes whose stored hash is not the one the entries give (every node, not only the
    root's: a damaged node anywhere makes some inclusion or consistency proof lie)."""
    if not computed:
        return []
    stored = store.nodes(tenant, [node for node, _ in computed])
    return [node for node, digest in computed if stored[node] != digest]


def _check_prose(
    store: LogStore, tenant: str, ctx: RenderContext, snapshot: Path, report: ReplayReport
) -> None:
    size = store.log_size(tenant)
    if not snapshot.is_file():
        lines = _render(store, tenant, ctx, size, report)
        if lines is None:
            return
        report.prose_lines = len(lines)
        save_prose(snapshot, ctx, size, lines)
        report.notes.append(f"no saved prose at {snapshot}: saved it now")
        return
    saved_header, *saved = snapshot.read_text(encoding="utf-8").splitlines()
    saved_size = _saved_size(saved_header)
    if saved_size is None or saved_size > size or saved_header != _header(ctx, saved_size):
        report.notes.append(f"saved prose was rendered differently: {saved_header[2:]}")
        return
    lines = _render(store, tenant, ctx, saved_size, report)
    if lines is None:
        return
    report.prose_lines = len(lines)
    for number, (old, new) in enumerate(zip(saved, lines, strict=False), start=1):
        if old != _digest(new):
            report.differences.append(
                f"prose line {number}: differs from the saved rendering, now {new!r}"
            )
    if len(saved) != len(lines):
        report.differences.append(f"prose: {len(saved)} lines saved, {len(lines)} rendered now")
    if size > saved_size:
        report.notes.append(f"{size - saved_size} entries logged since the prose was saved")


def _render(
    store: LogStore, tenant: str, ctx: RenderContext, size: int, report: ReplayReport
) -> list[str] | None:
    """:func:`render_log`, or None once an entry that cannot be rendered is reported."""
    try:
        return render_log(store, tenant, ctx, size)
    except (EntryError, ProseError) as exc:  # a leaf or payload changed in the store
        report.differences.append(f"prose: the entries cannot be rendered: {exc}")
        return None


def _header_fields(header: str) -> dict[str, str]:
    """``{"renderer": "1", "locale": "en", ...}`` from a saved rendering's first line."""
    return dict(part.split("=", 1) for part in header.split() if "=" in part)


def _saved_size(header: str) -> int | None:
    size = _header_fields(header).get("size", "")
    return int(size) if size.isdigit() else None


def replay(
    store: LogStore,
    keys: AuditKeys,
    *,
    deployment: str,
    tenant: str,
    ctx: RenderContext,
    snapshot: Path,
) -> ReplayReport:
    """Recompute every checkpoint and re-render the prose of ``tenant``'s log."""
    if tenant not in store.tenants():
        raise AuditError(f"no audit log for tenant {tenant!r}")
    report = ReplayReport(tenant)
    _check_checkpoints(store, keys, deployment, tenant, report)
    _check_prose(store, tenant, ctx, snapshot, report)
    return report
