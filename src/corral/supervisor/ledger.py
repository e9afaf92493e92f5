"""A tenant's ledger: its calls and their states, indexed so every check is cheap.

Each rule of ``SUPERVISOR.md`` asks one narrow question ("a live message to this recipient
with this body in the last day?", "a live booking of this calendar overlapping this interval?").
The ledger answers each from an index keyed exactly by that question's key, so a check costs
O(log n + k) for the k calls that share the key, whatever the length of the history:

- messages by recipient (time-ordered) and by (recipient, local day);
- bookings per calendar (or calendar group) in an :class:`IntervalIndex`;
- cancellations by the event they cancel; the events released by a succeeded cancellation;
- refunds by payment intent and by (local day, currency); charges by (customer, amount,
  currency); invoices by (customer, total) and by customer;
- every call by (agent, tool, canonical arguments), for ``retry_storm``.

A call is **live** when it was allowed (or escalated and approved) and its outcome is not
``failed``. Indexes keep every call that was ever admitted (allowed or escalated); liveness is
read at query time, since it changes with outcomes and operator decisions.
"""

from __future__ import annotations

import bisect
import enum
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

    def keep(self, wanted: Callable[[CallRecord], bool]) -> None:
        """Drop the intervals ``wanted`` refuses (pruning; order is kept)."""
        kept = [(s, r) for s, r in zip(self._starts, self._records, strict=True) if wanted(r)]
        self._starts = [s for s, _ in kept]
        self._records = [r for _, r in kept]

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
        self.charges: defaultdict[tuple[str, int, str], list[CallRecord]] = defaultdict(list)
        self.invoices: defaultdict[tuple[str, Decimal], list[CallRecord]] = defaultdict(list)
        self.invoices_by_customer: defaultdict[str, list[CallRecord]] = defaultdict(list)
        self.identical: defaultdict[tuple[str, str, str], list[CallRecord]] = defaultdict(list)

    def record(self, record: CallRecord) -> None:
        """Keep a call the supervisor has decided on (whatever the verdict)."""
        self.calls[record.id] = record
        self.identical[(record.agent, record.tool, record.effect.args_key)].append(record)

    def admit(self, record: CallRecord) -> None:
        """Index an allowed (or escalated) call under every key its rules may ask about."""
        effect = record.effect
        if not isinstance(effect, CallEffect):
            return
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

    def outcome(self, record: CallRecord, status: Status, result: dict[str, Any]) -> None:
        """An executed call's outcome (or a reconciliation replacing ``unknown``)."""
        record.status = status
        record.result = dict(result)
        effect = record.effect
        if not isinstance(effect, CallEffect) or status is not Status.SUCCEEDED:
            return
        event_id = result.get("event_id")
        if effect.kind is EffectKind.BOOKING and isinstance(event_id, str):
            record.event = booked_event(effect, event_id)
        elif effect.kind is EffectKind.CANCELLATION and effect.target is not None:
            self.released.add(effect.target)

    def prune(self, before: datetime, bookings_before: datetime) -> int:
        """Forget calls made before ``before`` that no rule can read any more: everything but
        bookings whose interval ends after ``bookings_before``, cancellations of bookings still
        kept, and calls whose outcome is ``unknown`` (``unknown_outcome`` has no window).
        Returns how many calls were forgotten. O(n): run it now and then, not per call."""

        def wanted(record: CallRecord) -> bool:
            if record.at >= before or record.status is Status.UNKNOWN:
                return True
            effect = record.effect
            if isinstance(effect, CallEffect) and effect.kind is EffectKind.BOOKING:
                return effect.end is not None and effect.end > bookings_before
            return isinstance(effect, CallEffect) and effect.kind is EffectKind.CANCELLATION

        gone = [call_id for call_id, r in self.calls.items() if not wanted(r)]
        for call_id in gone:
            del self.calls[call_id]
        indexes: list[defaultdict[Any, list[CallRecord]]] = [
            self.messages, self.messages_by_day, self.cancellations, self.refunds,
            self.refunds_by_day, self.charges, self.invoices, self.invoices_by_customer,
            self.identical,
        ]  # fmt: skip
        for index in indexes:
            for key in list(index):
                kept = [r for r in index[key] if wanted(r)]
                if kept:
                    index[key] = kept
                else:
                    del index[key]
        for calendar in list(self.bookings):
            self.bookings[calendar].keep(wanted)
            if not len(self.bookings[calendar]):
                del self.bookings[calendar]
        return len(gone)

    def is_released(self, booking: CallRecord) -> bool:
        """A booking whose event a succeeded cancellation named no longer holds its slot."""
        return booking.event is not None and booking.event in self.released
