"""Template maintenance: the round ``corral control`` runs on a schedule.

One round, :func:`run_once` at an instant ``at`` (control's decision time):

1. reads and checks every activation (its row, its entry, its pin in the catalog) and every
   notice already given, so that a corrupted row stops the round, naming the row, before
   anything changes;
2. applies the automatic upgrades due (:meth:`Activations.apply_automatic`: the security
   patches, each a ``template.activated`` entry with ``automatic: true``);
3. gives notice of every pinned version that sunsets within ``warn_days`` (``sunsetting``) or
   has sunset (``sunset``), **once per activation and sunset date**: a ``template.notice``
   entry in the tenant's audit chain, which the dashboard's timeline tells in prose, and a
   ``template_notices`` row that keeps later rounds from giving it again. As for activations,
   the entry is appended and durable before the row commits; a failed append gives no row, so
   the next round tries again. A version that is only deprecated gets no entry
   (:meth:`Activations.notices` still lists it).

:class:`Maintenance` runs a round every ``every_s`` seconds, the first at once, in a worker
thread (the store and the audit append block), never two at a time; a round that fails is
logged and the next one runs as planned; :meth:`Maintenance.aclose` lets a round in progress
finish, then stops.

>>> import tempfile
>>> from datetime import UTC, datetime
>>> from pathlib import Path
>>> import corral
>>> from corral.core.ids import SequentialIds
>>> from corral.templates import ActivationStore, Catalog
>>> tmp = tempfile.TemporaryDirectory()
>>> store = ActivationStore.from_url(f"sqlite:///{tmp.name}/templates.db")
>>> store.create_schema()
>>> catalog = Catalog.load(Path(corral.__file__).parents[2] / "templates")
>>> activations = Activations(catalog, store, ids=SequentialIds())
>>> _ = activations.activate("brightsmile", "dental-front-desk", "1.0.0",
...                          datetime(2026, 9, 1, tzinfo=UTC))
>>> done = run_once(activations, datetime(2027, 1, 20, tzinfo=UTC))
>>> [(a.previous, a.activation.version, a.entry.data.automatic) for a in done.applied]
[('1.0.0', '1.0.1', True)]
>>> done.noticed  # 1.0.0 sunsets on 2027-01-31, but the tenant has moved to 1.0.1
[]
>>> store.close(); tmp.cleanup()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from corral.audit.entries import Actor, TemplateNotice, TemplateNoticeData
from corral.core.clock import Clock
from corral.templates.activations import SYSTEM, Activated, Activations, Notice, NoticeKind
from corral.templates.store import NoticeRecord

__all__ = ["Maintenance", "Noticed", "Round", "notice_entry", "run_once"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: The notices a round records: the ones with a date that is near or past.
_DATED = (NoticeKind.SUNSETTING, NoticeKind.SUNSET)


@dataclass(frozen=True)
class Noticed:
    """Notice given in a round: what was noticed and the audit entry that records it."""

    notice: Notice
    entry: TemplateNotice
    index: int | None
    """The entry's index in the tenant's audit log; ``None`` without a sequencer (then the
    caller appends :attr:`entry`)."""


@dataclass(frozen=True)
class Round:
    """What one round did at ``at``."""

    at: datetime
    applied: list[Activated]
    noticed: list[Noticed]


def notice_entry(
    notice: Notice, *, entry_id: str, at: datetime, actor: Actor = SYSTEM
) -> TemplateNotice:
    """The ``template.notice`` entry recording that ``notice`` was given at ``at``."""
    data = TemplateNoticeData(
        activation_id=notice.activation_id,
        template=notice.template,
        version=notice.version,
        notice=notice.kind.value,
        deprecated_at=notice.deprecated_at,
        sunset_at=notice.sunset_at,
        replacement=notice.replacement,
    )
    return TemplateNotice(id=entry_id, tenant=notice.tenant, at=at, actor=actor, data=data)


def run_once(activations: Activations, at: datetime, *, warn_days: int = 14) -> Round:
    """One maintenance round at ``at`` (see the module docstring).

    Raises :class:`~corral.templates.CorruptActivation` for a corrupted activation or notice
    row before anything changes, and whatever the audit append raises (the change it was for
    rolled back).
    """
    if at.tzinfo is None:
        raise ValueError("refusing a naive datetime: corral times are timezone-aware")
    # Read and check everything first: a corrupted row stops the round here.
    activations.activations()
    activations.store.notices()
    applied = activations.apply_automatic(at)
    noticed = []
    for notice in activations.notices(at, warn_days):
        if notice.kind not in _DATED or notice.sunset_at is None:
            continue
        given = _give(activations, notice, at)
        if given is not None:
            noticed.append(given)
    return Round(at, applied, noticed)


def _give(activations: Activations, notice: Notice, at: datetime) -> Noticed | None:
    """Record ``notice`` unless it was given already or its activation moved meanwhile."""
    assert notice.sunset_at is not None
    with activations.store.change() as change:
        current = change.get(notice.activation_id)
        if current is None or current.version != notice.version:
            return None
        if change.notice(notice.activation_id, notice.sunset_at) is not None:
            return None
        entry = notice_entry(notice, entry_id=activations.ids.new("ent"), at=at)
        change.insert_notice(
            NoticeRecord(
                activation_id=notice.activation_id,
                tenant=notice.tenant,
                template=notice.template,
                version=notice.version,
                notice=notice.kind.value,
                sunset_at=notice.sunset_at,
                at=at,
                entry=entry,
            )
        )
        index: int | None = None
        if activations.sequencer is not None:  # durable before the row commits
            future = activations.sequencer.submit(entry.tenant, entry)
            index = future.result(timeout=activations.append_timeout_s)
    return Noticed(notice, entry, index)


async def _in_thread(function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a worker thread; cancelled, it still waits for the thread (the
    caller closes the store and the chain next)."""
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


class Maintenance:
    """:func:`run_once` every ``every_s`` seconds at ``clock``'s time, the first at once.

    :meth:`start` it on a running event loop and :meth:`aclose` it before closing what it
    uses. ``rounds`` and ``failures`` count finished and failed rounds; ``last`` is the last
    round that finished.
    """

    def __init__(
        self, activations: Activations, *, clock: Clock, every_s: float, warn_days: int = 14
    ) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be positive, not {every_s!r}")
        self.activations = activations
        self.clock = clock
        self.every_s = every_s
        self.warn_days = warn_days
        self.rounds = 0
        self.failures = 0
        self.last: Round | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run rounds in a task of the running loop until :meth:`aclose`."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="template-maintenance")

    async def aclose(self) -> None:
        """Stop: a round in progress finishes first. Idempotent."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def run_round(self) -> Round | None:
        """One round now, after any round in progress; ``None`` if it failed (logged)."""
        async with self._lock:
            at = self.clock.now()
            try:
                done = await _in_thread(self._round, at)
            except Exception:
                self.failures += 1
                log.exception("template maintenance at %s failed; next round as planned", at)
                return None
            self.rounds += 1
            self.last = done
            for activated in done.applied:
                log.info(
                    "template maintenance: tenant %s's %s moved %s -> %s (security patch)",
                    activated.activation.tenant,
                    activated.activation.template,
                    activated.previous,
                    activated.activation.version,
                )
            for noticed in done.noticed:
                log.info("template maintenance: tenant %s told: %s",
                            noticed.notice.tenant, noticed.notice.message())  # fmt: skip
            return done

    def _round(self, at: datetime) -> Round:
        return run_once(self.activations, at, warn_days=self.warn_days)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self.run_round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)
