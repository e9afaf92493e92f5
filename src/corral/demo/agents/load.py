"""The end-to-end benchmark's agent (``benchmarks/e2e.py``): calls through the whole chain.

Job (``argv[0]``, JSON): ``tenant``, ``index`` (the agent's number within its tenant), ``tools``,
``phases`` (a list of ``{"name", "start", "seconds", "rate"}``: ``start`` is seconds after the
origin, ``rate`` calls per second for an open loop with exponential gaps, ``0`` for a closed
loop that calls back to back), ``seed``. The origin comes in ``/work/go.json`` once every agent
is up. Every call's arguments are unique (recipient, amount, slot), so that no rule of the
supervisor refuses one: what is measured is the chain, not a conflict.

Each call is one line of ``/work/calls.jsonl``: phase, tool, call id, milliseconds from the
guest's call to its answer, and whether it succeeded; ``/work/result.json`` when done.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from corral.guest import tools
from corral.guest.tools import ChannelError

_AREAS = (
    201,
    202,
    203,
    205,
    206,
    207,
    208,
    209,
    210,
    212,
    213,
    214,
    215,
    216,
    217,
    218,
    219,
    224,
    225,
    228,
    229,
    231,
    234,
    239,
    240,
    248,
    251,
    252,
    253,
    254,
)
_BASE = datetime(2031, 1, 6, tzinfo=UTC)


def arguments(tool: str, index: int, n: int) -> dict[str, Any]:
    """Unique arguments for call ``n`` of agent ``index`` (no two calls of a tenant collide)."""
    unique = index * 100_000 + n
    if tool == "twilio.send_sms":
        area = _AREAS[(unique // 100) % len(_AREAS)]
        to = f"+1{area}555{100 + unique % 100:04d}"
        return {"to": to, "body": f"Bench message {unique}"}
    if tool == "stripe.create_payment_intent":
        return {"amount": 1000 + unique, "currency": "usd", "description": f"bench {unique}"}
    if tool == "google_calendar.insert_event":
        start = _BASE + timedelta(minutes=30 * unique)
        return {
            "calendar_id": "primary",
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=30)).isoformat(),
            "summary": f"Bench {unique}",
        }
    if tool == "ghl.upsert_contact":
        return {"email": f"bench{unique}@example.com", "first_name": "Bench", "last_name": str(n)}
    if tool == "quickbooks.create_invoice":
        amount = f"{10 + unique // 100}.{unique % 100:02d}"
        return {"customer_id": "1", "lines": [{"amount": amount, "description": "Bench"}]}
    raise ValueError(f"no arguments for {tool}")


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    work = Path(os.environ.get("HOME") or "/work")
    rng = random.Random(int(job["seed"]))  # noqa: S311 (arrival times, not secrets)
    mix: list[str] = list(job["tools"])
    tools.delegations.auto(ttl_s=300)  # the SDK presents one per tool and renews it
    for tool in mix:
        tools.delegations.get(tool)
    go = work / "go.json"
    while not go.exists():
        time.sleep(0.01)
    origin = float(json.loads(go.read_text("utf-8"))["origin"])
    calls = 0
    with (work / "calls.jsonl").open("a", encoding="utf-8") as out:
        for phase in job["phases"]:
            start = origin + float(phase["start"])
            end = start + float(phase["seconds"])
            rate = float(phase["rate"])
            due = start + (rng.expovariate(rate) if rate > 0 else 0.0)
            while True:
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                if time.time() >= end:
                    break
                tool = mix[calls % len(mix)]
                args = arguments(tool, int(job["index"]), calls)
                calls += 1
                tools.delegations.get(tool)  # asked for again, when due, before the timing
                began = time.perf_counter()
                call_id: str | None
                try:
                    ok, call_id = True, tools.call(tool, args).call_id
                except ChannelError as exc:
                    data = exc.data if isinstance(exc.data, dict) else {}
                    ok, call_id = False, data.get("call_id")
                elapsed = (time.perf_counter() - began) * 1000
                out.write(
                    json.dumps(
                        {
                            "phase": phase["name"],
                            "tool": tool,
                            "call_id": call_id,
                            "ms": elapsed,
                            "ok": ok,
                        }
                    )
                    + "\n"
                )
                due = due + rng.expovariate(rate) if rate > 0 else time.time()
    done = work / "result.json"
    done.with_suffix(".tmp").write_text(json.dumps({"calls": calls}), "utf-8")
    done.with_suffix(".tmp").replace(done)
    while True:  # until the host stops the sandbox
        time.sleep(3600)
