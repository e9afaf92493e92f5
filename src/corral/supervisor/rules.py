"""The rules of ``SUPERVISOR.md`` (version 1), one small function each.

A rule looks at one call (its :class:`~corral.supervisor.effects.CallEffect`), the tenant's
policy and the ledger, and either does not fire (``None``) or returns a :class:`Hit`: its rule
id, the verdict it asks for, and what it compared with (``conflicts_with``), waits for
(``waits_for``) or until when (``not_before``). The words of the spec are kept in the code:
"live", "local day", "within N s before" (strictly less than N seconds earlier).

``RULES`` lists them in the table's order; the classifier runs each that applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from corral.audit.entries import Verdict
from corral.connectors import EffectKind
from corral.supervisor.effects import CallEffect
from corral.supervisor.ledger import CallRecord, Ledger, Status
from corral.supervisor.policy import TenantPolicy

DAY = timedelta(hours=24)
RETRY_WINDOW = timedelta(seconds=60)
RETRY_LIMIT = 3
STRENGTH = {Verdict.DENY: 3, Verdict.ESCALATE: 2, Verdict.DEFER: 1, Verdict.ALLOW: 0}


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that fired, and why."""

    rule: str
    verdict: Verdict
    conflicts_with: tuple[str, ...] = ()
    waits_for: tuple[str, ...] = ()
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What every rule may read about the call being decided."""

    call: CallRecord
    effect: CallEffect
    policy: TenantPolicy
    ledger: Ledger
    now: datetime = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", self.call.at)

    def within(self, other: CallRecord, window: timedelta) -> bool:
        """``other`` was made strictly less than ``window`` before this call."""
        return timedelta(0) <= self.now - other.at < window and other is not self.call


def _ids(records: Iterable[CallRecord]) -> tuple[str, ...]:
    return tuple(record.id for record in records)


def _live_others(ctx: Context, records: Iterable[CallRecord]) -> list[CallRecord]:
    return [r for r in records if r.live and r is not ctx.call]


# --- messages ------------------------------------------------------------------------------------


def opted_out(ctx: Context) -> Hit | None:
    recipient = ctx.effect.recipient
    if recipient is not None and ctx.policy.is_opted_out(recipient):
        return Hit("opted_out", Verdict.DENY)
    return None


def quiet_hours(ctx: Context) -> Hit | None:
    until = ctx.policy.in_quiet_hours(ctx.now)
    return None if until is None else Hit("quiet_hours", Verdict.DEFER, not_before=until)


def duplicate_message(ctx: Context) -> Hit | None:
    window = timedelta(seconds=ctx.policy.messages.dedupe_window_s)
    same = [
        r for r in _live_others(ctx, ctx.ledger.messages.get(ctx.effect.recipient or "", ()))
        if ctx.within(r, window) and _body(r) == ctx.effect.body
    ]  # fmt: skip
    return Hit("duplicate_message", Verdict.DENY, _ids(same)) if same else None


def recipient_daily_max(ctx: Context) -> Hit | None:
    key = (ctx.effect.recipient or "", ctx.effect.local_day)
    today = _live_others(ctx, ctx.ledger.messages_by_day.get(key, ()))
    if len(today) >= ctx.policy.messages.per_recipient_daily_max:
        return Hit("recipient_daily_max", Verdict.DENY, _ids(today))
    return None


def _body(record: CallRecord) -> str | None:
    effect = record.effect
    return effect.body if isinstance(effect, CallEffect) else None


# --- bookings and cancellations -----------------------------------------------------------------


def slot_conflict(ctx: Context) -> Hit | None:
    effect = ctx.effect
    assert effect.calendar is not None and effect.start is not None and effect.end is not None
    index = ctx.ledger.bookings.get(effect.calendar)
    if index is None:
        return None
    overlapping = [
        r for r in index.overlapping(effect.start, effect.end)
        if r.live and r is not ctx.call and not ctx.ledger.is_released(r)
    ]  # fmt: skip
    done = [r for r in overlapping if r.status is Status.SUCCEEDED]
    if done:
        return Hit("slot_conflict", Verdict.DENY, _ids(done))
    if overlapping:
        return Hit("slot_conflict", Verdict.DEFER, _ids(overlapping), waits_for=_ids(overlapping))
    return None


def duplicate_cancel(ctx: Context) -> Hit | None:
    earlier = _live_others(ctx, ctx.ledger.cancellations.get(ctx.effect.target or "", ()))
    done = [r for r in earlier if r.status is Status.SUCCEEDED]
    if done:
        return Hit("duplicate_cancel", Verdict.DENY, _ids(done))
    if earlier:
        return Hit("duplicate_cancel", Verdict.DEFER, _ids(earlier), waits_for=_ids(earlier))
    return None


# --- money -------------------------------------------------------------------------------------


def duplicate_refund(ctx: Context) -> Hit | None:
    effect = ctx.effect
    same = [
        r for r in _live_others(ctx, ctx.ledger.refunds.get(effect.target or "", ()))
        if ctx.within(r, DAY) and _money(r) == (effect.amount, effect.currency)
    ]  # fmt: skip
    return Hit("duplicate_refund", Verdict.DENY, _ids(same)) if same else None


def refund_above_threshold(ctx: Context) -> Hit | None:
    limit = ctx.policy.refunds.escalate_above
    effect = ctx.effect
    if (
        limit is not None
        and effect.currency == limit.currency
        and (effect.amount or 0) > limit.amount
    ):
        return Hit("refund_above_threshold", Verdict.ESCALATE)
    return None


def refund_daily_cap(ctx: Context) -> Hit | None:
    cap = ctx.policy.refunds.daily_cap
    effect = ctx.effect
    if cap is None or effect.currency != cap.currency:
        return None
    key = (effect.local_day, cap.currency)
    # The day's live refunds (escrow), kept running; the call being decided is new or held,
    # so never among them.
    total = ctx.ledger.refund_totals.get(key, 0)
    if total + (effect.amount or 0) > cap.amount:
        today = _live_others(ctx, ctx.ledger.refunds_by_day.get(key, ()))
        return Hit("refund_daily_cap", Verdict.ESCALATE, _ids(today))
    return None


def duplicate_charge(ctx: Context) -> Hit | None:
    effect = ctx.effect
    if not effect.customer or effect.amount is None:
        return None
    key = (effect.customer, effect.amount, effect.currency or "")
    same = [r for r in _live_others(ctx, ctx.ledger.charges.get(key, ())) if ctx.within(r, DAY)]
    return Hit("duplicate_charge", Verdict.ESCALATE, _ids(same)) if same else None


def duplicate_invoice(ctx: Context) -> Hit | None:
    effect = ctx.effect
    if not effect.customer or effect.total is None:
        return None
    key = (effect.customer, effect.total)
    same = [r for r in _live_others(ctx, ctx.ledger.invoices.get(key, ())) if ctx.within(r, DAY)]
    return Hit("duplicate_invoice", Verdict.DENY, _ids(same)) if same else None


def _money(record: CallRecord) -> tuple[int | None, str | None]:
    effect = record.effect
    return (effect.amount, effect.currency) if isinstance(effect, CallEffect) else (None, None)


# --- outcomes and retries ----------------------------------------------------------------------


def unknown_outcome(ctx: Context) -> Hit | None:
    """Like with like, no time window: a call on the same recipient, overlapping resource
    interval, payment intent or customer whose outcome is ``unknown``."""
    effect, ledger = ctx.effect, ctx.ledger
    candidates: Iterable[CallRecord] = ()
    if effect.kind is EffectKind.MESSAGE:
        candidates = ledger.messages.get(effect.recipient or "", ())
    elif effect.kind is EffectKind.BOOKING and effect.calendar and effect.start and effect.end:
        index = ledger.bookings.get(effect.calendar)
        candidates = index.overlapping(effect.start, effect.end) if index else ()
    elif effect.kind is EffectKind.REFUND:
        candidates = ledger.refunds.get(effect.target or "", ())
    elif effect.kind is EffectKind.INVOICE:
        candidates = ledger.invoices_by_customer.get(effect.customer or "", ())
    unknown = [r for r in candidates if r.status is Status.UNKNOWN and r is not ctx.call]
    if unknown:
        return Hit("unknown_outcome", Verdict.DEFER, _ids(unknown), waits_for=_ids(unknown))
    return None


def retry_storm(call: CallRecord, ledger: Ledger) -> Hit | None:
    """The same agent made 3 or more calls with the same tool and canonical arguments in the
    previous 60 s whose outcome is ``failed`` (any call, valid or not, has that identity)."""
    same = ledger.identical.get((call.agent, call.tool, call.effect.args_key), ())
    failed = [
        r for r in same
        if r.status is Status.FAILED and r is not call
        and timedelta(0) <= call.at - r.at < RETRY_WINDOW
    ]  # fmt: skip
    if len(failed) >= RETRY_LIMIT:
        return Hit("retry_storm", Verdict.DENY, _ids(failed))
    return None


Rule = Callable[[Context], Hit | None]

MESSAGE_RULES: tuple[Rule, ...] = (opted_out, quiet_hours, duplicate_message, recipient_daily_max)
RULES_BY_KIND: dict[EffectKind, tuple[Rule, ...]] = {
    EffectKind.MESSAGE: (*MESSAGE_RULES, unknown_outcome),
    EffectKind.BOOKING: (slot_conflict, unknown_outcome),
    EffectKind.CANCELLATION: (duplicate_cancel,),
    EffectKind.REFUND: (
        duplicate_refund,
        refund_above_threshold,
        refund_daily_cap,
        unknown_outcome,
    ),
    EffectKind.CHARGE: (duplicate_charge,),
    EffectKind.INVOICE: (duplicate_invoice, unknown_outcome),
}
RULE_IDS = (
    "role", "opted_out", "quiet_hours", "duplicate_message", "recipient_daily_max",
    "slot_conflict", "duplicate_cancel", "duplicate_refund", "refund_above_threshold",
    "refund_daily_cap", "duplicate_charge", "duplicate_invoice", "unknown_outcome",
    "retry_storm", "unknown_tool", "invalid_arguments",
)  # fmt: skip
