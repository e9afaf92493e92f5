"""Offline verification of an exported audit bundle (:mod:`corral.audit.bundle`).

Verification is a chain of named steps over nothing but the bundle; the first item that does not
check out raises :class:`VerificationError` naming it (``entry 17``, ``checkpoint at size 40``,
``anchor at size 9``) and what failed:

1. the manifest: origin and key names agree, keys parse, and match pinned keys if given;
2. every entry in order: contiguous sequence numbers, leaf hash, schema, tenant;
3. every personal payload still present matches its entry's commitment (erased ones are counted);
4. every checkpoint: signed by the log key, ascending, within the log, and its root equal to the
   root recomputed from the entries (a rewritten or forked log fails here); the last one covers
   every entry;
5. the consistency proof between each pair of consecutive checkpoints;
6. every anchor: signed by the anchor key, ascending and consistent with the previous anchor
   (no rollback), its tenant checkpoint included by proof and equal to this log at that size
   (a log truncated after it was anchored fails here).

Entries stream through a :class:`~corral.audit.merkle.CompactRange`, so memory stays small for
millions of entries.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.audit import merkle, note
from corral.audit.bundle import (
    ANCHORS,
    CHECKPOINTS,
    CONSISTENCY,
    ENTRIES,
    FIELDS,
    PERSONAL,
    BundleError,
    Manifest,
    read_jsonl,
    read_manifest,
    unb64,
)
from corral.audit.entries import EntryError, PersonalPayload, UnknownEntry, parse_entry
from corral.audit.keys import anchor_origin, log_origin
from corral.core.canonical import loads_strict
from corral.core.errors import AuditError, CanonicalizationError

__all__ = ["Report", "VerificationError", "verify_bundle"]


class VerificationError(AuditError):
    """The first bundle item that does not check out."""

    def __init__(self, item: str, reason: str) -> None:
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason


@dataclass
class Report:
    """What a successful verification covered."""

    origin: str
    tenant: str
    entries: int = 0
    payloads: int = 0
    erased: int = 0
    checkpoints: int = 0
    anchors: int = 0
    root: bytes = merkle.EMPTY_ROOT
    anchored_size: int = 0
    notes: list[str] = field(default_factory=list)


def _verifier(vkey: str, item: str, expected_name: str, pinned: Sequence[str]) -> note.Verifier:
    try:
        verifier = note.Verifier.from_key(vkey)
    except ValueError as exc:
        raise VerificationError(item, f"malformed key: {exc}") from exc
    if verifier.name != expected_name:
        raise VerificationError(item, f"key name {verifier.name!r} is not {expected_name!r}")
    if pinned and vkey not in pinned:
        raise VerificationError(item, f"key {vkey} is not one of the trusted keys given")
    return verifier


def _pre_scan_sizes(bundle: Path) -> set[int]:
    """Tree sizes at which the entry pass must remember the root (checkpoints and anchors)."""
    sizes: set[int] = set()
    for _, obj in read_jsonl(bundle, CHECKPOINTS):
        if isinstance(obj.get("size"), int):
            sizes.add(obj["size"])
    for _, obj in read_jsonl(bundle, ANCHORS):
        leaf = obj.get("leaf")
        if isinstance(leaf, str):
            with contextlib.suppress(ValueError):  # reported with its anchor in step 6
                sizes.add(note.Checkpoint.parse(leaf).size)
    return sizes


#: An ``entries.jsonl`` line as export writes it: the leaf's own text between a fixed head and
#: tail, so a verifier reads the leaf bytes without re-serializing them.
_ENTRY_LINE = re.compile(
    rb'\{"entry":(.*),"hash":"([A-Za-z0-9+/]{43}=)","seq":(0|[1-9][0-9]{0,18})\}\n?', re.DOTALL
)
_CHUNK_LINES = 20_000
PARALLEL_FROM = 200_000  #: entries from which step 2 runs on every core


@dataclass
class _Chunk:
    """What step 2 learned from a run of consecutive entry lines."""

    hashes: list[bytes]
    commitments: dict[int, str]
    notes: list[str]
    error: tuple[str, str] | None = None


def _check_entry_lines(first_seq: int, lines: list[bytes], tenant: str) -> _Chunk:
    """Step 2 for consecutive lines: pure, so chunks can run in worker processes."""
    chunk = _Chunk([], {}, [])
    for offset, line in enumerate(lines):
        seq = first_seq + offset
        item = f"entry {seq}"
        match = _ENTRY_LINE.fullmatch(line)
        if match is None or int(match[3]) != seq:
            chunk.error = (item, _bad_line(line, seq + 1))
            return chunk
        leaf, recorded = match[1], base64.b64decode(match[2])
        if base64.b64encode(recorded) != match[2]:
            chunk.error = (item, "its leaf hash is not canonical base64")
            return chunk
        if merkle.leaf_hash(leaf) != recorded:
            chunk.error = (item, "content does not match its recorded leaf hash")
            return chunk
        try:
            entry = parse_entry(leaf)
        except EntryError as exc:
            chunk.error = (item, str(exc))
            return chunk
        if isinstance(entry, UnknownEntry):
            chunk.notes.append(f"{item}: kind {entry.kind!r} v{entry.v} not known to this build")
        elif entry.tenant != tenant:
            chunk.error = (item, f"belongs to tenant {entry.tenant!r}")
            return chunk
        elif entry.personal is not None:
            chunk.commitments[seq] = entry.personal
        chunk.hashes.append(recorded)
    return chunk


def _bad_line(line: bytes, number: int) -> str:
    """Why an entry line is not in the form export writes, as precisely as can be said."""
    try:
        obj = loads_strict(line)
    except CanonicalizationError as exc:
        return f"line {number} is not JSON: {exc}"
    if not isinstance(obj, dict) or obj.keys() != FIELDS[ENTRIES]:
        return f"line {number} does not have the fields {sorted(FIELDS[ENTRIES])}"
    if obj["seq"] != number - 1:
        return f"missing or out of order: line {number} holds seq {obj['seq']!r}"
    return f"line {number} is not in canonical form"


def _entry_chunks(path: Path) -> Iterator[tuple[int, int, int]]:
    """(first seq, start, end): byte ranges of ``_CHUNK_LINES`` lines each."""
    if not path.is_file():
        raise BundleError(f"{ENTRIES}: missing from the bundle")
    with path.open("rb") as lines:
        seq = start = 0
        while True:
            count = size = 0
            for line in itertools.islice(lines, _CHUNK_LINES):
                count += 1
                size += len(line)
            if not count:
                return
            yield seq, start, start + size
            seq, start = seq + count, start + size


def _check_entry_range(path: Path, seq: int, start: int, end: int, tenant: str) -> _Chunk:
    """Step 2 for the lines in ``[start, end)`` of ``entries.jsonl``: what a worker runs."""
    with path.open("rb") as lines:
        lines.seek(start)
        data = lines.read(end - start)
    # Split on "\n" only, as the file iteration that found the range did (not on "\r").
    return _check_entry_lines(seq, data.removesuffix(b"\n").split(b"\n"), tenant)


def _checked_chunks(bundle: Path, tenant: str, parallel: bool) -> Iterator[_Chunk]:
    """Step 2's chunks in order; on every core when ``parallel`` (at most 2 per worker queued).

    Workers read their own byte range of the file, so only hashes travel between processes.
    """
    path = bundle / ENTRIES
    if not parallel:
        for seq, start, end in _entry_chunks(path):
            yield _check_entry_range(path, seq, start, end, tenant)
        return
    workers = os.cpu_count() or 1
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        pending: collections.deque[Future[_Chunk]] = collections.deque()
        for seq, start, end in _entry_chunks(path):
            pending.append(pool.submit(_check_entry_range, path, seq, start, end, tenant))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _check_entries(
    bundle: Path, manifest: Manifest, wanted: set[int], report: Report
) -> tuple[dict[int, bytes], dict[int, str]]:
    """Step 2: returns the roots at the wanted sizes and the commitments by sequence number."""
    tree = merkle.CompactRange()
    roots = {0: merkle.EMPTY_ROOT}
    commitments: dict[int, str] = {}
    parallel = manifest.size >= PARALLEL_FROM
    for chunk in _checked_chunks(bundle, manifest.tenant, parallel):
        for recorded in chunk.hashes:
            tree.append(recorded)
            if tree.size in wanted:
                roots[tree.size] = tree.root()
        commitments.update(chunk.commitments)
        report.notes.extend(chunk.notes)
        if chunk.error is not None:
            raise VerificationError(*chunk.error)
    report.entries = tree.size
    report.root = tree.root()
    roots[tree.size] = report.root
    return roots, commitments


def _check_personal(bundle: Path, commitments: dict[int, str], report: Report) -> None:
    seen: set[int] = set()
    for number, obj in read_jsonl(bundle, PERSONAL):
        seq = obj.get("seq")
        item = f"personal payload of entry {seq}"
        if not isinstance(seq, int) or seq in seen:
            raise VerificationError(f"{PERSONAL} line {number}", "missing or repeated seq")
        seen.add(seq)
        commitment = commitments.get(seq)
        if commitment is None:
            raise VerificationError(item, "the entry commits to no personal payload")
        try:
            payload = PersonalPayload.from_bytes(unb64(obj.get("payload"), item))
        except EntryError as exc:
            raise VerificationError(item, str(exc)) from exc
        if not payload.matches(commitment):
            raise VerificationError(item, "does not match the entry's commitment")
    report.payloads = len(seen)
    report.erased = len(commitments) - len(seen)


def _check_checkpoints(
    bundle: Path,
    manifest: Manifest,
    log_key: note.Verifier,
    roots: dict[int, bytes],
    report: Report,
) -> list[tuple[int, bytes]]:
    checked: list[tuple[int, bytes]] = []
    for number, obj in read_jsonl(bundle, CHECKPOINTS):
        size = obj.get("size")
        item = f"checkpoint at size {size}" if isinstance(size, int) else f"checkpoint {number}"
        text = obj.get("note")
        if not isinstance(text, str):
            raise VerificationError(item, "no signed note")
        try:
            checkpoint, _ = note.open_checkpoint(text.encode("utf-8"), manifest.origin, log_key)
        except ValueError as exc:
            raise VerificationError(item, f"signature: {exc}") from exc
        if checkpoint.size != size:
            raise VerificationError(item, f"the signed note says size {checkpoint.size}")
        if checked and checkpoint.size <= checked[-1][0]:
            raise VerificationError(item, f"not after the checkpoint at size {checked[-1][0]}")
        if checkpoint.size > report.entries:
            raise VerificationError(
                item, f"the bundle has only {report.entries} entries: log truncated"
            )
        if roots.get(checkpoint.size) != checkpoint.root:
            raise VerificationError(
                item, "root does not match the entries: log rewritten or forked"
            )
        checked.append((checkpoint.size, checkpoint.root))
    if not checked or checked[-1][0] != report.entries:
        covered = checked[-1][0] if checked else 0
        raise VerificationError(
            f"entry {covered}", "not covered by any signed checkpoint (unsigned tail)"
        )
    report.checkpoints = len(checked)
    return checked


def _check_consistency(bundle: Path, checked: list[tuple[int, bytes]]) -> None:
    proofs: dict[tuple[int, int], list[bytes]] = {}
    for number, obj in read_jsonl(bundle, CONSISTENCY):
        key = (obj.get("from"), obj.get("to"))
        raw = obj.get("proof")
        if not isinstance(raw, list):
            raise VerificationError(f"{CONSISTENCY} line {number}", "no proof list")
        proofs[key] = [unb64(h, f"{CONSISTENCY} line {number}") for h in raw]  # type: ignore[index]
    for (old, old_root), (new, new_root) in itertools.pairwise(checked):
        item = f"consistency proof from size {old} to {new}"
        proof = proofs.get((old, new))
        if proof is None:
            raise VerificationError(item, "missing")
        if not merkle.verify_consistency(old, new, old_root, new_root, proof):
            raise VerificationError(item, "does not verify")


def _check_anchors(
    bundle: Path,
    manifest: Manifest,
    anchor_key: note.Verifier | None,
    roots: dict[int, bytes],
    report: Report,
) -> None:
    previous: tuple[int, bytes] | None = None
    anchored = 0
    for number, obj in read_jsonl(bundle, ANCHORS):
        item = f"anchor {number}"
        if anchor_key is None:
            raise VerificationError(item, "the manifest names no anchor key")
        text, leaf = obj.get("anchor"), obj.get("leaf")
        if not isinstance(text, str) or not isinstance(leaf, str):
            raise VerificationError(item, "no signed anchor or anchored checkpoint")
        try:
            anchor, _ = note.open_checkpoint(
                text.encode("utf-8"), anchor_origin(manifest.deployment), anchor_key
            )
        except ValueError as exc:
            raise VerificationError(item, f"signature: {exc}") from exc
        item = f"anchor at size {anchor.size}"
        if previous is None and obj.get("consistency") != []:
            raise VerificationError(item, "the first anchor carries a consistency proof")
        if previous is not None:
            if anchor.size <= previous[0]:
                raise VerificationError(
                    item, f"comes after the anchor at size {previous[0]}: anchors rolled back"
                )
            proof = [unb64(h, item) for h in _list(obj.get("consistency"), item)]
            if not merkle.verify_consistency(
                previous[0], anchor.size, previous[1], anchor.root, proof
            ):
                raise VerificationError(item, "not consistent with the previous anchor")
        index = obj.get("index")
        inclusion = [unb64(h, item) for h in _list(obj.get("inclusion"), item)]
        if not isinstance(index, int) or not merkle.verify_inclusion(
            merkle.leaf_hash(leaf.encode("utf-8")), index, anchor.size, inclusion, anchor.root
        ):
            raise VerificationError(item, "inclusion proof of the tenant checkpoint fails")
        try:
            tenant_checkpoint = note.Checkpoint.parse(leaf)
        except ValueError as exc:
            raise VerificationError(item, f"anchored checkpoint: {exc}") from exc
        if tenant_checkpoint.origin != manifest.origin:
            raise VerificationError(item, f"anchors another log ({tenant_checkpoint.origin})")
        if tenant_checkpoint.size < anchored:
            raise VerificationError(
                item, f"anchors size {tenant_checkpoint.size} after size {anchored}: rolled back"
            )
        if tenant_checkpoint.size > report.entries:
            raise VerificationError(
                item,
                f"anchored this log at size {tenant_checkpoint.size} but the bundle has only"
                f" {report.entries} entries: log truncated",
            )
        if roots.get(tenant_checkpoint.size) != tenant_checkpoint.root:
            raise VerificationError(item, "anchored a different root: log rewritten or forked")
        anchored = tenant_checkpoint.size
        previous = (anchor.size, anchor.root)
        report.anchors += 1
    report.anchored_size = anchored


def _list(value: Any, item: str) -> list[Any]:
    if not isinstance(value, list):
        raise VerificationError(item, "expected a list of hashes")
    return value


def verify_bundle(
    bundle: Path,
    *,
    trusted_log_keys: Sequence[str] = (),
    trusted_anchor_keys: Sequence[str] = (),
) -> Report:
    """Verify a bundle directory; raise :class:`VerificationError` at the first bad item.

    ``trusted_*_keys`` pin the verifier keys (as published on the dashboard or by the operator);
    without them the bundle's own keys are used, which proves internal consistency and that the
    log matches its anchors, but not who holds the keys.
    """
    try:
        manifest = read_manifest(bundle)
        if manifest.origin != log_origin(manifest.deployment, manifest.tenant):
            raise VerificationError("manifest", f"origin {manifest.origin!r} is not this tenant's")
        log_key = _verifier(manifest.log_key, "log key", manifest.origin, trusted_log_keys)
        anchor_key = (
            None
            if manifest.anchor_key is None
            else _verifier(
                manifest.anchor_key,
                "anchor key",
                anchor_origin(manifest.deployment),
                trusted_anchor_keys,
            )
        )
        report = Report(origin=manifest.origin, tenant=manifest.tenant)
        roots, commitments = _check_entries(bundle, manifest, _pre_scan_sizes(bundle), report)
        if manifest.size != report.entries:
            raise VerificationError(
                "manifest", f"says {manifest.size} entries, the bundle has {report.entries}"
            )
        _check_personal(bundle, commitments, report)
        checked = _check_checkpoints(bundle, manifest, log_key, roots, report)
        _check_consistency(bundle, checked)
        _check_anchors(bundle, manifest, anchor_key, roots, report)
    except BundleError as exc:
        raise VerificationError("bundle", str(exc)) from exc
    if report.anchors == 0:
        report.notes.append("no anchor covers this log yet")
    return report
