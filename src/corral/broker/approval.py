"""The control plane's approval of exactly one call: without it the broker runs nothing.

The supervisor (in ``corral control``) decides; the broker holds the credentials. Neither can
act alone: the broker executes a call only with a valid delegation *and* control's signature
over that call's canonical hash. A compromised control plane without delegations, or an agent
with a delegation but without control's approval, gets nothing done.

**Format.** An approval is a C2SP signed note (:mod:`corral.audit.note`, Ed25519) whose text
is one line of RFC 8785 JSON and a newline::

    {"approval_id":"…","call":"<hex SHA-256 of canonical call>","exp_ms":…,"iat_ms":…,
     "tenant":"…","v":1}

signed by control's key (name ``<deployment>/control``). The call it covers is the canonical
JSON of ``{tenant, agent, sandbox, tool, args, idempotency_key, connection_id, country}``
(:func:`call_hash`), so a change to any argument, the target connection or the idempotency
key voids the approval. Approvals are short-lived: ``exp_ms - iat_ms`` at most the broker's
``approval_max_ttl_s`` (60 s by default) and checked to the millisecond.

**Replay.** An approval names its call's idempotency key, and the broker's intent log answers
a repeated key with the first outcome: replaying an approval never acts twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.audit import note
from corral.core.canonical import canonicalize, loads_strict
from corral.core.clock import Clock
from corral.core.errors import BrokerError, ConfigError
from corral.core.keyfile import check_private, write_private

APPROVAL_VERSION = 1
_CALL_FIELDS = (
    "tenant", "agent", "sandbox", "tool", "args", "idempotency_key", "connection_id", "country",
)  # fmt: skip
_MAX_APPROVAL_BYTES = 2048


class ApprovalRefused(BrokerError):
    """The approval is missing, malformed, unsigned by control, expired or for another call."""


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    tenant: str
    call: str
    iat_ms: int
    exp_ms: int


def call_document(call: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a call an approval covers (missing optional fields count as ``null``)."""
    return {name: call.get(name) for name in _CALL_FIELDS}


def call_hash(call: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical call document."""
    return hashlib.sha256(canonicalize(call_document(call))).hexdigest()


def _ms(clock: Clock) -> int:
    return int(clock.now().timestamp() * 1000)


class ApprovalSigner:
    """Control's side: sign an approval of one call."""

    def __init__(self, signer: note.Signer) -> None:
        self.signer = signer

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    def approve(
        self, call: Mapping[str, Any], *, approval_id: str, clock: Clock, ttl_s: float = 30.0
    ) -> str:
        now = _ms(clock)
        body = {
            "approval_id": approval_id,
            "call": call_hash(call),
            "exp_ms": now + int(ttl_s * 1000),
            "iat_ms": now,
            "tenant": call.get("tenant"),
            "v": APPROVAL_VERSION,
        }
        return note.sign(canonicalize(body).decode("utf-8") + "\n", [self.signer]).decode("utf-8")


class ApprovalVerifier:
    """The broker's side: check an approval against the call it is presented with."""

    def __init__(self, vkeys: Iterable[str], *, max_ttl_s: float = 60.0) -> None:
        try:
            self._verifiers = [note.Verifier.from_key(vkey) for vkey in vkeys]
        except ValueError as exc:
            raise ConfigError(f"bad control approval key: {exc}") from None
        if not self._verifiers:
            raise ConfigError("the broker needs at least one control approval key")
        self.max_ttl_ms = int(max_ttl_s * 1000)

    def verify(self, approval: str, call: Mapping[str, Any], clock: Clock) -> Approval:
        if not isinstance(approval, str) or not approval:
            raise ApprovalRefused("no approval: the control plane must approve this call")
        if len(approval) > _MAX_APPROVAL_BYTES:
            raise ApprovalRefused(f"approval is longer than {_MAX_APPROVAL_BYTES} bytes")
        try:
            opened = note.open(approval.encode("utf-8"), self._verifiers)
            body = loads_strict(opened.text.removesuffix("\n"))
        except ValueError:
            raise ApprovalRefused("approval is not signed by a known control key") from None
        parsed = _parse(body)
        if parsed.tenant != call.get("tenant"):
            raise ApprovalRefused("approval is for another tenant")
        try:
            digest = call_hash(call)
        except ValueError as exc:  # CanonicalizationError: e.g. an integer beyond 2**53
            raise ApprovalRefused(f"the call cannot be approved: {exc}") from None
        if parsed.call != digest:
            raise ApprovalRefused("approval is for another call (its hash differs)")
        if parsed.exp_ms - parsed.iat_ms > self.max_ttl_ms or parsed.exp_ms <= parsed.iat_ms:
            raise ApprovalRefused(f"approval lifetime exceeds {self.max_ttl_ms} ms")
        now = _ms(clock)
        if now >= parsed.exp_ms:
            raise ApprovalRefused(f"approval expired {now - parsed.exp_ms} ms ago")
        if parsed.iat_ms > now + 5_000:
            raise ApprovalRefused("approval is issued in the future (clock skew over 5 s)")
        return parsed


def _parse(body: Any) -> Approval:
    keys = {"approval_id", "call", "exp_ms", "iat_ms", "tenant", "v"}
    if not isinstance(body, dict) or set(body) != keys or body["v"] != APPROVAL_VERSION:
        raise ApprovalRefused("approval has an unknown layout or version")
    if not all(
        isinstance(body[k], int) and not isinstance(body[k], bool) for k in ("exp_ms", "iat_ms")
    ):
        raise ApprovalRefused("approval times must be integers (ms)")
    if not all(isinstance(body[k], str) for k in ("approval_id", "call", "tenant")):
        raise ApprovalRefused("approval ids must be strings")
    return Approval(
        body["approval_id"], body["tenant"], body["call"], body["iat_ms"], body["exp_ms"]
    )


def load_or_create_signer(
    path: Path, name: str, *, entropy: Callable[[int], bytes] = os.urandom
) -> note.Signer:
    """A signing key kept in ``path`` as a note ``PRIVATE+KEY+…`` line (0600), created on first
    use; the matching ``.pub`` file beside it holds the vkey others configure."""
    if path.exists():
        check_private(path)
        try:
            return note.Signer.from_key(path.read_text("utf-8").strip())
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    skey, vkey = note.generate_key(name, entropy=entropy)
    write_private(path, (skey + "\n").encode("utf-8"))
    path.with_suffix(".pub").write_text(vkey + "\n", "utf-8")
    return note.Signer.from_key(skey)
