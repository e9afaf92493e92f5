"""The exported audit bundle: a directory that carries everything needed to verify a tenant log.

Layout (``docs/audit.md`` describes each field)::

    bundle.json          manifest: format, deployment, tenant, origin, size, verifier keys
    entries.jsonl        a line per leaf: {"entry": <leaf JSON>, "hash": b64 leaf hash, "seq": n}
    personal.jsonl       erasable payloads still present: {"payload": b64, "seq": n}
    checkpoints.jsonl    signed checkpoints, ascending: {"note": <signed note text>, "size": n}
    consistency.jsonl    proofs between consecutive checkpoints: {"from", "to", "proof": [b64]}
    anchors.jsonl        anchors covering this log's checkpoints, ascending by anchor size:
                         {"anchor": <signed anchor-log checkpoint>, "leaf": <tenant checkpoint
                          body>, "index": n, "inclusion": [b64], "consistency": [b64] (from the
                          previous anchor in the file; empty for the first)}

Every line is RFC 8785 canonical JSON, so a bundle is byte-identical for the same log. An
``entries.jsonl`` line holds the leaf as a JSON value: the leaf bytes are its canonical form.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.core.canonical import canonicalize, loads_strict
from corral.core.errors import CanonicalizationError

__all__ = [
    "BUNDLE_FORMAT",
    "AnchorItem",
    "BundleError",
    "CheckpointItem",
    "ConsistencyItem",
    "EntryItem",
    "Manifest",
    "PersonalItem",
    "read_jsonl",
    "write_bundle",
]

BUNDLE_FORMAT = "corral-audit-bundle/v1"
MANIFEST = "bundle.json"
ENTRIES = "entries.jsonl"
PERSONAL = "personal.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
CONSISTENCY = "consistency.jsonl"
ANCHORS = "anchors.jsonl"


class BundleError(ValueError):
    """A bundle file that cannot be read at all (missing, not JSON, wrong shape)."""


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise BundleError(f"{what}: expected base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise BundleError(f"{what}: bad base64") from exc
    if b64(raw) != text:  # unused padding bits set: another spelling of the same bytes
        raise BundleError(f"{what}: base64 is not in canonical form")
    return raw


@dataclass(frozen=True)
class Manifest:
    deployment: str
    tenant: str
    origin: str
    size: int
    log_key: str
    anchor_key: str | None
    renderer_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "deployment": self.deployment,
            "tenant": self.tenant,
            "origin": self.origin,
            "size": self.size,
            "log_key": self.log_key,
            "anchor_key": self.anchor_key,
            "renderer_version": self.renderer_version,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{MANIFEST}: not a {BUNDLE_FORMAT} manifest")
        try:
            return cls(
                deployment=_str(obj["deployment"]),
                tenant=_str(obj["tenant"]),
                origin=_str(obj["origin"]),
                size=_int(obj["size"]),
                log_key=_str(obj["log_key"]),
                anchor_key=None if obj.get("anchor_key") is None else _str(obj["anchor_key"]),
                renderer_version=obj.get("renderer_version"),
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{MANIFEST}: missing or wrong field {exc}") from exc


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class EntryItem:
    seq: int
    leaf: bytes
    hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "entry": json.loads(self.leaf), "hash": b64(self.hash)}


@dataclass(frozen=True)
class PersonalItem:
    seq: int
    payload: bytes

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "payload": b64(self.payload)}


@dataclass(frozen=True)
class CheckpointItem:
    size: int
    note: bytes

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "note": self.note.decode("utf-8")}


@dataclass(frozen=True)
class ConsistencyItem:
    old_size: int
    new_size: int
    proof: list[bytes]

    def to_json(self) -> dict[str, Any]:
        return {"from": self.old_size, "to": self.new_size, "proof": [b64(h) for h in self.proof]}


@dataclass(frozen=True)
class AnchorItem:
    anchor: bytes  # the signed anchor-log checkpoint
    leaf: bytes  # the tenant checkpoint body it includes
    index: int
    inclusion: list[bytes]
    consistency: list[bytes]  # from the previous anchor in the bundle

    def to_json(self) -> dict[str, Any]:
        return {
            "anchor": self.anchor.decode("utf-8"),
            "leaf": self.leaf.decode("utf-8"),
            "index": self.index,
            "inclusion": [b64(h) for h in self.inclusion],
            "consistency": [b64(h) for h in self.consistency],
        }


def _write_lines(path: Path, items: Iterable[Any]) -> None:
    with path.open("wb") as out:
        for item in items:
            out.write(canonicalize(item.to_json()) + b"\n")


def write_bundle(
    out: Path,
    manifest: Manifest,
    entries: Iterable[EntryItem],
    personal: Iterable[PersonalItem],
    checkpoints: Iterable[CheckpointItem],
    consistency: Iterable[ConsistencyItem],
    anchors: Iterable[AnchorItem],
) -> None:
    """Write a bundle directory (created if needed; existing bundle files are replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_bytes(canonicalize(manifest.to_json()) + b"\n")
    _write_lines(out / ENTRIES, entries)
    _write_lines(out / PERSONAL, personal)
    _write_lines(out / CHECKPOINTS, checkpoints)
    _write_lines(out / CONSISTENCY, consistency)
    _write_lines(out / ANCHORS, anchors)


def read_manifest(bundle: Path) -> Manifest:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is this a bundle directory?)")
    raw = path.read_bytes()
    try:
        obj = loads_strict(raw)
        canonical = canonicalize(obj) + b"\n"
    except CanonicalizationError as exc:
        raise BundleError(f"{MANIFEST}: {exc}") from exc
    if canonical != raw:
        raise BundleError(f"{MANIFEST}: not in canonical form")
    manifest = Manifest.from_json(obj)
    if obj.keys() != manifest.to_json().keys():
        raise BundleError(
            f"{MANIFEST}: fields {sorted(obj)}, expected {sorted(manifest.to_json())}"
        )
    return manifest


#: The fields of each file's lines: exactly these, so that nothing unchecked rides along.
FIELDS = {
    ENTRIES: frozenset({"seq", "entry", "hash"}),
    PERSONAL: frozenset({"seq", "payload"}),
    CHECKPOINTS: frozenset({"size", "note"}),
    CONSISTENCY: frozenset({"from", "to", "proof"}),
    ANCHORS: frozenset({"anchor", "leaf", "index", "inclusion", "consistency"}),
}


def read_jsonl(bundle: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each line of a bundle file; BundleError names the line.

    Each line must have exactly the file's :data:`FIELDS`.
    """
    path = bundle / name
    if not path.is_file():
        raise BundleError(f"{name}: missing from the bundle")
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                obj = loads_strict(line)
            except CanonicalizationError as exc:
                raise BundleError(f"{name} line {number}: {exc}") from exc
            if not isinstance(obj, dict):
                raise BundleError(f"{name} line {number}: not a JSON object")
            if obj.keys() != FIELDS[name]:
                raise BundleError(
                    f"{name} line {number}: fields {sorted(obj)}, expected {sorted(FIELDS[name])}"
                )
            yield number, obj
