"""Booking: books phone requests on Dr. Lee's Google calendar, confirms them, sends reminders."""

from __future__ import annotations

from typing import Any

from corral.demo.agents._day import Agent, run
from corral.demo.clinic import CALENDAR, NAME


def book(agent: Agent, step: dict[str, Any]) -> None:
    patient, slot = step["patient"], step["slot"]
    booked = agent.call(
        "google_calendar.insert_event",
        calendar_id=CALENDAR,
        start=slot["start"],
        end=slot["end"],
        summary=f"{step['summary']}: {patient['name']}",
        attendees=[patient["email"]],
    )
    if booked.done:
        when = f"{slot['start'][:10]} at {slot['start'][11:16]}"
        agent.call(
            "twilio.send_sms",
            to=patient["phone"],
            body=f"{NAME}: you're booked with Dr. Lee on {when}.",
        )


def remind(agent: Agent, step: dict[str, Any]) -> None:
    agent.call("twilio.send_sms", to=step["patient"]["phone"], body=step["text"])


HANDLERS = {"book": book, "remind": remind}


def main(argv: list[str]) -> int:
    return run("booking", argv, HANDLERS)
