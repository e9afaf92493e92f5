"""The agent SDK: ``tools.<provider>.<tool>(...)`` is exactly one ``tools.call`` frame."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import corral.guest
from corral.guest import request_delegation, tools, wire
from tests.guest._host import FakeHost, HostError

SENT = {"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"}


def _handler(method: str, params: dict[str, Any]) -> Any:
    if method == "tools.call":
        if params["tool"] == "twilio.send_sms" and params["args"].get("to") == "+15550100001":
            raise HostError(
                wire.REFUSED,
                "refused",
                {
                    "verdict": "deny",
                    "rules": ["opted_out"],
                    "explanation": "+15550100001 has opted out of messages.",
                },
            )
        return {
            "call_id": "call-1",
            "verdict": "allow",
            "result": SENT,
            "explanation": "No rule applies.",
        }
    if method == "tools.list":
        return {
            "tools": [
                {
                    "name": "twilio.send_sms",
                    "description": "Send an SMS.",
                    "input_schema": {"type": "object", "required": ["to", "body"]},
                }
            ]
        }
    if method == "delegation.request":
        return {"token": "v1.tok", "expires_at": "2025-06-01T10:05:00.000000Z"}
    raise HostError(wire.METHOD_NOT_FOUND, f"unknown method {method}")


@pytest.fixture
def host() -> Iterator[FakeHost]:
    server = FakeHost(_handler)
    tools.connect(server.path)
    server.wait_for("sandbox.ready")
    yield server
    tools.set_client(None)
    server.close()


def test_a_tool_call_sends_one_frame_and_returns_the_result(host: FakeHost) -> None:
    sent = tools.twilio.send_sms(to="+15550100002", body="See you at 10")
    assert sent == tools.CallResult(
        call_id="call-1", verdict="allow", result=SENT, explanation="No rule applies."
    )
    frame = host.next_message()
    assert frame == {
        "jsonrpc": "2.0",
        "method": "tools.call",
        "params": {
            "tool": "twilio.send_sms",
            "args": {"to": "+15550100002", "body": "See you at 10"},
        },
        "id": frame["id"],
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        sent.verdict = "deny"  # type: ignore[misc]


def test_keyword_names_and_idempotency_key(host: FakeHost) -> None:
    tools.twilio.send_sms(
        to="+15550100002", body="hi", from_="+15550100009", idempotency_key="retry-42"
    )
    params = host.next_message()["params"]
    assert params == {
        "tool": "twilio.send_sms",
        "args": {"to": "+15550100002", "body": "hi", "from": "+15550100009"},
        "idempotency_key": "retry-42",
    }
    with pytest.raises(TypeError, match="'from' twice"):
        tools.twilio.send_sms(to="+1", body="x", from_="+2", **{"from": "+3"})


def test_generic_call_and_nested_arguments(host: FakeHost) -> None:
    invitee = {"name": "Pat", "email": "pat@example.com", "timezone": "UTC"}
    tools.call("calendly.book", {"event_type": "ET1", "invitee": invitee})
    assert host.next_message()["params"] == {
        "tool": "calendly.book",
        "args": {"event_type": "ET1", "invitee": invitee},
    }
    assert tools.google_calendar.list_events.name == "google_calendar.list_events"


def test_a_refusal_raises_with_its_rules(host: FakeHost) -> None:
    with pytest.raises(tools.ToolRefused) as caught:
        tools.twilio.send_sms(to="+15550100001", body="Reminder")
    assert caught.value.verdict == "deny"
    assert caught.value.rules == ["opted_out"]
    assert caught.value.explanation == "+15550100001 has opted out of messages."
    assert corral.guest.ToolRefused is tools.ToolRefused


def test_list_returns_the_hosts_tools(host: FakeHost) -> None:
    assert tools.list() == [
        tools.ToolInfo(
            name="twilio.send_sms",
            description="Send an SMS.",
            input_schema={"type": "object", "required": ["to", "body"]},
        )
    ]
    assert host.next_message()["method"] == "tools.list"


def test_request_delegation(host: FakeHost) -> None:
    grant = request_delegation("twilio.send_sms", {"recipients": ["+15550100002"]}, ttl_s=60)
    assert grant == tools.Delegation(token="v1.tok", expires_at="2025-06-01T10:05:00.000000Z")
    assert host.next_message()["params"] == {
        "tool": "twilio.send_sms",
        "constraints": {"recipients": ["+15550100002"]},
        "ttl_s": 60,
    }
    request_delegation("stripe.create_refund")
    assert host.next_message()["params"] == {"tool": "stripe.create_refund"}


def test_log_is_a_notification(host: FakeHost) -> None:
    tools.log("booked Pat at 10", level="warning")
    message = host.next_message()
    assert message == {
        "jsonrpc": "2.0",
        "method": "log",
        "params": {"level": "warning", "message": "booked Pat at 10"},
    }


def test_malformed_answers_are_channel_errors(host: FakeHost) -> None:
    host.handler = lambda method, params: {"verdict": "allow"}
    with pytest.raises(tools.ChannelError, match=r"malformed tools\.call answer"):
        tools.twilio.send_sms(to="+15550100002", body="hi")
    host.handler = lambda method, params: {"tools": "all of them"}
    with pytest.raises(tools.ChannelError, match=r"malformed tools\.list answer"):
        tools.list()


def test_the_default_client_connects_lazily_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = FakeHost(_handler)
    try:
        monkeypatch.setenv("CORRAL_CHANNEL", server.path)
        tools.set_client(None)
        provider = tools.twilio
        assert not server.connected.is_set(), "attribute access alone must not connect"
        assert provider.send_sms(to="+15550100002", body="hi").verdict == "allow"
        assert server.next_message()["method"] == "sandbox.ready"
        assert server.next_message()["method"] == "tools.call"
    finally:
        tools.set_client(None)
        server.close()


def test_the_sdk_knows_exactly_the_catalogs_providers() -> None:
    from corral.connectors._registry import providers

    assert set(tools.PROVIDERS) == set(providers())
    assert not hasattr(tools, "pytest_plugins")  # module probes find nothing
    with pytest.raises(AttributeError, match="providers: twilio"):
        _ = tools.twillio


def test_private_and_dunder_names_are_not_providers() -> None:
    assert not hasattr(tools, "__wrapped__")
    assert not hasattr(tools, "_private")
    assert not hasattr(tools.twilio, "__wrapped__")
    assert repr(tools.twilio.send_sms) == "<corral tool twilio.send_sms>"


def test_the_sdk_imports_only_the_standard_library() -> None:
    code = "import sys, json, corral.guest.tools; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = set(json.loads(out.stdout))
    heavy = {"corral.connectors", "pydantic", "httpx", "mcp", "anyio", "asyncio", "typing"}
    assert loaded.isdisjoint(heavy), sorted(loaded & heavy)
    assert "corral.guest.wire" not in loaded  # framing is loaded on first connect


def test_a_lost_channel_is_not_silently_replaced(host: FakeHost) -> None:
    lost = threading.Event()
    tools.client().on_close(lambda error: lost.set())
    host.drop()
    assert lost.wait(5)
    with pytest.raises(tools.ChannelError, match="channel closed by the host"):
        tools.twilio.send_sms(to="+15550100002", body="hi")
    assert host.messages.empty(), "the SDK reconnected behind the agent's back"
