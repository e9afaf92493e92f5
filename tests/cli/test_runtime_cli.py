"""``corral runtime doctor``, ``corral sandbox exec|ls|stop`` and ``corral host serve``, run as
the operator runs them: a real bubblewrap sandbox, a real host process, a real control app."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from corral.cli import app
from tests.conftest import need_service
from tests.runtime.test_relay import ServedControl

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

CALLS_A_TOOL = """
from corral.guest import tools, ToolForbidden, ToolRefused
print("listed:", [t.name for t in tools.list()])
try:
    sent = tools.twilio.send_sms(to="+13105550123", body="See you at 10")
    print("verdict:", sent.verdict)
except ToolRefused as exc:
    print("refused:", exc.message)
try:
    tools.stripe.create_refund(payment_intent="pi_1", amount=100, currency="usd")
except ToolForbidden as exc:
    print("forbidden:", exc.message)
"""


@pytest.fixture(name="data_dir")
def data_dir_fixture() -> Iterator[Path]:
    from corral.runtime.bwrap import BwrapBackend

    found = BwrapBackend().available()
    if not found.ok:
        need_service("bubblewrap", found.reason)
    path = Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))  # short: socket paths
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def corral(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", "--data-dir", str(data_dir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "COLUMNS": "160"},  # rich's tables: room for every column
    )  # fmt: skip


def test_exec_prints_the_commands_output_and_exits_with_its_status(data_dir: Path) -> None:
    code = "import os, sys; print('out', os.getcwd()); print('err', file=sys.stderr); sys.exit(3)"
    done = corral(data_dir, "sandbox", "exec", "--backend", "bwrap", "--", "python", "-c", code)
    assert done.returncode == 3
    assert done.stdout == "out /work\n"
    assert done.stderr == "err\n"


def test_exec_labels_the_sandbox_and_gives_it_nothing_of_the_host(data_dir: Path) -> None:
    code = (
        "import os; print(sorted(os.environ)); print(os.environ['CORRAL_TENANT'], os.listdir('/'))"
    )
    done = corral(data_dir, "sandbox", "exec", "--backend", "bwrap", "--tenant", "acme",
                  "--agent", "a1", "--", "python", "-c", code)  # fmt: skip
    assert done.returncode == 0, done.stderr
    env, labels = done.stdout.splitlines()
    assert "CORRAL_CHANNEL" in env and "HOME" in env and "CORRAL_DATA_DIR" not in env
    tenant, _, root = labels.partition(" ")
    assert tenant == "acme" and "work" in root and "home" not in root and "srv" not in root


def test_exec_without_control_refuses_tool_calls_clearly(data_dir: Path) -> None:
    done = corral(data_dir, "sandbox", "exec", "--backend", "bwrap", "--tool", "twilio.send_sms",
                  "--", "python", "-c", CALLS_A_TOOL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "listed: ['twilio.send_sms']"
    control = data_dir / "control" / "control.sock"
    assert lines[1] == (
        f"refused: no control plane: no control socket at {control} (start `corral control"
        " serve`); the call was not made"
    )
    assert lines[2] == "forbidden: tool 'stripe.create_refund' is not among this agent's tools"


def test_exec_relays_tool_calls_to_control(data_dir: Path) -> None:
    served = ServedControl(data_dir / "ctl")
    try:
        done = corral(data_dir, "sandbox", "exec", "--backend", "bwrap", "--tenant",
                      "brightsmile", "--control", str(served.socket), "--tool",
                      "twilio.send_sms", "--", "python", "-c", CALLS_A_TOOL)  # fmt: skip
        kinds = served.kinds()
    finally:
        served.close()
    assert done.returncode == 0, done.stderr
    assert "verdict: allow" in done.stdout.splitlines()
    assert kinds == ["action.requested", "action.verdict"]  # the forbidden one never got there


def test_exec_refuses_a_backend_it_cannot_use(data_dir: Path) -> None:
    unknown = corral(data_dir, "sandbox", "exec", "--backend", "nope", "--", "true")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: unknown sandbox backend 'nope'")
    missing = corral(data_dir, "sandbox", "exec", "--control", "/nonexistent.sock", "--", "true")
    assert (
        missing.returncode == 1
        and missing.stderr == "error: no control socket at /nonexistent.sock\n"
    )


def test_exec_reports_a_command_killed_by_a_signal(data_dir: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    done = corral(data_dir, "sandbox", "exec", "--backend", "bwrap", "--", "python", "-c", code)
    assert done.returncode == 128 + signal.SIGKILL


def test_doctor_lists_every_backend_with_why_not() -> None:
    result = runner.invoke(app, ["runtime", "doctor", "--json"])
    rows = json.loads(result.stdout)
    assert [(r["backend"], r["level"]) for r in rows] == [
        ("firecracker", "vm"), ("gvisor", "gvisor"), ("bwrap", "namespaces")]  # fmt: skip
    assert all(r["available"] or r["reason"] for r in rows)  # an unavailable one says why
    assert result.exit_code == (0 if any(r["available"] for r in rows) else 1)
    table = runner.invoke(app, ["runtime", "doctor"])
    assert "backend" in table.stdout and "why not" in table.stdout and "bwrap" in table.stdout


def test_ls_and_stop_need_a_running_host(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--data-dir", str(tmp_path), "sandbox", "ls"])
    assert result.exit_code == 1
    socket = tmp_path / "host" / "host.sock"
    assert result.stderr == f"error: corral host is not running (no admin socket at {socket})\n"


def test_host_serve_ls_and_stop(data_dir: Path) -> None:
    code = data_dir / "code"
    code.mkdir()
    (code / "sleeper.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    agents = data_dir / "agents.toml"
    agents.write_text(
        '[[agents]]\ntenant = "brightsmile"\nagent = "receptionist-1"\n'
        f'entry = "/work/sleeper.py"\ncode = "{code}"\n'
    )
    env = {**os.environ, "CORRAL_HOST__BACKEND": "bwrap", "CORRAL_HOST__WARM_POOL": "0"}
    host = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "--data-dir", str(data_dir), "host", "serve",
         "--agents", str(agents)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        rows = wait_for_rows(data_dir, host)
        (row,) = rows
        assert (row["tenant"], row["agent"], row["backend"], row["state"]) == (
            "brightsmile", "receptionist-1", "bwrap", "running")  # fmt: skip
        listed = invoke(data_dir, "sandbox", "ls")
        assert listed.exit_code == 0 and row["id"] in listed.stdout
        assert "brightsmile" in listed.stdout and "running" in listed.stdout
        stopped = invoke(data_dir, "sandbox", "stop", row["id"])
        assert stopped.exit_code == 0, stopped.stderr
        assert stopped.stdout == f"stopped {row['id']} (exit 0)\n"
        again = invoke(data_dir, "sandbox", "stop", row["id"])
        assert again.exit_code == 1
        assert again.stderr == f"error: no sandbox {row['id']!r} runs here\n"
        assert json.loads(invoke(data_dir, "sandbox", "ls", "--json").stdout) == []
        host.send_signal(signal.SIGTERM)
        host.communicate(timeout=60)
        assert host.returncode == 0
    finally:
        if host.poll() is None:
            host.kill()
            host.communicate()


def invoke(data_dir: Path, *args: str) -> Any:
    return runner.invoke(app, ["--data-dir", str(data_dir), *args], env={"COLUMNS": "160"})


def wait_for_rows(data_dir: Path, host: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    socket = data_dir / "host" / "host.sock"
    deadline = time.monotonic() + 60
    while True:
        assert host.poll() is None, host.communicate()
        assert time.monotonic() < deadline, "corral host serve did not start its agent"
        if socket.exists():
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket))) as client:
                rows: list[dict[str, Any]] = client.get("http://host/sandboxes").json()["sandboxes"]
            if rows:
                return rows
        time.sleep(0.1)


def test_host_serve_refuses_a_bad_agents_file(tmp_path: Path) -> None:
    bad = tmp_path / "agents.toml"
    bad.write_text('[[agents]]\ntenant = "t"\nagent = "a"\n')
    result = runner.invoke(app, ["--data-dir", str(tmp_path), "host", "serve", "--agents",
                                 str(bad)])  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == f"error: {bad}: agent 1: agent field 'entry' must be a string\n"
