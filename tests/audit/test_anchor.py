"""Anchoring rounds on SQLite and PostgreSQL: the anchor log, its write-once store, repair."""

from __future__ import annotations

import builtins
import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from corral.audit import merkle, note
from corral.audit.anchor import ANCHOR_LOG, Anchorer
from corral.audit.anchor_store import (
    AnchorRecord,
    AnchorStore,
    AnchorStoreUnavailable,
    DynamoDBAnchorStore,
    LocalAnchorStore,
)
from corral.audit.keys import AuditKeys, anchor_origin, log_origin
from corral.audit.log import Sequencer
from corral.audit.store import LogStore, StoredCheckpoint
from corral.core.clock import ManualClock
from corral.core.errors import AuditError
from tests import dynalite
from tests.audit import _backends as b
from tests.audit._backends import store_fixture, store_url_fixture  # noqa: F401 (fixtures)

D = b.DEPLOYMENT
A, B = "alpha", "bravo"  # a round appends fresh checkpoints in tenant order: A's first
KEYS = AuditKeys(hashlib.sha256(b"corral anchor test seed").digest())
OTHER_KEYS = AuditKeys(hashlib.sha256(b"someone else's seed").digest())


@pytest.fixture(name="clock")
def clock_fixture() -> ManualClock:
    return ManualClock(b.START)


@pytest.fixture(name="anchors")
def anchors_fixture(tmp_path: Path) -> LocalAnchorStore:
    return LocalAnchorStore(tmp_path / "anchors.db")


@pytest.fixture(
    name="any_anchors",
    params=["local", pytest.param("dynamodb", marks=pytest.mark.dynalite)],
)
def any_anchors_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AnchorStore:
    """Each anchor store backend, empty: a fresh SQLite file, or a fresh dynalite table."""
    if request.param == "local":
        return LocalAnchorStore(tmp_path / "anchors.db")
    endpoint: str = request.getfixturevalue("dynalite_endpoint")
    dynamo = DynamoDBAnchorStore(f"anchors-{uuid.uuid4().hex}", client=dynalite.client(endpoint))
    dynamo.create_table()
    return dynamo


def _anchorer(store: LogStore, anchors: AnchorStore, clock: ManualClock) -> Anchorer:
    return Anchorer(store, anchors, KEYS, deployment=D, clock=clock)


def _grow(store: LogStore, clock: ManualClock, tenant: str, count: int) -> StoredCheckpoint:
    """Append ``count`` entries to ``tenant``'s log and checkpoint it; the new checkpoint."""
    clock.advance(timedelta(minutes=1))
    start = store.log_size(tenant)
    with Sequencer(
        store, deployment=D, signer_for=KEYS.signer, clock=clock, checkpoint_interval_s=1e6
    ) as sequencer:
        for n in range(start, start + count):
            sequencer.append(tenant, *b.entry(n, tenant=tenant, tag=tenant))
        checkpoint = sequencer.checkpoint(tenant)
    assert checkpoint.size == start + count, f"{tenant}: checkpoint of the wrong size"
    return checkpoint


def _body(tenant: str, checkpoint: StoredCheckpoint) -> bytes:
    """The anchor log leaf a tenant checkpoint should become, from the checkpoint's fields."""
    body = note.Checkpoint(log_origin(D, tenant), checkpoint.size, checkpoint.root).format()
    return body.encode()


def _anchor_leaves(store: LogStore) -> list[bytes]:
    return [e.leaf for e in store.entries(ANCHOR_LOG, 0, store.log_size(ANCHOR_LOG))]


def _anchor_verifier() -> note.Verifier:
    return KEYS.signer(anchor_origin(D)).verifier()


def _sizes(anchors: AnchorStore) -> list[int]:
    return [record.size for record in anchors.list(D)]


# ---------------------------------------------------------------------------------------------
# Rounds


def test_rounds_append_only_fresh_checkpoints_and_write_each_anchor_once(
    store: LogStore, any_anchors: AnchorStore, clock: ManualClock
) -> None:
    anchors = any_anchors
    a1, b1 = _grow(store, clock, A, 3), _grow(store, clock, B, 2)
    anchorer = _anchorer(store, anchors, clock)
    assert anchorer.verifier_key == _anchor_verifier().vkey, "anchorer signs with another key"

    first = anchorer.anchor_now()
    assert first is not None, "a round with two fresh checkpoints anchored nothing"
    leaves = _anchor_leaves(store)
    assert leaves == [_body(A, a1), _body(B, b1)], "anchor log leaves are not the two bodies"
    assert (first.deployment, first.size) == (D, 2)
    assert first.root == merkle.root(leaves), "anchor root is not the Merkle root of its leaves"
    assert first.time == clock.now(), "anchor time is not the clock's"
    signed, _ = note.open_checkpoint(first.note, anchor_origin(D), _anchor_verifier())
    assert (signed.size, signed.root) == (2, first.root), "signed anchor disagrees with record"
    assert anchors.list(D) == [first], "the anchor store does not hold exactly the one anchor"

    clock.advance(timedelta(minutes=1))
    assert anchorer.anchor_now() is None, "a round with nothing new returned an anchor"
    assert anchors.list(D) == [first], "a round with nothing new wrote to the anchor store"
    assert store.log_size(ANCHOR_LOG) == 2, "a round with nothing new grew the anchor log"

    a2 = _grow(store, clock, A, 2)
    second = anchorer.anchor_now()
    assert second is not None, "a round after tenant A grew anchored nothing"
    leaves = _anchor_leaves(store)
    assert leaves[2:] == [_body(A, a2)], "third round appended more than A's new checkpoint"
    assert (second.size, second.root) == (3, merkle.root(leaves))
    assert anchors.list(D) == [first, second]
    link = anchorer.consistency(first.size, second.size)
    assert merkle.verify_consistency(first.size, second.size, first.root, second.root, link), (
        "the two anchors are not linked by a valid consistency proof"
    )


def test_a_tenant_with_only_an_empty_checkpoint_is_not_anchored(
    store: LogStore, anchors: LocalAnchorStore, clock: ManualClock
) -> None:
    with Sequencer(store, deployment=D, signer_for=KEYS.signer, clock=clock) as sequencer:
        assert sequencer.checkpoint(A).size == 0
    assert _anchorer(store, anchors, clock).anchor_now() is None, "an empty log was anchored"
    assert anchors.list(D) == []


# ---------------------------------------------------------------------------------------------
# Proofs


@pytest.fixture(name="three_rounds")
def three_rounds_fixture(
    store: LogStore, anchors: LocalAnchorStore, clock: ManualClock
) -> Anchorer:
    """Round 1 anchors A(3) and B(2) at size 2, round 2 A(5) at 3, round 3 A(6) and B(4) at 5."""
    anchorer = _anchorer(store, anchors, clock)
    _grow(store, clock, A, 3)
    _grow(store, clock, B, 2)
    assert anchorer.anchor_now() is not None
    _grow(store, clock, A, 2)
    assert anchorer.anchor_now() is not None
    _grow(store, clock, A, 1)
    _grow(store, clock, B, 2)
    assert anchorer.anchor_now() is not None
    assert _sizes(anchors) == [2, 3, 5], "setup: rounds anchored other sizes"
    return anchorer


@pytest.mark.parametrize("tenant", [A, B])
def test_proofs_include_each_checkpoint_in_the_first_anchor_that_has_it(
    store: LogStore, anchors: LocalAnchorStore, three_rounds: Anchorer, tenant: str
) -> None:
    proofs = three_rounds.proofs(tenant)
    stored = {cp.size: cp for cp in store.checkpoints(tenant)}
    anchored = [2, 3, 5]
    expected_sizes = {A: [3, 5, 6], B: [2, 4]}[tenant]
    seen_sizes = []
    for proof in proofs:
        where = f"{tenant} proof at anchor log index {proof.index}"
        record = anchors.get(D, proof.anchor.size)
        assert record == proof.anchor, f"{where}: its anchor is not the anchor store's record"
        assert merkle.verify_inclusion(
            merkle.leaf_hash(proof.leaf), proof.index, record.size, proof.inclusion, record.root
        ), f"{where}: inclusion does not verify against the anchor's root"
        checkpoint = note.Checkpoint.parse(proof.leaf.decode())
        assert checkpoint.origin == log_origin(D, tenant), f"{where}: leaf of another log"
        assert checkpoint.size in stored, f"{where}: leaf names a size never checkpointed"
        assert checkpoint.root == stored[checkpoint.size].root, f"{where}: leaf root differs"
        earlier = [size for size in anchored if size < record.size]
        assert record.size > proof.index, f"{where}: anchor of size {record.size} lacks it"
        assert all(size <= proof.index for size in earlier), (
            f"{where}: anchor {record.size} is not the first including it (sizes {earlier})"
        )
        seen_sizes.append(checkpoint.size)
    assert seen_sizes == expected_sizes, f"{tenant}: proofs for other checkpoints"


def test_proofs_of_a_tenant_never_hold_another_tenants_checkpoints(
    store: LogStore, three_rounds: Anchorer
) -> None:
    proofs = {tenant: three_rounds.proofs(tenant) for tenant in (A, B)}
    indexes = {tenant: {p.index for p in found} for tenant, found in proofs.items()}
    assert indexes[A] == {0, 2, 3} and indexes[B] == {1, 4}, f"wrong leaves: {indexes}"
    for tenant, found in proofs.items():
        origins = {note.Checkpoint.parse(p.leaf.decode()).origin for p in found}
        assert origins == {log_origin(D, tenant)}, f"proofs for {tenant} hold {origins}"
    assert three_rounds.proofs("charlie") == [], "a tenant never anchored has proofs"


# ---------------------------------------------------------------------------------------------
# Crash repair and write-once


class PutFailsOnce:
    """An anchor store whose next ``put`` is lost (once ``armed``): a crash before the put."""

    def __init__(self, inner: AnchorStore) -> None:
        self.inner = inner
        self.armed = False

    def put(self, record: AnchorRecord) -> None:
        if self.armed:
            self.armed = False
            raise AnchorStoreUnavailable("test", "the process died before the put")
        self.inner.put(record)

    def get(self, deployment: str, size: int) -> AnchorRecord | None:
        return self.inner.get(deployment, size)

    def latest(self, deployment: str) -> AnchorRecord | None:
        return self.inner.latest(deployment)

    def list(
        self, deployment: str, *, after_size: int = 0, limit: int = 1000
    ) -> builtins.list[AnchorRecord]:
        return self.inner.list(deployment, after_size=after_size, limit=limit)


@pytest.mark.parametrize("more", [False, True], ids=["nothing-new-after", "growth-after"])
def test_next_round_puts_the_anchor_a_crash_kept_from_the_store(
    store: LogStore, anchors: LocalAnchorStore, clock: ManualClock, more: bool
) -> None:
    flaky = PutFailsOnce(anchors)
    anchorer = _anchorer(store, flaky, clock)
    _grow(store, clock, A, 3)
    _grow(store, clock, B, 2)
    assert anchorer.anchor_now() is not None
    _grow(store, clock, A, 1)
    flaky.armed = True
    with pytest.raises(AnchorStoreUnavailable):
        anchorer.anchor_now()
    assert _sizes(anchors) == [2], "setup: the lost put reached the store"
    lost = store.latest_checkpoint(ANCHOR_LOG)
    assert lost is not None and lost.size == 3, "the anchor log was not committed before the put"

    if more:
        _grow(store, clock, B, 1)
    record = anchorer.anchor_now()

    repaired = anchors.get(D, 3)
    assert repaired is not None, "the next round did not put the missing anchor"
    assert repaired.root == merkle.root(_anchor_leaves(store)[:3]), "repaired anchor: wrong root"
    assert repaired.note == lost.note, "repaired anchor is not the committed signed checkpoint"
    note.open_checkpoint(repaired.note, anchor_origin(D), _anchor_verifier())
    if more:
        assert record is not None and record.size == 4, "the round did not go on after repair"
        assert record.root == merkle.root(_anchor_leaves(store))
        assert _sizes(anchors) == [2, 3, 4]
    else:
        assert record is None, "a round with nothing new after the repair returned an anchor"
        assert _sizes(anchors) == [2, 3]


def test_a_round_interrupted_before_signing_is_signed_by_the_next(
    store: LogStore, anchors: LocalAnchorStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash after the anchor log's leaves were committed, before its checkpoint was stored.
    anchorer = _anchorer(store, anchors, clock)
    a1 = _grow(store, clock, A, 3)
    add_checkpoint = store.add_checkpoint

    def crash(*args: object, **kwargs: object) -> None:
        raise AuditError("the process died before the checkpoint")

    monkeypatch.setattr(store, "add_checkpoint", crash)
    with pytest.raises(AuditError, match="died"):
        anchorer.anchor_now()
    monkeypatch.setattr(store, "add_checkpoint", add_checkpoint)
    assert _anchor_leaves(store) == [_body(A, a1)], "setup: the leaves were not committed"

    record = anchorer.anchor_now()
    assert record is not None, "the appended but unsigned checkpoint is never anchored"
    assert (record.size, record.root) == (1, merkle.root([_body(A, a1)]))
    assert anchors.list(D) == [record]
    assert [p.anchor for p in anchorer.proofs(A)] == [record], "A cannot prove its anchoring"


def _planted(root: bytes, signer_keys: AuditKeys) -> AnchorRecord:
    body = note.Checkpoint(anchor_origin(D), 2, root).format()
    signed = note.sign(body, [signer_keys.signer(anchor_origin(D))])
    return AnchorRecord(D, 2, root, b.START, signed)


@pytest.mark.parametrize("same_root", [False, True], ids=["other-root", "same-root-other-note"])
def test_a_different_anchor_already_stored_at_the_size_fails_the_round(
    store: LogStore, anchors: LocalAnchorStore, clock: ManualClock, same_root: bool
) -> None:
    a1, b1 = _grow(store, clock, A, 3), _grow(store, clock, B, 2)
    root = merkle.root([_body(A, a1), _body(B, b1)])
    plant = _planted(root if same_root else hashlib.sha256(b"planted").digest(), OTHER_KEYS)
    anchors.put(plant)
    anchorer = _anchorer(store, anchors, clock)
    with pytest.raises(AuditError, match="already holds a different anchor at size 2"):
        anchorer.anchor_now()
    assert anchors.list(D) == [plant], "the planted anchor was changed"


def test_the_chain_anchors_on_its_own_every_interval(tmp_path: Path) -> None:
    import time

    from corral.audit.chain import AuditChain
    from corral.audit.demo import demo_day
    from corral.core.clock import SystemClock

    store = LogStore.from_url(f"sqlite:///{tmp_path / 'audit.db'}")
    store.create_schema()
    anchors = LocalAnchorStore(tmp_path / "anchors.db")
    chain = AuditChain(
        deployment="corral.test",
        store=store,
        keys=AuditKeys(bytes(32)),
        anchors=anchors,
        clock=SystemClock(),
        checkpoint_interval_s=0.05,
        anchor_interval_s=0.1,
    )
    with chain:
        entry, payload = next(iter(demo_day()))
        chain.sequencer.append("brightsmile", entry, payload)
        chain.start_anchoring()
        deadline = time.monotonic() + 20
        while anchors.latest("corral.test") is None and time.monotonic() < deadline:
            time.sleep(0.05)
    latest = anchors.latest("corral.test")
    assert latest is not None, "no anchor written by the background anchoring"
    assert latest.size == 1
