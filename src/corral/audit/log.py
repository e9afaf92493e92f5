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
* **One writer thread per tenant**, started on the tenant's first append. Tenants are separate
  logs, so a thread each keeps the hot path free of locks (the thread alone owns the log's
  in-memory :class:`~corral.audit.merkle.CompactRange`), lets PostgreSQL commit tenants in
  parallel, and keeps a tenant whose store fails or conflicts from delaying anyone else's
  acknowledgements. An idle writer sleeps on a condition (no polling) unless a checkpoint is due;
  a control replica serves hundreds of tenants, not millions, so a thread each is cheap.
* **Group commit without added latency.** The writer takes whatever is queued (up to
  ``max_batch``) as one :meth:`LogStore.append_batch` — one transaction, one fsync — and while it
  commits, new appends queue up for the next batch. There is no timer to wait for a fuller batch:
  at low load an append costs one commit, under load batches grow by themselves.
* **Fencing.** Each batch names the log size it extends. If another writer moved the log (a
  second process or replica), the store refuses the whole batch with
  :class:`~corral.audit.store.StoreConflict`, every future of that batch gets the error, and the
  writer reloads its border from the store; the next batch lands after the other writer's
  entries. The same happens for any failed commit. Nothing acknowledged is ever lost or reused.
* **Backpressure.** More than ``max_pending`` appends queued for a tenant makes
  :meth:`Sequencer.submit` raise :class:`~corral.core.errors.Pushback` (HTTP: 503 with
  Retry-After) instead of growing memory without bound.
* **Checkpoints.** After a commit, and when the writer wakes while idle, a checkpoint is signed
  if the log grew and the last one this writer made is at least ``checkpoint_interval_s`` old by
  ``clock.monotonic()``; the first growth after start is checkpointed at once. The writer sleeps
  at most ``checkpoint_interval_s`` (real seconds) while a checkpoint is due, which is also how
  often it looks at an injected clock. :meth:`Sequencer.checkpoint` does it on demand and
  :meth:`Sequencer.close` writes a final one.
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
from corral.audit.store import LogStore, StoredCheckpoint
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


class _Writer:
    """The single writer of one tenant's log: its queue, its thread and its tree border."""

    def __init__(self, config: _Config, tenant: str, origin: str, signer: note.Signer) -> None:
        self._config = config
        self.tenant = tenant
        self.origin = origin
        self._signer = signer
        self.commits = 0
        # _cond guards the queue and the counters that flush() waits on.
        self._cond = threading.Condition()
        self._queue: deque[_Append] = deque()
        self._closing = False
        self._queued_total = 0
        self._done_total = 0
        # _state guards the border and the checkpoint bookkeeping (also used by checkpoint()).
        self._state = threading.Lock()
        self._tree: merkle.CompactRange | None = None
        self._checkpointed = -1  # size of the newest checkpoint known; -1: none
        self._checkpointed_at: float | None = None  # clock.monotonic() of ours; None: never
        self._thread = threading.Thread(target=self._run, name=f"audit-{tenant}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller threads

    def enqueue(self, leaves: Sequence[tuple[bytes, bytes | None]]) -> list[Future[int]]:
        """Queue (leaf, payload) pairs together, so they get consecutive sequence numbers;
        all of them or, on :class:`Pushback` or a closed log, none."""
        items = [
            _Append(leaf, merkle.leaf_hash(leaf), payload, Future()) for leaf, payload in leaves
        ]
        with self._cond:
            if self._closing:
                raise AuditError(f"the audit sequencer is closed (tenant {self.tenant!r})")
            if len(self._queue) + len(items) > self._config.max_pending:
                raise Pushback(self.tenant, len(self._queue))
            self._queue.extend(items)
            self._queued_total += len(items)
            self._cond.notify_all()
        return [item.future for item in items]

    def flush(self) -> None:
        """Wait until every append queued before this call has committed or failed."""
        with self._cond:
            target = self._queued_total
            self._cond.wait_for(lambda: self._done_total >= target)

    def checkpoint_now(self) -> StoredCheckpoint:
        """Sign a checkpoint of the current size, unless one exists for it already."""
        with self._state:
            if self._tree is None:
                self._tree = self._load()
            if self._tree.size <= self._checkpointed:
                latest = self._config.store.latest_checkpoint(self.tenant)
                if latest is not None:
                    return latest
            if self._tree.size == 0:  # create the (empty) log so that it has an origin
                self._config.store.append_batch(self.tenant, self.origin, 0, [], [])
            return self._sign(self._tree)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def join(self) -> None:
        self._thread.join()

    # ------------------------------------------------------------------- writer thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: fail loudly rather than leave appends hanging
            _logger.exception("audit log %s: writer stopped", self.origin)
            with self._cond:
                self._closing = True
                stranded = list(self._queue)
                self._queue.clear()
                self._done_total += len(stranded)
                self._cond.notify_all()
            for item in stranded:
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(exc)
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(self._idle_wait())
                batch = self._take()
                done = self._closing and not self._queue
            if batch:
                self._commit(batch)
            self._maybe_checkpoint(final=done)
            if done:
                return

    def _take(self) -> list[_Append]:
        """Pop up to ``max_batch`` appends, dropping those whose caller cancelled them."""
        batch: list[_Append] = []
        skipped = 0
        while self._queue and len(batch) < self._config.max_batch:
            item = self._queue.popleft()
            if item.future.set_running_or_notify_cancel():
                batch.append(item)
            else:
                skipped += 1
        if skipped:
            self._done_total += skipped
            self._cond.notify_all()
        return batch

    def _idle_wait(self) -> float | None:
        """Seconds until a checkpoint is due; None (wait for an append) if none is needed."""
        tree = self._tree
        if tree is None or tree.size <= self._checkpointed:
            return None
        if self._checkpointed_at is None:
            return 0.0
        interval = self._config.interval_s
        remaining = interval - (self._config.clock.monotonic() - self._checkpointed_at)
        return min(max(remaining, 0.0), interval)

    def _commit(self, batch: list[_Append]) -> None:
        """One transaction for the whole batch; then, and only then, resolve its futures.

        Futures are resolved outside ``_state``: their callbacks may call back into the log.
        """
        store = self._config.store
        error: Exception | None = None
        with self._state:
            try:
                if self._tree is None:
                    self._tree = self._load()
                tree = self._tree.copy()
                start = tree.size
                nodes: list[tuple[merkle.NodeId, bytes]] = []
                for item in batch:
                    nodes.extend(tree.append(item.leaf_hash))
                leaves = [(item.leaf, item.payload) for item in batch]
                store.append_batch(self.tenant, self.origin, start, leaves, nodes)
            except Exception as exc:
                _logger.warning(
                    "audit log %s: batch of %d failed: %s", self.origin, len(batch), exc
                )
                error = exc
                self._reload()
            else:
                self._tree = tree
                self.commits += 1
        for i, item in enumerate(batch):
            if error is None:
                item.future.set_result(start + i)
            else:
                item.future.set_exception(error)
        self._finish(len(batch))

    def _finish(self, count: int) -> None:
        with self._cond:
            self._done_total += count
            self._cond.notify_all()

    def _load(self) -> merkle.CompactRange:
        """The border as the store has it: one read for the size, one for the nodes."""
        store = self._config.store
        tree = merkle.CompactRange.load(
            store.log_size(self.tenant), lambda ids: store.nodes(self.tenant, ids)
        )
        latest = store.latest_checkpoint(self.tenant)
        self._checkpointed = latest.size if latest is not None else -1
        return tree

    def _reload(self) -> None:
        """After a failed commit the border may be stale (another writer): read it again."""
        try:
            self._tree = self._load()
        except Exception as exc:  # the store is down: try again before the next batch
            _logger.warning("audit log %s: reload failed: %s", self.origin, exc)
            self._tree = None

    def _maybe_checkpoint(self, *, final: bool) -> None:
        with self._state:
            tree = self._tree
            if tree is None or tree.size <= self._checkpointed:
                return
            now = self._config.clock.monotonic()
            last = self._checkpointed_at
            if not final and last is not None and now - last < self._config.interval_s:
                return
            try:
                self._sign(tree)
            except Exception as exc:  # retried one interval later; appends go on meanwhile
                _logger.warning("audit log %s: checkpoint failed: %s", self.origin, exc)
                self._checkpointed_at = now

    def _sign(self, tree: merkle.CompactRange) -> StoredCheckpoint:
        """Sign and store a checkpoint of ``tree`` (c2sp.org/tlog-checkpoint, no extensions)."""
        size, root = tree.size, tree.root()
        signed = note.sign(note.Checkpoint(self.origin, size, root).format(), [self._signer])
        at = self._config.clock.now()
        self._config.store.add_checkpoint(self.tenant, size, root, signed, at)
        self._checkpointed = size
        self._checkpointed_at = self._config.clock.monotonic()
        return StoredCheckpoint(size, root, signed, at)


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
        self._writers: dict[str, _Writer] = {}
        self._closed = False

    def origin(self, tenant: str) -> str:
        """The log's origin (c2sp.org/tlog-checkpoint), also its checkpoint key's name."""
        return f"{self._deployment}/tenants/{tenant}"

    @property
    def commits(self) -> int:
        """Batches committed so far, all tenants together (appends / commits = batch size)."""
        with self._lock:
            return sum(w.commits for w in self._writers.values())

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
        return self._writer(tenant).enqueue(leaves) if leaves else []

    def append(
        self, tenant: str, entry: KnownEntry, personal: PersonalPayload | None = None
    ) -> int:
        """:meth:`submit` and wait: the entry's sequence number, once its commit is durable."""
        return self.submit(tenant, entry, personal).result()

    def flush(self, tenant: str) -> None:
        """Wait until every append submitted for ``tenant`` before this call is resolved."""
        with self._lock:
            writer = self._writers.get(tenant)
        if writer is not None:
            writer.flush()

    def checkpoint(self, tenant: str) -> StoredCheckpoint:
        """Flush, then sign and store a checkpoint of the log now (the latest one if the log
        did not grow since; a checkpoint of the empty log if it has no entries)."""
        _check_tenant(tenant)
        writer = self._writer(tenant)
        writer.flush()
        return writer.checkpoint_now()

    def close(self) -> None:
        """Commit everything queued, write final checkpoints, stop the writers. Idempotent."""
        with self._lock:
            self._closed = True
            writers = list(self._writers.values())
        for writer in writers:
            writer.close()
        for writer in writers:
            writer.join()

    def __enter__(self) -> Sequencer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _writer(self, tenant: str) -> _Writer:
        with self._lock:
            if self._closed:
                raise AuditError("the audit sequencer is closed")
            writer = self._writers.get(tenant)
            if writer is None:
                origin = self.origin(tenant)
                signer = self._signer_for(origin)
                if signer.name != origin:
                    raise ConfigError(f"checkpoint key of {origin!r} is named {signer.name!r}")
                writer = self._writers[tenant] = _Writer(self._config, tenant, origin, signer)
            return writer
