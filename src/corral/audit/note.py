"""Signed notes (c2sp.org/signed-note) and checkpoints (c2sp.org/tlog-checkpoint), Ed25519 only.

>>> from corral.audit import note
>>> skey, vkey = note.generate_key("example.com/log", entropy=lambda n: bytes(n))
>>> vkey
'example.com/log+1dde4531+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop'
>>> signed = note.sign("hello\\n", [note.Signer.from_key(skey)])
>>> print(signed.decode(), end="")  # doctest: +ELLIPSIS
hello
<BLANKLINE>
— example.com/log Hd5FMb0jqZfeO51p54NUHNgB0gj3FcEdABb+i0x7WQ2KMMK02b7JbausbD8FEGH/ZlGKT8qJ...
>>> opened = note.open(signed, [note.Verifier.from_key(vkey)])
>>> opened.text, [s.name for s in opened.signatures]
('hello\\n', ['example.com/log'])

A signed note is a UTF-8 text ending in a newline, a blank line, then one line per signature:
``— <key name> <base64(4-byte big-endian key ID || signature)>`` (U+2014 EM DASH, space). The
signature covers the text bytes including the final newline. A key is identified by its
(name, key ID) pair; the Ed25519 key ID is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``.
Key texts follow golang.org/x/mod/sumdb/note: ``<name>+<8 hex key ID>+<base64(0x01 || key)>``
for verifier keys and ``PRIVATE+KEY+<name>+<hex>+<base64(0x01 || 32-byte seed)>`` for signer keys.

:func:`open` ignores signature lines from unknown keys, rejects the note if a known key's
signature fails to verify and rejects it if no known key signed it (the C2SP rules). Like Go it
drops repeated lines from one key and caps a note at 100 signature lines. Unlike Go, base64 must
be canonical (re-encoding gives the same text) and key IDs must be lowercase hex, so each note,
key and checkpoint has exactly one accepted encoding. Key IDs are ``int`` (uint32), as in Go.

A checkpoint is a note whose text is ``origin``, decimal tree size, base64 SHA-256 root hash
and optional non-empty extension lines; :func:`open_checkpoint` verifies the log's signature
before parsing, like transparency-dev/formats ``log.ParseCheckpoint``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from corral.core.errors import AuditError

__all__ = [
    "Checkpoint",
    "InvalidSignatureError",
    "KeyFormatError",
    "Note",
    "NoteError",
    "Signature",
    "Signer",
    "UnverifiedNoteError",
    "Verifier",
    "generate_key",
    "open",
    "open_checkpoint",
    "sign",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100  # same limit as golang.org/x/mod/sumdb/note
_SIG_PREFIX = "— "
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class NoteError(AuditError, ValueError):
    """A malformed, unverifiable or wrongly signed note, key or checkpoint."""


class KeyFormatError(NoteError):
    """A malformed signer or verifier key text, or one whose key ID does not match the key."""


class InvalidSignatureError(NoteError):
    """A signature from a known (name, key ID) pair failed to verify."""

    def __init__(self, name: str, key_id: int) -> None:
        super().__init__(f"invalid signature for key {name}+{key_id:08x}")
        self.name = name
        self.key_id = key_id


class UnverifiedNoteError(NoteError):
    """The note parsed but carries no signature from any known key."""

    def __init__(self, text: str, unverified: list[Signature]) -> None:
        names = ", ".join(f"{s.name}+{s.key_id_hex}" for s in unverified) or "none"
        super().__init__(f"note has no verifiable signatures (unknown signers: {names})")
        self.text = text
        self.unverified = unverified


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key ID (uint32) and the raw signature (without key ID)."""

    name: str
    key_id: int
    signature: bytes

    @property
    def key_id_hex(self) -> str:
        return f"{self.key_id:08x}"


@dataclass(frozen=True)
class Note:
    """An opened note: its text, the signatures that verified and those from unknown keys."""

    text: str
    signatures: list[Signature]
    unverified: list[Signature] = field(default_factory=list)


def _name_ok(name: str) -> bool:
    return bool(name) and not any(
        c == "+" or c.isspace() or unicodedata.category(c) in ("Cc", "Cs") for c in name
    )


def _b64decode(text: str) -> bytes | None:
    """Strict, canonical standard base64; None if `text` is not exactly b64encode(x) for some x."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII str
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _key_id(name: str, public_key: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _parse_key(text: str, kind: str) -> tuple[str, int, bytes]:
    """Split `name+hexid+b64(alg || key)`; return (name, key ID, 32 key bytes)."""
    name, _, rest = text.partition("+")
    hex_id, _, b64 = rest.partition("+")
    if not _name_ok(name):
        raise KeyFormatError(f"malformed {kind} key: invalid key name {name!r}")
    if not _HEX_ID.fullmatch(hex_id):
        raise KeyFormatError(
            f"malformed {kind} key {name!r}: key ID must be 8 lowercase hex digits"
        )
    raw = _b64decode(b64)
    if not raw:
        raise KeyFormatError(f"malformed {kind} key {name!r}: bad base64 key")
    if raw[0] != ALG_ED25519:
        raise KeyFormatError(f"{kind} key {name!r}: unsupported algorithm 0x{raw[0]:02x}")
    if len(raw) != 33:
        raise KeyFormatError(f"{kind} key {name!r}: Ed25519 key length {len(raw) - 1} != 32")
    return name, int(hex_id, 16), raw[1:]


class Verifier:
    """An Ed25519 verifier key for one (name, key ID) pair."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        if not _name_ok(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        if len(public_key) != 32:
            raise KeyFormatError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise KeyFormatError(f"invalid Ed25519 public key for {name!r}") from exc
        self.name = name
        self.public_key = bytes(public_key)
        self.key_id = _key_id(name, self.public_key)

    @classmethod
    def from_key(cls, vkey: str) -> Verifier:
        """Parse `<name>+<hex key ID>+<base64(0x01 || public key)>`."""
        name, key_id, public_key = _parse_key(vkey, "verifier")
        verifier = cls(name, public_key)
        if verifier.key_id != key_id:
            raise KeyFormatError(f"verifier key {name!r}: key ID does not match the key")
        return verifier

    @property
    def key_id_hex(self) -> str:
        return f"{self.key_id:08x}"

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_id_hex}+{_b64(bytes([ALG_ED25519]) + self.public_key)}"

    def verify(self, msg: bytes, sig: bytes) -> bool:
        """Whether `sig` is this key's Ed25519 signature of `msg`; never raises for a bad one."""
        if len(sig) != 64:
            return False
        try:
            self._key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verifier):
            return NotImplemented
        return (self.name, self.public_key) == (other.name, other.public_key)

    def __hash__(self) -> int:
        return hash((self.name, self.public_key))

    def __repr__(self) -> str:
        return f"Verifier({self.vkey!r})"


class Signer:
    """An Ed25519 signer key. Its repr never shows the seed."""

    __slots__ = ("_key", "_verifier")

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFormatError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._verifier = Verifier(name, self._key.public_key().public_bytes_raw())

    @classmethod
    def from_key(cls, skey: str) -> Signer:
        """Parse `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || 32-byte seed)>`."""
        if not skey.startswith(_PRIVATE_PREFIX):
            raise KeyFormatError("malformed signer key: missing PRIVATE+KEY+ prefix")
        name, key_id, seed = _parse_key(skey.removeprefix(_PRIVATE_PREFIX), "signer")
        signer = cls(name, seed)
        if signer.key_id != key_id:
            raise KeyFormatError(f"signer key {name!r}: key ID does not match the key")
        return signer

    @property
    def name(self) -> str:
        return self._verifier.name

    @property
    def key_id(self) -> int:
        return self._verifier.key_id

    @property
    def key_id_hex(self) -> str:
        return self._verifier.key_id_hex

    @property
    def vkey(self) -> str:
        return self._verifier.vkey

    def verifier(self) -> Verifier:
        return self._verifier

    def sign(self, msg: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `msg` (deterministic)."""
        return self._key.sign(msg)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id_hex})"


def generate_key(name: str, *, entropy: Callable[[int], bytes] | None = None) -> tuple[str, str]:
    """A new Ed25519 key pair as (skey, vkey) texts; `entropy(32)` supplies the seed."""
    if not _name_ok(name):
        raise KeyFormatError(f"invalid key name {name!r}")
    seed = (entropy or os.urandom)(32)
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise ValueError("entropy(32) must return 32 bytes")
    signer = Signer(name, seed)
    skey = f"{_PRIVATE_PREFIX}{name}+{signer.key_id_hex}+{_b64(bytes([ALG_ED25519]) + seed)}"
    return skey, signer.vkey


def _check_text(text: str) -> bytes:
    if not text.endswith("\n"):
        raise NoteError("note text must be non-empty and end with a newline")
    if _CONTROL.search(text):
        raise NoteError("note text contains an ASCII control character other than newline")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError("note text is not valid UTF-8 (lone surrogate)") from exc


def sign(text: str, signers: Iterable[Signer]) -> bytes:
    """The signed note: `text`, a blank line, then one signature line per signer, in order."""
    msg = _check_text(text)
    signers = list(signers)
    if not 1 <= len(signers) <= MAX_SIGNATURES:
        raise NoteError(f"need 1 to {MAX_SIGNATURES} signers, got {len(signers)}")
    if len({(s.name, s.key_id) for s in signers}) != len(signers):
        raise NoteError("duplicate signer (same key name and key ID)")
    lines = [
        f"{_SIG_PREFIX}{s.name} {_b64(s.key_id.to_bytes(4, 'big') + s.sign(msg))}\n"
        for s in signers
    ]
    return msg + b"\n" + "".join(lines).encode("utf-8")


def open(data: bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and verify it against `verifiers` (C2SP signed-note rules)."""
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        if known.setdefault((v.name, v.key_id), v) != v:
            raise NoteError(f"ambiguous verifiers: two different keys for {v.name}+{v.key_id_hex}")
    try:
        whole = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("malformed note: not valid UTF-8") from exc
    if _CONTROL.search(whole):
        raise NoteError("malformed note: ASCII control character other than newline")
    split = whole.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, block = whole[: split + 1], whole[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("malformed note: signature block missing or not newline-terminated")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"malformed note: more than {MAX_SIGNATURES} signature lines")
    msg = text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    seen_known: set[tuple[str, int]] = set()
    seen_lines: set[str] = set()
    for number, line in enumerate(lines, start=1):
        name, _, b64 = line.removeprefix(_SIG_PREFIX).partition(" ")
        raw = _b64decode(b64)
        if not line.startswith(_SIG_PREFIX) or not _name_ok(name) or raw is None or len(raw) < 5:
            raise NoteError(f"malformed note: bad signature line {number}: {line[:80]!r}")
        sig = Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            if line not in seen_lines:
                seen_lines.add(line)
                unverified.append(sig)
            continue
        if (sig.name, sig.key_id) in seen_known:
            continue  # as in Go: only the first line from a known key counts
        seen_known.add((sig.name, sig.key_id))
        if not verifier.verify(msg, sig.signature):
            raise InvalidSignatureError(sig.name, sig.key_id)
        verified.append(sig)
    if not verified:
        raise UnverifiedNoteError(text, unverified)
    return Note(text, verified, unverified)


def _line_ok(line: str) -> bool:
    return bool(line) and not any(c < " " or unicodedata.category(c) == "Cs" for c in line)


@dataclass(frozen=True)
class Checkpoint:
    """A c2sp.org/tlog-checkpoint note body; `root` is the 32-byte SHA-256 Merkle root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))
        if not _line_ok(self.origin):
            raise NoteError("checkpoint origin must be non-empty, without control characters")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise NoteError("checkpoint size must be an int")
        if not 0 <= self.size < 2**64:
            raise NoteError(f"checkpoint size {self.size} is not a uint64")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise NoteError("checkpoint root must be 32 bytes")
        for ext in self.extensions:
            if not _line_ok(ext):
                raise NoteError(f"checkpoint extension line {ext!r} is empty or has controls")

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body (the note text, ending in a newline)."""
        if not text.endswith("\n"):
            raise NoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(f"checkpoint has {len(lines)} lines, needs at least 3")
        origin, size_text, root_text, *extensions = lines
        if not _line_ok(origin):
            raise NoteError(f"checkpoint line 1 (origin) is empty or invalid: {origin[:80]!r}")
        if len(size_text) > 20 or not _DECIMAL.fullmatch(size_text) or int(size_text) >= 2**64:
            raise NoteError(f"checkpoint line 2 (tree size) is not a uint64: {size_text[:80]!r}")
        root = _b64decode(root_text)
        if root is None or len(root) != 32:
            raise NoteError(
                f"checkpoint line 3 (root hash) is not base64 of 32 bytes: {root_text[:80]!r}"
            )
        for number, ext in enumerate(extensions, start=4):
            if not _line_ok(ext):
                raise NoteError(f"checkpoint line {number} (extension) is empty or invalid")
        return cls(origin, int(size_text), root, tuple(extensions))

    def format(self) -> str:
        """The note text; `Checkpoint.parse(cp.format()) == cp`."""
        return "".join(
            f"{line}\n" for line in (self.origin, str(self.size), _b64(self.root), *self.extensions)
        )


def open_checkpoint(
    data: bytes, origin: str, log_verifier: Verifier, *others: Verifier
) -> tuple[Checkpoint, Note]:
    """Open a checkpoint note that the log itself signed, then parse it and check its origin."""
    if not origin:
        raise NoteError("expected origin must be non-empty")
    opened = open(data, [log_verifier, *others])
    if not any(
        s.name == log_verifier.name and s.key_id == log_verifier.key_id for s in opened.signatures
    ):
        raise NoteError(f"checkpoint has no signature from the log key {log_verifier.name}")
    checkpoint = Checkpoint.parse(opened.text)
    if checkpoint.origin != origin:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} != expected {origin!r}")
    return checkpoint, opened
