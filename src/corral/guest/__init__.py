"""What runs inside a sandbox: the agent SDK, the runner and the MCP server.

- ``from corral.guest import tools``: ``tools.twilio.send_sms(to=..., body=...)`` and every
  other catalog tool, relayed to the host over the channel (:mod:`corral.guest.tools`);
- ``python -m corral.guest.run [ENTRY [ARGS...]]``: the runner a sandbox starts
  (:mod:`corral.guest.run`);
- ``python -m corral.guest.mcp``: the agent's allowed tools as an MCP server over stdio
  (:mod:`corral.guest.mcp`).

Imports nothing outside the standard library at module level, so that an agent starts fast;
the MCP server imports the ``mcp`` package when it runs.
"""

from corral.guest import tools as tools  # a module: importable by name, kept out of __all__
from corral.guest._client import ChannelClient, ChannelError, ToolForbidden, ToolRefused
from corral.guest.tools import CallResult, Delegation, ToolInfo, request_delegation

__all__ = [
    "CallResult",
    "ChannelClient",
    "ChannelError",
    "Delegation",
    "ToolForbidden",
    "ToolInfo",
    "ToolRefused",
    "request_delegation",
]
