"""Audit entries: versioned, schema-checked records whose RFC 8785 bytes are the Merkle leaves.

An entry has a public part, which is the leaf, and an optional *personal payload* (phone
numbers, message bodies, names) kept beside it. The leaf holds only a salted commitment to the
payload::

    commitment = SHA-256("corral.personal.v1" || 0x00 || salt || JCS(payload))

so erasing the payload (salt included) on a data-deletion request leaves every leaf, and so
every proof and checkpoint, unchanged, while the 32 random salt bytes keep a guessed payload
("was it +15550100001?") from being confirmed against the commitment. See ``docs/audit.md``.

>>> from datetime import datetime, timezone
>>> entry, personal = seal(
...     ActionRequested(id="ent_1", tenant="brightsmile", at=datetime(2026, 3, 3, 17, 14,
...         tzinfo=timezone.utc), actor=Actor(kind="agent", id="receptionist-1",
...         role="receptionist"), data=ActionRequestedData(call_id="c1", tool="twilio.send_sms")),
...     {"args": {"to": "+15550101234", "body": "See you at 10"}}, salt=bytes(32))
>>> entry.leaf()[:40]
b'{"actor":{"id":"receptionist-1","kind":"'
>>> personal.matches(entry.personal)
True
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
)

from corral.core.canonical import canonicalize, loads_strict
from corral.core.clock import format_time
from corral.core.entropy import urandom
from corral.core.errors import AuditError, CanonicalizationError

__all__ = [
    "ENTRY_KINDS",
    "ENTRY_VERSION",
    "PERSONAL_ARGS",
    "ActionExecuted",
    "ActionExecutedData",
    "ActionFailed",
    "ActionFailedData",
    "ActionRequested",
    "ActionRequestedData",
    "ActionVerdict",
    "ActionVerdictData",
    "Actor",
    "CredentialConnected",
    "CredentialData",
    "CredentialRevoked",
    "CredentialRotated",
    "Decision",
    "DelegationMinted",
    "DelegationMintedData",
    "Entry",
    "EntryError",
    "KnownEntry",
    "OperatorDecision",
    "OperatorDecisionData",
    "PersonalPayload",
    "SandboxData",
    "SandboxStarted",
    "SandboxStopped",
    "TemplateActivated",
    "TemplateActivatedData",
    "TemplateNotice",
    "TemplateNoticeData",
    "UnknownEntry",
    "Verdict",
    "parse_entry",
    "seal",
    "split_personal_args",
]

ENTRY_VERSION: Literal[1] = 1
_COMMITMENT_DOMAIN = b"corral.personal.v1\x00"
SALT_SIZE = 32

#: Tool arguments that name or reach a person; they go to the erasable payload, never the leaf.
PERSONAL_ARGS = frozenset(
    {
        "to",
        "from",
        "body",
        "message",
        "phone",
        "email",
        "first_name",
        "last_name",
        "attendees",
        "invitee",
        "summary",
        "title",
        "description",
        "reason",
    }
)


class EntryError(AuditError, ValueError):
    """An entry or payload that does not fit its schema or its commitment."""


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("times in audit entries must carry a UTC offset")
    return value.astimezone(UTC)


#: An instant, always written as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (one spelling per instant).
Timestamp = Annotated[datetime, AfterValidator(_aware), PlainSerializer(format_time)]
_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Json = dict[str, Any]


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    DEFER = "defer"
    ESCALATE = "escalate"


class Decision(StrEnum):
    APPROVE = "approve"
    DENY = "deny"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Actor(_Model):
    """Who caused the entry: an agent (with its role), the operator, the broker, the host..."""

    kind: Literal["agent", "operator", "broker", "host", "supervisor", "system"]
    id: _Name
    role: _Name | None = None


# ------------------------------------------------------------------------ per-kind data


class DelegationMintedData(_Model):
    delegation_id: _Name
    agent: _Name
    sandbox: _Name
    tools: list[_Name]
    expires_at: Timestamp
    constraints: _Json = {}


class ActionRequestedData(_Model):
    call_id: _Name
    tool: _Name
    args: _Json = {}


class ActionVerdictData(_Model):
    call_id: _Name
    tool: _Name
    verdict: Verdict
    rules: list[_Name] = []
    conflicts_with: list[_Name] = []
    waits_for: list[_Name] = []
    not_before: Timestamp | None = None
    observed: list[_Name] = []


class ActionExecutedData(_Model):
    call_id: _Name
    tool: _Name
    status: Literal["succeeded", "unknown"]
    result: _Json = {}


class ActionFailedData(_Model):
    call_id: _Name
    tool: _Name
    error: _Name
    message: str = ""


class CredentialData(_Model):
    connection_id: _Name
    provider: _Name
    reason: str | None = None


class TemplateActivatedData(_Model):
    activation_id: _Name
    template: _Name
    version: _Name
    content_hash: _Name
    automatic: bool = False


class TemplateNoticeData(_Model):
    """Notice given that an activation's pinned version is deprecated, sunsets soon, or has
    sunset (``corral.templates.maintenance``); ``replacement`` is the newest release to move to."""

    activation_id: _Name
    template: _Name
    version: _Name
    notice: Literal["deprecated", "sunsetting", "sunset"]
    deprecated_at: Timestamp | None = None
    sunset_at: Timestamp | None = None
    replacement: _Name | None = None


class OperatorDecisionData(_Model):
    call_id: _Name
    escalation_id: _Name | None = None
    decision: Decision


class SandboxData(_Model):
    sandbox_id: _Name
    agent: _Name
    backend: _Name
    isolation: _Name | None = None
    reason: str | None = None
    exit_code: int | None = None


# --------------------------------------------------------------------------- entries


class _EntryBase(_Model):
    v: Literal[1] = ENTRY_VERSION
    id: _Name
    tenant: _Name
    at: Timestamp
    actor: Actor
    personal: str | None = Field(
        None, description="base64 SHA-256 commitment to the erasable personal payload"
    )

    def leaf(self) -> bytes:
        """The leaf bytes: RFC 8785 canonical JSON of the public part."""
        return canonicalize(self.model_dump(mode="json"))


class DelegationMinted(_EntryBase):
    kind: Literal["delegation.minted"] = "delegation.minted"
    data: DelegationMintedData


class ActionRequested(_EntryBase):
    kind: Literal["action.requested"] = "action.requested"
    data: ActionRequestedData


class ActionVerdict(_EntryBase):
    kind: Literal["action.verdict"] = "action.verdict"
    data: ActionVerdictData


class ActionExecuted(_EntryBase):
    kind: Literal["action.executed"] = "action.executed"
    data: ActionExecutedData


class ActionFailed(_EntryBase):
    kind: Literal["action.failed"] = "action.failed"
    data: ActionFailedData


class CredentialConnected(_EntryBase):
    kind: Literal["credential.connected"] = "credential.connected"
    data: CredentialData


class CredentialRotated(_EntryBase):
    kind: Literal["credential.rotated"] = "credential.rotated"
    data: CredentialData


class CredentialRevoked(_EntryBase):
    kind: Literal["credential.revoked"] = "credential.revoked"
    data: CredentialData


class TemplateActivated(_EntryBase):
    kind: Literal["template.activated"] = "template.activated"
    data: TemplateActivatedData


class TemplateNotice(_EntryBase):
    kind: Literal["template.notice"] = "template.notice"
    data: TemplateNoticeData


class OperatorDecision(_EntryBase):
    kind: Literal["operator.decision"] = "operator.decision"
    data: OperatorDecisionData


class SandboxStarted(_EntryBase):
    kind: Literal["sandbox.started"] = "sandbox.started"
    data: SandboxData


class SandboxStopped(_EntryBase):
    kind: Literal["sandbox.stopped"] = "sandbox.stopped"
    data: SandboxData


KnownEntry = Annotated[
    DelegationMinted
    | ActionRequested
    | ActionVerdict
    | ActionExecuted
    | ActionFailed
    | CredentialConnected
    | CredentialRotated
    | CredentialRevoked
    | TemplateActivated
    | TemplateNotice
    | OperatorDecision
    | SandboxStarted
    | SandboxStopped,
    Field(discriminator="kind"),
]
_KNOWN: TypeAdapter[KnownEntry] = TypeAdapter(KnownEntry)

ENTRY_KINDS: tuple[str, ...] = (
    "delegation.minted",
    "action.requested",
    "action.verdict",
    "action.executed",
    "action.failed",
    "credential.connected",
    "credential.rotated",
    "credential.revoked",
    "template.activated",
    "template.notice",
    "operator.decision",
    "sandbox.started",
    "sandbox.stopped",
)


class UnknownEntry(_Model):
    """A well-formed leaf of a kind or version this build does not know (from a newer corral).

    It still verifies (its bytes are the leaf) and renders as a generic sentence.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    v: int
    kind: str
    raw: _Json

    def leaf(self) -> bytes:
        return canonicalize(self.raw)


Entry = KnownEntry | UnknownEntry


def parse_entry(leaf: bytes) -> Entry:
    """Parse leaf bytes back into an entry, checking they are exactly its canonical form.

    Raises :class:`EntryError` for bytes that are not canonical JSON, or a known kind that does
    not fit its schema. A kind or version this build does not know gives an
    :class:`UnknownEntry`, so an old verifier still verifies a newer log.
    """
    # Verification parses every leaf, so the common case is kept lean: a known entry that
    # validates strictly and whose canonical form is exactly these bytes (which also rules out
    # duplicate keys and any other spelling). Everything else takes the path that says why.
    try:
        entry = _KNOWN.validate_json(leaf, strict=True)
    except ValidationError:
        pass
    else:
        if entry.leaf() == leaf:
            return entry
    return _parse_carefully(leaf)


def _parse_carefully(leaf: bytes) -> Entry:
    """:func:`parse_entry` for leaves that are not a known entry's exact canonical form."""
    try:
        raw = json.loads(leaf)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise EntryError(f"entry is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise EntryError("entry is not a JSON object")
    try:
        canonical = canonicalize(raw)
    except CanonicalizationError as exc:
        raise EntryError(f"entry is not canonical JSON: {exc}") from exc
    if canonical != leaf:
        raise EntryError("entry bytes are not in RFC 8785 canonical form")
    kind, version = raw.get("kind"), raw.get("v")
    if not isinstance(kind, str) or not isinstance(version, int) or isinstance(version, bool):
        raise EntryError("entry has no string 'kind' and integer 'v'")
    if version != ENTRY_VERSION or kind not in ENTRY_KINDS:
        return UnknownEntry(v=version, kind=kind, raw=raw)
    try:
        _KNOWN.validate_json(leaf, strict=True)
    except ValidationError as exc:
        raise EntryError(
            f"{kind} entry does not fit its schema: {_first_error(exc, kind)}"
        ) from exc
    raise EntryError(f"{kind} entry does not round-trip through its schema")


def _first_error(exc: ValidationError, kind: str) -> str:
    err = exc.errors()[0]
    loc = err["loc"][1:] if err["loc"][:1] == (kind,) else err["loc"]  # drop the union's tag
    where = ".".join(str(p) for p in loc)
    return f"{where}: {err['msg']}"


# ------------------------------------------------------------------- personal payloads

_E = TypeVar("_E", bound="_EntryBase")


class PersonalPayload(_Model):
    """The erasable part of an entry: a JSON object and the salt of its commitment."""

    salt: bytes = Field(min_length=SALT_SIZE, max_length=SALT_SIZE)
    data: _Json

    def commitment(self) -> str:
        digest = hashlib.sha256(_COMMITMENT_DOMAIN + self.salt + canonicalize(self.data))
        return base64.b64encode(digest.digest()).decode("ascii")

    def matches(self, commitment: str | None) -> bool:
        return commitment is not None and self.commitment() == commitment

    def to_bytes(self) -> bytes:
        return canonicalize(
            {"salt": base64.b64encode(self.salt).decode("ascii"), "data": self.data}
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> PersonalPayload:
        """Parse :meth:`to_bytes` output; any other spelling of the same payload is refused."""
        try:
            obj = loads_strict(raw)
            payload = cls(salt=base64.b64decode(obj["salt"], validate=True), data=obj["data"])
        except (CanonicalizationError, KeyError, TypeError, ValueError) as exc:
            raise EntryError(f"personal payload is malformed: {exc}") from exc
        if payload.to_bytes() != raw:
            raise EntryError("personal payload is malformed: not in canonical form")
        return payload


def seal(
    entry: _E,
    personal: _Json | None,
    *,
    salt: bytes | None = None,
    entropy: Callable[[int], bytes] = urandom,
) -> tuple[_E, PersonalPayload | None]:
    """Attach the commitment of ``personal`` to ``entry``; return both (payload None if none)."""
    if not personal:
        return entry.model_copy(update={"personal": None}), None
    try:
        canonicalize(personal)
    except CanonicalizationError as exc:
        raise EntryError(f"personal payload is not JSON: {exc}") from exc
    payload = PersonalPayload(salt=salt if salt is not None else entropy(SALT_SIZE), data=personal)
    return entry.model_copy(update={"personal": payload.commitment()}), payload


def split_personal_args(args: dict[str, Any]) -> tuple[_Json, _Json]:
    """Split tool arguments into (public, personal) by :data:`PERSONAL_ARGS`."""
    public = {k: v for k, v in args.items() if k not in PERSONAL_ARGS}
    personal = {k: v for k, v in args.items() if k in PERSONAL_ARGS}
    return public, personal
