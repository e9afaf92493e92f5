"""The delegation token on the wire: encoding, strict decoding and the chain of signed blocks.

Split from :mod:`corral.broker.delegation` (whose docstring, with ``docs/broker-delegations.md``,
describes the format) so that every byte-level rule sits in one place, apart from what caveats
mean (:mod:`corral.broker._delegation_caveats`) and from the operations: base64url without
padding, RFC 8785 canonical JSON read strictly, the size and block limits, the exact fields of
each block, the signing context, and the chain of signatures up to the proof key.

Nothing here knows the broker's keys by id (:func:`chain_break` is handed the root key) or
raises the public errors: values that do not fit raise
:class:`~corral.broker._delegation_caveats.Bad`, and the caller says what failed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from corral.broker._delegation_caveats import (
    MAX_TIME_MS,
    Caveats,
    bad,
    check_int,
    read_caveats,
    safe_name,
)
from corral.core.canonical import canonicalize, loads_strict
from corral.core.errors import CanonicalizationError

MAX_TTL_S = 300
"""The longest lifetime of a delegation, in seconds; asking for more gets this."""
MAX_TOKEN_BYTES = 8192
"""The largest token accepted (checked before anything is decoded)."""
MAX_BLOCKS = 8
"""The most blocks a token may hold: the authority plus seven attenuations."""
TOKEN_PREFIX = "cdl1."  # noqa: S105 (a format tag, not a secret)
"""Every token starts with this: corral delegation, format 1."""

VERSION = 1
"""The format version block 0 carries as ``v``."""
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
"""An identifier: a key id, delegation id, tenant, agent or sandbox."""

_MAX_TTL_MS = MAX_TTL_S * 1000
_SIG_CONTEXT = b"corral-delegation-v1\n"
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

_ENVELOPE_FIELDS = frozenset({"blocks", "proof"})
_BLOCK_FIELDS = frozenset({"payload", "sig"})
_AUTHORITY_FIELDS = frozenset(
    {"v", "kid", "id", "tenant", "agent", "sandbox", "iat_ms", "exp_ms", "caveats", "next"}
)
_ATTENUATION_FIELDS = frozenset({"caveats", "next", "prev"})


# --- encoding -----------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: object, what: str, size: int | None = None) -> bytes:
    """Strict, canonical base64url without padding (one accepted spelling per value)."""
    if type(text) is not str or not _B64URL.fullmatch(text):
        bad(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        bad(f"{what} is not base64url")
    if b64(raw) != text:
        bad(f"{what} is not canonical base64url")
    if size is not None and len(raw) != size:
        bad(f"{what} must be {size} bytes")
    return raw


def encode(blocks: list[dict[str, Any]], proof: Ed25519PrivateKey) -> str:
    body = canonicalize({"blocks": blocks, "proof": b64(proof.private_bytes_raw())})
    token = TOKEN_PREFIX + b64(body)
    if len(token) > MAX_TOKEN_BYTES:
        bad(f"the token would be {len(token)} bytes; at most {MAX_TOKEN_BYTES} are accepted")
    return token


# --- decoding -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """One block as decoded: its payload as signed, its signature, and its ``next`` key."""

    payload: dict[str, Any]
    sig_text: str
    sig: bytes
    next_key: bytes
    caveats: Caveats


@dataclass(frozen=True, slots=True)
class Token:
    """A decoded token: every check that needs no key has passed, none that needs one has."""

    blocks: tuple[Block, ...]
    proof: bytes

    @property
    def authority(self) -> dict[str, Any]:
        return self.blocks[0].payload


def _read_fields(obj: object, fields: frozenset[str], where: str) -> dict[str, Any]:
    if type(obj) is not dict:
        bad(f"{where} must be an object")
    if obj.keys() != fields:
        missing = fields - obj.keys()
        if missing:
            bad(f"{where} lacks the field {safe_name(min(missing))}")
        bad(f"{where} has an unknown field {safe_name(min(obj.keys() - fields))}")
    return obj


def _read_authority(payload: dict[str, Any]) -> None:
    if type(payload["v"]) is not int or payload["v"] != VERSION:
        bad(f"block 0: unsupported format version (this verifier reads v {VERSION})")
    for name in ("kid", "id", "tenant", "agent", "sandbox"):
        if type(payload[name]) is not str or not ID.fullmatch(payload[name]):
            bad(f"block 0: {name} is not an identifier")
    iat = check_int(payload["iat_ms"], "iat_ms", 0, MAX_TIME_MS)
    exp = check_int(payload["exp_ms"], "exp_ms", 0, MAX_TIME_MS)
    if not 0 < exp - iat <= _MAX_TTL_MS:
        bad(f"block 0: the lifetime exp_ms - iat_ms must be 1 ms to {MAX_TTL_S} s")


def decode(token: object) -> Token:
    """Every check that needs no key: size, prefix, encoding, JSON, shape, block count, values."""
    if type(token) is not str:
        bad("a delegation token is a string")
    if len(token) > MAX_TOKEN_BYTES:
        bad(f"the token is {len(token)} bytes; at most {MAX_TOKEN_BYTES} are accepted")
    if not token.startswith(TOKEN_PREFIX):
        bad(f"not a corral delegation (it does not start with {TOKEN_PREFIX!r})")
    raw = _unb64(token[len(TOKEN_PREFIX) :], "the token body")
    try:
        obj = loads_strict(raw)
        canonical = canonicalize(obj) == raw
    except CanonicalizationError as exc:
        bad(f"the token body is not strict JSON ({str(exc)[:100]})")
    if not canonical:
        bad("the token body is not canonical JSON (RFC 8785)")
    envelope = _read_fields(obj, _ENVELOPE_FIELDS, "the token")
    raw_blocks = envelope["blocks"]
    if type(raw_blocks) is not list or not 1 <= len(raw_blocks) <= MAX_BLOCKS:
        bad(f"the token must hold 1 to {MAX_BLOCKS} blocks")
    blocks = []
    for index, raw_block in enumerate(raw_blocks):
        block = _read_fields(raw_block, _BLOCK_FIELDS, f"block {index}")
        fields = _AUTHORITY_FIELDS if index == 0 else _ATTENUATION_FIELDS
        payload = _read_fields(block["payload"], fields, f"block {index}: the payload")
        if index == 0:
            _read_authority(payload)
        else:
            _unb64(payload["prev"], f"block {index}: prev", 64)
        caveats = read_caveats(payload["caveats"], block=index)
        if index == 0:
            caveats = replace(caveats, exp_ms=payload["exp_ms"])
        blocks.append(
            Block(
                payload=payload,
                sig_text=block["sig"],
                sig=_unb64(block["sig"], f"block {index}: sig", 64),
                next_key=_unb64(payload["next"], f"block {index}: next", 32),
                caveats=caveats,
            )
        )
    proof = _unb64(envelope["proof"], "the proof", 32)
    return Token(tuple(blocks), proof)


# --- signatures ---------------------------------------------------------------------------------


def signed(payload: dict[str, Any]) -> bytes:
    return _SIG_CONTEXT + canonicalize(payload)


def proof_matches(token: Token) -> bool:
    try:
        key = Ed25519PrivateKey.from_private_bytes(token.proof)
    except ValueError:
        return False
    return key.public_key().public_bytes_raw() == token.blocks[-1].next_key


def fresh_key(entropy: Callable[[int], bytes]) -> Ed25519PrivateKey:
    seed = entropy(32)
    if len(seed) != 32:
        raise ValueError("entropy must return the number of bytes asked for")
    return Ed25519PrivateKey.from_private_bytes(seed)


def chain_break(token: Token, root: Ed25519PublicKey) -> tuple[int, str] | None:
    """Where the chain of signatures breaks, as ``(block, reason)``; ``None`` if it holds.

    In order: block 0 under ``root`` (the broker key its ``kid`` names), each later block bound
    to the previous block's signature (``prev``) and signed by that block's ``next`` key, and
    the proof key against the last block's ``next``.
    """
    try:
        root.verify(token.blocks[0].sig, signed(token.authority))
    except InvalidSignature:
        return 0, "the broker's signature does not verify"
    for index in range(1, len(token.blocks)):
        before, block = token.blocks[index - 1], token.blocks[index]
        if block.payload["prev"] != before.sig_text:
            return index, f"it does not follow block {index - 1}"
        try:
            Ed25519PublicKey.from_public_bytes(before.next_key).verify(
                block.sig, signed(block.payload)
            )
        except (InvalidSignature, ValueError):
            return index, f"not signed by the key block {index - 1} names"
    if not proof_matches(token):
        return len(token.blocks) - 1, "the proof key does not match the last block"
    return None
