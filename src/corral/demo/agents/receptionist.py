"""The receptionist: answers patients, takes online bookings (Calendly), refunds at the desk.

When the supervisor refuses an online booking because Dr. Lee's slot was just taken on his
Google calendar (``slot_conflict``: the two are one resource), it books the patient's second
choice and tells them so.
"""

from __future__ import annotations

from typing import Any

from corral.demo.agents._day import Agent, run
from corral.demo.clinic import CALENDAR, NAME, TIMEZONE, local_hour, offset_text


def answer(agent: Agent, step: dict[str, Any]) -> None:
    """Offer the first free hour of a day on Dr. Lee's calendar."""
    day, patient, offset = step["day"], step["patient"], offset_text(agent.world)
    listed = agent.call(
        "google_calendar.list_events",
        calendar_id=CALENDAR,
        time_min=f"{day}T09:00:00{offset}",
        time_max=f"{day}T17:00:00{offset}",
    )
    events = listed.result.get("events", [])
    taken = {local_hour(agent.world, str(e["start"])) for e in events if e.get("start")}
    hour = next((h for h in range(9, 17) if h not in taken), None)
    first = patient["name"].split()[0]
    body = (
        f"Hi {first}, Dr. Lee can see you on {day} at {hour}:00. Reply YES to book."
        if hour is not None
        else f"Hi {first}, Dr. Lee is fully booked on {day}."
    )
    agent.call("twilio.send_sms", to=patient["phone"], body=body)


def _book(agent: Agent, patient: dict[str, str], slot: dict[str, str]) -> Any:
    invitee = {"name": patient["name"], "email": patient["email"], "timezone": TIMEZONE}
    return agent.call(
        "calendly.book",
        event_type=agent.world["event_type"],
        start_time=slot["start"],
        end_time=slot["end"],
        invitee=invitee,
    )


def online_booking(agent: Agent, step: dict[str, Any]) -> None:
    """Book a patient's online request; if the slot is taken, their second choice."""
    patient, slot = step["patient"], step["slot"]
    booked = _book(agent, patient, slot)
    first = patient["name"].split()[0]
    if booked.done:
        agent.call(
            "twilio.send_sms",
            to=patient["phone"],
            body=f"{NAME}: you're booked with Dr. Lee at {slot['start'][11:16]}.",
        )
    elif "slot_conflict" in booked.rules:
        agent.say(f"{slot['start']} was just taken; booking the second choice")
        fallback = step["fallback"]
        if _book(agent, patient, fallback).done:
            agent.call(
                "twilio.send_sms",
                to=patient["phone"],
                body=f"Hi {first}, that time was just taken, so we booked you with Dr. "
                f"Lee at {fallback['start'][11:16]} instead.",
            )


def desk_refund(agent: Agent, step: dict[str, Any]) -> None:
    """A patient at the desk asks for their copay back."""
    agent.call(
        "stripe.create_refund",
        payment_intent=step["payment_intent"],
        amount=step["amount"],
        currency="usd",
        reason="requested_by_customer",
    )


HANDLERS = {"answer": answer, "online_booking": online_booking, "desk_refund": desk_refund}


def main(argv: list[str]) -> int:
    return run("receptionist", argv, HANDLERS)
