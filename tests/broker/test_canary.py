"""The proof: no credential leaves the broker toward an agent, whole, in part, or encoded.

Canary credentials are connected for all six providers (every credential field, and every
access and refresh token the fakes ever issue during the run). Every catalog tool then runs
through the broker, along with the paths where secrets like to leak: provider errors that echo
the key (as Stripe's "Invalid API Key provided: sk_test_…" does), refused and expired tokens,
a refresh token the provider refuses, lost answers, and accounts connected, replaced and
disconnected over HTTP (their new credentials are canaries too; a refused request with a key
pasted as a field name among them). Everything that goes toward an agent or an operator is
collected: responses and problem documents, delegations, audit events and the audit entries
made of them, metrics and every log record. The scan looks for every 8-character piece of
every canary in that text raw, and in every base64 (standard and URL-safe, each alignment),
percent-encoded and hex run decoded from it. It must find nothing.

The scan is written independently of :mod:`corral.broker.scrub` (it decodes the corpus rather
than encoding the canaries), so that a blind spot in one is not a blind spot in both.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from corral.broker.client import connect_call, disconnect_call, mint_call, rotate_call
from corral.broker.events import to_entries
from corral.core.ids import SequentialIds
from corral.fakes import fake_endpoints
from tests.broker._world import TENANT, World, build_world, catalog_calls, run

WINDOW = 8
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")
_HEX_RUN = re.compile(r"(?:[0-9a-fA-F]{2}){8,}")


def _decoded_views(text: str) -> Iterator[str]:
    """The corpus as written, URL-decoded, and every base64 or hex run decoded."""
    yield text
    yield unquote_plus(text)
    for run_ in _B64_RUN.findall(text):
        body = run_.rstrip("=")
        for offset in range(4):
            chunk = body[offset:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for decoder in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    yield decoder(chunk + "==").decode("latin-1")
                except (binascii.Error, ValueError):
                    continue
    for run_ in _HEX_RUN.findall(text):
        for offset in (0, 1):
            chunk = run_[offset:]
            chunk = chunk[: len(chunk) - len(chunk) % 2]
            yield bytes.fromhex(chunk).decode("latin-1")


def _hits(canaries: set[str], corpus: list[str]) -> list[tuple[str, str, str]]:
    windows: dict[str, str] = {}
    for canary in canaries:
        for i in range(len(canary) - WINDOW + 1):
            windows[canary[i : i + WINDOW]] = canary
    found = []
    for item in corpus:
        for view in _decoded_views(item):
            for i in range(len(view) - WINDOW + 1):
                piece = view[i : i + WINDOW]
                if piece in windows:
                    found.append((windows[piece], piece, item[:120]))
    return found


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    try:
        yield world
    finally:
        world.close()


def _exercise(world: World, corpus: list[str]) -> None:
    def keep(response: Any) -> dict[str, Any]:
        corpus.append(response.text)
        corpus.append(json.dumps(dict(response.headers)))
        body: dict[str, Any] = response.json()
        return body

    results: dict[str, Any] = {}
    for tool, args in catalog_calls(world):
        results[tool] = keep(run(world.execute(tool, args))).get("result")
    pi = world.seeds["stripe_paid"]
    keep(run(world.execute("stripe.create_refund",
                           {"payment_intent": pi, "amount": 100, "currency": "usd"})))  # fmt: skip
    event = results["google_calendar.insert_event"]["event_id"]
    keep(run(world.execute("google_calendar.delete_event",
                           {"calendar_id": "primary", "event_id": event})))  # fmt: skip
    keep(run(world.execute("calendly.cancel_event",
                           {"event_uuid": results["calendly.book"]["event_id"]})))  # fmt: skip

    # A provider error that echoes the whole key, and one that echoes its tail.
    key = world.fields["stripe"]["api_key"]
    echo = {"error": {"type": "invalid_request_error",
                      "message": f"Invalid API Key provided: {key} (…{key[-12:]})"}}  # fmt: skip
    world.fakes["stripe"].faults.fail("/v1/payment_intents", 401, json.dumps(echo).encode())
    keep(run(world.execute("stripe.create_payment_intent", {"amount": 5, "currency": "usd"})))
    # Expired access tokens everywhere: every OAuth connection refreshes (and rotates).
    for name in ("google_calendar", "calendly", "quickbooks", "ghl"):
        world.fakes[name].expire_access_tokens()  # type: ignore[attr-defined]
    for tool, args in catalog_calls(world)[2:]:
        keep(run(world.execute(tool, args)))
    world.clock.advance(timedelta(hours=3))  # past every access token's lifetime
    keep(run(world.execute("ghl.upsert_contact", {"email": "x@example.com"})))
    # Lost answers and their reconciliation.
    world.fakes["twilio"].faults.lose_answer("/Messages.json")
    call = world.call("twilio.send_sms", {"to": "+13105550123", "body": "lost?"})
    body = {"delegation": world.delegate(["twilio.*"]), "approval": world.approve(call),
            "call": call}  # fmt: skip
    keep(run(world.post("/execute", body)))
    keep(run(world.post("/execute", body)))
    # A refresh token the provider refuses: the connection needs a reconnect.
    fake: Any = world.fakes["calendly"]
    for token in fake.oauth.issued():
        fake.oauth.revoke(token)
    fake.expire_access_tokens()
    keep(run(world.execute("calendly.cancel_event", {"event_uuid": "00000000-0000-0000-0000-0"})))
    keep(run(world.execute("calendly.cancel_event", {"event_uuid": "00000000-0000-0000-0000-1"})))
    # Delegations minted over HTTP, bad requests, listings, health and metrics.
    request = {"tenant": TENANT, "agent": "agent-1", "sandbox": "sbx-1",
               "tools": ["stripe.*"], "ttl_s": 9999, "idempotency_key": "mint-000001"}  # fmt: skip
    approval = world.approve(mint_call(request))
    minted = keep(run(world.post("/delegations", {"approval": approval, "request": request})))
    assert minted.get("delegation", "").startswith("cdl1.")
    keep(run(world.post("/execute", {"delegation": "x", "approval": "y", "call": {}})))
    _change_connections(world, keep, corpus)
    keep(run(world.get(f"/connections?tenant={TENANT}")))
    keep(run(world.get("/healthz")))
    corpus.append(run(world.get("/metrics")).text)


def _change_connections(world: World, keep: Any, corpus: list[str]) -> None:
    """Connect, replace and disconnect a Stripe account over HTTP, with refusals on the way."""
    fake: Any = world.fakes["stripe"]
    first, second = fake.new_connection(), fake.new_connection()
    world.fields["stripe-2"], world.fields["stripe-2 rotated"] = first, second

    def change(path: str, document: dict[str, Any], request: dict[str, Any]) -> None:
        body = keep(run(world.post(path, {"approval": world.approve(document),
                                          "request": request})))  # fmt: skip
        for entry, personal in to_entries(body.get("events", []), TENANT, SequentialIds()):
            corpus.append(entry.model_dump_json())
            corpus.append(repr(personal))

    base = {"tenant": TENANT, "operator": "own_lee"}
    connect = {**base, "provider": "stripe", "fields": first, "idempotency_key": "connect-0001",
               "api_url": fake_endpoints(world.fakes)["stripe"].api}  # fmt: skip
    change("/connections", connect_call(connect), connect)
    change("/connections", connect_call(connect), connect)  # replayed
    pasted = {**connect, "idempotency_key": "connect-0002",
              "fields": {"api_key": second["api_key"], second["api_key"]: "x"}}  # fmt: skip
    change("/connections", connect_call(pasted), pasted)  # refused: a key as a field name
    wrong = {**pasted, "fields": {"api_key": second["api_key"], "account_sid": "AC1"}}
    change("/connections", connect_call(pasted), wrong)  # refused: approved for other fields
    typed = {**wrong, "fields": {"api_key": [second["api_key"]]}}
    change("/connections", connect_call(typed), typed)  # refused: not a string
    rotate = {**base, "fields": second, "idempotency_key": "rotate-00001"}
    change("/connections/stripe-2/rotate", rotate_call("stripe-2", rotate), rotate)
    change("/connections/stripe-2/rotate", rotate_call("stripe-2", rotate), rotate)  # replayed
    other = {**rotate, "tenant": "quickfix", "idempotency_key": "rotate-00002"}
    change("/connections/stripe-2/rotate", rotate_call("stripe-2", other), other)  # refused
    call = world.call("stripe.create_payment_intent", {"amount": 300, "currency": "usd"})
    call["connection_id"] = "stripe-2"
    keep(run(world.post("/execute", {"delegation": world.delegate(["stripe.*"]),
                                     "approval": world.approve(call), "call": call})))  # fmt: skip
    leave = {**base, "reason": "closed", "idempotency_key": "disconnect-1"}
    change("/connections/stripe-2/disconnect", disconnect_call("stripe-2", leave), leave)
    change("/connections/stripe-2/disconnect", disconnect_call("stripe-2", leave), leave)


def test_no_canary_reaches_anything_an_agent_or_operator_sees(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    corpus: list[str] = []
    with caplog.at_level(logging.DEBUG):
        _exercise(world, corpus)
    corpus += [record.getMessage() for record in caplog.records]
    corpus += [json.dumps(str(record.args)) for record in caplog.records]

    canaries = {value for fields in world.fields.values() for value in fields.values()}
    for fake in world.fakes.values():
        authority = getattr(fake, "oauth", None)
        if authority is not None:
            canaries |= set(authority.issued())
    canaries = {c for c in canaries if len(c) >= WINDOW}
    assert len(canaries) > 20  # six connections' fields, plus every token issued on the way
    assert sum(len(item) for item in corpus) > 10_000  # the corpus is not empty by accident
    assert _hits(canaries, corpus) == []


def test_the_scan_finds_a_planted_leak() -> None:
    canary = "sk_test_CANARY0123456789abcdef"
    planted = [
        f"raw {canary[5:20]}",
        base64.b64encode(f"u:{canary}".encode()).decode(),
        base64.urlsafe_b64encode(f"xy{canary}".encode()).decode(),
        canary.encode().hex(),
        "q=" + canary.replace("_", "%5F"),
    ]
    for item in planted:
        assert _hits({canary}, [item]), item
    assert _hits({canary}, ["nothing to see"]) == []
