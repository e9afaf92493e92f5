"""The sequencer on SQLite and PostgreSQL: durable seqs, group commit, checkpoints, fencing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from corral.audit import entries, merkle, note
from corral.audit.log import Pushback, Sequencer
from corral.audit.merkle import NodeId
from corral.audit.store import Batch, LogStore, StoreConflict
from corral.core.clock import Clock, ManualClock, SystemClock
from corral.core.errors import AuditError, ConfigError, StoreError
from tests.audit import _backends as b
from tests.audit._backends import store_fixture, store_url_fixture  # noqa: F401 (fixtures)

T = b.TENANT


def _sequencer(store: LogStore, clock: Clock | None = None, **options: Any) -> Sequencer:
    return Sequencer(
        store,
        deployment=b.DEPLOYMENT,
        signer_for=b.signer_for,
        clock=clock or SystemClock(),
        **options,
    )


def _verifier(tenant: str = T) -> note.Verifier:
    return b.signer_for(b.origin(tenant)).verifier()


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``check`` until true; the timeout only bounds a failing test, nothing is timed."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _assert_tree_consistent(store: LogStore, tenant: str = T) -> list[bytes]:
    """Leaves contiguous from 0, every stored node equal to merkle's recomputation."""
    size = store.log_size(tenant)
    stored = store.entries(tenant, 0, size)
    assert [e.seq for e in stored] == list(range(size))
    leaves = [e.leaf for e in stored]
    expected = b.all_nodes(leaves)
    assert store.nodes(tenant, list(expected)) == expected
    assert b.stored_node_count(store, tenant) == len(expected)
    assert store.root(tenant, size) == merkle.root(leaves)
    return leaves


class GatedStore(LogStore):
    """A store whose commits wait for ``gate``; ``entered`` tells that one is waiting."""

    def __init__(self, store: LogStore) -> None:
        super().__init__(store.engine)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def append_batch(
        self,
        tenant: str,
        origin: str,
        expected_size: int,
        leaves: Sequence[tuple[bytes, bytes | None]],
        nodes: Sequence[tuple[NodeId, bytes]],
    ) -> None:
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        super().append_batch(tenant, origin, expected_size, leaves, nodes)


class FailingStore(LogStore):
    """A store whose next ``failures`` commits fail (the database refused them)."""

    def __init__(self, store: LogStore, failures: int) -> None:
        super().__init__(store.engine)
        self.failures = failures

    def append_batch(
        self,
        tenant: str,
        origin: str,
        expected_size: int,
        leaves: Sequence[tuple[bytes, bytes | None]],
        nodes: Sequence[tuple[NodeId, bytes]],
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("injected: the database went away")
        super().append_batch(tenant, origin, expected_size, leaves, nodes)


class CountingStore(GatedStore):
    """A gated store that counts transactions and can refuse one tenant's batches."""

    def __init__(self, store: LogStore, refuse: str | None = None) -> None:
        super().__init__(store)
        self.gate.set()
        self.transactions = 0
        self.refuse = refuse

    def append_batch(
        self,
        tenant: str,
        origin: str,
        expected_size: int,
        leaves: Sequence[tuple[bytes, bytes | None]],
        nodes: Sequence[tuple[NodeId, bytes]],
    ) -> None:
        self.transactions += 1
        if tenant == self.refuse:
            raise StoreError(f"injected: {tenant}'s batch refused")
        super().append_batch(tenant, origin, expected_size, leaves, nodes)

    def append_batches(self, batches: Sequence[Batch]) -> None:
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        self.transactions += 1
        if any(batch[0] == self.refuse for batch in batches):
            raise StoreError("injected: one tenant's batch refused")
        super().append_batches(batches)


# ------------------------------------------------------------------------------ appends


def test_append_returns_consecutive_seqs_and_stores_exactly(store: LogStore) -> None:
    made = [b.entry(i, personal=i % 3 == 1) for i in range(10)]
    with _sequencer(store) as sequencer:
        assert sequencer.origin(T) == "corral.test/tenants/brightsmile"
        seqs = [sequencer.append(T, entry, personal) for entry, personal in made]
        assert seqs == list(range(10))
    assert store.origin(T) == sequencer.origin(T)
    stored = store.entries(T, 0, 10)
    assert [e.leaf for e in stored] == [entry.leaf() for entry, _ in made]
    assert [e.personal for e in stored] == [p.to_bytes() if p else None for _, p in made]
    assert not any(e.erased for e in stored)
    assert [entries.parse_entry(e.leaf) for e in stored] == [entry for entry, _ in made]
    _assert_tree_consistent(store)


def test_submit_is_the_non_blocking_form(store: LogStore) -> None:
    async def append_two(sequencer: Sequencer) -> list[int]:
        futures = [sequencer.submit(T, b.entry(i)[0]) for i in range(2)]
        return [await asyncio.wrap_future(f) for f in futures]

    with _sequencer(store) as sequencer:
        assert asyncio.run(append_two(sequencer)) == [0, 1]
        sequencer.flush(T)
    assert store.log_size(T) == 2


def test_concurrent_appends_share_commits(store: LogStore) -> None:
    """16 threads x 200 appends: distinct contiguous seqs, far fewer transactions than appends."""
    threads, per_thread = 16, 200
    results: dict[int, list[int]] = {}
    start = threading.Barrier(threads)

    made = {
        k: [b.entry(i, personal=i % 4 == 0, tag=f"t{k}-") for i in range(per_thread)]
        for k in range(threads)
    }

    def worker(k: int) -> None:
        start.wait()
        results[k] = [sequencer.append(T, entry, personal) for entry, personal in made[k]]

    with _sequencer(store) as sequencer:
        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        commits = sequencer.commits
    total = threads * per_thread
    every = sorted(s for seqs in results.values() for s in seqs)
    assert every == list(range(total))
    assert all(seqs == sorted(seqs) for seqs in results.values())  # each caller's order kept
    assert commits <= total // 4, f"{commits} transactions for {total} appends"
    leaves = _assert_tree_consistent(store)
    by_seq = {s: (k, i) for k, seqs in results.items() for i, s in enumerate(seqs)}
    for seq in (0, total // 2, total - 1):  # a seq names the entry that was appended
        k, i = by_seq[seq]
        assert leaves[seq] == made[k][i][0].leaf()


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ("tenant mismatch", "is for tenant 'sparkle'"),
        ("payload mismatch", "does not match its commitment"),
        ("payload missing", "none came"),
        ("payload unexpected", "commits to no personal payload"),
        ("tenant id with space", "cannot name a log"),
        ("tenant id with slash", "cannot name a log"),
        ("tenant id of the anchor log", "cannot name a log"),
    ],
)
def test_bad_entries_are_rejected_and_nothing_is_written(
    store: LogStore, mutation: str, message: str
) -> None:
    sealed, payload = b.entry(1, personal=True)
    plain, _ = b.entry(2)
    other_payload = b.entry(3, personal=True)[1]
    tenant = T
    cases: dict[str, tuple[entries.ActionRequested, entries.PersonalPayload | None]] = {
        "tenant mismatch": (b.entry(1, tenant="sparkle")[0], None),
        "payload mismatch": (sealed, other_payload),
        "payload missing": (sealed, None),
        "payload unexpected": (plain, payload),
        "tenant id with space": (plain, None),
        "tenant id with slash": (plain, None),
        "tenant id of the anchor log": (plain, None),
    }
    if mutation == "tenant id with space":
        tenant = "bright smile"
    elif mutation == "tenant id with slash":
        tenant = "bright/smile"
    elif mutation == "tenant id of the anchor log":
        tenant = "~anchors"
    entry, personal = cases[mutation]
    with _sequencer(store) as sequencer:
        with pytest.raises(entries.EntryError, match=message):
            sequencer.submit(tenant, entry, personal)
        assert sequencer.append(T, sealed, payload) == 0  # the log still works
    assert store.log_size(T) == 1
    assert store.tenants() == [T]


def test_pushback_when_the_queue_is_full(store: LogStore) -> None:
    gated = GatedStore(store)
    with _sequencer(gated, max_pending=3) as sequencer:
        first = sequencer.submit(T, b.entry(0)[0])
        assert gated.entered.wait(10)  # the writer holds entry 0 in its (blocked) commit
        queued = [sequencer.submit(T, b.entry(i)[0]) for i in (1, 2, 3)]
        with pytest.raises(Pushback) as caught:
            sequencer.submit(T, b.entry(4)[0])
        assert isinstance(caught.value, AuditError)
        assert (caught.value.tenant, caught.value.pending) == (T, 3)
        assert caught.value.retry_after_s > 0
        assert queued[1].cancel()  # cancelled while queued: never written
        gated.gate.set()
        assert first.result(10) == 0
        assert [queued[0].result(10), queued[2].result(10)] == [1, 2]
        assert sequencer.append(T, b.entry(5)[0]) == 3  # room again
    assert [e.leaf for e in store.entries(T, 0, 10)] == [b.entry(i)[0].leaf() for i in (0, 1, 3, 5)]


def test_a_failed_commit_fails_its_batch_and_the_log_recovers(store: LogStore) -> None:
    failing = FailingStore(store, failures=0)
    with _sequencer(failing) as sequencer:
        assert sequencer.append(T, b.entry(0)[0]) == 0
        failing.failures = 1
        with pytest.raises(StoreError, match="injected"):
            sequencer.append(T, b.entry(1)[0])
        assert sequencer.append(T, b.entry(2)[0]) == 1
    assert [e.leaf for e in store.entries(T, 0, 5)] == [b.entry(i)[0].leaf() for i in (0, 2)]
    _assert_tree_consistent(store)


def test_many_tenants_share_one_transaction(store: LogStore) -> None:
    """What 1,000 active tenants need: their appends queued together commit together."""
    counting = CountingStore(store)
    tenants = [f"clinic-{i:02d}" for i in range(40)]
    with _sequencer(counting) as sequencer:
        counting.gate.clear()
        first = sequencer.submit_many(tenants[0], [b.entry(0, tenant=tenants[0])])
        _eventually(lambda: counting.transactions == 1 or counting.entered.is_set(), "a commit")
        queued = {t: sequencer.submit_many(t, [b.entry(n, tenant=t) for n in range(3)])
                  for t in tenants}  # fmt: skip
        counting.gate.set()
        seqs = {t: [f.result(10) for f in futures] for t, futures in queued.items()}
        assert first[0].result(10) == 0
    assert seqs[tenants[0]] == [1, 2, 3]
    assert all(seqs[t] == [0, 1, 2] for t in tenants[1:])
    assert counting.transactions <= 3, f"{counting.transactions} transactions for 40 tenants"
    for tenant in tenants:
        _assert_tree_consistent(store, tenant)
        checkpoint = store.latest_checkpoint(tenant)
        assert checkpoint is not None and checkpoint.size == store.log_size(tenant)


def test_one_tenants_failure_fails_only_its_own_appends(store: LogStore) -> None:
    counting = CountingStore(store, refuse="clinic-bad")
    good = [f"clinic-{i}" for i in range(5)]
    with _sequencer(counting) as sequencer:
        counting.gate.clear()
        sequencer.submit(good[0], b.entry(0, tenant=good[0])[0])
        _eventually(lambda: counting.entered.is_set(), "a commit waiting at the gate")
        bad = sequencer.submit("clinic-bad", b.entry(0, tenant="clinic-bad")[0])
        fine = [sequencer.submit(t, b.entry(1, tenant=t)[0]) for t in good]
        counting.gate.set()
        with pytest.raises(StoreError, match="clinic-bad"):
            bad.result(10)
        assert [f.result(10) for f in fine] == [1, 0, 0, 0, 0]
        counting.refuse = None
        assert sequencer.append("clinic-bad", b.entry(1, tenant="clinic-bad")[0]) == 0
    assert store.log_size("clinic-bad") == 1
    for tenant in good:
        _assert_tree_consistent(store, tenant)


def test_a_second_writer_fences_off_the_first(store: LogStore) -> None:
    """Another sequencer on the same log: the first one's next batch fails, nothing acked is
    lost, and after reloading it appends after the other's entries."""
    with _sequencer(store) as first:
        assert [first.append(T, b.entry(i)[0]) for i in range(3)] == [0, 1, 2]
        with _sequencer(store) as second:
            assert [second.append(T, b.entry(i, tag="b")[0]) for i in range(2)] == [3, 4]
        with pytest.raises(StoreConflict) as caught:
            first.append(T, b.entry(3)[0])
        assert (caught.value.expected_size, caught.value.actual_size) == (3, 5)
        assert first.append(T, b.entry(4)[0]) == 5
    expected = [b.entry(i)[0] for i in range(3)] + [b.entry(i, tag="b")[0] for i in range(2)]
    assert _assert_tree_consistent(store) == [e.leaf() for e in [*expected, b.entry(4)[0]]]


def test_a_new_sequencer_continues_the_log(store: LogStore) -> None:
    with _sequencer(store) as sequencer:
        assert [sequencer.append(T, b.entry(i)[0]) for i in range(4)] == [0, 1, 2, 3]
    with _sequencer(store) as sequencer:
        assert sequencer.append(T, b.entry(4)[0]) == 4
        assert sequencer.append("sparkle", b.entry(0, tenant="sparkle")[0]) == 0
    _assert_tree_consistent(store)
    assert [c.size for c in store.checkpoints(T)][-2:] == [4, 5]  # on close; on first growth


def test_erasing_a_payload_keeps_leaf_and_proofs(store: LogStore) -> None:
    made = [b.entry(i, personal=True) for i in range(3)]
    with _sequencer(store) as sequencer:
        for entry, personal in made:
            sequencer.append(T, entry, personal)
        checkpoint = sequencer.checkpoint(T)
    assert store.erase_personal(T, 1)
    erased = store.entries(T, 1, 2)[0]
    assert (erased.personal, erased.erased, erased.leaf) == (None, True, made[1][0].leaf())
    proof = store.inclusion_proof(T, 1, 3)
    assert merkle.verify_inclusion(merkle.leaf_hash(erased.leaf), 1, 3, proof, checkpoint.root)
    assert store.root(T, 3) == checkpoint.root


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_follows_within_the_interval(store: LogStore) -> None:
    clock = ManualClock(b.START)
    with _sequencer(store, clock, checkpoint_interval_s=0.2) as sequencer:
        sequencer.append(T, b.entry(0)[0])
        _eventually(lambda: store.latest_checkpoint(T) is not None, "the first checkpoint")
        sequencer.append(T, b.entry(1)[0])
        sequencer.append(T, b.entry(2)[0])
        time.sleep(0.5)  # more than the interval in real time, but the clock did not move
        latest = store.latest_checkpoint(T)
        assert latest is not None and latest.size == 1
        clock.advance(timedelta(seconds=0.2))
        _eventually(
            lambda: getattr(store.latest_checkpoint(T), "size", 0) == 3, "a checkpoint of 3"
        )
    latest = store.latest_checkpoint(T)
    assert latest is not None and latest.at == b.START + timedelta(seconds=0.2)


def test_checkpoint_is_signed_and_its_root_matches(store: LogStore) -> None:
    with _sequencer(store, checkpoint_interval_s=0.05) as sequencer:
        for i in range(5):
            sequencer.append(T, b.entry(i)[0])
        _eventually(
            lambda: getattr(store.latest_checkpoint(T), "size", 0) == 5, "a checkpoint of 5"
        )
    stored_all = store.checkpoints(T)
    assert stored_all
    for stored in stored_all:
        checkpoint, opened = note.open_checkpoint(stored.note, b.origin(), _verifier())
        assert [s.name for s in opened.signatures] == [b.origin()]
        assert (checkpoint.size, checkpoint.root) == (stored.size, stored.root)
        assert checkpoint.root == store.root(T, stored.size)
        assert checkpoint.extensions == ()
    with pytest.raises(note.NoteError):
        note.open_checkpoint(stored_all[-1].note, b.origin(), _verifier("sparkle"))


def test_checkpoint_on_demand(store: LogStore) -> None:
    clock = ManualClock(b.START)
    with _sequencer(store, clock, checkpoint_interval_s=3600) as sequencer:
        empty = sequencer.checkpoint(T)
        assert (empty.size, empty.root) == (0, merkle.EMPTY_ROOT)
        sequencer.append(T, b.entry(0)[0])
        sequencer.submit(T, b.entry(1)[0])
        now = sequencer.checkpoint(T)  # flushes first: covers the submitted entry
        assert now.size == 2 and now.root == store.root(T, 2)
        assert sequencer.checkpoint(T) == now  # did not grow: the same checkpoint
        assert store.latest_checkpoint(T) == now
        assert note.open_checkpoint(now.note, b.origin(), _verifier())[0].size == 2
    assert [c.size for c in store.checkpoints(T, after_size=-1)] == [0, 2]


def test_close_drains_and_writes_a_final_checkpoint(store: LogStore) -> None:
    clock = ManualClock(b.START)
    sequencer = _sequencer(store, clock, checkpoint_interval_s=3600)
    sequencer.append(T, b.entry(0)[0])
    futures = [sequencer.submit(T, b.entry(i)[0]) for i in range(1, 50)]
    sequencer.close()
    assert [f.result(0) for f in futures] == list(range(1, 50))
    latest = store.latest_checkpoint(T)
    assert latest is not None and latest.size == 50
    with pytest.raises(AuditError, match="closed"):
        sequencer.submit(T, b.entry(50)[0])
    sequencer.close()  # again: nothing to do


def test_a_checkpoint_key_must_be_named_after_the_origin(store: LogStore) -> None:
    wrong = note.Signer.from_key(note.generate_key("somewhere.else")[0])
    sequencer = Sequencer(
        store, deployment=b.DEPLOYMENT, signer_for=lambda _: wrong, clock=SystemClock()
    )
    with sequencer, pytest.raises(ConfigError, match=r"is named 'somewhere\.else'"):
        sequencer.append(T, b.entry(0)[0])
    assert store.log_size(T) == 0


def test_submit_many_is_consecutive_and_all_or_nothing(store: LogStore) -> None:
    with _sequencer(store, max_pending=10) as sequencer:
        futures = sequencer.submit_many(T, [b.entry(i) for i in range(6)])
        assert [f.result() for f in futures] == list(range(6))
        sealed, payload = b.entry(6, personal=True)
        with pytest.raises(entries.EntryError, match="none came"):
            sequencer.submit_many(T, [b.entry(7), (sealed, None)])
        with pytest.raises(Pushback):
            sequencer.submit_many(T, [b.entry(8 + i) for i in range(11)])
        assert sequencer.submit_many(T, []) == []
        assert sequencer.append(T, sealed, payload) == 6
    assert store.log_size(T) == 7
