"""The channel's wire format: what goes in comes out, and a bad frame is named, never read."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.guest import wire

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)
OBJECTS = st.dictionaries(st.text(), JSON_VALUES, max_size=8)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    yield left, right
    left.close()
    right.close()


def _read_async(data: bytes, *, eof: bool = True) -> dict[str, Any] | None:
    """``read_frame`` over exactly ``data`` (then end of stream, unless ``eof`` is false)."""

    async def read() -> dict[str, Any] | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return await asyncio.wait_for(wire.read_frame(reader), timeout=5)

    return asyncio.run(read())


@given(OBJECTS)
def test_encode_decode_round_trip(message: dict[str, Any]) -> None:
    frame = wire.encode(message)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert wire.decode(frame[4:]) == message


@given(st.lists(OBJECTS, min_size=1, max_size=4))
@settings(max_examples=50)
def test_async_reader_round_trip(messages: list[dict[str, Any]]) -> None:
    async def read_all() -> list[dict[str, Any] | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(wire.encode(m) for m in messages))
        reader.feed_eof()
        return [await wire.read_frame(reader) for _ in range(len(messages) + 1)]

    assert asyncio.run(read_all()) == [*messages, None]


@given(st.lists(OBJECTS, min_size=1, max_size=4))
@settings(max_examples=50)
def test_sync_reader_round_trip(messages: list[dict[str, Any]]) -> None:
    left, right = socket.socketpair()
    try:
        right.settimeout(5)
        for message in messages:
            wire.write_frame_sync(left, message)
        left.shutdown(socket.SHUT_WR)
        assert [wire.read_frame_sync(right) for _ in messages] == messages
        assert wire.read_frame_sync(right) is None
    finally:
        left.close()
        right.close()


def test_async_writer_frames_what_the_sync_reader_reads(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    message = {"jsonrpc": "2.0", "method": "tools.call", "params": {"tool": "twilio.send_sms"}}

    async def write() -> None:
        left.setblocking(False)
        _, writer = await asyncio.open_connection(sock=left)
        await wire.write_frame(writer, message)
        writer.close()
        await writer.wait_closed()

    asyncio.run(write())
    assert wire.read_frame_sync(right) == message


def test_oversized_message_is_refused_by_encode() -> None:
    with pytest.raises(wire.WireError, match=r"exceeds the 1048576-byte limit"):
        wire.encode({"body": "x" * wire.MAX_FRAME})


def test_oversized_frame_is_refused_before_its_body_is_read(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    # Only the header is sent: a reader that waited for the body would time out instead.
    left.sendall(struct.pack(">I", wire.MAX_FRAME + 1))
    with pytest.raises(wire.WireError, match=r"frame of 1048577 bytes exceeds"):
        wire.read_frame_sync(right)
    with pytest.raises(wire.WireError, match=r"frame of 1048577 bytes exceeds"):
        _read_async(struct.pack(">I", wire.MAX_FRAME + 1), eof=False)


def test_a_frame_of_exactly_the_limit_is_read() -> None:
    frame = wire.encode({"b": "x" * (wire.MAX_FRAME - len('{"b":""}'))})
    assert len(frame) == 4 + wire.MAX_FRAME
    message = _read_async(frame)
    assert message is not None and len(message["b"]) == wire.MAX_FRAME - 8


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x00", "stream ended inside a frame header"),
        (struct.pack(">I", 10) + b'{"a":', "stream ended inside a 10-byte frame"),
    ],
)
def test_truncated_frame(
    pair: tuple[socket.socket, socket.socket], data: bytes, problem: str
) -> None:
    left, right = pair
    left.sendall(data)
    left.shutdown(socket.SHUT_WR)
    with pytest.raises(wire.WireError, match=problem):
        wire.read_frame_sync(right)
    with pytest.raises(wire.WireError, match=problem):
        _read_async(data)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[1, 2]", "frame holds a JSON list, not an object"),
        (b'"hello"', "frame holds a JSON str, not an object"),
        (b"null", "frame holds a JSON NoneType, not an object"),
        (b'{"a": "\xff"}', "frame is not UTF-8 JSON"),
        (b'{"a": 1', "frame is not UTF-8 JSON"),
    ],
)
def test_bad_body(pair: tuple[socket.socket, socket.socket], body: bytes, problem: str) -> None:
    frame = struct.pack(">I", len(body)) + body
    with pytest.raises(wire.WireError, match=problem):
        wire.decode(body)
    with pytest.raises(wire.WireError, match=problem):
        _read_async(frame)
    left, right = pair
    left.sendall(frame)
    with pytest.raises(wire.WireError, match=problem):
        wire.read_frame_sync(right)


def test_clean_end_of_stream_is_none(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.shutdown(socket.SHUT_WR)
    assert wire.read_frame_sync(right) is None
    assert _read_async(b"") is None


def test_json_rpc_helpers() -> None:
    assert wire.request("sandbox.ready", {}) == {
        "jsonrpc": "2.0",
        "method": "sandbox.ready",
        "params": {},
    }
    assert wire.request("tools.list", {}, id=3)["id"] == 3
    assert wire.result(3, {"tools": []}) == {"jsonrpc": "2.0", "id": 3, "result": {"tools": []}}
    assert wire.error(3, wire.REFUSED, "refused", {"rules": ["quiet_hours"]}) == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32001, "message": "refused", "data": {"rules": ["quiet_hours"]}},
    }
    assert "data" not in wire.error(None, wire.PARSE_ERROR, "bad frame")["error"]
