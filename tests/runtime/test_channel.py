"""The host side of the channel (:class:`corral.runtime.channel.Channel`), spoken to over its real
Unix socket by a hand-written guest: identity comes from the socket, never from the guest."""

from __future__ import annotations

import asyncio
import json
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from corral.guest import wire
from corral.runtime.channel import Channel, ChannelRefusal
from corral.runtime.sandbox import Identity

WHO = Identity("brightsmile", "receptionist-1", "sbx-1")
Seen = list[tuple[Identity, str, dict[str, Any]]]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


async def echo_channel(path: Path, seen: Seen, **options: Any) -> Channel:
    async def handler(identity: Identity, method: str, params: dict[str, Any]) -> Any:
        seen.append((identity, method, params))
        if method == "boom":
            raise RuntimeError("a host bug with a secret path /etc/corral")
        if method == "bad.params":
            raise ValueError("tool must be a string")
        if method not in ("tools.list", "tools.call", "log"):
            raise ChannelRefusal(wire.METHOD_NOT_FOUND, f"unknown method {method!r}")
        return {"method": method, "params": params}

    return await Channel.open(path, WHO, handler, **options)


async def connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


async def ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: dict[str, Any]
) -> dict[str, Any]:
    await wire.write_frame(writer, message)
    answer = await wire.read_frame(reader)
    assert answer is not None
    return answer


def test_a_forged_identity_in_params_is_dropped_and_the_channels_is_used(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        forged = {"tool": "twilio.send_sms", "args": {}, "tenant": "other", "agent": "boss",
                  "sandbox": "sbx-9"}  # fmt: skip
        answer = await ask(reader, writer, wire.request("tools.call", forged, id=1))
        assert answer["id"] == 1
        assert answer["result"]["params"] == {"tool": "twilio.send_sms", "args": {}}
        assert seen == [(WHO, "tools.call", {"tool": "twilio.send_sms", "args": {}})]
        writer.close()
        await channel.close()

    run(scenario)


def test_a_second_connection_is_refused_while_the_first_stays(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        assert (await ask(reader, writer, wire.request("tools.list", {}, id=1)))["id"] == 1
        second_reader, second_writer = await connect(channel.path)
        assert await second_reader.read() == b""  # closed at once, nothing said
        assert channel.refused_connections == 1
        answer = await ask(reader, writer, wire.request("tools.list", {}, id=2))
        assert answer["result"]["method"] == "tools.list"
        assert len(seen) == 2
        second_writer.close()
        writer.close()
        await channel.close()

    run(scenario)


def test_a_malformed_frame_gets_a_parse_error_and_the_connection_closes(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        body = b'{"jsonrpc": "2.0", "method": "tools.call", "id": 1'  # cut short: not JSON
        writer.write(struct.pack(">I", len(body)) + body)
        writer.write(wire.encode(wire.request("tools.call", {"tool": "x"}, id=2)))
        await writer.drain()
        answer = await wire.read_frame(reader)
        assert answer is not None and answer["error"]["code"] == wire.PARSE_ERROR
        assert answer["id"] is None
        assert await reader.read() == b""  # closed: the frame after it was never read
        assert seen == []
        writer.close()
        await channel.close()

    run(scenario)


def test_an_oversized_frame_is_refused_before_it_is_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        writer.write(struct.pack(">I", wire.MAX_FRAME + 1))
        await writer.drain()
        answer = await wire.read_frame(reader)
        assert answer is not None and answer["error"]["code"] == wire.PARSE_ERROR
        assert "exceeds" in answer["error"]["message"]
        assert await reader.read() == b""
        assert seen == []
        writer.close()
        await channel.close()

    run(scenario)


def test_an_invalid_request_gets_an_error_and_the_connection_stays(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        wrong: list[dict[str, Any]] = [
            {"jsonrpc": "1.0", "method": "tools.list", "id": 1},
            {"jsonrpc": "2.0", "method": "", "id": 2},
            {"jsonrpc": "2.0", "method": "tools.list", "params": [1, 2], "id": 3},
            {"jsonrpc": "2.0", "method": "tools.list", "id": {"nested": True}},
        ]
        for message in wrong:
            answer = await ask(reader, writer, message)
            assert answer["error"]["code"] == wire.INVALID_REQUEST, message
        assert seen == []
        answer = await ask(reader, writer, wire.request("tools.list", {}, id=5))
        assert answer == {"jsonrpc": "2.0", "id": 5,
                          "result": {"method": "tools.list", "params": {}}}  # fmt: skip
        writer.close()
        await channel.close()

    run(scenario)


def test_handler_errors_become_json_rpc_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        unknown = await ask(reader, writer, wire.request("shell.exec", {}, id=1))
        assert unknown["error"] == {"code": wire.METHOD_NOT_FOUND,
                                    "message": "unknown method 'shell.exec'"}  # fmt: skip
        bad = await ask(reader, writer, wire.request("bad.params", {}, id=2))
        assert bad["error"]["code"] == wire.INVALID_PARAMS
        boom = await ask(reader, writer, wire.request("boom", {}, id=3))
        assert boom["error"] == {"code": wire.INTERNAL_ERROR, "message": "internal error"}
        assert "/etc/corral" not in json.dumps(boom)  # the guest never sees the host's trace
        writer.close()
        await channel.close()

    run(scenario)


def test_notifications_are_dispatched_but_never_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        await wire.write_frame(writer, wire.request("log", {"level": "info", "message": "hi"}))
        answer = await ask(reader, writer, wire.request("tools.list", {}, id=7))
        assert answer["id"] == 7  # the first frame back answers the request, not the log
        assert [method for _, method, _ in seen] == ["log", "tools.list"]
        writer.close()
        await channel.close()

    run(scenario)


def test_calls_beyond_max_in_flight_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        started: list[int] = []

        async def slow(identity: Identity, method: str, params: dict[str, Any]) -> Any:
            started.append(params["n"])
            await release.wait()
            return params["n"]

        channel = await Channel.open(tmp_path / "c.sock", WHO, slow, max_in_flight=2)
        reader, writer = await connect(channel.path)
        for n in (1, 2):
            await wire.write_frame(writer, wire.request("tools.call", {"n": n}, id=n))
        while len(started) < 2:
            await asyncio.sleep(0.001)
        await wire.write_frame(writer, wire.request("tools.call", {"n": 3}, id=3))
        refused = await wire.read_frame(reader)
        assert refused is not None and refused["id"] == 3
        assert refused["error"]["code"] == wire.REFUSED
        assert "more than 2 calls in flight" in refused["error"]["message"]
        release.set()
        results = {(await wire.read_frame(reader) or {}).get("result") for _ in range(2)}
        assert results == {1, 2}
        assert started == [1, 2]
        writer.close()
        await channel.close()

    run(scenario)


def test_the_socket_is_0600_and_removed_on_close(tmp_path: Path) -> None:
    async def scenario() -> None:
        channel = await echo_channel(tmp_path / "deep" / "c.sock", [])
        assert stat.S_IMODE(channel.path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(channel.path.stat().st_mode)
        await channel.close()
        assert not channel.path.exists()

    run(scenario)


def test_ready_notify_and_rebind(tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: Seen = []
        channel = await echo_channel(tmp_path / "c.sock", seen)
        reader, writer = await connect(channel.path)
        await wire.write_frame(writer, wire.request("sandbox.ready", {}))
        await channel.wait_ready(5)
        assert channel.connected and seen == []  # ready is the channel's, not the handler's
        assert channel.rebind("scheduler-2") == Identity("brightsmile", "scheduler-2", "sbx-1")
        await channel.notify("agent.start", {"entry": "a:b", "argv": []})
        start = await wire.read_frame(reader)
        assert start == {"jsonrpc": "2.0", "method": "agent.start",
                         "params": {"entry": "a:b", "argv": []}}  # fmt: skip
        await ask(reader, writer, wire.request("tools.list", {}, id=1))
        assert seen[0][0] == Identity("brightsmile", "scheduler-2", "sbx-1")
        writer.close()
        await channel.close()

    run(scenario)
