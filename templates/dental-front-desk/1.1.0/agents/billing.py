"""Billing (dental-front-desk 1.1.0): charge a visit's copay or refund it.

The guest runner starts this script as ``__main__``. ``argv[1]``, when given, is the job as
JSON ({"action": "charge", "amount": 4500, "currency": "usd"}); without it, the demo job below.
"""

from __future__ import annotations

import json
import sys

from corral.guest import tools

DEMO = {"action": "charge", "amount": 4500, "currency": "usd", "customer": "cus_demo"}


def main(argv: list[str]) -> int:
    job = json.loads(argv[1]) if len(argv) > 1 else DEMO
    if job["action"] == "refund":
        tools.stripe.create_refund(
            payment_intent=job["payment_intent"],
            amount=job["amount"],
            currency=job["currency"],
            reason="requested_by_customer",
        )
    elif job["action"] == "invoice":  # the balance insurance did not cover, due in 30 days
        tools.quickbooks.create_invoice(
            customer_id=job["customer_id"],
            lines=[{"amount": job["balance"], "description": "Balance after insurance"}],
            due_date=job.get("due_date"),
        )
    else:
        tools.stripe.create_payment_intent(
            amount=job["amount"],
            currency=job["currency"],
            customer=job.get("customer"),
            description="Bright Smile Dental visit copay",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
