"""What the dashboard's pages read and do, as Protocols, and their implementations over the real
objects of ``corral control``.

The pages import only this module's Protocols and view types, never a process's internals, so
a page can be tested against a fake and the wiring (which audit chain, which control, which
broker client) is decided once, by whoever builds the dashboard. Every method takes the tenant
as its first argument: the pages pass the signed-in owner's tenant and nothing else.

Implementations here:

- :class:`ChainActivity` and :class:`ChainAudit` over an :class:`~corral.audit.AuditChain`;
- :class:`ControlApprovals` over the supervisor's :class:`~corral.supervisor.service.Control`;
- :class:`BrokerConnections` over a :class:`~corral.broker.client.BrokerClient`;
- :class:`InMemoryAgents`, fed by a callable until the host and template registry are wired.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import anyio.to_thread
import sqlalchemy as sa

from corral.audit import merkle, note
from corral.audit.anchor import ANCHOR_LOG, anchor_leaves
from corral.audit.chain import AuditChain
from corral.audit.entries import (
    ActionExecuted,
    ActionFailed,
    ActionRequested,
    ActionRequestedData,
    ActionVerdict,
    ActionVerdictData,
    Actor,
    DelegationMinted,
    Entry,
    EntryError,
    OperatorDecision,
    PersonalPayload,
    SandboxStarted,
    SandboxStopped,
    UnknownEntry,
    Verdict,
    parse_entry,
    seal,
    split_personal_args,
)
from corral.audit.keys import log_origin
from corral.audit.prose import ERASED, Personal, RenderContext, render_timeline
from corral.audit.store import StoredCheckpoint
from corral.broker.client import (
    BrokerClient,
    BrokerRefused,
    connect_call,
    disconnect_call,
    rotate_call,
)
from corral.connectors import providers
from corral.core.errors import CorralError
from corral.core.ids import IdSource
from corral.supervisor.classifier import CallStateError
from corral.supervisor.service import Control

__all__ = [
    "OUTCOMES",
    "PROVIDERS",
    "ActionUnavailable",
    "ActivitySource",
    "AgentView",
    "AgentsSource",
    "AnchorView",
    "ApprovalsSource",
    "AuditOverview",
    "AuditSource",
    "BrokerConnections",
    "BundleFormat",
    "CallView",
    "ChainActivity",
    "ChainAudit",
    "CheckpointRow",
    "ConnectionStatus",
    "ConnectionView",
    "ConnectionsSource",
    "ControlApprovals",
    "EscalationView",
    "InMemoryAgents",
    "LeafProof",
    "NotFound",
    "Outcome",
    "SignedCheckpoint",
    "SourceUnavailable",
    "Sources",
    "TimelineItem",
    "TimelinePage",
    "TimelineQuery",
    "UpgradeOffer",
    "connection_views",
    "provider_fields",
]


class NotFound(CorralError, LookupError):
    """No such item *for this tenant*: what another tenant's id looks like, too."""


class ActionUnavailable(CorralError):
    """The action cannot be done from the dashboard (yet); the message says what to do instead."""


class SourceUnavailable(CorralError):
    """What a page reads is not running (the host, say): the page shows this message, with 503,
    instead of failing; the other pages keep working."""


# ---------------------------------------------------------------------------------- activity

Outcome = Literal["done", "blocked", "waiting", "failed", "system"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


@dataclass(frozen=True, slots=True)
class LeafProof:
    """One audit entry as the browser checks it: its leaf bytes and its inclusion proof in the
    tree of the checkpoint's size (``None`` if the entry is newer than the checkpoint)."""

    index: int
    leaf: bytes
    inclusion: tuple[bytes, ...] | None


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One line of the owner's timeline: an entry, or a whole tool call's story."""

    when: str
    sentence: str
    call_id: str | None
    agent: str | None
    outcome: Outcome
    kinds: tuple[str, ...]
    leaves: tuple[LeafProof, ...]
    readable: bool = True  #: False: a leaf that is not a valid entry (shown, never verified)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """The latest signed checkpoint of a tenant's log and the key it must verify with."""

    origin: str
    size: int
    root: bytes
    note: bytes  #: the whole C2SP signed note
    at: datetime
    vkey: str


@dataclass(frozen=True, slots=True)
class AnchorView:
    """The latest anchor covering a checkpoint of the tenant's log, with what links the two."""

    anchor_size: int
    at: datetime
    note: bytes  #: the anchor log's signed checkpoint
    vkey: str  #: the anchor log's verifier key
    leaf: bytes  #: the tenant checkpoint body that was anchored (``origin\\nsize\\nroot\\n``)
    index: int  #: that body's position in the anchor log
    inclusion: tuple[bytes, ...]
    tenant_size: int
    tenant_root: bytes
    consistency: tuple[bytes, ...]  #: from ``tenant_size`` to the latest checkpoint's size
    matches: bool  #: the server's own check of all of the above


@dataclass(frozen=True, slots=True)
class TimelineQuery:
    agent: str | None = None
    outcome: Outcome | None = None
    page: int = 1
    per_page: int = 25


@dataclass(frozen=True, slots=True)
class TimelinePage:
    items: list[TimelineItem]
    page: int
    pages: int
    total: int
    agents: list[str]  #: every agent of the tenant's timeline (for the filter)
    checkpoint: SignedCheckpoint | None
    anchor: AnchorView | None


class ActivitySource(Protocol):
    async def timeline(self, tenant: str, query: TimelineQuery) -> TimelinePage:
        """The tenant's timeline, newest first, filtered and paginated, with proofs."""
        ...


# ---------------------------------------------------------------------------------- approvals


@dataclass(frozen=True, slots=True)
class CallView:
    call_id: str
    agent: str
    tool: str
    summary: str  #: the request in plain words
    at: datetime | None
    state: str  #: held, in_flight, succeeded, failed, unknown


@dataclass(frozen=True, slots=True)
class EscalationView:
    call: CallView
    reason: str  #: the rule in plain words
    rules: tuple[str, ...]
    conflicts: tuple[CallView, ...]


class ApprovalsSource(Protocol):
    async def pending(self, tenant: str) -> list[EscalationView]: ...

    async def decide(
        self, tenant: str, call_id: str, decision: Literal["approve", "deny"], operator: str
    ) -> None:
        """Approve or deny; :class:`NotFound` if the tenant has no such escalation waiting."""
        ...


# -------------------------------------------------------------------------------- connections

ConnectionStatus = Literal["connected", "needs_reconnect", "not_connected"]
PROVIDERS: dict[str, str] = {
    "twilio": "Twilio",
    "stripe": "Stripe",
    "google_calendar": "Google Calendar",
    "calendly": "Calendly",
    "quickbooks": "QuickBooks Online",
    "ghl": "GoHighLevel",
}


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """One provider's connection as the owner may see it: never a secret."""

    provider: str
    label: str
    status: ConnectionStatus
    connection_id: str | None
    connected_at: datetime | None
    updated_at: datetime | None
    detail: str | None  #: why it needs reconnecting, if it does
    fields: tuple[str, ...]  #: credential field names the connect form asks for
    optional_fields: tuple[str, ...] = ()


class ConnectionsSource(Protocol):
    async def connections(self, tenant: str) -> list[ConnectionView]:
        """The six providers, in :data:`PROVIDERS` order."""
        ...

    async def connect(
        self, tenant: str, provider: str, fields: Mapping[str, str], *, operator: str
    ) -> None:
        """Connect the provider's account with the credential ``fields``; ``operator`` (the
        signed-in owner) is who the audit chain says did it."""
        ...

    async def rotate(
        self, tenant: str, connection_id: str, fields: Mapping[str, str], *, operator: str
    ) -> None:
        """Replace the connection's credential (reconnecting it if it needed that);
        :class:`NotFound` if the tenant has no such connection."""
        ...

    async def revoke(self, tenant: str, connection_id: str, *, operator: str) -> None:
        """Disconnect: agents lose the account on their next call and the saved credential is
        deleted; :class:`NotFound` if the tenant has no such connection."""
        ...


# ------------------------------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class UpgradeOffer:
    template: str
    from_version: str
    to_version: str
    change: Literal["patch", "minor", "major"]
    security: bool = False
    notes: str = ""
    opted_in: bool = False


@dataclass(frozen=True, slots=True)
class AgentView:
    agent: str
    role: str | None
    sandbox_id: str
    backend: str  #: firecracker, gvisor, bwrap...
    isolation: str  #: vm, gvisor, namespaces
    template: str
    version: str
    started_at: datetime | None
    upgrade: UpgradeOffer | None = None


class AgentsSource(Protocol):
    async def agents(self, tenant: str) -> list[AgentView]: ...

    async def opt_in(self, tenant: str, template: str, version: str) -> None:
        """Opt in to an offered upgrade; :class:`NotFound` if the tenant has no such offer."""
        ...


# -------------------------------------------------------------------------------------- audit

BundleFormat = Literal["tar.gz", "zip"]


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    size: int
    root: bytes
    at: datetime


@dataclass(frozen=True, slots=True)
class AuditOverview:
    origin: str
    log_key: str
    anchor_key: str
    size: int
    checkpoint: SignedCheckpoint | None
    checkpoints: list[CheckpointRow]  #: newest first
    anchors: list[AnchorView]  #: newest first


class AuditSource(Protocol):
    async def overview(self, tenant: str) -> AuditOverview: ...

    async def bundle(self, tenant: str, fmt: BundleFormat) -> Path:
        """An archive of the tenant's verifiable bundle, in a temporary directory of its own
        that the caller removes (``path.parent``)."""
        ...


@dataclass(frozen=True, slots=True)
class Sources:
    """Everything the dashboard reads and does."""

    activity: ActivitySource
    approvals: ApprovalsSource
    connections: ConnectionsSource
    agents: AgentsSource
    audit: AuditSource


# ============================================================================ implementations

ContextFor = Callable[[str], RenderContext]


def _default_context(_tenant: str) -> RenderContext:
    return RenderContext()


_CALL_TAG = re.compile(r"\s*\[[^\[\]]*\]\s*$")


def _untag(sentence: str, call_id: str | None) -> str:
    """Drop the trailing ``[call X]`` tag: the page shows the call id on its own."""
    if call_id is not None and sentence.rstrip().endswith(f"{call_id}]"):
        return _CALL_TAG.sub("", sentence)
    return sentence


def _agent_of(entry: Entry) -> str | None:
    if isinstance(entry, UnknownEntry):
        actor = entry.raw.get("actor")
        if isinstance(actor, dict) and actor.get("kind") == "agent":
            value = actor.get("id")
            return value if isinstance(value, str) else None
        return None
    if entry.actor.kind == "agent":
        return entry.actor.id
    if isinstance(entry, SandboxStarted | SandboxStopped | DelegationMinted):
        return entry.data.agent
    return None


def _outcome(entries: Sequence[Entry]) -> Outcome:
    """What became of a line: a call's fate, or ``system`` for everything that is not a call."""
    if not entries or not isinstance(entries[0], ActionRequested):
        return "system"
    verdict: Verdict | None = None
    decided: str | None = None
    for entry in entries:
        if isinstance(entry, ActionFailed):
            return "failed"
        if isinstance(entry, ActionExecuted):
            return "done" if entry.data.status == "succeeded" else "failed"
        if isinstance(entry, ActionVerdict):
            verdict = entry.data.verdict
        if isinstance(entry, OperatorDecision):
            decided = entry.data.decision.value
    if decided == "deny" or (decided is None and verdict is Verdict.DENY):
        return "blocked"
    return "waiting"


def _personal(entry: Entry, payload: bytes | None, erased: bool) -> Personal:
    """The verified payload, or None when it does not match (unverified data is never shown)."""
    if erased:
        return ERASED
    if payload is None:
        return None
    try:
        parsed = PersonalPayload.from_bytes(payload)
    except EntryError:
        return None
    commitment = entry.raw.get("personal") if isinstance(entry, UnknownEntry) else entry.personal
    return parsed if parsed.matches(commitment if isinstance(commitment, str) else None) else None


@dataclass
class _Row:
    first: int
    when: str
    sentence: str
    call_id: str | None
    agent: str | None
    outcome: Outcome
    kinds: tuple[str, ...]
    seqs: tuple[int, ...]
    readable: bool = True


_UNREADABLE = "An entry that is not a valid audit record: it cannot be read."


def _signed(chain: AuditChain, tenant: str, cp: StoredCheckpoint) -> SignedCheckpoint:
    origin = log_origin(chain.deployment, tenant)
    return SignedCheckpoint(origin, cp.size, cp.root, cp.note, cp.at, chain.log_key(tenant))


def _checkpoint(chain: AuditChain, tenant: str, *, fresh: bool) -> SignedCheckpoint | None:
    """The latest checkpoint; with ``fresh``, sign one first if the log grew past it."""
    store = chain.store
    latest = store.latest_checkpoint(tenant)
    size = store.log_size(tenant)
    if fresh and size > (latest.size if latest else 0):
        latest = chain.sequencer.checkpoint(tenant)
    return None if latest is None or latest.size == 0 else _signed(chain, tenant, latest)


def _anchors(
    chain: AuditChain, tenant: str, checkpoint: SignedCheckpoint | None, limit: int
) -> list[AnchorView]:
    """The newest ``limit`` anchored checkpoints of the tenant (at most the given checkpoint's
    size), each with the first anchor including it and the proofs that tie it to ``checkpoint``."""
    if checkpoint is None:
        return []
    store = chain.store
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(anchor_leaves.c.size, anchor_leaves.c.leaf_index)
            .where(anchor_leaves.c.tenant == tenant, anchor_leaves.c.size <= checkpoint.size)
            .order_by(anchor_leaves.c.size.desc())
            .limit(limit)
        ).all()
    vkey = chain.anchorer.verifier_key
    views: list[AnchorView] = []
    for size, index in rows:
        first = store.checkpoints(ANCHOR_LOG, after_size=index, limit=1)
        if not first:
            continue  # appended to the anchor log; the round that signs it has not finished
        anchor = first[0]
        leaf = store.entries(ANCHOR_LOG, index, index + 1)[0].leaf
        inclusion = store.inclusion_proof(ANCHOR_LOG, index, anchor.size)
        consistency = store.consistency_proof(tenant, size, checkpoint.size)
        view = AnchorView(
            anchor_size=anchor.size,
            at=anchor.at,
            note=anchor.note,
            vkey=vkey,
            leaf=leaf,
            index=index,
            inclusion=tuple(inclusion),
            tenant_size=size,
            tenant_root=b"",
            consistency=tuple(consistency),
            matches=False,
        )
        views.append(_check_anchor(view, checkpoint))
    return views


def _check_anchor(view: AnchorView, checkpoint: SignedCheckpoint) -> AnchorView:
    """The server's own check of an anchor against the checkpoint (the browser repeats it)."""
    try:
        opened = note.open(view.note, [note.Verifier.from_key(view.vkey)])
        anchor = note.Checkpoint.parse(opened.text)
        body = note.Checkpoint.parse(view.leaf.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return replace(view, matches=False)
    included = merkle.verify_inclusion(
        merkle.leaf_hash(view.leaf), view.index, anchor.size, list(view.inclusion), anchor.root
    )
    if body.size == checkpoint.size:
        linked = body.root == checkpoint.root and not view.consistency
    else:
        linked = merkle.verify_consistency(
            body.size, checkpoint.size, body.root, checkpoint.root, list(view.consistency)
        )
    matches = included and linked and body.origin == checkpoint.origin
    return replace(view, tenant_root=body.root, matches=matches)


class ChainActivity:
    """The timeline from the audit chain: prose by :func:`~corral.audit.prose.render_timeline`,
    each line with its entries' leaves and inclusion proofs at the latest checkpoint.

    ``checkpoint_on_read``: sign a checkpoint first when the log grew past the latest one (the
    sequencer signs one within a second anyway), so that every line shown can be checked.
    The whole log is rendered per request (stories join entries far apart); that is fine for a
    small business's log and is the place to add a cache keyed by size and erasures.
    """

    def __init__(
        self,
        chain: AuditChain,
        *,
        context_for: ContextFor = _default_context,
        checkpoint_on_read: bool = True,
    ) -> None:
        self._chain = chain
        self._context_for = context_for
        self._fresh = checkpoint_on_read

    async def timeline(self, tenant: str, query: TimelineQuery) -> TimelinePage:
        return await anyio.to_thread.run_sync(self._timeline, tenant, query)

    def _rows(self, tenant: str) -> list[_Row]:
        store = self._chain.store
        stored = store.entries(tenant, 0, store.log_size(tenant))
        parsed: list[tuple[int, Entry, Personal]] = []
        rows: list[_Row] = []
        for item in stored:
            try:
                entry = parse_entry(item.leaf)
            except EntryError:
                rows.append(
                    _Row(
                        item.seq,
                        "",
                        _UNREADABLE,
                        None,
                        None,
                        "system",
                        (),
                        (item.seq,),
                        readable=False,
                    )
                )
                continue
            parsed.append((item.seq, entry, _personal(entry, item.personal, item.erased)))
        lines = render_timeline(((e, p) for _, e, p in parsed), self._context_for(tenant))
        # Lines keep log order and so do the entries of each line: take seqs in turn per id.
        by_id: dict[str, deque[tuple[int, Entry]]] = {}
        for seq, entry, _ in parsed:
            by_id.setdefault(_entry_key(entry), deque()).append((seq, entry))
        for line in lines:
            members = [by_id[i].popleft() for i in line.entry_ids if by_id.get(i)]
            entries = [e for _, e in members]
            rows.append(
                _Row(
                    first=members[0][0] if members else -1,
                    when=line.when,
                    sentence=_untag(line.sentence, line.call_id),
                    call_id=line.call_id,
                    agent=_agent_of(entries[0]) if entries else None,
                    outcome=_outcome(entries),
                    kinds=tuple(e.kind for e in entries),
                    seqs=tuple(s for s, _ in members),
                )
            )
        rows.sort(key=lambda r: r.first, reverse=True)
        return rows

    def _timeline(self, tenant: str, query: TimelineQuery) -> TimelinePage:
        chain = self._chain
        checkpoint = _checkpoint(chain, tenant, fresh=self._fresh)
        rows = self._rows(tenant)
        agents = sorted({r.agent for r in rows if r.agent is not None})
        chosen = [
            r
            for r in rows
            if (query.agent is None or r.agent == query.agent)
            and (query.outcome is None or r.outcome == query.outcome)
        ]
        per_page = max(1, query.per_page)
        pages = max(1, -(-len(chosen) // per_page))
        page = min(max(1, query.page), pages)
        shown = chosen[(page - 1) * per_page : page * per_page]
        leaves = {s.seq: s.leaf for r in shown for s in _entries(chain, tenant, r.seqs)}
        size = checkpoint.size if checkpoint else 0
        items = []
        for row in shown:
            proofs = tuple(
                LeafProof(
                    seq,
                    leaves[seq],
                    tuple(chain.store.inclusion_proof(tenant, seq, size)) if seq < size else None,
                )
                for seq in row.seqs
            )
            items.append(
                TimelineItem(
                    when=row.when,
                    sentence=row.sentence,
                    call_id=row.call_id,
                    agent=row.agent,
                    outcome=row.outcome,
                    kinds=row.kinds,
                    leaves=proofs,
                    readable=row.readable,
                )
            )
        anchors = _anchors(chain, tenant, checkpoint, limit=1)
        return TimelinePage(
            items, page, pages, len(chosen), agents, checkpoint, anchors[0] if anchors else None
        )


def _entry_key(entry: Entry) -> str:
    if isinstance(entry, UnknownEntry):
        value = entry.raw.get("id")
        return value if isinstance(value, str) else "?"
    return entry.id


@dataclass(frozen=True, slots=True)
class _Leaf:
    seq: int
    leaf: bytes


def _entries(chain: AuditChain, tenant: str, seqs: Sequence[int]) -> list[_Leaf]:
    if not seqs:
        return []
    low, high = min(seqs), max(seqs)
    wanted = set(seqs)
    if high - low < 64:
        found = chain.store.entries(tenant, low, high + 1)
        return [_Leaf(e.seq, e.leaf) for e in found if e.seq in wanted]
    return [_Leaf(s, chain.store.entries(tenant, s, s + 1)[0].leaf) for s in sorted(wanted)]


class ChainAudit:
    """Checkpoints, anchors, keys and the exported bundle, from the audit chain."""

    def __init__(self, chain: AuditChain, *, checkpoints: int = 20, anchors: int = 10) -> None:
        self._chain = chain
        self._checkpoints = checkpoints
        self._anchors = anchors

    async def overview(self, tenant: str) -> AuditOverview:
        return await anyio.to_thread.run_sync(self._overview, tenant)

    def _overview(self, tenant: str) -> AuditOverview:
        chain = self._chain
        checkpoint = _checkpoint(chain, tenant, fresh=False)
        stored = chain.store.checkpoints(tenant)
        rows = [CheckpointRow(cp.size, cp.root, cp.at) for cp in reversed(stored) if cp.size]
        return AuditOverview(
            origin=log_origin(chain.deployment, tenant),
            log_key=chain.log_key(tenant),
            anchor_key=chain.anchorer.verifier_key,
            size=chain.store.log_size(tenant),
            checkpoint=checkpoint,
            checkpoints=rows[: self._checkpoints],
            anchors=_anchors(chain, tenant, checkpoint, self._anchors),
        )

    async def bundle(self, tenant: str, fmt: BundleFormat) -> Path:
        return await anyio.to_thread.run_sync(self._bundle, tenant, fmt)

    def _bundle(self, tenant: str, fmt: BundleFormat) -> Path:
        if self._chain.store.log_size(tenant) == 0:
            raise NotFound("nothing is recorded yet")  # and no empty log is created for it
        work = Path(tempfile.mkdtemp(prefix="corral-bundle-"))
        try:
            name = f"corral-audit-{tenant}"
            folder = work / name
            manifest = self._chain.export(tenant, folder)
            name = f"{name}-{manifest.size}"
            if fmt == "zip":
                archive = work / f"{name}.zip"
                with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
                    for path in sorted(folder.iterdir()):
                        zipped.write(path, f"{name}/{path.name}")
            else:
                archive = work / f"{name}.tar.gz"
                with tarfile.open(archive, "w:gz") as tar:
                    tar.add(folder, arcname=name)
            shutil.rmtree(folder)
            return archive
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise


# ------------------------------------------------------------------------------ approvals impl

_STATES = {
    "held": "Waiting",
    "in_flight": "In progress",
    "succeeded": "Done",
    "failed": "Failed",
    "unknown": "Outcome unknown",
}


def _request_line(
    tenant: str,
    call_id: str,
    agent: str,
    tool: str,
    args: Mapping[str, Any],
    at: datetime,
    ctx: RenderContext,
    verdict: ActionVerdictData | None = None,
) -> str:
    """A call told by the prose renderer, from synthetic entries that are never appended;
    ``agent: tool`` if the call cannot be told (arguments the entry schema refuses)."""
    public, personal = split_personal_args(dict(args))
    base = {"tenant": tenant, "at": at}
    try:
        request, payload = seal(
            ActionRequested(
                id="view-request",
                actor=Actor(kind="agent", id=agent),
                **base,
                data=ActionRequestedData(call_id=call_id, tool=tool, args=public),
            ),
            {"args": personal} if personal else None,
            salt=bytes(32),
        )
        items: list[tuple[Entry, Personal]] = [(request, payload)]
        if verdict is not None:
            supervisor = Actor(kind="supervisor", id="supervisor")
            items.append(
                (ActionVerdict(id="view-verdict", actor=supervisor, **base, data=verdict), None)
            )
        (line,) = render_timeline(items, ctx)
    except (ValueError, CorralError):
        return f"{agent}: {tool}"
    return _untag(line.sentence, call_id)


def _reason(clause: str) -> str:
    """The rule from a verdict clause: "Sent to you for approval: the refund ..." → "The
    refund ..." (the page already says it waits for the owner)."""
    head, sep, rest = clause.partition(": ")
    if not sep or not rest or len(head) > 40:
        return clause
    return rest[0].upper() + rest[1:]


class ControlApprovals:
    """Escalations waiting for the owner, from :class:`Control`; decisions go back to it (which
    appends the ``operator.decision`` entry to the tenant's audit chain)."""

    def __init__(self, control: Control, *, context_for: ContextFor = _default_context) -> None:
        self._control = control
        self._context_for = context_for

    async def pending(self, tenant: str) -> list[EscalationView]:
        control, ctx = self._control, self._context_for(tenant)
        supervisor = control.tenants.get(tenant)  # never create one for a mere look
        views = []
        for escalation in control.pending(tenant):
            described = control.describe(escalation)
            record = supervisor.ledger.calls.get(escalation.call_id) if supervisor else None
            at = record.at if record is not None else control.clock.now()
            decision = escalation.decision
            verdict = ActionVerdictData(
                call_id=escalation.call_id,
                tool=escalation.tool,
                verdict=Verdict.ESCALATE,
                rules=decision.rules,
                conflicts_with=decision.conflicts_with,
            )
            ask = _request_line(
                tenant,
                escalation.call_id,
                escalation.agent,
                escalation.tool,
                escalation.args,
                at,
                ctx,
            )
            story = _request_line(
                tenant,
                escalation.call_id,
                escalation.agent,
                escalation.tool,
                escalation.args,
                at,
                ctx,
                verdict,
            )
            reason = _reason(story[len(ask) :].strip() if story.startswith(ask) else story)
            state = record.status.value if record is not None else "held"
            call = CallView(
                escalation.call_id,
                escalation.agent,
                escalation.tool,
                ask,
                at,
                _STATES.get(state, state),
            )
            conflicts = []
            for other in described["conflicting_calls"]:
                when = datetime.fromisoformat(other["at"])
                summary = _request_line(
                    tenant,
                    other["call_id"],
                    other["agent"],
                    other["tool"],
                    other["args"],
                    when,
                    ctx,
                )
                conflicts.append(
                    CallView(
                        other["call_id"],
                        other["agent"],
                        other["tool"],
                        summary,
                        when,
                        _STATES.get(other["status"], other["status"]),
                    )
                )
            views.append(EscalationView(call, reason, tuple(decision.rules), tuple(conflicts)))
        return views

    async def decide(
        self, tenant: str, call_id: str, decision: Literal["approve", "deny"], operator: str
    ) -> None:
        try:
            await self._control.decide_escalation(tenant, call_id, decision, operator)
        except CallStateError:
            raise NotFound(f"no escalation {call_id!r} is waiting") from None


# ---------------------------------------------------------------------------- connections impl

RecordFn = Callable[[str, list[dict[str, Any]]], Awaitable[None]]
"""Append the broker's audit events (``corral.broker.to_entries`` form) to a tenant's chain."""


def provider_fields(provider: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The credential fields a provider's connection needs (from its connector declaration)."""
    spec = providers()[provider]
    return spec.fields, spec.optional_fields


def connection_views(rows: Iterable[Mapping[str, Any]]) -> list[ConnectionView]:
    """The six providers from the broker's public connection rows (one per provider: the one
    in use, else the latest that needs reconnecting; revoked ones count as not connected)."""
    best: dict[str, Mapping[str, Any]] = {}
    rank = {"active": 2, "needs_reconnect": 1}
    for row in rows:
        provider, status = row.get("provider"), row.get("status")
        if provider not in PROVIDERS or status not in rank:
            continue
        current = best.get(str(provider))
        if current is None or rank[str(status)] >= rank[str(current.get("status"))]:
            best[str(provider)] = row
    views = []
    for provider, label in PROVIDERS.items():
        fields, optional = provider_fields(provider)
        found = best.get(provider)
        if found is None:
            views.append(
                ConnectionView(
                    provider, label, "not_connected", None, None, None, None, fields, optional
                )
            )
            continue
        state: ConnectionStatus = "connected" if found["status"] == "active" else "needs_reconnect"
        reason = found.get("status_reason") if state == "needs_reconnect" else None
        views.append(
            ConnectionView(
                provider=provider,
                label=label,
                status=state,
                connection_id=str(found["connection_id"]),
                connected_at=_time(found.get("created_at")),
                updated_at=_time(found.get("updated_at")),
                detail=str(reason) if reason else None,
                fields=fields,
                optional_fields=optional,
            )
        )
    return views


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


#: Refusals meaning "this tenant has no such connection in use" (revoked ones are not shown).
_GONE = frozenset({"unknown_connection", "connection_revoked"})


class BrokerConnections:
    """Connections through the broker's HTTP API: listed with ``GET /connections``; connected,
    replaced and revoked with ``POST /connections``, ``POST /connections/{id}/rotate`` and
    ``POST /connections/{id}/disconnect``. Each change carries control's signed approval of
    its call document (:func:`~corral.broker.client.connect_call` and its siblings: the
    credential's field names and digest, never its values). Revoking deletes the saved
    credential and revokes every delegation of the connection, effective on the next call.

    ``approve`` signs control's approval of a call document (an
    :class:`~corral.broker.approval.ApprovalSigner` bound to control's clock); ``ids`` makes
    each request's idempotency key; ``record`` appends the ``credential.*`` events the broker
    answers with to the tenant's audit chain (as ``corral broker connect`` and ``revoke`` do).
    A connection the broker does not know for the tenant, or no longer uses, is
    :class:`NotFound`; any other refusal is the client's :class:`BrokerRefused`.
    """

    def __init__(
        self,
        client: BrokerClient,
        *,
        approve: Callable[[dict[str, Any]], str],
        ids: IdSource,
        record: RecordFn,
    ) -> None:
        self._client = client
        self._approve = approve
        self._ids = ids
        self._record = record

    async def connections(self, tenant: str) -> list[ConnectionView]:
        answer = await self._client.connections(tenant)
        rows = [r for r in answer.get("connections", []) if r.get("tenant") == tenant]
        return connection_views(rows)

    async def _changed(self, tenant: str, connection_id: str | None, sent: Awaitable[Any]) -> None:
        try:
            answer = await sent
        except BrokerRefused as exc:
            if connection_id is not None and exc.code in _GONE:
                raise NotFound(f"no connection {connection_id!r}") from None
            raise
        await self._record(tenant, list(answer.get("events") or []))

    async def connect(
        self, tenant: str, provider: str, fields: Mapping[str, str], *, operator: str
    ) -> None:
        if provider not in PROVIDERS:
            raise NotFound(f"no provider {provider!r}")
        credential = dict(fields)
        request = {"tenant": tenant, "provider": provider, "fields": credential,
                   "operator": operator, "idempotency_key": self._ids.new("connect")}  # fmt: skip
        try:
            approval = self._approve(connect_call(request))
            await self._changed(tenant, None, self._client.connect(approval, request))
        finally:
            credential.clear()

    async def rotate(
        self, tenant: str, connection_id: str, fields: Mapping[str, str], *, operator: str
    ) -> None:
        credential = dict(fields)
        request = {"tenant": tenant, "fields": credential, "operator": operator,
                   "idempotency_key": self._ids.new("rotate")}  # fmt: skip
        try:
            approval = self._approve(rotate_call(connection_id, request))
            sent = self._client.rotate(connection_id, approval, request)
            await self._changed(tenant, connection_id, sent)
        finally:
            credential.clear()

    async def revoke(self, tenant: str, connection_id: str, *, operator: str) -> None:
        request = {"tenant": tenant, "reason": "revoked by the owner", "operator": operator,
                   "idempotency_key": self._ids.new("disconnect")}  # fmt: skip
        approval = self._approve(disconnect_call(connection_id, request))
        sent = self._client.disconnect(connection_id, approval, request)
        await self._changed(tenant, connection_id, sent)


# --------------------------------------------------------------------------------- agents impl


class InMemoryAgents:
    """Running agents from a callable (the host's view, when it is wired); opt-ins are kept here
    and passed on to ``on_opt_in`` (the template registry's activation, when it is wired)."""

    def __init__(
        self,
        feed: Callable[[str], Iterable[AgentView]],
        *,
        on_opt_in: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._feed = feed
        self._on_opt_in = on_opt_in
        self._opted: set[tuple[str, str, str]] = set()
        self._lock = asyncio.Lock()

    async def agents(self, tenant: str) -> list[AgentView]:
        views = []
        for agent in self._feed(tenant):
            offer = agent.upgrade
            if offer is not None and (tenant, offer.template, offer.to_version) in self._opted:
                agent = replace(agent, upgrade=replace(offer, opted_in=True))
            views.append(agent)
        return views

    async def opt_in(self, tenant: str, template: str, version: str) -> None:
        async with self._lock:
            offered = any(
                a.upgrade is not None
                and (a.upgrade.template, a.upgrade.to_version) == (template, version)
                for a in self._feed(tenant)
            )
            if not offered:
                raise NotFound(f"no upgrade of {template!r} to {version!r} is offered")
            self._opted.add((tenant, template, version))
        if self._on_opt_in is not None:
            self._on_opt_in(tenant, template, version)
