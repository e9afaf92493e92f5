"""Template maintenance: one round (:func:`run_once`) against catalogs written per test and a
real audit chain, and the schedule (:class:`Maintenance`) that runs rounds in control."""

from __future__ import annotations

import asyncio
import doctest
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from corral.audit import RenderContext, parse_entry, render_timeline
from corral.audit.chain import AuditChain, open_chain
from corral.audit.entries import TemplateActivated, TemplateNotice
from corral.core.clock import ManualClock
from corral.core.ids import SequentialIds
from corral.core.settings import load_settings
from corral.templates import (
    Activations,
    ActivationStore,
    Catalog,
    CorruptActivation,
    Maintenance,
    Round,
    maintenance,
    run_once,
)
from tests.templates._catalogs import NAME, T0, when, write_version

TENANT = "brightsmile"
OTHER = "a-clinic"
SECURITY: dict[str, Any] = {"security": True}
#: 1.0.0 is deprecated and sunsets ten days after T0 (T0 is 2026-11-02 17:00 UTC).
SUNSETTING: dict[str, Any] = {"deprecated_at": when("2026-10-01"), "sunset_at": when("2026-11-12")}


class World:
    """A catalog directory, an activation store and a real audit chain (a manual clock)."""

    def __init__(self, tmp: Path, chain: AuditChain) -> None:
        self.root = tmp / "catalog"
        self.root.mkdir()
        self.store = ActivationStore.from_url(f"sqlite:///{tmp / 'templates.db'}")
        self.store.create_schema()
        self.chain = chain
        self.ids = SequentialIds()

    def versions(self, *specs: str | tuple[str, dict[str, Any]]) -> Activations:
        for spec in specs:
            version, fields = (spec, {}) if isinstance(spec, str) else spec
            write_version(self.root, version, **fields)
        return self.service()

    def service(self, sequencer: Any = "chain") -> Activations:
        chosen = self.chain.sequencer if sequencer == "chain" else sequencer
        return Activations(Catalog.load(self.root), self.store, ids=self.ids, sequencer=chosen)

    def entries(self, tenant: str = TENANT) -> list[Any]:
        size = self.chain.store.log_size(tenant)
        return [parse_entry(e.leaf) for e in self.chain.store.entries(tenant, 0, size)]

    def versions_pinned(self) -> dict[str, str]:
        return {a.tenant: a.version for a in self.store.activations()}


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[World]:
    clock = ManualClock(T0)
    with open_chain(load_settings(data_dir=tmp_path / "data"), clock) as chain:
        world = World(tmp_path, chain)
        try:
            yield world
        finally:
            world.store.close()


# ------------------------------------------------------------------------------ run_once


def test_a_security_patch_is_applied_and_audited(world: World) -> None:
    service = world.versions("1.0.0", ("1.0.1", SECURITY), "1.0.2", ("1.1.0", SECURITY))
    service.activate(TENANT, NAME, "1.0.0", T0)
    at = T0 + timedelta(hours=1)
    done = run_once(service, at)
    (applied,) = done.applied
    assert (applied.previous, applied.activation.version, applied.index) == ("1.0.0", "1.0.1", 1)
    assert done.noticed == [] and done.at == at
    # Durable in the chain before run_once returned, at the round's time, by the system.
    entry = world.entries()[-1]
    assert isinstance(entry, TemplateActivated)
    assert (entry.data.version, entry.data.automatic, entry.at, entry.actor.kind) == (
        "1.0.1",
        True,
        at,
        "system",
    )
    # The plain patch 1.0.2 and the minor 1.1.0 (even marked security) wait for the owner.
    assert run_once(service, at + timedelta(days=1)).applied == []
    assert world.versions_pinned() == {TENANT: "1.0.1"}


def test_a_patch_not_marked_security_is_not_applied(world: World) -> None:
    service = world.versions("1.0.0", "1.0.1")
    service.activate(TENANT, NAME, "1.0.0", T0)
    assert run_once(service, T0 + timedelta(days=1)) == Round(T0 + timedelta(days=1), [], [])
    assert world.versions_pinned() == {TENANT: "1.0.0"}
    assert [e.kind for e in world.entries()] == ["template.activated"]  # the activation only


def test_notice_of_a_coming_sunset_is_recorded_once(world: World) -> None:
    service = world.versions(("1.0.0", SUNSETTING), "1.1.0")
    activated = service.activate(TENANT, NAME, "1.0.0", T0 - timedelta(days=40))
    # 40 days before the sunset: deprecated, but the sunset is not near; nothing recorded.
    assert run_once(service, T0 - timedelta(days=30)).noticed == []

    (noticed,) = run_once(service, T0).noticed  # ten days before: within warn_days (14)
    entry = noticed.entry
    assert noticed.index == 1 and world.entries()[-1] == entry
    assert isinstance(entry, TemplateNotice) and entry.at == T0
    assert entry.data.model_dump() == {
        "activation_id": activated.activation.activation_id,
        "template": NAME,
        "version": "1.0.0",
        "notice": "sunsetting",
        "deprecated_at": "2026-10-01T00:00:00.000000Z",
        "sunset_at": "2026-11-12T00:00:00.000000Z",
        "replacement": "1.1.0",
    }
    (record,) = world.store.notices(TENANT)
    assert (record.activation_id, record.notice, record.entry) == (
        activated.activation.activation_id,
        "sunsetting",
        entry,
    )
    (line,) = render_timeline([(entry, None)], RenderContext("America/Los_Angeles"))
    assert line.sentence == (
        f"The system gave notice that version 1.0.0 of the agent setup “{NAME}” will be "
        f"retired on Nov 11, 2026 (activation {activated.activation.activation_id}). "
        "The newest version is 1.1.0."
    )

    # Told once per activation and date: not the next day, not after the date either.
    for later in (timedelta(days=1), timedelta(days=11), timedelta(days=100)):
        assert run_once(service, T0 + later).noticed == []
    assert [e.kind for e in world.entries()] == ["template.activated", "template.notice"]
    assert len(world.store.notices()) == 1


def test_each_activation_is_told_and_one_first_seen_after_the_date_is_told_it_has_passed(
    world: World,
) -> None:
    service = world.versions(("1.0.0", SUNSETTING))
    service.activate(TENANT, NAME, "1.0.0", T0)
    service.activate(OTHER, NAME, "1.0.0", T0)
    noticed = run_once(service, T0 + timedelta(days=20)).noticed  # the sunset has passed
    assert sorted((n.notice.tenant, n.entry.data.notice) for n in noticed) == [
        (OTHER, "sunset"),
        (TENANT, "sunset"),
    ]
    assert [e.kind for e in world.entries(OTHER)][-1] == "template.notice"
    assert run_once(service, T0 + timedelta(days=21)).noticed == []


def test_an_activation_upgraded_in_the_round_is_not_told_of_its_old_version(
    world: World,
) -> None:
    service = world.versions(("1.0.0", SUNSETTING), ("1.0.1", SECURITY))
    service.activate(TENANT, NAME, "1.0.0", T0)
    done = run_once(service, T0 + timedelta(days=1))
    assert [a.activation.version for a in done.applied] == ["1.0.1"] and done.noticed == []


def test_a_failed_append_records_no_notice_and_the_next_round_gives_it(world: World) -> None:
    world.versions(("1.0.0", SUNSETTING))
    world.service().activate(TENANT, NAME, "1.0.0", T0)
    with pytest.raises(OSError, match="audit disk full"):
        run_once(world.service(sequencer=FailingSequencer()), T0)
    assert world.store.notices() == []
    assert [n.entry.data.notice for n in run_once(world.service(), T0).noticed] == ["sunsetting"]


class FailingSequencer:
    def submit(self, tenant: str, entry: object, personal: object = None) -> Future[int]:
        future: Future[int] = Future()
        future.set_exception(OSError("audit disk full"))
        return future


def _rows(world: World, table: str) -> list[tuple[Any, ...]]:
    loaded = sa.Table(table, sa.MetaData(), autoload_with=world.store.engine)
    with world.store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(loaded.select())]


def _corrupt(world: World, table: str, tenant: str, **values: Any) -> None:
    loaded = sa.Table(table, sa.MetaData(), autoload_with=world.store.engine)
    with world.store.engine.begin() as conn:
        conn.execute(loaded.update().where(loaded.c.tenant == tenant).values(**values))


ROW = "template_activations row 'act_0000000001' (tenant 'brightsmile'): "
NOTICE_ROW = (
    "template_notices row 'act_0000000001' (tenant 'brightsmile', "
    "sunset_at 2026-11-12 00:00:00+00:00): "
)


@pytest.mark.parametrize(
    ("table", "values", "message"),
    [
        ("template_activations", {"entry": "{not json"},
         ROW + "entry is not a valid audit entry: entry is not JSON"),
        ("template_activations", {"version": "1.1.0"},
         ROW + "version is '1.1.0' but its audit entry ent_0000000001 says '1.0.0'"),
        ("template_notices", {"entry": '{"kind":"x","v":1}'},
         NOTICE_ROW + "entry is a 'x', not template.notice"),
        ("template_notices", {"version": "0.9.0"},
         NOTICE_ROW + "version is '0.9.0' but its audit entry ent_0000000003 says '1.0.0'"),
    ],
    ids=["activation not JSON", "activation version edited", "notice of another kind",
         "notice version edited"],
)  # fmt: skip
def test_a_corrupted_row_stops_the_round_with_a_clear_error_and_changes_nothing(
    world: World, table: str, values: dict[str, Any], message: str
) -> None:
    write_version(world.root, "1.0.0", name="billing")
    service = world.versions(("1.0.0", SUNSETTING), "1.1.0")
    service.activate(TENANT, NAME, "1.0.0", T0 - timedelta(days=40))
    service.activate(OTHER, "billing", "1.0.0", T0 - timedelta(days=40))
    assert len(run_once(service, T0).noticed) == 1  # the tenant is told of 1.0.0's sunset
    write_version(world.root, "1.0.1", name="billing", security=True)
    service = world.service()  # the other tenant now has a security patch due
    _corrupt(world, table, TENANT, **values)
    before = [_rows(world, t) for t in ("template_activations", "template_notices")]
    sizes = {t: world.chain.store.log_size(t) for t in (TENANT, OTHER)}
    with pytest.raises(CorruptActivation) as caught:
        run_once(service, T0 + timedelta(days=1))
    assert str(caught.value).startswith(message), str(caught.value)
    assert caught.value.table == table
    # Nothing changed: the healthy tenant was not upgraded, nothing was appended.
    assert [_rows(world, t) for t in ("template_activations", "template_notices")] == before
    assert {t: world.chain.store.log_size(t) for t in (TENANT, OTHER)} == sizes


def test_the_module_example_runs() -> None:
    assert doctest.testmod(maintenance).failed == 0


# ------------------------------------------------------------------------------ schedule


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_the_schedule_runs_rounds_at_the_clocks_time_and_stops_cleanly(world: World) -> None:
    service = world.versions("1.0.0", ("1.0.1", SECURITY))
    service.activate(TENANT, NAME, "1.0.0", T0)
    clock = ManualClock(T0 + timedelta(days=3))

    async def main() -> None:
        schedule = Maintenance(service, clock=clock, every_s=0.01)
        schedule.start()
        await _until(lambda: schedule.rounds >= 3)
        await schedule.aclose()
        finished = schedule.rounds
        await asyncio.sleep(0.05)
        assert schedule.rounds == finished and schedule.failures == 0
        await schedule.aclose()  # idempotent

    asyncio.run(main())
    entry = world.entries()[-1]
    assert isinstance(entry, TemplateActivated)  # the first round applied the patch, at
    assert (entry.data.version, entry.at) == ("1.0.1", T0 + timedelta(days=3))  # clock's time


def test_a_failing_round_is_logged_and_the_next_one_runs(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = world.versions("1.0.0")
    calls: list[datetime] = []

    def flaky(activations: Activations, at: datetime, *, warn_days: int = 14) -> Round:
        calls.append(at)
        if len(calls) == 1:
            raise OSError("templates.db is locked")
        return Round(at, [], [])

    monkeypatch.setattr(maintenance, "run_once", flaky)

    async def main() -> Maintenance:
        schedule = Maintenance(service, clock=ManualClock(T0), every_s=0.01)
        schedule.start()
        await _until(lambda: schedule.rounds >= 2)
        await schedule.aclose()
        return schedule

    with caplog.at_level(logging.ERROR, logger="corral.templates.maintenance"):
        schedule = asyncio.run(main())
    assert schedule.failures == 1 and schedule.rounds >= 2 and schedule.last is not None
    (record,) = caplog.records
    assert "template maintenance at 2026-11-02 17:00:00+00:00 failed" in record.getMessage()
    assert record.exc_info is not None and "templates.db is locked" in str(record.exc_info[1])


def test_never_two_rounds_at_once_and_stopping_waits_for_the_round_in_progress(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = world.versions("1.0.0")
    running, most = [0], [0]
    lock, release = threading.Lock(), threading.Event()

    def slow(activations: Activations, at: datetime, *, warn_days: int = 14) -> Round:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        return Round(at, [], [])

    monkeypatch.setattr(maintenance, "run_once", slow)

    async def main() -> None:
        schedule = Maintenance(service, clock=ManualClock(T0), every_s=0.001)
        schedule.start()
        extra = [asyncio.create_task(schedule.run_round()) for _ in range(3)]
        await _until(lambda: running[0] == 1)
        closing = asyncio.create_task(schedule.aclose())
        await asyncio.sleep(0.05)
        assert not closing.done()  # the round in progress holds the stop
        release.set()
        await asyncio.wait_for(closing, 10)
        await asyncio.gather(*extra)
        assert running[0] == 0

    asyncio.run(main())
    assert most[0] == 1
