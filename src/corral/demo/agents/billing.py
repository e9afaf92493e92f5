"""Billing: takes copays (Stripe), refunds them, invoices balances (QuickBooks Online).

A refund above the clinic's threshold, or one that would pass its daily cap, waits for the
owner: the call simply blocks until the owner decides, as a person would wait at the desk.
"""

from __future__ import annotations

from typing import Any

from corral.demo.agents._day import Agent, run


def charge(agent: Agent, step: dict[str, Any]) -> None:
    agent.call(
        "stripe.create_payment_intent",
        amount=step["amount"],
        currency="usd",
        description=step["description"],
    )


def refund(agent: Agent, step: dict[str, Any]) -> None:
    done = agent.call(
        "stripe.create_refund",
        payment_intent=step["payment_intent"],
        amount=step["amount"],
        currency="usd",
        reason="requested_by_customer",
    )
    if not done.done:
        agent.say(f"refund of {step['amount']} cents not made: {done.explanation}")


def invoice(agent: Agent, step: dict[str, Any]) -> None:
    agent.call(
        "quickbooks.create_invoice",
        customer_id=step["customer_id"],
        lines=[{"amount": step["balance"], "description": "Balance after insurance"}],
    )


HANDLERS = {"charge": charge, "refund": refund, "invoice": invoice}


def main(argv: list[str]) -> int:
    return run("billing", argv, HANDLERS)
