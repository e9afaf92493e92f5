"""Follow-up (dental-front-desk 1.1.0): check in with a patient after a visit.

The guest runner starts this script as ``__main__``. ``argv[1]``, when given, is the job as
JSON ({"phone": "+15550101234", "day": "2026-03-04"}); without it, the demo job below.
"""

from __future__ import annotations

import json
import sys

from corral.guest import tools

DEMO = {"phone": "+15550101234", "day": "2026-03-04"}


def main(argv: list[str]) -> int:
    # No name and no treatment in the text: a text message can reach whoever holds the number
    # now (a recycled number, a shared phone), and treatment details are health information.
    job = json.loads(argv[1]) if len(argv) > 1 else DEMO
    body = (
        f"Bright Smile Dental here, checking in after your visit on {job['day']}. "
        "Call us at (555) 010-0000 if anything feels wrong."
    )
    tools.twilio.send_sms(to=job["phone"], body=body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
