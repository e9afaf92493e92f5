"""The MCP server inside a real sandbox, driven by the official ``mcp`` client (issue: "the MCP
server works with the mcp client inside a sandbox").

An MCP-capable agent runs its client inside the sandbox and starts ``python -m
corral.guest.mcp`` over stdio there; the server's only way out is the channel. The host side
here is the real :class:`~corral.runtime.channel.Channel`, whose handler plays control: it
lists two catalog tools and answers calls. What reaches it carries the channel's identity.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from corral.connectors._registry import catalog
from corral.guest import wire
from corral.runtime.channel import Channel, ChannelRefusal
from corral.runtime.host import tool_list
from corral.runtime.sandbox import Identity, Limits
from tests.runtime._sandboxes import PlaceFactory, finish, places_fixture, require  # noqa: F401

CLIENT = r"""
import asyncio, json, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

async def main():
    server = StdioServerParameters(command=sys.executable, args=["-m", "corral.guest.mcp"],
                                   env={k: v for k, v in __import__("os").environ.items()})
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            sent = await session.call_tool(
                "twilio.send_sms", {"to": "+13105550123", "body": "See you at 10"})
            refused = await session.call_tool(
                "twilio.send_sms", {"to": "+13105550123", "body": "again"})
            print(json.dumps({
                "tools": sorted(t.name for t in listed.tools),
                "schema": [t.input_schema for t in listed.tools if t.name == "twilio.send_sms"][0],
                "sent": [c.text for c in sent.content], "sent_error": sent.is_error,
                "refused": [c.text for c in refused.content], "refused_error": refused.is_error,
            }))

asyncio.run(main())
"""

OFFERED = ("twilio.send_sms", "google_calendar.insert_event")


@pytest.mark.timeout(180)
def test_an_mcp_client_in_a_sandbox_lists_and_calls_tools_through_the_channel(
    places: PlaceFactory,
) -> None:
    backend = require("bwrap")
    place = places("mcp", listen=False)
    (place.work / "client.py").write_text(CLIENT)
    seen: list[tuple[Identity, str, dict[str, Any]]] = []
    offered = tool_list(frozenset(OFFERED))  # what corral host answers

    async def handler(identity: Identity, method: str, params: dict[str, Any]) -> Any:
        seen.append((identity, method, params))
        if method == "tools.list":
            return {"tools": offered}
        if method == "delegation.request":
            return {"token": f"dlg-{params['tool']}", "expires_at": "2026-03-03T17:05:00Z"}
        if method == "tools.call" and params["args"]["body"] == "again":
            data = {"verdict": "deny", "rules": ["duplicate_message"], "conflicts_with": ["c1"],
                    "explanation": "denied by rule duplicate_message"}  # fmt: skip
            raise ChannelRefusal(wire.REFUSED, "call denied by rule duplicate_message", data)
        return {"call_id": "c1", "verdict": "allow", "explanation": "allowed",
                "result": {"message_sid": "SM1", "status": "queued"}}  # fmt: skip

    async def scenario() -> Any:
        spec = place.spec(["python", "/work/client.py"], Limits(memory_mib=1024, pids=128))
        channel = await Channel.open(Path(spec.channel), spec.identity, handler)
        try:
            started = asyncio.get_running_loop().time()
            sandbox = await backend.start(spec)
            return await finish(sandbox, 120, started)
        finally:
            await channel.close()

    run = asyncio.run(scenario())
    assert run.returncode == 0, run.explain()
    report = run.report()
    assert report["tools"] == sorted(OFFERED)
    assert report["schema"] == catalog()["twilio.send_sms"].json_schema()
    assert report["sent_error"] is False and "SM1" in report["sent"][0]
    assert report["refused_error"] is True and "duplicate_message" in report["refused"][0]
    calls = [(who, params) for who, method, params in seen if method == "tools.call"]
    assert len(calls) == 2
    assert all(who == place.spec([]).identity for who, _ in calls)  # the channel's identity
    assert calls[0][1]["tool"] == "twilio.send_sms"
    # One delegation asked for, presented on both calls (the SDK's automatic delegations).
    assert [p["tool"] for _, m, p in seen if m == "delegation.request"] == ["twilio.send_sms"]
    assert {params["delegation"] for _, params in calls} == {"dlg-twilio.send_sms"}
    assert json.loads(json.dumps(calls[0][1]["args"])) == {
        "to": "+13105550123", "body": "See you at 10"}  # fmt: skip
