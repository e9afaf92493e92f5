"""``python -m corral.guest.mcp`` driven by the official MCP client, against a stand-in host
that offers real catalog tools with their real schemas."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client

from corral.connectors._registry import catalog
from corral.guest import ToolRefused, wire
from corral.guest.mcp import refusal_text
from tests.guest._host import FakeHost, HostError

OFFERED = ["twilio.send_sms", "calendly.book", "calendly.cancel_event"]
RESULT = {"call_id": "call-3", "verdict": "allow", "result": {"sid": "SM9"}, "explanation": "ok"}
REFUSAL = {
    "verdict": "deny",
    "rules": ["quiet_hours"],
    "explanation": "It is 22:10 in America/Los_Angeles, inside quiet hours (21:00–08:00).",
}


def _offer(name: str) -> dict[str, Any]:
    schema = catalog()[name].json_schema()
    return {"name": name, "description": schema.get("description", ""), "input_schema": schema}


def _handler(method: str, params: dict[str, Any]) -> Any:
    if method == "delegation.request":
        return {"token": f"tok-{params['tool']}", "expires_at": "2026-03-03T17:05:00Z"}
    if method == "tools.list":
        return {"tools": [_offer(name) for name in OFFERED]}
    if method == "tools.call":
        tool, args = params["tool"], params["args"]
        if tool not in OFFERED:
            raise HostError(wire.FORBIDDEN, f"{tool} is not in this agent's template")
        if args.get("body") == "late":
            raise HostError(wire.REFUSED, "refused", REFUSAL)
        if args.get("body") == "":
            raise HostError(wire.INVALID_PARAMS, "body: String should have at least 1 character")
        if args.get("body") == "crash":
            raise HostError(wire.INTERNAL_ERROR, "control is unreachable")
        return RESULT
    raise HostError(wire.METHOD_NOT_FOUND, method)


@pytest.fixture
def host() -> Iterator[FakeHost]:
    server = FakeHost(_handler)
    yield server
    server.close()


def _session(host: FakeHost, body: Callable[[ClientSession], Awaitable[None]]) -> str:
    """Run ``body`` against a fresh MCP server subprocess; the server's stderr."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corral.guest.mcp"],
        env={"CORRAL_CHANNEL": host.path},
    )

    async def run(errlog: Any) -> None:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await body(session)

    with tempfile.TemporaryFile("w+") as errlog:
        asyncio.run(asyncio.wait_for(run(errlog), timeout=60))
        errlog.seek(0)
        return errlog.read()


def test_list_tools_is_what_the_host_offers(host: FakeHost) -> None:
    listed: list[Any] = []

    async def body(session: ClientSession) -> None:
        listed.extend((await session.list_tools()).tools)

    _session(host, body)
    assert [tool.name for tool in listed] == OFFERED
    for tool in listed:
        assert tool.input_schema == catalog()[tool.name].json_schema()
        assert tool.description == catalog()[tool.name].json_schema()["description"]
    assert host.next_message()["method"] == "sandbox.ready"
    assert host.next_message()["method"] == "tools.list"


def test_call_tool_relays_and_returns_the_result(host: FakeHost) -> None:
    results: list[Any] = []
    invitee = {"name": "Pat", "email": "pat@example.com", "timezone": "America/Los_Angeles"}
    args = {
        "event_type": "https://api.calendly.com/event_types/ET1",
        "start_time": "2025-06-02T10:00:00-07:00",
        "end_time": "2025-06-02T10:30:00-07:00",
        "invitee": invitee,
    }

    async def body(session: ClientSession) -> None:
        results.append(await session.call_tool("calendly.book", args))

    _session(host, body)
    (result,) = results
    assert not result.is_error
    assert json.loads(result.content[0].text) == RESULT
    assert result.structured_content == RESULT
    asked = host.wait_for("delegation.request")
    assert asked["params"]["tool"] == "calendly.book"
    relayed = host.wait_for("tools.call")  # it presents the delegation asked for
    assert relayed["params"] == {"tool": "calendly.book", "args": args,
                                 "delegation": "tok-calendly.book"}  # fmt: skip


def test_a_refusal_is_a_tool_error_naming_the_rule(host: FakeHost) -> None:
    results: list[Any] = []

    async def body(session: ClientSession) -> None:
        args = {"to": "+15550100002", "body": "late"}
        results.append(await session.call_tool("twilio.send_sms", args))

    _session(host, body)
    (result,) = results
    assert result.is_error
    text = result.content[0].text
    assert "twilio.send_sms was refused (verdict: deny; rules: quiet_hours)" in text
    assert "inside quiet hours (21:00–08:00)" in text
    assert result.structured_content == REFUSAL


def test_a_forbidden_tool_is_a_tool_error(host: FakeHost) -> None:
    results: list[Any] = []

    async def body(session: ClientSession) -> None:
        results.append(await session.call_tool("stripe.create_refund", {"amount": 100}))

    _session(host, body)
    (result,) = results
    assert result.is_error
    assert "stripe.create_refund is not among this agent's tools" in result.content[0].text


def test_invalid_arguments_are_a_tool_error(host: FakeHost) -> None:
    results: list[Any] = []

    async def body(session: ClientSession) -> None:
        results.append(await session.call_tool("twilio.send_sms", {"to": "+1555", "body": ""}))

    _session(host, body)
    (result,) = results
    assert result.is_error
    assert result.content[0].text == (
        "invalid arguments for twilio.send_sms: body: String should have at least 1 character"
    )


def test_a_channel_failure_is_a_protocol_error(host: FakeHost) -> None:
    errors: list[MCPError] = []

    async def body(session: ClientSession) -> None:
        try:
            await session.call_tool("twilio.send_sms", {"to": "+15550100002", "body": "crash"})
        except MCPError as exc:
            errors.append(exc)

    _session(host, body)
    (error,) = errors
    assert "control is unreachable" in error.message


def test_the_server_exits_when_the_host_stops_the_sandbox(host: FakeHost) -> None:
    """Even with an idle MCP client: the process ends and lets go of the channel."""
    failures: list[BaseException] = []

    async def body(session: ClientSession) -> None:
        await session.list_tools()
        host.notify("sandbox.stop", {})
        assert await asyncio.to_thread(host.disconnected.wait, 20), "the server still runs"
        try:
            await asyncio.wait_for(session.list_tools(), timeout=20)
        except Exception as exc:
            failures.append(exc)

    stderr = _session(host, body)
    assert len(failures) == 1, "the server still answers after sandbox.stop"
    assert not isinstance(failures[0], TimeoutError), stderr


def test_refusal_text_without_a_verdict() -> None:
    busy = ToolRefused("more than 16 calls in flight from this sandbox", code=wire.REFUSED)
    assert refusal_text("twilio.send_sms", busy) == (
        "twilio.send_sms was refused: more than 16 calls in flight from this sandbox"
    )
    escalated = ToolRefused("call escalated", code=wire.REFUSED, data={"verdict": "escalate"})
    assert refusal_text("stripe.create_refund", escalated) == (
        "stripe.create_refund was refused (verdict: escalate; rules: none named). call escalated"
    )
