"""Replay on SQLite and PostgreSQL: checkpoints recomputed from the entries, prose re-rendered."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from corral.audit import note
from corral.audit.demo import DEMO_START, DEMO_TENANT, demo_day
from corral.audit.entries import PersonalPayload
from corral.audit.keys import AuditKeys, log_origin
from corral.audit.log import Sequencer
from corral.audit.prose import ERASED, RENDERER_VERSION, RenderContext
from corral.audit.replay import (
    ReplayReport,
    prose_snapshot_path,
    read_log,
    refresh_prose,
    render_log,
    replay,
)
from corral.audit.store import LogStore
from corral.core.clock import ManualClock
from corral.core.errors import AuditError
from tests.audit import _backends as b
from tests.audit._backends import store_fixture, store_url_fixture  # noqa: F401 (fixtures)

D = b.DEPLOYMENT
T = DEMO_TENANT
KEYS = AuditKeys(hashlib.sha256(b"corral replay test seed").digest())
CTX = RenderContext(timezone="America/Los_Angeles", locale="en", country="US")
DAY = list(demo_day())
SIZE = len(DAY)
EVERY = 10  # entries between the checkpoints the test asks for
ERASED_TEXT = "[details erased on request]"  # prose's English wording for an erased payload

_metadata = sa.MetaData()
_entries = sa.Table(
    "audit_entries",
    _metadata,
    sa.Column("tenant", sa.String),
    sa.Column("seq", sa.BigInteger),
    sa.Column("leaf", sa.LargeBinary),
)
_nodes = sa.Table(
    "audit_nodes",
    _metadata,
    sa.Column("tenant", sa.String),
    sa.Column("node", sa.BigInteger),  # (level << 56) | index
    sa.Column("hash", sa.LargeBinary),
)
_personal = sa.Table(
    "audit_personal",
    _metadata,
    sa.Column("tenant", sa.String),
    sa.Column("seq", sa.BigInteger),
    sa.Column("payload", sa.LargeBinary),
)
_checkpoints = sa.Table(
    "audit_checkpoints",
    _metadata,
    sa.Column("tenant", sa.String),
    sa.Column("size", sa.BigInteger),
    sa.Column("note", sa.LargeBinary),
)


@pytest.fixture(name="logged")
def logged_fixture(store: LogStore) -> list[int]:
    """The demo day in ``store``, a checkpoint every 10 entries and at the end; their sizes."""
    clock = ManualClock(DEMO_START)
    with Sequencer(
        store, deployment=D, signer_for=KEYS.signer, clock=clock, checkpoint_interval_s=1e6
    ) as sequencer:
        for n, (entry, payload) in enumerate(DAY, start=1):
            clock.set(max(entry.at, clock.now()))
            sequencer.append(T, entry, payload)
            if n % EVERY == 0 or n == SIZE:
                sequencer.checkpoint(T)
    sizes = [cp.size for cp in store.checkpoints(T)]
    assert {10, 20, 30, SIZE} <= set(sizes), f"setup: checkpoints at {sizes}"
    return sizes


@pytest.fixture(name="snapshot")
def snapshot_fixture(tmp_path: Path) -> Path:
    return prose_snapshot_path(tmp_path / "data", T, CTX)


def _replay(store: LogStore, snapshot: Path, *, deployment: str = D) -> ReplayReport:
    return replay(store, KEYS, deployment=deployment, tenant=T, ctx=CTX, snapshot=snapshot)


def _saved(store: LogStore, snapshot: Path) -> ReplayReport:
    """A first replay, which saves the prose; fails the test unless it found nothing wrong."""
    report = _replay(store, snapshot)
    assert report.ok, f"setup: replay of the untouched log found {report.differences}"
    assert snapshot.is_file(), "setup: replay saved no prose"
    return report


def _checkpoint_sizes_named(report: ReplayReport) -> list[int]:
    return sorted(
        int(m.group(1))
        for d in report.differences
        if (m := re.match(r"checkpoint at size (\d+): ", d)) is not None
    )


def _leaf(store: LogStore, seq: int) -> bytes:
    return store.entries(T, seq, seq + 1)[0].leaf


def _set_leaf(store: LogStore, seq: int, leaf: bytes) -> None:
    with store.engine.begin() as conn:
        done = conn.execute(
            sa.update(_entries).where(_entries.c.tenant == T, _entries.c.seq == seq),
            {"leaf": leaf},
        )
    assert done.rowcount == 1, f"setup: no entry {seq} to tamper with"


# ---------------------------------------------------------------------------------------------
# An untouched log


def test_first_replay_saves_the_prose_and_the_second_finds_it_unchanged(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    first = _replay(store, snapshot)
    assert first.ok, f"untouched log: {first.differences}"
    assert (first.entries, first.checkpoints) == (SIZE, len(logged))
    assert any("saved it now" in n for n in first.notes), f"no note of saving: {first.notes}"
    lines = snapshot.read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        f"# corral prose renderer={RENDERER_VERSION} locale=en"
        f" timezone=America/Los_Angeles country=US size={SIZE}"
    ), "the snapshot's first line does not name how and how much was rendered"
    digests = [hashlib.sha256(line.encode()).hexdigest() for line in render_log(store, T, CTX)]
    assert lines[1:] == digests, "the snapshot is not the digests of the rendered prose"
    assert first.prose_lines == len(lines) - 1 > 0

    second = _replay(store, snapshot)
    assert second.ok, f"second replay of an untouched log: {second.differences}"
    assert not any("saved" in n for n in second.notes), f"saved again: {second.notes}"
    assert second.prose_lines == first.prose_lines, "second replay compared another line count"
    assert snapshot.read_text(encoding="utf-8").splitlines() == lines, "snapshot was rewritten"


def test_replay_of_a_tenant_without_a_log_is_an_error(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    with pytest.raises(AuditError, match="no audit log for tenant 'nobody'"):
        replay(store, KEYS, deployment=D, tenant="nobody", ctx=CTX, snapshot=snapshot)


# ---------------------------------------------------------------------------------------------
# Tampering


@pytest.mark.parametrize("seq", [0, 10, 19, SIZE - 1])
def test_a_changed_leaf_byte_is_reported_by_the_checkpoints_that_cover_it(
    store: LogStore, logged: list[int], snapshot: Path, seq: int
) -> None:
    leaf = _leaf(store, seq)
    at = leaf.index(b'"id":"ent_') + len(b'"id":"ent_')  # the id's first digit: still parses
    _set_leaf(store, seq, leaf[:at] + b"9" + leaf[at + 1 :])

    report = _replay(store, snapshot)
    covering = [size for size in logged if size > seq]
    assert _checkpoint_sizes_named(report) == covering, (
        f"leaf {seq} changed: expected differences for checkpoints {covering}, got"
        f" {report.differences}"
    )
    for size in covering:
        assert f"checkpoint at size {size}: the entries now give a different root" in (
            report.differences
        )


def test_a_leaf_that_no_longer_parses_is_reported_not_raised(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    _saved(store, snapshot)
    leaf = _leaf(store, 25)
    _set_leaf(store, 25, leaf[:-1] + b" ")  # the closing brace gone: not JSON any more

    report = _replay(store, snapshot)
    assert _checkpoint_sizes_named(report) == [30, SIZE], f"got {report.differences}"
    assert any(d.startswith("prose") for d in report.differences), (
        f"the unrenderable entry is not reported as a prose difference: {report.differences}"
    )


def test_a_payload_that_no_longer_matches_its_commitment_is_reported_not_raised(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    _saved(store, snapshot)
    seq, _, payload = next(item for item in read_log(store, T) if item[2] is not None)
    assert isinstance(payload, PersonalPayload)
    changed = PersonalPayload(salt=payload.salt, data={**payload.data, "extra": "changed"})
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(_personal).where(_personal.c.tenant == T, _personal.c.seq == seq),
            {"payload": changed.to_bytes()},
        )

    report = _replay(store, snapshot)
    assert len(report.differences) == 1, f"expected one difference: {report.differences}"
    assert report.differences[0].startswith("prose: the entries cannot be rendered: ")


@pytest.mark.parametrize(
    ("level", "index"),
    [(5, 0), (0, 3), (2, 4)],
    ids=["in-the-root", "a-leaf-hash", "an-inner-node"],
)
def test_a_changed_node_hash_is_reported_as_tree_nodes(
    store: LogStore, logged: list[int], snapshot: Path, level: int, index: int
) -> None:
    with store.engine.begin() as conn:
        done = conn.execute(
            sa.update(_nodes).where(_nodes.c.tenant == T, _nodes.c.node == (level << 56) | index),
            {"hash": bytes(32)},
        )
    assert done.rowcount == 1, f"setup: no node (level {level}, index {index})"

    report = _replay(store, snapshot)
    assert [d for d in report.differences if d.startswith("tree nodes")], (
        f"node (level {level}, index {index}) changed, but no tree nodes difference:"
        f" {report.differences}"
    )
    assert _checkpoint_sizes_named(report) == [], "the entries and checkpoints are untouched"


def test_a_checkpoint_signed_by_another_key_is_reported(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    stored = {cp.size: cp for cp in store.checkpoints(T)}[20]
    origin = log_origin(D, T)
    other = AuditKeys(hashlib.sha256(b"another seed").digest()).signer(origin)
    forged = note.sign(note.Checkpoint(origin, 20, stored.root).format(), [other])
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(_checkpoints).where(_checkpoints.c.tenant == T, _checkpoints.c.size == 20),
            {"note": forged},
        )

    report = _replay(store, snapshot)
    assert len(report.differences) == 1, f"expected one difference: {report.differences}"
    assert report.differences[0].startswith("checkpoint at size 20: signature does not verify")


def test_an_edited_prose_line_is_reported_with_its_text_now(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    _saved(store, snapshot)
    lines = snapshot.read_text(encoding="utf-8").splitlines()
    lines[5] = hashlib.sha256(b"another sentence").hexdigest()  # line 5: the header is line 0
    snapshot.write_text("\n".join(lines) + "\n", encoding="utf-8")

    report = _replay(store, snapshot)
    now = render_log(store, T, CTX)[4]
    assert report.differences == [f"prose line 5: differs from the saved rendering, now {now!r}"]


def test_the_saved_prose_holds_no_personal_details(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    _saved(store, snapshot)
    text = snapshot.read_text(encoding="utf-8")
    assert "555" not in text and "Ana" not in text
    assert all(len(line) == 64 for line in text.splitlines()[1:])


def test_refresh_after_an_erasure_keeps_replay_clean(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    _saved(store, snapshot)
    erased = next(seq for seq, _, personal in read_log(store, T) if personal is not None)
    assert store.erase_personal(T, erased)
    assert not _replay(store, snapshot).ok, "an erasure changes the prose"
    assert refresh_prose(snapshot.parent.parent, store, T) == 1
    assert _replay(store, snapshot).ok


def test_entries_logged_after_the_prose_was_saved_are_not_compared(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    saved = _saved(store, snapshot)
    clock = ManualClock(DEMO_START + timedelta(days=1))
    with Sequencer(store, deployment=D, signer_for=KEYS.signer, clock=clock) as sequencer:
        for n in range(3):
            sequencer.append(T, *b.entry(n, tenant=T, tag="late"))
        sequencer.checkpoint(T)

    report = _replay(store, snapshot)
    assert report.ok, f"new entries made differences: {report.differences}"
    assert report.entries == SIZE + 3
    assert report.prose_lines == saved.prose_lines, "prose past the saved size was compared"
    assert "3 entries logged since the prose was saved" in report.notes, f"{report.notes}"


def test_another_deployment_reports_the_origin(
    store: LogStore, logged: list[int], snapshot: Path
) -> None:
    report = _replay(store, snapshot, deployment="corral.elsewhere")
    assert report.differences == [
        "log origin is 'corral.test/tenants/brightsmile', but this deployment's would be"
        " 'corral.elsewhere/tenants/brightsmile'"
    ]


# ---------------------------------------------------------------------------------------------
# Rendering


def test_render_log_is_deterministic_and_speaks_the_locale(
    store: LogStore, logged: list[int]
) -> None:
    english = render_log(store, T, CTX)
    assert render_log(store, T, CTX) == english, "two renderings differ"
    spanish = render_log(store, T, RenderContext("America/Los_Angeles", "es", "US"))
    assert len(spanish) == len(english) > 0
    assert spanish != english, "es rendered the same text as en"


def test_an_erased_payload_reads_as_erased_and_renders_so(
    store: LogStore, logged: list[int]
) -> None:
    before = list(read_log(store, T))
    personal = [seq for seq, _, p in before if isinstance(p, PersonalPayload)]
    assert personal, "setup: the demo day has no personal payloads"
    erased = personal[-1]
    lines_before = render_log(store, T, CTX)
    assert store.erase_personal(T, erased), "setup: nothing erased"

    after = list(read_log(store, T))
    assert after[erased][2] is ERASED, f"entry {erased} reads as {after[erased][2]!r}"
    unchanged = [i for i in range(SIZE) if i != erased]
    assert [after[i] for i in unchanged] == [before[i] for i in unchanged], "others changed"
    lines_after = render_log(store, T, CTX)
    changed = [(old, new) for old, new in zip(lines_before, lines_after, strict=True) if old != new]
    assert len(changed) == 1, f"erasing one payload changed {len(changed)} lines"
    old, new = changed[0]
    assert ERASED_TEXT not in old and ERASED_TEXT in new, f"was {old!r}, now {new!r}"
