"""Receptionist (dental-front-desk 1.0.1): offer a patient the first free slot of a day.

The guest runner starts this script as ``__main__``. ``argv[1]``, when given, is the job as
JSON ({"phone": "+15550101234", "day": "2026-03-04"}); without it, the demo job below.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

from corral.guest import tools

CLINIC = timezone(timedelta(hours=-8))  # Bright Smile Dental, Los Angeles (winter)
CALENDAR = "lee@brightsmile.example"

DEMO = {"phone": "+15550101234", "day": "2026-03-04"}


def first_free_hour(day: str) -> int | None:
    """The first hour from 09:00 to 16:00 with nothing on Dr. Lee's calendar."""
    listed = tools.google_calendar.list_events(
        calendar_id=CALENDAR, time_min=f"{day}T09:00:00-08:00", time_max=f"{day}T17:00:00-08:00"
    )
    events = (listed.result or {}).get("events", [])
    taken = {datetime.fromisoformat(event["start"]).astimezone(CLINIC).hour for event in events}
    return next((hour for hour in range(9, 17) if hour not in taken), None)


def main(argv: list[str]) -> int:
    job = json.loads(argv[1]) if len(argv) > 1 else DEMO
    hour = first_free_hour(job["day"])
    if hour is None:
        body = f"Dr. Lee is fully booked on {job['day']}. Reply with another day."
    else:
        body = f"Dr. Lee can see you on {job['day']} at {hour}:00. Reply YES to book it."
    tools.twilio.send_sms(to=job["phone"], body=body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
