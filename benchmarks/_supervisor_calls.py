"""A benchmark tenant: its policy, its pools of recipients, calendars and customers, and the
arguments of each kind of call it makes (the mix is in :mod:`benchmarks._supervisor_load`).

Every tenant has the same kind of policy (:meth:`Tenant.policy`): time zone
America/Los_Angeles, quiet hours 21:00-08:00, three opted-out numbers and one opted-out
GoHighLevel contact, refunds escalated above $200 and capped per local day (about where a
busy day reaches the cap), calendar groups (a Google calendar and a Calendly event type that
are the same room), and roles for five of its ten agents (three receptionists, two billing
agents; the other five have no role). Its pools grow with its volume of calls.

Recipients, calendars, payment intents and customers are drawn with a skew towards a few busy
ones. Messages: a few reminder texts with names, days and times, 10 % of the numbers written
in US national format. Bookings: 15-60 min on a quarter hour, 08:00-18:00 local time, over
the next three weeks. Cancellations: a succeeded Google or Calendly booking among the last
200, so that a few are cancelled twice. Invalid calls: an unknown tool, or arguments that do
not fit (an empty body, a bad number, a negative amount, an end before the start).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from benchmarks._supervisor_load import Call

ZONE = ZoneInfo("America/Los_Angeles")
ROLES = {
    "receptionist": ["google_calendar.*", "calendly.*", "ghl.*", "twilio.send_sms"],
    "billing": ["stripe.*", "quickbooks.*"],
}
ROLE_OF = {0: "receptionist", 1: "receptionist", 2: "receptionist", 3: "billing", 4: "billing"}
BOOKINGS = frozenset({"google_calendar.insert_event", "calendly.book", "ghl.book_appointment"})
_BODIES = (
    "Reminder: your appointment is {day} at {time}.",
    "Your {what} is confirmed for {day}.",
    "Hi {name}, please call us back about your {what}.",
    "Thanks for visiting, {name}!",
)
_NAMES = ("Ana", "Bo", "Chen", "Dana", "Eli", "Fay", "Gus", "Hana")
_WHATS = ("cleaning", "check-up", "filling", "consultation", "x-ray")
_AMOUNTS = (1500, 2500, 4900, 8000, 12000, 19900, 25000, 40000)
_LINES = ("49.00", "120.50", "89.99", "250.00", "15.25")
Args = tuple[str, dict[str, Any]]


def _clamp(value: float, low: int, high: int) -> int:
    return max(low, min(high, int(value)))


@dataclass
class Tenant:
    """One tenant: pools sized for ``calls`` calls over ``days`` days, and its clock."""

    name: str
    rng: random.Random
    calls: float
    days: float
    clock: float
    booked: list[tuple[str, str, str]] = field(default_factory=list)
    """(booking tool, calendar id, event id) of succeeded bookings, fed back by the run."""
    recent: dict[str, Call] = field(default_factory=dict)
    retries: deque[Call] = field(default_factory=deque)
    made: int = 0

    def __post_init__(self) -> None:
        self.phones = _clamp(self.calls / 60, 40, 1500)
        self.contacts = _clamp(self.calls / 120, 20, 750)
        self.calendars = _clamp(self.calls / 2500, 4, 40)
        self.payments = _clamp(self.calls / 40, 20, 2000)
        self.mean_gap_s = self.days * 86_400 / self.calls

    def phone(self, k: int) -> str:
        return f"+1415{2_000_000 + k:07d}"

    def google(self, k: int) -> str:
        return f"dr-{k}@{self.name}.example"

    def calendly(self, k: int) -> str:
        return f"https://api.calendly.com/event_types/{self.name}-ET{k}"

    def policy(self) -> dict[str, Any]:
        """The tenant's policy (``TOOLS.md``), scaled to its volume."""
        cap = max(100_000, int(self.calls / self.days * 0.08 * 9_000))
        groups = {
            f"room-{k}": [f"google_calendar:{self.google(k)}", f"calendly:{self.calendly(k)}"]
            for k in range(self.calendars // 2)
        }
        return {
            "timezone": "America/Los_Angeles",
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "opted_out": [self.phone(k) for k in (3, 17, 40)] + ["ghl_contact:c5"],
            "refunds": {
                "daily_cap": {"amount": cap, "currency": "usd"},
                "escalate_above": {"amount": 20_000, "currency": "usd"},
            },
            "messages": {"dedupe_window_s": 86_400, "per_recipient_daily_max": 3},
            "calendars": groups,
            "roles": ROLES,
            "agents": {f"agent-{k}": role for k, role in ROLE_OF.items()},
        }

    def local(self) -> datetime:
        return datetime.fromtimestamp(self.clock, ZONE)

    def skewed(self, n: int) -> int:
        return int(n * self.rng.random() ** 2)

    # --- the arguments of each kind of call ------------------------------------------------

    def message(self) -> Args:
        rng = self.rng
        day = (self.local() + timedelta(days=rng.randint(1, 6))).strftime("%A")
        time = f"{rng.randint(8, 17)}:{rng.choice('03')}0"
        what, name = rng.choice(_WHATS), rng.choice(_NAMES)
        body = rng.choice(_BODIES).format(day=day, time=time, name=name, what=what)
        if rng.random() < 0.62:
            k = self.skewed(self.phones)
            to = self.phone(k) if rng.random() < 0.9 else f"(415) 200-{k:04d}"
            return "twilio.send_sms", {"to": to, "body": body}
        contact = f"c{self.skewed(self.contacts)}"
        kind = rng.choice(("SMS", "SMS", "Email"))
        return "ghl.send_message", {"contact_id": contact, "type": kind, "message": body}

    def booking(self) -> Args:
        rng = self.rng
        day = self.local() + timedelta(days=rng.randint(0, 20))
        hour, minute = rng.randint(8, 17), rng.choice((0, 15, 30, 45))
        start = day.replace(hour=hour, minute=minute, second=0, microsecond=0)
        start = datetime.fromtimestamp(start.timestamp(), ZONE)  # the offset of that day
        end = (start + timedelta(minutes=rng.choice((15, 30, 45, 60)))).isoformat()
        k, name, which = self.skewed(self.calendars), rng.choice(_NAMES), rng.random()
        if which < 0.45:
            return "google_calendar.insert_event", {
                "calendar_id": self.google(k), "start": start.isoformat(), "end": end,
                "summary": f"Visit {name}",
            }  # fmt: skip
        if which < 0.75:
            invitee = {"name": name, "email": f"{name.lower()}@example.com",
                       "timezone": "America/Los_Angeles"}  # fmt: skip
            return "calendly.book", {
                "event_type": self.calendly(k), "start_time": start.isoformat(),
                "end_time": end, "invitee": invitee,
            }  # fmt: skip
        return "ghl.book_appointment", {
            "calendar_id": f"cal-{k}", "contact_id": f"c{self.skewed(self.contacts)}",
            "start": start.isoformat(), "end": end,
        }  # fmt: skip

    def cancel(self) -> Args:
        cancellable = [b for b in self.booked[-200:] if not b[0].startswith("ghl")]
        if not cancellable:
            return self.booking()
        tool, calendar, event = self.rng.choice(cancellable)
        if tool == "calendly.book":
            return "calendly.cancel_event", {"event_uuid": event, "reason": "patient asked"}
        return "google_calendar.delete_event", {"calendar_id": calendar, "event_id": event}

    def read(self) -> Args:
        day = self.local().replace(hour=0, minute=0, second=0, microsecond=0)
        week = (day + timedelta(days=7)).isoformat()
        calendar = self.google(self.skewed(self.calendars))
        return "google_calendar.list_events", {
            "calendar_id": calendar, "time_min": day.isoformat(), "time_max": week,
        }  # fmt: skip

    def upsert(self) -> Args:
        phone = self.phone(self.skewed(self.phones))
        return "ghl.upsert_contact", {"phone": phone, "first_name": self.rng.choice(_NAMES)}

    def refund(self) -> Args:
        rng = self.rng
        return "stripe.create_refund", {
            "payment_intent": f"pi_{self.name}{self.skewed(self.payments)}",
            "amount": rng.choice(_AMOUNTS), "currency": "usd" if rng.random() < 0.95 else "eur",
        }  # fmt: skip

    def charge(self) -> Args:
        args: dict[str, Any] = {"amount": self.rng.choice(_AMOUNTS), "currency": "usd"}
        if self.rng.random() < 0.8:
            args["customer"] = f"cus_{self.skewed(self.payments)}"
        return "stripe.create_payment_intent", args

    def invoice(self) -> Args:
        rng = self.rng
        lines = [{"amount": rng.choice(_LINES), "description": rng.choice(_WHATS)}
                 for _ in range(rng.randint(1, 3))]  # fmt: skip
        customer = f"QB{self.skewed(self.payments)}"
        return "quickbooks.create_invoice", {"customer_id": customer, "lines": lines}

    def invalid(self) -> Args:
        cases: list[Args] = [
            ("stripe.create_charge", {"amount": 5000, "currency": "usd"}),
            ("twilio.send_mms", {"to": self.phone(1), "body": "hi"}),
            ("twilio.send_sms", {"to": self.phone(2), "body": ""}),
            ("twilio.send_sms", {"to": "not a number", "body": "hello"}),
            ("stripe.create_refund",
             {"payment_intent": f"pi_{self.name}1", "amount": -5, "currency": "usd"}),
            ("google_calendar.insert_event",
             {"calendar_id": self.google(0), "summary": "x",
              "start": "2026-03-20T10:00:00-07:00", "end": "2026-03-20T09:00:00-07:00"}),
        ]  # fmt: skip
        return self.rng.choice(cases)
