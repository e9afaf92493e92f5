"""The channel's wire format: length-prefixed JSON-RPC 2.0 over one stream socket.

Each frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one JSON-RPC 2.0
request, notification or response object). Frames larger than :data:`MAX_FRAME` are refused
before they are read, so a sandbox cannot make the host buffer without bound.

Written by hand (stdlib only) because it runs inside every sandbox, where the guest side must
import in milliseconds with no third-party package; JSON-RPC libraries on PyPI frame with
newlines or HTTP, not a length prefix.

>>> frame = encode({"jsonrpc": "2.0", "method": "ping", "id": 1})
>>> frame[:4]
b'\\x00\\x00\\x00('
>>> decode(frame[4:])["method"]
'ping'
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the guest imports this module; asyncio costs it ~50 ms at start
    import asyncio

__all__ = [
    "FORBIDDEN",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_FRAME",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "REFUSED",
    "WireError",
    "decode",
    "encode",
    "error",
    "read_frame",
    "read_frame_sync",
    "request",
    "result",
    "write_frame",
    "write_frame_sync",
]

MAX_FRAME = 1 << 20
"""Largest frame body either side accepts (1 MiB)."""

_HEADER = struct.Struct(">I")

# JSON-RPC 2.0 error codes (https://www.jsonrpc.org/specification#error_object) ...
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# ... and corral's own, in the range the specification leaves to servers.
REFUSED = -32001
"""The supervisor or the broker refused the call (``data`` says which rule or why)."""
FORBIDDEN = -32003
"""The sandbox may not do this (a tool outside its template, a message naming another identity)."""


class WireError(ValueError):
    """A frame that is too large, truncated, or not one JSON object."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame: header and compact UTF-8 JSON."""
    try:
        body = json.dumps(
            message, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise WireError(f"message is not encodable as UTF-8 JSON: {exc}") from None
    if len(body) > MAX_FRAME:
        raise WireError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object in a frame body; :class:`WireError` names what is wrong."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise WireError(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WireError(f"frame holds a JSON {type(value).__name__}, not an object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise WireError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    return int(length)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or ``None`` at a clean end of stream (between frames)."""
    import asyncio

    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise WireError("stream ended inside a frame header") from None
        return None
    length = _length(header)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise WireError(f"stream ended inside a {length}-byte frame") from None
    return decode(body)


async def write_frame(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(encode(message))
    await writer.drain()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def read_frame_sync(sock: socket.socket) -> dict[str, Any] | None:
    """Blocking :func:`read_frame` for the guest SDK (no event loop needed)."""
    header = _recv_exactly(sock, _HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise WireError("stream ended inside a frame header")
    length = _length(header)
    body = _recv_exactly(sock, length)
    if len(body) < length:
        raise WireError(f"stream ended inside a {length}-byte frame")
    return decode(body)


def write_frame_sync(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


def request(method: str, params: dict[str, Any], id: int | str | None = None) -> dict[str, Any]:
    """A JSON-RPC request (a notification when ``id`` is ``None``)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if id is not None:
        message["id"] = id
    return message


def result(id: int | str | None, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": value}


def error(id: int | str | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": err}
