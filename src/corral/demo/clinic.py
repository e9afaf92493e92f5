"""Bright Smile Dental: its patients, its policy, its agents' roles and the day's plan.

Standard library only: the agents import this module inside their sandboxes (where there is no
time-zone database either, so the driver hands over the day's UTC offset).

The plan is a pure function of a seed and the *world* (the ids the provider sandboxes gave
the clinic's data: payment intents, customers, contacts, the Calendly event type). It holds
the seven moments where the agents' duties collide, at fixed times, and routine work drawn
from the seed around them. Routine work never conflicts (distinct patients, slots, amounts),
so the same seed gives the same calls and the same verdicts; the collisions are spaced so
that the first call of each pair has finished before the second is decided.

>>> world = example_world()
>>> plan = plan_day(7, world)
>>> sorted(plan)
['billing', 'booking', 'follow-up', 'receptionist']
>>> plan == plan_day(7, world)
True
>>> collisions = {s["conflict"] for steps in plan.values() for s in steps if s.get("conflict")}
>>> collisions == set(CONFLICTS)
True
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

__all__ = [
    "AGENTS",
    "CALENDAR",
    "CONFLICTS",
    "HELD",
    "NAME",
    "OWNER",
    "PATIENTS",
    "ROLES",
    "TENANT",
    "TIMEZONE",
    "example_world",
    "local_hour",
    "local_time",
    "offset_text",
    "plan_day",
    "policy",
    "real_time",
]

TENANT = "brightsmile"
NAME = "Bright Smile Dental"
TIMEZONE = "America/Los_Angeles"
OWNER = "owner@brightsmile.example"
CALENDAR = "lee@brightsmile.example"
"""Dr. Lee's Google calendar: one resource with the Calendly event type (policy ``calendars``)."""

ROLES: dict[str, list[str]] = {
    "receptionist": [
        "google_calendar.list_events",
        "calendly.book",
        "twilio.send_sms",
        "stripe.create_refund",
    ],
    "booking": ["google_calendar.insert_event", "twilio.send_sms"],
    "billing": [
        "stripe.create_payment_intent",
        "stripe.create_refund",
        "quickbooks.create_invoice",
    ],
    "follow-up": ["twilio.send_sms", "ghl.upsert_contact", "ghl.send_message"],
}
"""Each agent's tools: the host refuses every other tool, the policy's ``roles`` say the same."""
AGENTS = tuple(ROLES)

CONFLICTS: dict[str, tuple[str, str]] = {
    "double booking": ("slot_conflict", "deny"),
    "duplicate reminder": ("duplicate_message", "deny"),
    "double refund": ("duplicate_refund", "deny"),
    "quiet hours": ("quiet_hours", "defer"),
    "opted-out patient": ("opted_out", "deny"),
    "refund over the threshold": ("refund_above_threshold", "escalate"),
    "over the daily cap": ("refund_daily_cap", "escalate"),
}
"""Each collision the day holds: the rule that must catch it and its verdict."""
HELD = frozenset(name for name, (_rule, verdict) in CONFLICTS.items() if verdict != "deny")
"""Collisions whose call waits (for the end of quiet hours, for the owner) before its answer."""

PATIENTS: list[dict[str, str]] = [
    {"key": key, "name": name, "phone": f"+1310555{100 + n:04d}", "email": f"{key}@example.com"}
    for n, (key, name) in enumerate(
        [
            ("ana", "Ana Ruiz"),
            ("bo", "Bo Chen"),
            ("carmen", "Carmen Diaz"),
            ("dmitri", "Dmitri Volkov"),
            ("eve", "Eve Adams"),
            ("frank", "Frank Moreau"),
            ("grace", "Grace Kim"),
            ("hugo", "Hugo Silva"),
            ("iris", "Iris Novak"),
            ("jon", "Jon Park"),
            ("kira", "Kira Shah"),
            ("liam", "Liam Ortiz"),
            ("maya", "Maya Cohen"),
            ("noah", "Noah Reed"),
            ("olga", "Olga Ivanova"),
            ("pia", "Pia Laine"),
            ("quinn", "Quinn Hale"),
            ("rosa", "Rosa Lima"),
        ]
    )
]
"""Fictional patients (``555-01xx`` numbers). Dmitri asked not to be texted."""
_SCRIPTED = {"ana", "bo", "carmen", "dmitri", "eve", "frank", "grace", "hugo"}
"""Patients in the collisions; routine work goes to the others."""


def policy(world: dict[str, Any]) -> dict[str, Any]:
    """The tenant policy (``TOOLS.md``): quiet hours, Dmitri opted out, refunds above $200
    escalated and $500 a day at most, Dr. Lee's calendar and Calendly type one resource."""
    dmitri = _patient("dmitri")
    return {
        "timezone": TIMEZONE,
        "country": "US",
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "opted_out": [dmitri["phone"], dmitri["email"]],
        "refunds": {
            "daily_cap": {"amount": 50000, "currency": "usd"},
            "escalate_above": {"amount": 20000, "currency": "usd"},
        },
        "messages": {"dedupe_window_s": 86400, "per_recipient_daily_max": 3},
        "calendars": {"dr-lee": [f"google_calendar:{CALENDAR}", f"calendly:{world['event_type']}"]},
        "roles": {role: list(tools) for role, tools in ROLES.items()},
        "agents": {agent: agent for agent in AGENTS},
        "observe_only": [],
    }


def _patient(key: str) -> dict[str, str]:
    return next(p for p in PATIENTS if p["key"] == key)


def _offset(world: dict[str, Any]) -> timezone:
    return timezone(timedelta(minutes=int(world["utc_offset_min"])))


def offset_text(world: dict[str, Any]) -> str:
    """The clinic's UTC offset that day, as RFC 3339 writes it (``-08:00``)."""
    minutes = int(world["utc_offset_min"])
    sign, minutes = ("-" if minutes < 0 else "+"), abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def local_hour(world: dict[str, Any], text: str) -> int:
    """The clinic's local hour of an RFC 3339 time."""
    return datetime.fromisoformat(text).astimezone(_offset(world)).hour


def local_time(world: dict[str, Any], hhmm: str, days: int = 0) -> datetime:
    """``hh:mm`` on the clinic's day (plus ``days``), in the clinic's offset that day."""
    day = date.fromisoformat(world["day"]) + timedelta(days=days)
    hour, minute = (int(part) for part in hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=_offset(world))


def real_time(world: dict[str, Any], simulated: datetime) -> float:
    """The real Unix time at which the demo's clock reads ``simulated``."""
    clock = world["clock"]
    start = datetime.fromisoformat(clock["start"])
    return float(clock["origin"]) + (simulated - start).total_seconds() / float(clock["factor"])


def _at(world: dict[str, Any], hhmm: str) -> str:
    return local_time(world, hhmm).astimezone(UTC).isoformat()


def _slot(world: dict[str, Any], hhmm: str, days: int, minutes: int = 60) -> dict[str, str]:
    start = local_time(world, hhmm, days)
    return {"start": start.isoformat(), "end": (start + timedelta(minutes=minutes)).isoformat()}


def plan_day(seed: int, world: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each agent's steps for the day, in time order: ``{"at", "task", ...}`` (``at`` in UTC);
    the collisions carry ``"conflict"`` (a key of :data:`CONFLICTS`)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible day, not a secret)
    pay = world["payments"]
    p = {key: _patient(key) for key in _SCRIPTED}
    plan: dict[str, list[dict[str, Any]]] = {agent: [] for agent in AGENTS}

    def add(agent: str, hhmm: str, task: str, conflict: str | None = None, **params: Any) -> None:
        step = {"at": _at(world, hhmm), "task": task, **params}
        if conflict is not None:
            step["conflict"] = conflict
        plan[agent].append(step)

    tomorrow_10 = _slot(world, "10:00", 1)
    reminder = (
        f"Reminder from {NAME}: your appointment with Dr. Lee is tomorrow at 15:00. "
        "Reply C to cancel."
    )
    # The collisions, at fixed times.
    add(
        "follow-up",
        "07:40",
        "check_in",
        "quiet hours",
        patient=p["hugo"],
        text=f"Good morning from {NAME}: how is the tooth after yesterday's extraction?",
    )
    add("follow-up", "09:00", "remind", patient=p["carmen"], text=reminder)
    add("booking", "09:00", "book", patient=p["ana"], slot=tomorrow_10, summary="Cleaning")
    add(
        "receptionist",
        "09:40",
        "online_booking",
        "double booking",
        patient=p["bo"],
        slot=_slot(world, "10:30", 1),
        fallback=_slot(world, "14:00", 1),
    )
    add(
        "billing",
        "10:20",
        "refund",
        patient=p["eve"],
        payment_intent=pay["eve"],
        amount=4500,
        why="visit cancelled",
    )
    add(
        "receptionist",
        "11:00",
        "desk_refund",
        "double refund",
        patient=p["eve"],
        payment_intent=pay["eve"],
        amount=4500,
    )
    add("booking", "12:00", "remind", "duplicate reminder", patient=p["carmen"], text=reminder)
    add(
        "billing",
        "13:00",
        "refund",
        "refund over the threshold",
        patient=p["frank"],
        payment_intent=pay["frank"],
        amount=35000,
        why="crown not fitted",
    )
    add(
        "follow-up",
        "15:00",
        "recall",
        "opted-out patient",
        patient=p["dmitri"],
        text=f"{NAME}: you are due for a check-up. Reply YES to book.",
    )
    add(
        "billing",
        "16:00",
        "refund",
        "over the daily cap",
        patient=p["grace"],
        payment_intent=pay["grace"],
        amount=12000,
        why="billed twice for x-rays",
    )

    # Routine work from the seed: other patients, free times, distinct slots and amounts.
    others = [x for x in PATIENTS if x["key"] not in _SCRIPTED]
    rng.shuffle(others)
    taken = {agent: {s["at"] for s in steps} for agent, steps in plan.items()}
    grid = [f"{h:02d}:{m:02d}" for h in range(8, 17) for m in (10, 30, 50)]

    def free_times(agent: str, count: int) -> list[str]:
        """``count`` grid times, each at least 30 minutes from anything else the agent does."""
        chosen: list[str] = []
        for _ in range(count):
            busy = [datetime.fromisoformat(t) for t in taken[agent]]
            ok = [
                t
                for t in grid
                if all(abs((local_time(world, t) - b).total_seconds()) >= 1800 for b in busy)
            ]
            pick = rng.choice(ok)
            chosen.append(pick)
            taken[agent].add(_at(world, pick))
        return sorted(chosen)

    bookings = rng.randint(2, 3)
    hours = rng.sample(["09:00", "10:00", "11:00", "13:00", "14:00", "15:00", "16:00"], bookings)
    for when, hour, patient in zip(free_times("booking", bookings), hours, others, strict=False):
        add(
            "booking",
            when,
            "book",
            patient=patient,
            slot=_slot(world, hour, 2),
            summary=rng.choice(["Cleaning", "Filling", "Check-up"]),
        )
    rest = others[bookings:]
    answers = rng.randint(2, 3)
    for when, patient in zip(free_times("receptionist", answers), rest, strict=False):
        add(
            "receptionist",
            when,
            "answer",
            patient=patient,
            day=local_time(world, "00:00", 2).date().isoformat(),
        )
    rest = rest[answers:]
    charges = rng.randint(2, 3)
    for n, when in enumerate(free_times("billing", charges)):
        add(
            "billing",
            when,
            "charge",
            amount=rng.choice([2500, 3500, 4500, 6000]) + n,
            description="Visit copay",
        )
    customers = list(world["customers"])
    invoices = min(rng.randint(1, 2), len(customers))
    for when, customer in zip(free_times("billing", invoices), customers, strict=False):
        add(
            "billing",
            when,
            "invoice",
            customer_id=customer,
            balance=f"{rng.randint(40, 180)}.{rng.choice(['00', '50'])}",
        )
    check_ins = min(rng.randint(2, 3), len(rest))
    for when, patient in zip(free_times("follow-up", check_ins), rest, strict=False):
        add("follow-up", when, "ghl_check_in", patient=patient)
    for steps in plan.values():
        steps.sort(key=lambda step: step["at"])
    return plan


def example_world() -> dict[str, Any]:
    """A world with made-up ids (doctests, unit tests)."""
    return {
        "tenant": TENANT,
        "day": "2026-03-04",
        "utc_offset_min": -480,
        "clock": {"start": "2026-03-04T06:50:00-08:00", "origin": 0.0, "factor": 3600.0},
        "event_type": "https://api.calendly.com/event_types/ET1",
        "payments": {"eve": "pi_eve", "frank": "pi_frank", "grace": "pi_grace"},
        "customers": ["58", "59"],
    }
