"""The runner as a sandbox runs it: a subprocess whose only way out is ``$CORRAL_CHANNEL``."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.guest import wire
from tests.guest._host import FakeHost, HostError

AGENT = """\
import random
import sys

from corral.guest import tools

try:
    tools.twilio.send_sms(to="+15550100001", body="first")
except tools.ToolRefused as refused:
    print("refused by", ",".join(refused.rules))
sent = tools.twilio.send_sms(to=sys.argv[1], body="Your cleaning is at 10")
print("sent", sent.result["sid"], sent.call_id)
print("random", random.random())
sys.exit(int(sys.argv[2]))
"""


def _handler(method: str, params: dict[str, Any]) -> Any:
    if method == "tools.call":
        if params["args"].get("to") == "+15550100001":
            raise HostError(wire.REFUSED, "refused", {"verdict": "deny", "rules": ["opted_out"]})
        return {"call_id": "call-9", "verdict": "allow", "result": {"sid": "SM1"}}
    raise HostError(wire.METHOD_NOT_FOUND, method)


@pytest.fixture
def host() -> Iterator[FakeHost]:
    server = FakeHost(_handler)
    yield server
    server.close()


def _runner(host: FakeHost, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "corral.guest.run", *args],
        env={**os.environ, "CORRAL_CHANNEL": host.path},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the runner did not exit; stderr: {err}")
    return process.returncode, out, err


def test_agent_start_runs_a_script_that_calls_a_tool(host: FakeHost, tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    process = _runner(host)
    host.wait_for("sandbox.ready")
    host.notify("agent.start", {"entry": str(script), "argv": ["+15550100002", "3"], "seed": 1234})
    status, out, err = _finish(process)
    assert status == 3, err
    refused = host.wait_for("tools.call")
    sent = host.wait_for("tools.call")
    assert refused["params"]["args"]["to"] == "+15550100001"
    assert sent["params"] == {
        "tool": "twilio.send_sms",
        "args": {"to": "+15550100002", "body": "Your cleaning is at 10"},
    }
    lines = out.splitlines()
    assert lines[:2] == ["refused by opted_out", "sent SM1 call-9"]
    assert lines[2] == f"random {random.Random(1234).random()}"


def test_entry_on_the_command_line_is_a_function(host: FakeHost, tmp_path: Path) -> None:
    (tmp_path / "myagent.py").write_text(
        textwrap.dedent(
            """\
            from corral.guest import tools

            def main(argv):
                print("argv", argv)
                return 0 if tools.call("twilio.send_sms", {"to": argv[0], "body": "hi"}) else 9
            """
        )
    )
    process = _runner(host, "myagent:main", "+15550100002", "--dry", cwd=tmp_path)
    status, out, err = _finish(process)
    assert status == 0, err
    assert out.splitlines() == ["argv ['+15550100002', '--dry']"]
    assert host.wait_for("tools.call")["params"]["args"]["to"] == "+15550100002"


def test_a_function_entrys_return_value_is_the_exit_status(host: FakeHost, tmp_path: Path) -> None:
    (tmp_path / "five.py").write_text("def run(argv):\n    return 5\n")
    status, _, err = _finish(_runner(host, "five:run", cwd=tmp_path))
    assert status == 5, err


def test_an_exception_in_the_agent_is_printed_and_exits_1(host: FakeHost, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("raise LookupError('no such patient')\n")
    status, _, err = _finish(_runner(host, str(script)))
    assert status == 1
    assert "LookupError: no such patient" in err


def test_sandbox_stop_ends_a_running_agent_cleanly(host: FakeHost, tmp_path: Path) -> None:
    script = tmp_path / "sleepy.py"
    script.write_text(
        "import time\nprint('started', flush=True)\n"
        "try:\n    time.sleep(60)\nexcept Exception:\n    print('swallowed')\n"
    )
    process = _runner(host)
    host.wait_for("sandbox.ready")
    host.notify("agent.start", {"entry": str(script), "argv": []})
    assert process.stdout is not None
    assert process.stdout.readline() == "started\n"
    host.notify("sandbox.stop", {})
    status, out, err = _finish(process)
    assert status == 0, err
    assert "swallowed" not in out


def test_sandbox_stop_before_any_agent_exits_cleanly(host: FakeHost) -> None:
    process = _runner(host)
    host.wait_for("sandbox.ready")
    host.notify("sandbox.stop", {})
    status, _, err = _finish(process)
    assert status == 0, err


def test_a_bad_agent_start_is_refused(host: FakeHost) -> None:
    process = _runner(host)
    host.wait_for("sandbox.ready")
    host.notify("agent.start", {"argv": "not a list"})
    status, _, err = _finish(process)
    assert status == 2
    assert "bad agent.start: entry must be a non-empty string" in err


def test_a_lost_channel_before_any_agent_exits_1(host: FakeHost) -> None:
    process = _runner(host)
    host.wait_for("sandbox.ready")
    host.drop()
    status, _, err = _finish(process)
    assert status == 1
    assert "no agent to run: channel closed by the host" in err


def test_no_channel_exits_1(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "corral.guest.run", "x:y"],
        env={**os.environ, "CORRAL_CHANNEL": str(tmp_path / "none.sock")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == 1
    assert "cannot connect to the channel" in process.stderr
