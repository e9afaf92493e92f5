"""The audit sequencer: one writer per tenant log, group commit, durable acknowledgements.

Each tenant has its own log (origin ``<deployment>/tenants/<tenant id>``). :meth:`Sequencer.append`
hands an entry to the tenant's writer and returns its sequence number (its 0-based leaf index)
only once the transaction holding it committed: an append MUST NOT resolve to an index before
that index is durably assigned (tessera's ``IndexFuture`` contract). Many concurrent appends
share one transaction and so one fsync (group commit). A signed c2sp.org/tlog-checkpoint follows
within ``checkpoint_interval_s`` of the log growing.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from corral.audit import entries, note
>>> from corral.audit.store import LogStore
>>> from corral.core.clock import SystemClock
>>> store = LogStore.from_url(f"sqlite:///{tempfile.mkdtemp()}/audit.db")
>>> store.create_schema()
>>> skey, vkey = note.generate_key("corral.local/tenants/brightsmile")
>>> entry = entries.ActionRequested(id="ent_1", tenant="brightsmile",
...     at=datetime(2026, 3, 3, 17, 14, tzinfo=timezone.utc),
...     actor=entries.Actor(kind="agent", id="receptionist-1"),
...     data=entries.ActionRequestedData(call_id="c1", tool="calendar.book"))
>>> with Sequencer(store, deployment="corral.local", clock=SystemClock(),
...                signer_for=lambda origin: note.Signer.from_key(skey)) as sequencer:
...     sequencer.append("brightsmile", entry), sequencer.append("brightsmile", entry)
...     sequencer.checkpoint("brightsmile").size
(0, 1)
2
>>> store.close()

Design, in the order an append meets it:

* **Validation first.** The entry must be for the tenant and carry a commitment exactly when a
  personal payload comes with it, and the payload must match it; otherwise
  :class:`~corral.audit.entries.EntryError` is raised in the caller's thread and nothing is
  queued. The leaf bytes and leaf hash are computed there too, off the writer's path.
* **One committer for every tenant.** Tenants are separate logs (each its own origin, tree
  and checkpoints), but one committer thread writes them all: it takes whatever is queued, for
  every tenant (up to ``max_batch`` appends each), and commits it as one transaction with
  :meth:`LogStore.append_batches` — one fsync for all of them. A control replica serves many
  tenants at once; with a writer (and a transaction, and an fsync) per tenant, 1,000 active
  tenants made 1,000 small commits where one does. If that shared transaction fails (one
  tenant's fence, say), each tenant's batch is retried alone, so one tenant's conflict or bad
  state fails only its own appends. The committer alone owns each log's in-memory
  :class:`~corral.audit.merkle.CompactRange`; it sleeps on a condition (no polling) unless a
  checkpoint is due.
* **Group commit without added latency.** There is no timer to wait for a fuller batch: while
  a transaction commits, new appends queue up for the next one; at low load an append costs
  one commit, under load batches grow by themselves.
* **Fencing.** Each batch names the log size it extends. If another writer moved the log (a
  second process or replica), the store refuses the whole batch with
  :class:`~corral.audit.store.StoreConflict`, every future of that batch gets the error, and the
  writer reloads its border from the store; the next batch lands after the other writer's
  entries. The same happens for any failed commit. Nothing acknowledged is ever lost or reused.
* **Backpressure.** More than ``max_pending`` appends queued for a tenant makes
  :meth:`Sequencer.submit` raise :class:`~corral.core.errors.Pushback` (HTTP: 503 with
  Retry-After) instead of growing memory without bound.
* **Checkpoints.** After a commit, and when the committer wakes while idle, a checkpoint is
  signed for each log that grew and whose last checkpoint from this sequencer is at least
  ``checkpoint_interval_s`` old by ``clock.monotonic()``; the first growth after start is
  checkpointed at once. The checkpoints due together are stored in one transaction. The
  committer sleeps at most ``checkpoint_interval_s`` (real seconds) while a checkpoint is due,
  which is also how often it looks at an injected clock. :meth:`Sequencer.checkpoint` does it
  on demand and :meth:`Sequencer.close` writes a final one.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType

from corral.audit import merkle, note
from corral.audit.entries import EntryError, KnownEntry, PersonalPayload
from corral.audit.store import Batch, LogStore, StoredCheckpoint
from corral.core.clock import Clock
from corral.core.errors import AuditError, ConfigError, Pushback
from corral.core.ids import check_id

__all__ = ["Pushback", "Sequencer"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Append:
    leaf: bytes
    leaf_hash: bytes
    payload: bytes | None
    future: Future[int]


@dataclass(frozen=True, slots=True)
class _Config:
    store: LogStore
    clock: Clock
    interval_s: float
    max_batch: int
    max_pending: int


class _Log:
    """One tenant's log as the sequencer keeps it: its queue (under the sequencer's condition)
    and its tree border and checkpoint bookkeeping (under the sequencer's state lock)."""

    def __init__(self, tenant: str, origin: str, signer: note.Signer) -> None:
        self.tenant = tenant
        self.origin = origin
        self.signer = signer
        self.commits = 0
        self.queue: deque[_Append] = deque()
        self.queued_total = 0
        self.done_total = 0
        self.tree: merkle.CompactRange | None = None
        self.checkpointed = -1  # size of the newest checkpoint known; -1: none
        self.checkpointed_at: float | None = None  # clock.monotonic() of ours; None: never


@dataclass(slots=True)
class _Plan:
    """One log's part of a commit: its batch, the tree after it, and what to store."""

    log: _Log
    batch: list[_Append]
    tree: merkle.CompactRange | None = None
    start: int = 0
    nodes: list[tuple[merkle.NodeId, bytes]] | None = None
    error: Exception | None = None

    def stored(self) -> Batch:
        leaves = [(item.leaf, item.payload) for item in self.batch]
        return (self.log.tenant, self.log.origin, self.start, leaves, self.nodes or [])


class _Committer:
    """The one thread that writes every tenant's log (see the module docstring)."""

    def __init__(self, config: _Config) -> None:
        self._config = config
        # _cond guards every log's queue and counters, and _ready and _closing.
        self._cond = threading.Condition()
        self._ready: dict[str, _Log] = {}  # logs with queued appends, in arrival order
        self._logs: dict[str, _Log] = {}
        self._closing = False
        # _state guards every log's border and checkpoint bookkeeping (also checkpoint_now()).
        self._state = threading.RLock()
        self._thread = threading.Thread(target=self._run, name="corral-audit-commit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller threads

    def add(self, log: _Log) -> None:
        with self._cond:
            self._logs[log.tenant] = log

    def enqueue(self, log: _Log, leaves: Sequence[tuple[bytes, bytes | None]]) -> list[Future[int]]:
        """Queue (leaf, payload) pairs together, so they get consecutive sequence numbers;
        all of them or, on :class:`Pushback` or a closed log, none."""
        items = [
            _Append(leaf, merkle.leaf_hash(leaf), payload, Future()) for leaf, payload in leaves
        ]
        with self._cond:
            if self._closing:
                raise AuditError(f"the audit sequencer is closed (tenant {log.tenant!r})")
            if len(log.queue) + len(items) > self._config.max_pending:
                raise Pushback(log.tenant, len(log.queue))
            log.queue.extend(items)
            log.queued_total += len(items)
            self._ready[log.tenant] = log
            self._cond.notify_all()
        return [item.future for item in items]

    def flush(self, log: _Log) -> None:
        """Wait until every append queued for ``log`` before this call is resolved."""
        with self._cond:
            target = log.queued_total
            self._cond.wait_for(lambda: log.done_total >= target)

    def checkpoint_now(self, log: _Log) -> StoredCheckpoint:
        """Sign a checkpoint of the current size, unless one exists for it already."""
        with self._state:
            if log.tree is None:
                log.tree = self._load(log)
            if log.tree.size <= log.checkpointed:
                latest = self._config.store.latest_checkpoint(log.tenant)
                if latest is not None:
                    return latest
            if log.tree.size == 0:  # create the (empty) log so that it has an origin
                self._config.store.append_batch(log.tenant, log.origin, 0, [], [])
            checkpoint = self._sign(log, log.tree)
            self._config.store.add_checkpoint(
                log.tenant, checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.at
            )
            self._signed(log, checkpoint)
            return checkpoint

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    # ------------------------------------------------------------------ committer thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: fail loudly rather than leave appends hanging
            _logger.exception("audit sequencer: committer stopped")
            with self._cond:
                self._closing = True
                stranded = [(log, list(log.queue)) for log in self._logs.values()]
                for log, items in stranded:
                    log.queue.clear()
                    log.done_total += len(items)
                self._ready.clear()
                self._cond.notify_all()
            for _log, items in stranded:
                for item in items:
                    if item.future.set_running_or_notify_cancel():
                        item.future.set_exception(exc)
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._ready and not self._closing:
                    self._cond.wait(self._idle_wait())
                plans = self._take()
                done = self._closing and not self._ready
            if plans:
                self._commit(plans)
            self._checkpoint_due(final=done)
            if done:
                return

    def _take(self) -> list[_Plan]:
        """Up to ``max_batch`` appends of every ready log, dropping cancelled ones."""
        plans = []
        for tenant, log in list(self._ready.items()):
            batch: list[_Append] = []
            skipped = 0
            while log.queue and len(batch) < self._config.max_batch:
                item = log.queue.popleft()
                if item.future.set_running_or_notify_cancel():
                    batch.append(item)
                else:
                    skipped += 1
            if skipped:
                log.done_total += skipped
                self._cond.notify_all()
            if not log.queue:
                del self._ready[tenant]
            if batch:
                plans.append(_Plan(log, batch))
        return plans

    def _idle_wait(self) -> float | None:
        """Seconds until a checkpoint is due; None (wait for an append) if none is needed."""
        waits = [self._due_in(log) for log in self._logs.values()]
        due = [w for w in waits if w is not None]
        return min(due) if due else None

    def _due_in(self, log: _Log) -> float | None:
        tree = log.tree
        if tree is None or tree.size <= log.checkpointed:
            return None
        if log.checkpointed_at is None:
            return 0.0
        interval = self._config.interval_s
        remaining = interval - (self._config.clock.monotonic() - log.checkpointed_at)
        return min(max(remaining, 0.0), interval)

    def _commit(self, plans: list[_Plan]) -> None:
        """One transaction for every log's batch (each alone if that fails); then, and only
        then, resolve the futures. Futures are resolved outside the locks: their callbacks may
        call back into the sequencer."""
        store = self._config.store
        with self._state:
            ready = [plan for plan in plans if self._prepare(plan)]
            try:
                if len(ready) == 1:
                    store.append_batch(*ready[0].stored())
                elif ready:
                    store.append_batches([plan.stored() for plan in ready])
            except Exception as exc:
                if len(ready) == 1:
                    ready[0].error = exc
                else:  # find whose batch failed: each alone, in its own transaction
                    for plan in ready:
                        try:
                            store.append_batch(*plan.stored())
                        except Exception as alone:
                            plan.error = alone
            for plan in plans:
                log = plan.log
                if plan.error is None and plan.tree is not None:
                    log.tree = plan.tree
                    log.commits += 1
                else:
                    _logger.warning("audit log %s: batch of %d failed: %s", log.origin,
                                    len(plan.batch), plan.error)  # fmt: skip
                    self._reload(log)
        for plan in plans:
            for i, item in enumerate(plan.batch):
                if plan.error is None:
                    item.future.set_result(plan.start + i)
                else:
                    item.future.set_exception(plan.error)
        with self._cond:
            for plan in plans:
                plan.log.done_total += len(plan.batch)
            self._cond.notify_all()

    def _prepare(self, plan: _Plan) -> bool:
        """The tree after ``plan``'s batch, and the nodes it adds; False (and the plan's error
        set) if the log's border cannot be read."""
        log = plan.log
        try:
            if log.tree is None:
                log.tree = self._load(log)
        except Exception as exc:
            plan.error = exc
            return False
        tree = log.tree.copy()
        plan.start = tree.size
        nodes: list[tuple[merkle.NodeId, bytes]] = []
        for item in plan.batch:
            nodes.extend(tree.append(item.leaf_hash))
        plan.tree, plan.nodes = tree, nodes
        return True

    def _load(self, log: _Log) -> merkle.CompactRange:
        """The border as the store has it: one read for the size, one for the nodes."""
        store = self._config.store
        tree = merkle.CompactRange.load(
            store.log_size(log.tenant), lambda ids: store.nodes(log.tenant, ids)
        )
        latest = store.latest_checkpoint(log.tenant)
        log.checkpointed = latest.size if latest is not None else -1
        return tree

    def _reload(self, log: _Log) -> None:
        """After a failed commit the border may be stale (another writer): read it again."""
        try:
            log.tree = self._load(log)
        except Exception as exc:  # the store is down: try again before the next batch
            _logger.warning("audit log %s: reload failed: %s", log.origin, exc)
            log.tree = None

    def _checkpoint_due(self, *, final: bool) -> None:
        """Sign a checkpoint for every log that is due one; store them in one transaction."""
        with self._state:
            now = self._config.clock.monotonic()
            signed: list[tuple[_Log, StoredCheckpoint]] = []
            for log in list(self._logs.values()):
                tree = log.tree
                if tree is None or tree.size <= log.checkpointed:
                    continue
                last = log.checkpointed_at
                if not final and last is not None and now - last < self._config.interval_s:
                    continue
                signed.append((log, self._sign(log, tree)))
            if not signed:
                return
            store = self._config.store
            try:
                store.add_checkpoints([(log.tenant, c) for log, c in signed])
                stored = signed
            except Exception:
                stored = []
                for log, c in signed:  # each alone: one log's failure is its own
                    try:
                        store.add_checkpoint(log.tenant, c.size, c.root, c.note, c.at)
                        stored.append((log, c))
                    except Exception as exc:  # retried one interval later
                        _logger.warning("audit log %s: checkpoint failed: %s", log.origin, exc)
                        log.checkpointed_at = now
            for log, c in stored:
                self._signed(log, c)

    def _sign(self, log: _Log, tree: merkle.CompactRange) -> StoredCheckpoint:
        """A signed checkpoint of ``tree`` (c2sp.org/tlog-checkpoint, no extensions)."""
        size, root = tree.size, tree.root()
        signed = note.sign(note.Checkpoint(log.origin, size, root).format(), [log.signer])
        return StoredCheckpoint(size, root, signed, self._config.clock.now())

    def _signed(self, log: _Log, checkpoint: StoredCheckpoint) -> None:
        log.checkpointed = checkpoint.size
        log.checkpointed_at = self._config.clock.monotonic()


def _leaf(
    tenant: str, entry: KnownEntry, personal: PersonalPayload | None
) -> tuple[bytes, bytes | None]:
    """The (leaf, payload) bytes of an entry, after checking it belongs where it is going."""
    if entry.tenant != tenant:
        raise EntryError(f"entry {entry.id!r} is for tenant {entry.tenant!r}, not {tenant!r}")
    if entry.personal is None and personal is not None:
        raise EntryError(f"entry {entry.id!r} commits to no personal payload, but one came")
    if entry.personal is not None and personal is None:
        raise EntryError(f"entry {entry.id!r} commits to a personal payload, none came")
    if personal is not None and not personal.matches(entry.personal):
        raise EntryError(f"entry {entry.id!r}: personal payload does not match its commitment")
    return entry.leaf(), (personal.to_bytes() if personal is not None else None)


def _check_tenant(tenant: str) -> None:
    """Tenant ids follow :func:`corral.core.ids.check_id`; in particular none starts with ``~``,
    which keeps them apart from the anchor log's store key."""
    try:
        check_id(tenant, "tenant id")
    except ValueError as exc:
        raise EntryError(f"{exc}: it cannot name a log") from exc


class Sequencer:
    """Appends entries to per-tenant logs; see the module docstring for the design.

    **Parameters:** ``store`` (owned by the caller: :meth:`close` does not close it);
    ``deployment``, the origin prefix; ``signer_for(origin)``, the checkpoint signer of a log,
    whose key name must be the origin; ``clock``, for checkpoint times and intervals;
    ``checkpoint_interval_s``; ``max_batch``, appends per transaction; ``max_pending``, appends
    queued per tenant before :class:`Pushback`.
    """

    def __init__(
        self,
        store: LogStore,
        *,
        deployment: str,
        signer_for: Callable[[str], note.Signer],
        clock: Clock,
        checkpoint_interval_s: float = 1.0,
        max_batch: int = 1024,
        max_pending: int = 100_000,
    ) -> None:
        if not deployment or any(c.isspace() or c == "+" for c in deployment):
            raise ConfigError(f"deployment {deployment!r} must be non-empty, no spaces or '+'")
        if not (checkpoint_interval_s > 0 and max_batch >= 1 and max_pending >= 1):
            raise ConfigError("need checkpoint_interval_s > 0, max_batch >= 1, max_pending >= 1")
        self._config = _Config(store, clock, checkpoint_interval_s, max_batch, max_pending)
        self._deployment = deployment
        self._signer_for = signer_for
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}
        self._committer: _Committer | None = None
        self._closed = False

    def origin(self, tenant: str) -> str:
        """The log's origin (c2sp.org/tlog-checkpoint), also its checkpoint key's name."""
        return f"{self._deployment}/tenants/{tenant}"

    @property
    def commits(self) -> int:
        """Batches committed so far, all tenants together (appends / commits = batch size)."""
        with self._lock:
            return sum(log.commits for log in self._logs.values())

    def submit(
        self, tenant: str, entry: KnownEntry, personal: PersonalPayload | None = None
    ) -> Future[int]:
        """Queue ``entry``; the future resolves to its sequence number once durable.

        Raises :class:`EntryError` for an entry that is not the tenant's or whose personal
        payload is missing, unexpected or not the one committed to, and :class:`Pushback` when
        the tenant's queue is full; in both cases nothing is queued. A future cancelled before
        its batch starts is not written. ``asyncio`` callers: ``await asyncio.wrap_future(f)``.
        """
        return self.submit_many(tenant, [(entry, personal)])[0]

    def submit_many(
        self, tenant: str, items: Sequence[tuple[KnownEntry, PersonalPayload | None]]
    ) -> list[Future[int]]:
        """:meth:`submit` for several entries at once: they get consecutive sequence numbers,
        and all are queued or (on a bad entry or :class:`Pushback`) none is.

        A caller with many entries should use this: one wake-up of the writer, so the batch
        is committed whole instead of in the pieces the writer happens to see.
        """
        _check_tenant(tenant)
        leaves = [_leaf(tenant, entry, personal) for entry, personal in items]
        if not leaves:
            return []
        committer, log = self._log(tenant)
        return committer.enqueue(log, leaves)

    def append(
        self, tenant: str, entry: KnownEntry, personal: PersonalPayload | None = None
    ) -> int:
        """:meth:`submit` and wait: the entry's sequence number, once its commit is durable."""
        return self.submit(tenant, entry, personal).result()

    def flush(self, tenant: str) -> None:
        """Wait until every append submitted for ``tenant`` before this call is resolved."""
        with self._lock:
            log, committer = self._logs.get(tenant), self._committer
        if log is not None and committer is not None:
            committer.flush(log)

    def checkpoint(self, tenant: str) -> StoredCheckpoint:
        """Flush, then sign and store a checkpoint of the log now (the latest one if the log
        did not grow since; a checkpoint of the empty log if it has no entries)."""
        _check_tenant(tenant)
        committer, log = self._log(tenant)
        committer.flush(log)
        return committer.checkpoint_now(log)

    def close(self) -> None:
        """Commit everything queued, write final checkpoints, stop the writers. Idempotent."""
        with self._lock:
            self._closed = True
            committer = self._committer
        if committer is not None:
            committer.close()

    def __enter__(self) -> Sequencer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _log(self, tenant: str) -> tuple[_Committer, _Log]:
        with self._lock:
            if self._closed:
                raise AuditError("the audit sequencer is closed")
            if self._committer is None:
                self._committer = _Committer(self._config)
            log = self._logs.get(tenant)
            if log is None:
                origin = self.origin(tenant)
                signer = self._signer_for(origin)
                if signer.name != origin:
                    raise ConfigError(f"checkpoint key of {origin!r} is named {signer.name!r}")
                log = self._logs[tenant] = _Log(tenant, origin, signer)
                self._committer.add(log)
            return self._committer, log
