"""``python -m corral.guest.mcp``: the agent's allowed tools as an MCP server over stdio.

For agents built on an MCP client (an LLM harness) rather than on :mod:`corral.guest.tools`.
The tool list is asked of the host on every ``tools/list`` (``tools.list`` over the channel), so
it is always the agent's template as the host enforces it, with each tool's JSON Schema as its
``inputSchema``; ``tools/call`` relays ``tools.call``, presenting a delegation for the tool that
the SDK asks for on the tool's first call and renews when due (``tools.delegations.auto``).

A refusal is a tool result with ``isError`` and a text naming the verdict, the rules and the
explanation, not a protocol error: the model reads it and can change course (MCP: errors that
come from the tool belong in the result). So are a forbidden tool and invalid arguments. Only a
channel failure is a protocol error.

The low-level :class:`mcp.server.lowlevel.Server` rather than ``FastMCP``: its tools are Python
functions fixed at start, ours are whatever the host says now. This module is the only one in
:mod:`corral.guest` that imports ``mcp``; it needs no network and writes nothing to disk.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import mcp.types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

import corral
from corral.guest import tools, wire
from corral.guest._client import ChannelClient, ChannelError, ToolForbidden, ToolRefused

__all__ = ["create_server", "main", "refusal_text"]

INSTRUCTIONS = (
    "Tools of this business's accounts, relayed through corral. Every call is checked against "
    "the business's policy first; a refused call did nothing, and its text says which rule "
    "refused it and why."
)

STOP_GRACE_S = 1.0
"""After ``sandbox.stop`` or a lost channel, how long a clean shutdown may take."""

_Context = ServerRequestContext[Any, Any]


def _leave(status: int) -> None:
    sys.stderr.flush()
    os._exit(status)


def refusal_text(tool: str, exc: ToolRefused) -> str:
    """What the model reads when a call is refused: the verdict, the rules, the explanation.

    A refusal without a verdict (the host too busy, no control plane) is named as such.
    """
    if exc.verdict is None:
        return f"{tool} was refused: {exc.explanation}"
    rules = ", ".join(exc.rules) or "none named"
    return f"{tool} was refused (verdict: {exc.verdict}; rules: {rules}). {exc.explanation}"


def _error_result(text: str, data: Any = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=text)],
        structured_content=data if isinstance(data, dict) else None,
        is_error=True,
    )


async def _list_tools(
    _ctx: _Context, _params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    try:
        allowed = await anyio.to_thread.run_sync(tools.list)
    except ChannelError as exc:
        raise MCPError(wire.INTERNAL_ERROR, f"cannot list tools: {exc}") from None
    return types.ListToolsResult(
        tools=[
            types.Tool(
                name=tool.name,
                description=tool.description or None,
                input_schema=tool.input_schema,
            )
            for tool in allowed
        ]
    )


async def _call_tool(_ctx: _Context, params: types.CallToolRequestParams) -> types.CallToolResult:
    relay = functools.partial(tools.call, params.name, params.arguments or {})
    try:
        done = await anyio.to_thread.run_sync(relay)
    except ToolRefused as exc:
        return _error_result(refusal_text(params.name, exc), exc.data)
    except ToolForbidden as exc:
        return _error_result(f"{params.name} is not among this agent's tools: {exc}", exc.data)
    except ChannelError as exc:
        if exc.code == wire.INVALID_PARAMS:
            return _error_result(f"invalid arguments for {params.name}: {exc}", exc.data)
        raise MCPError(wire.INTERNAL_ERROR, f"{params.name} could not be relayed: {exc}") from None
    payload = {
        "call_id": done.call_id,
        "verdict": done.verdict,
        "result": done.result,
        "explanation": done.explanation,
    }
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(payload, ensure_ascii=False))],
        structured_content=payload,
    )


def create_server() -> Server[Any]:
    """The MCP server; it relays through :mod:`corral.guest.tools`' client."""
    return Server(
        "corral",
        version=corral.__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
    )


async def _serve(client: ChannelClient) -> int:
    """Serve stdio until the MCP client leaves (0), the host stops the sandbox (0) or the
    channel is lost (1)."""
    server = create_server()
    token = anyio.lowlevel.current_token()
    state = {"serving": True, "stopped": False, "status": 0}

    with anyio.CancelScope() as scope:

        def end(status: int) -> None:
            """From the channel's reader thread: end the server (once, while it runs)."""
            if not state["serving"] or state["stopped"]:
                return
            state["stopped"], state["status"] = True, status
            with contextlib.suppress(Exception):  # the loop is finishing anyway
                anyio.from_thread.run_sync(scope.cancel, token=token)
            # mcp's stdio transport reads stdin in a worker thread that a cancellation cannot
            # interrupt, so an idle MCP client would keep this process alive: leave anyway.
            timer = threading.Timer(STOP_GRACE_S, _leave, (status,))
            timer.daemon = True
            timer.start()

        client.on("sandbox.stop", lambda _params: end(0))
        client.on_close(lambda _error: end(1))
        try:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        finally:
            state["serving"] = False
    return int(state["status"])


def main() -> int:
    """Connect to the channel, then serve MCP over stdio; the exit status."""
    try:
        client = ChannelClient.connect()
    except ChannelError as exc:
        print(f"corral mcp: {exc}", file=sys.stderr)
        return 1
    tools.set_client(client)
    # Every call presents a delegation, asked for on the tool's first call and renewed when
    # due: without one, control would decide the call and the broker would never run it.
    tools.delegations.auto()
    try:
        return anyio.run(_serve, client)
    finally:
        tools.set_client(None)


if __name__ == "__main__":
    raise SystemExit(main())
