"""What runs inside a sandbox: the agent SDK and the MCP server.

Imports nothing outside the standard library at module level, so that an agent starts fast;
the MCP server (``python -m corral.guest.mcp``) imports the ``mcp`` package when it runs.
"""
