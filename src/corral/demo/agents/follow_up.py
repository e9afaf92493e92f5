"""Follow-up: checks in after visits (texts, and GoHighLevel for the clinic's inbox),
reminds patients of appointments, recalls them for check-ups."""

from __future__ import annotations

from typing import Any

from corral.demo.agents._day import Agent, run
from corral.demo.clinic import NAME


def text(agent: Agent, step: dict[str, Any]) -> None:
    agent.call("twilio.send_sms", to=step["patient"]["phone"], body=step["text"])


def ghl_check_in(agent: Agent, step: dict[str, Any]) -> None:
    patient = step["patient"]
    first, _, last = patient["name"].partition(" ")
    saved = agent.call(
        "ghl.upsert_contact",
        phone=patient["phone"],
        email=patient["email"],
        first_name=first,
        last_name=last,
    )
    contact = saved.result.get("contact_id")
    if saved.done and contact:
        agent.call(
            "ghl.send_message",
            contact_id=contact,
            type="SMS",
            message=f"{NAME} here, {first}: how are you feeling after your visit?",
        )


HANDLERS = {"check_in": text, "remind": text, "recall": text, "ghl_check_in": ghl_check_in}


def main(argv: list[str]) -> int:
    return run("follow-up", argv, HANDLERS)
