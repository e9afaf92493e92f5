"""Booking (dental-front-desk 1.0.1): book or cancel a patient's appointment and confirm it.

The guest runner starts this script as ``__main__``. ``argv[1]``, when given, is the job as
JSON ({"phone": ..., "email": ..., "day": ..., "hour": 10}); without it, the demo job below.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta

from corral.guest import tools

CALENDAR = "lee@brightsmile.example"

DEMO = {"phone": "+15550101234", "email": "pat@example.com", "day": "2026-03-04", "hour": 10}


def slot(job: dict[str, object]) -> tuple[str, str]:
    start = datetime.fromisoformat(f"{job['day']}T{int(str(job['hour'])):02d}:00:00-08:00")
    return start.isoformat(), (start + timedelta(hours=1)).isoformat()


def main(argv: list[str]) -> int:
    job = json.loads(argv[1]) if len(argv) > 1 else DEMO
    if "cancel" in job:
        tools.google_calendar.delete_event(calendar_id=CALENDAR, event_id=job["cancel"])
        body = "Your appointment at Bright Smile Dental is cancelled."
    else:
        start, end = slot(job)
        tools.google_calendar.insert_event(
            calendar_id=CALENDAR,
            start=start,
            end=end,
            summary="Cleaning",
            attendees=[job["email"]],
        )
        body = f"You're booked with Dr. Lee on {job['day']} at {job['hour']}:00."
    tools.twilio.send_sms(to=job["phone"], body=body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
