"""ChannelClient against a stand-in host: ids matched, notifications delivered, failures typed."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from corral.guest import wire
from corral.guest._client import ChannelClient, ChannelError, ToolForbidden, ToolRefused
from tests.guest._host import FakeHost, HostError

REFUSAL = {
    "call_id": "call-7",
    "verdict": "deny",
    "rules": ["quiet_hours", "per_recipient_daily_max"],
    "explanation": "It is 22:10 in America/Los_Angeles, inside quiet hours (21:00–08:00).",
}


def _handler(method: str, params: dict[str, Any]) -> Any:
    if method == "echo":
        # Later requests answer sooner, so answers come back in the reverse order.
        time.sleep(max(0.0, 0.2 - 0.01 * params["n"]))
        return {"n": params["n"]}
    if method == "refuse":
        raise HostError(wire.REFUSED, "refused by the supervisor", REFUSAL)
    if method == "forbid":
        raise HostError(wire.FORBIDDEN, "stripe.create_refund is not in this agent's template")
    if method == "unknown":
        raise HostError(wire.METHOD_NOT_FOUND, "unknown method unknown")
    if method == "hang":
        threading.Event().wait(30)
    return {"method": method, "params": params}


@pytest.fixture
def host() -> Iterator[FakeHost]:
    server = FakeHost(_handler)
    yield server
    server.close()


@pytest.fixture
def client(host: FakeHost) -> Iterator[ChannelClient]:
    connected = ChannelClient.connect(host.path)
    yield connected
    connected.close()


def test_connect_sends_ready_then_requests_with_ids(host: FakeHost) -> None:
    with ChannelClient.connect(host.path) as client:
        assert client.call("tools.list", {"x": 1}) == {"method": "tools.list", "params": {"x": 1}}
        client.call("tools.list")
    ready, first, second = (host.next_message() for _ in range(3))
    assert ready == {"jsonrpc": "2.0", "method": "sandbox.ready", "params": {}}
    assert first == {"jsonrpc": "2.0", "method": "tools.list", "params": {"x": 1}, "id": 1}
    assert second["id"] == 2 and second["params"] == {}


def test_connect_reads_the_path_from_the_environment(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_CHANNEL", host.path)
    with ChannelClient.connect() as client:
        assert client.call("ping")["method"] == "ping"


def test_connect_without_a_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_CHANNEL", raising=False)
    with pytest.raises(ChannelError, match=r"\$CORRAL_CHANNEL is not set"):
        ChannelClient.connect()
    with pytest.raises(ChannelError, match=r"cannot connect to the channel /nonexistent/c.sock"):
        ChannelClient.connect("/nonexistent/c.sock", timeout=0.1)


def test_connect_waits_for_a_socket_that_appears(host: FakeHost) -> None:
    # The listening socket is renamed into place 0.3 s after the guest starts trying.
    hidden, late = host.path + ".hidden", os.path.join(host.dir, "late.sock")
    os.rename(host.path, hidden)
    moved = threading.Timer(0.3, os.rename, (hidden, late))
    moved.start()
    try:
        with ChannelClient.connect(late, timeout=5) as client:
            assert client.call("ping")["method"] == "ping"
    finally:
        moved.join()


def test_refusal_is_typed_with_its_rules(client: ChannelClient) -> None:
    with pytest.raises(ToolRefused) as caught:
        client.call("refuse")
    refusal = caught.value
    assert refusal.code == wire.REFUSED
    assert refusal.verdict == "deny"
    assert refusal.rules == ["quiet_hours", "per_recipient_daily_max"]
    assert refusal.explanation.startswith("It is 22:10")
    assert refusal.call_id == "call-7"
    assert str(refusal) == "refused by the supervisor"


def test_forbidden_and_other_errors_are_typed(client: ChannelClient) -> None:
    with pytest.raises(ToolForbidden, match="not in this agent's template") as forbidden:
        client.call("forbid")
    assert forbidden.value.code == wire.FORBIDDEN
    with pytest.raises(ChannelError) as other:
        client.call("unknown")
    assert type(other.value) is ChannelError
    assert other.value.code == wire.METHOD_NOT_FOUND


def test_concurrent_calls_get_their_own_answers(host: FakeHost, client: ChannelClient) -> None:
    answers: dict[int, Any] = {}

    def worker(n: int) -> None:
        answers[n] = client.call("echo", {"n": n})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert answers == {n: {"n": n} for n in range(16)}
    ids = [host.next_message().get("id") for _ in range(17)]
    assert sorted(i for i in ids if i is not None) == list(range(1, 17))


def test_notification_between_calls_reaches_its_handler(
    host: FakeHost, client: ChannelClient
) -> None:
    seen: list[dict[str, Any]] = []
    arrived = threading.Event()

    def on_start(params: dict[str, Any]) -> None:
        seen.append(params)
        arrived.set()

    client.on("agent.start", on_start)
    assert client.call("ping")["method"] == "ping"
    host.notify("agent.start", {"entry": "agent.py", "argv": ["--fast"], "seed": 7})
    assert arrived.wait(5)
    assert client.call("ping")["method"] == "ping"
    assert seen == [{"entry": "agent.py", "argv": ["--fast"], "seed": 7}]


def test_notification_during_a_call_is_delivered(host: FakeHost, client: ChannelClient) -> None:
    seen = threading.Event()
    client.on("sandbox.stop", lambda params: seen.set())

    def answer_once_seen(method: str, params: dict[str, Any]) -> Any:
        host.notify("sandbox.stop", {})
        return {"seen": seen.wait(5)}

    host.handler = answer_once_seen
    # The host answers only after the guest's handler ran: the call is in flight meanwhile.
    assert client.call("tools.call", {"tool": "twilio.send_sms"}) == {"seen": True}


def test_notification_before_its_handler_is_kept(host: FakeHost, client: ChannelClient) -> None:
    host.notify("agent.start", {"entry": "early.py", "argv": []})
    client.call("ping")  # the notification was read before this answer
    seen: list[dict[str, Any]] = []
    client.on("agent.start", seen.append)
    assert seen == [{"entry": "early.py", "argv": []}]


def test_a_handler_cannot_call_its_own_channel(host: FakeHost, client: ChannelClient) -> None:
    failures: list[BaseException] = []
    done = threading.Event()

    def handler(params: dict[str, Any]) -> None:
        try:
            client.call("ping", timeout=1)
        except BaseException as exc:
            failures.append(exc)
        done.set()

    client.on("agent.start", handler)
    host.notify("agent.start", {})
    assert done.wait(5)
    assert len(failures) == 1 and isinstance(failures[0], RuntimeError)


def test_host_requests_are_answered_method_not_found(host: FakeHost, client: ChannelClient) -> None:
    host.wait_for("sandbox.ready")
    host.send(wire.request("guest.exec", {"cmd": "id"}, id=99))
    answer = host.next_message()
    assert answer["id"] == 99 and answer["error"]["code"] == wire.METHOD_NOT_FOUND


def test_connection_loss_fails_a_waiting_caller(host: FakeHost, client: ChannelClient) -> None:
    closed: list[ChannelError] = []
    client.on_close(closed.append)
    outcome: list[BaseException | Any] = []

    def waiting() -> None:
        try:
            outcome.append(client.call("hang"))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=waiting)
    caller.start()
    host.wait_for("hang")
    host.drop()
    caller.join(timeout=5)
    assert not caller.is_alive(), "the caller still waits after the connection was lost"
    assert len(outcome) == 1 and type(outcome[0]) is ChannelError
    assert outcome[0].code is None
    assert "channel closed by the host" in str(outcome[0])
    assert client.closed and len(closed) == 1
    with pytest.raises(ChannelError, match="channel closed by the host"):
        client.call("ping")
    late: list[ChannelError] = []
    client.on_close(late.append)  # registered after the fact: called at once
    assert late == closed


def test_host_error_before_closing_is_named(host: FakeHost, client: ChannelClient) -> None:
    outcome: list[BaseException] = []

    def waiting() -> None:
        try:
            client.call("hang")
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=waiting)
    caller.start()
    host.wait_for("hang")
    host.send(wire.error(None, wire.INVALID_REQUEST, "frame is not a JSON-RPC request"))
    host.drop()
    caller.join(timeout=5)
    assert len(outcome) == 1
    assert "after an error: frame is not a JSON-RPC request" in str(outcome[0])


def test_malformed_frame_from_the_host_ends_the_channel(
    host: FakeHost, client: ChannelClient
) -> None:
    host.wait_for("sandbox.ready")
    assert host.conn is not None
    host.conn.sendall(b"\x00\x00\x00\x02[]")
    with pytest.raises(ChannelError, match="channel lost: frame holds a JSON list"):
        client.call("hang", timeout=5)


def test_call_timeout(client: ChannelClient) -> None:
    started = time.monotonic()
    with pytest.raises(ChannelError, match=r"no answer to hang within 0\.2 s"):
        client.call("hang", timeout=0.2)
    assert time.monotonic() - started < 5
    assert client.call("ping")["method"] == "ping"  # the channel is still usable


def test_close_is_idempotent_and_fails_later_calls(client: ChannelClient) -> None:
    client.close()
    client.close()
    with pytest.raises(ChannelError, match="channel closed"):
        client.call("ping")
    with pytest.raises(ChannelError, match="channel closed"):
        client.notify("log", {"level": "info", "message": "hi"})
