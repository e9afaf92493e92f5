"""A tenant's ledger: its calls and their states, indexed so every check is cheap.

Each rule of ``SUPERVISOR.md`` asks one narrow question ("a live message to this recipient
with this body in the last day?", "a live booking of this calendar overlapping this interval?").
The ledger answers each from an index keyed exactly by that question's key, so a check costs
O(log n + k) for the k calls that share the key, whatever the length of the history:

- messages by recipient (time-ordered) and by (recipient, local day);
- bookings per calendar (or calendar group) in an :class:`IntervalIndex`;
- cancellations by the event they cancel; the events released by a succeeded cancellation;
- refunds by payment intent and by (local day, currency), with each such day's running total
  of live refunds (escrow: in-flight amounts count until they fail), so the daily cap is one
  lookup however many refunds the day holds; charges by (customer, amount, currency);
  invoices by (customer, total) and by customer;
- every call by (agent, tool, canonical arguments), for ``retry_storm``.

A call is **live** when it was allowed (or escalated and approved) and its outcome is not
``failed``. Indexes keep every call that was ever admitted (allowed or escalated); liveness is
read at query time, since it changes with outcomes and operator decisions, except for the
refund totals, which :meth:`Ledger.set_status` (the one place a status changes) keeps exact.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from corral.connectors import EffectKind
from corral.supervisor.effects import CallEffect, InvalidCall, booked_event


class Status(enum.StrEnum):
    """Where a call stands: not admitted (denied, deferred, escalated and not yet approved),
    in flight, or its outcome."""

    HELD = "held"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(eq=False)
class CallRecord:
    """One call of one agent, as the supervisor saw it."""

    id: str
    agent: str
    tool: str
    at: datetime
    effect: CallEffect | InvalidCall
    status: Status = Status.HELD
    event: str | None = None
    """For a booking that succeeded: the key of the event it made (its ``result.event_id``)."""
    result: dict[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    """The arguments as given (shown to the operator beside an escalation)."""
    admitted: bool = False
    """Indexed by :meth:`Ledger.admit` (allowed, or escalated)."""

    @property
    def live(self) -> bool:
        return self.status in (Status.IN_FLIGHT, Status.SUCCEEDED, Status.UNKNOWN)


class IntervalIndex:
    """Half-open intervals of one calendar, sorted by start, with the longest length seen.

    An interval overlapping ``[start, end)`` starts before ``end`` and after
    ``start - longest``: one bisection bounds the candidates (O(log n + k)).
    """

    def __init__(self) -> None:
        self._starts: list[datetime] = []
        self._records: list[CallRecord] = []
        self._longest = timedelta(0)

    def add(self, record: CallRecord) -> None:
        effect = record.effect
        assert isinstance(effect, CallEffect) and effect.start and effect.end
        i = bisect.bisect_right(self._starts, effect.start)
        self._starts.insert(i, effect.start)
        self._records.insert(i, record)
        self._longest = max(self._longest, effect.end - effect.start)

    def remove(self, record: CallRecord) -> None:
        """Forget one interval (by identity). ``longest`` is kept: a bound, not an exact one."""
        effect = record.effect
        assert isinstance(effect, CallEffect) and effect.start
        i = bisect.bisect_left(self._starts, effect.start)
        while i < len(self._records) and self._starts[i] == effect.start:
            if self._records[i] is record:
                del self._starts[i], self._records[i]
                return
            i += 1

    def __len__(self) -> int:
        return len(self._records)

    def overlapping(self, start: datetime, end: datetime) -> Iterator[CallRecord]:
        low = bisect.bisect_right(self._starts, start - self._longest)
        high = bisect.bisect_left(self._starts, end)
        for record in self._records[low:high]:
            effect = record.effect
            assert isinstance(effect, CallEffect) and effect.start and effect.end
            if effect.start < end and start < effect.end:
                yield record


class Ledger:
    """All calls of one tenant, with the indexes the rules read."""

    def __init__(self) -> None:
        self.calls: dict[str, CallRecord] = {}
        self.messages: defaultdict[str, list[CallRecord]] = defaultdict(list)
        self.messages_by_day: defaultdict[tuple[str, date], list[CallRecord]] = defaultdict(list)
        self.bookings: defaultdict[str, IntervalIndex] = defaultdict(IntervalIndex)
        self.cancellations: defaultdict[str, list[CallRecord]] = defaultdict(list)
        self.released: set[str] = set()
        self.refunds: defaultdict[str, list[CallRecord]] = defaultdict(list)
        self.refunds_by_day: defaultdict[tuple[date, str], list[CallRecord]] = defaultdict(list)
        self.refund_totals: dict[tuple[date, str], int] = {}
        """Per (local day, currency): the amounts of the live refunds indexed under it."""
        self.charges: defaultdict[tuple[str, int, str], list[CallRecord]] = defaultdict(list)
        self.invoices: defaultdict[tuple[str, Decimal], list[CallRecord]] = defaultdict(list)
        self.invoices_by_customer: defaultdict[str, list[CallRecord]] = defaultdict(list)
        self.identical: defaultdict[tuple[str, str, str], list[CallRecord]] = defaultdict(list)
        self.on_forget: Callable[[CallRecord], None] | None = None
        """Told of each call :meth:`prune` forgets (a service drops what it keeps per call)."""

    def record(self, record: CallRecord) -> None:
        """Keep a call the supervisor has decided on (whatever the verdict)."""
        self.calls[record.id] = record
        self.identical[(record.agent, record.tool, record.effect.args_key)].append(record)

    def admit(self, record: CallRecord) -> None:
        """Index an allowed (or escalated) call under every key its rules may ask about
        (once: a call admitted again stays indexed as it was)."""
        effect = record.effect
        if record.admitted or not isinstance(effect, CallEffect):
            return
        record.admitted = True
        if record.live:
            self._escrow(record, 1)
        kind = effect.kind
        if kind is EffectKind.MESSAGE and effect.recipient is not None:
            self.messages[effect.recipient].append(record)
            self.messages_by_day[(effect.recipient, effect.local_day)].append(record)
        elif kind is EffectKind.BOOKING and effect.calendar is not None:
            self.bookings[effect.calendar].add(record)
        elif kind is EffectKind.CANCELLATION and effect.target is not None:
            self.cancellations[effect.target].append(record)
        elif kind is EffectKind.REFUND and effect.target is not None and effect.currency:
            self.refunds[effect.target].append(record)
            self.refunds_by_day[(effect.local_day, effect.currency)].append(record)
        elif kind is EffectKind.CHARGE and effect.customer and effect.amount is not None:
            self.charges[(effect.customer, effect.amount, effect.currency or "")].append(record)
        elif kind is EffectKind.INVOICE and effect.customer and effect.total is not None:
            self.invoices[(effect.customer, effect.total)].append(record)
            self.invoices_by_customer[effect.customer].append(record)

    def set_status(self, record: CallRecord, status: Status) -> None:
        """Every change of a call's status goes through here, so that the refund totals
        follow what is live."""
        was = record.live
        record.status = status
        if record.admitted and record.live is not was:
            self._escrow(record, 1 if record.live else -1)

    def _escrow(self, record: CallRecord, sign: int) -> None:
        """Add (``sign`` 1) or take out (-1) a live, admitted refund's amount."""
        effect = record.effect
        if (
            isinstance(effect, CallEffect)
            and effect.kind is EffectKind.REFUND
            and effect.target is not None
            and effect.currency
            and effect.amount
        ):
            key = (effect.local_day, effect.currency)
            total = self.refund_totals.get(key, 0) + sign * effect.amount
            if total:
                self.refund_totals[key] = total
            else:
                del self.refund_totals[key]

    def outcome(self, record: CallRecord, status: Status, result: dict[str, Any]) -> None:
        """An executed call's outcome (or a reconciliation replacing ``unknown``)."""
        self.set_status(record, status)
        record.result = dict(result)
        effect = record.effect
        if not isinstance(effect, CallEffect) or status is not Status.SUCCEEDED:
            return
        event_id = result.get("event_id")
        if effect.kind is EffectKind.BOOKING and isinstance(event_id, str):
            record.event = booked_event(effect, event_id)
        elif effect.kind is EffectKind.CANCELLATION and effect.target is not None:
            self.released.add(effect.target)

    def prune(
        self, before: datetime, bookings_before: datetime, *, limit: int | None = None
    ) -> int:
        """Forget calls made before ``before`` that no rule can read any more: everything but
        bookings whose interval ends after ``bookings_before``, cancellations of bookings still
        kept, and calls whose outcome is ``unknown`` (``unknown_outcome`` has no window).
        Returns how many calls were forgotten.

        Incremental: calls are visited oldest first (``calls`` keeps decision order) and the
        walk stops at the first call made at or after ``before``, or after ``limit`` calls, so
        a service can prune a few calls per decision instead of stalling on the whole ledger.
        A call that must be kept is moved to the back of that order; it is looked at again
        once the calls made after it have aged out."""
        forgotten = visited = 0
        kept: list[CallRecord] = []
        for record in self.calls.values():
            if record.at >= before or (limit is not None and visited >= limit):
                break
            visited += 1
            if self._still_read(record, bookings_before):
                kept.append(record)
            else:
                forgotten += 1
        if not visited:
            return 0
        oldest = list(itertools.islice(self.calls.values(), visited))
        for record in oldest:
            del self.calls[record.id]
        for record in kept:  # to the back of the decision order
            self.calls[record.id] = record
        kept_ids = {record.id for record in kept}
        for record in oldest:
            if record.id not in kept_ids:
                self._unindex(record)
                if self.on_forget is not None:
                    self.on_forget(record)
        return forgotten

    @staticmethod
    def _still_read(record: CallRecord, bookings_before: datetime) -> bool:
        if record.status is Status.UNKNOWN:
            return True
        effect = record.effect
        if isinstance(effect, CallEffect) and effect.kind is EffectKind.BOOKING:
            return effect.end is not None and effect.end > bookings_before
        return isinstance(effect, CallEffect) and effect.kind is EffectKind.CANCELLATION

    def _unindex(self, record: CallRecord) -> None:
        """Take a forgotten call out of every index that holds it (its keys name them)."""
        _drop(self.identical, (record.agent, record.tool, record.effect.args_key), record)
        effect = record.effect
        if not isinstance(effect, CallEffect):
            return
        if record.admitted and record.live:
            self._escrow(record, -1)
        kind = effect.kind
        if kind is EffectKind.MESSAGE and effect.recipient is not None:
            _drop(self.messages, effect.recipient, record)
            _drop(self.messages_by_day, (effect.recipient, effect.local_day), record)
        elif kind is EffectKind.BOOKING and effect.calendar is not None:
            index = self.bookings.get(effect.calendar)
            if index is not None:
                index.remove(record)
                if not len(index):
                    del self.bookings[effect.calendar]
        elif kind is EffectKind.CANCELLATION and effect.target is not None:
            _drop(self.cancellations, effect.target, record)
        elif kind is EffectKind.REFUND and effect.target is not None and effect.currency:
            _drop(self.refunds, effect.target, record)
            _drop(self.refunds_by_day, (effect.local_day, effect.currency), record)
        elif kind is EffectKind.CHARGE and effect.customer and effect.amount is not None:
            _drop(self.charges, (effect.customer, effect.amount, effect.currency or ""), record)
        elif kind is EffectKind.INVOICE and effect.customer and effect.total is not None:
            _drop(self.invoices, (effect.customer, effect.total), record)
            _drop(self.invoices_by_customer, effect.customer, record)

    def is_released(self, booking: CallRecord) -> bool:
        """A booking whose event a succeeded cancellation named no longer holds its slot."""
        return booking.event is not None and booking.event in self.released


def _drop(index: defaultdict[Any, list[CallRecord]], key: Any, record: CallRecord) -> None:
    """Remove ``record`` (by identity) from ``index[key]``; drop the key once it is empty.
    Index lists are in decision order and forgetting goes oldest first, so the record is
    almost always at the front."""
    held = index.get(key)
    if held is None:
        return
    for i, other in enumerate(held):
        if other is record:
            del held[i]
            break
    if not held:
        del index[key]
