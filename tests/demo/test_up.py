"""``corral up``: three real child processes, healthy, stopped in reverse order by Ctrl-C.

Each test runs ``corral up`` as a subprocess in its own session, as a shell runs a foreground
command, and signals that whole process group: the children, in sessions of their own, must
be stopped by ``corral up`` and not by the terminal's signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._serving import free_port

CORRAL = [sys.executable, "-m", "corral.cli"]
STARTUP_S = 240.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short: sandbox channel sockets live under it (sun_path is 108 bytes).
    path = Path(tempfile.mkdtemp(prefix="up-", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    # Another control (a developer's `corral up`) may hold the dashboard's default port.
    env["CORRAL_DASHBOARD__LISTEN"] = f"127.0.0.1:{free_port()}"
    env.update(extra)
    return env


def _start(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CORRAL, "--data-dir", str(data_dir), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def _wait_up(process: subprocess.Popen[str], state: Path) -> dict[str, object]:
    deadline = time.monotonic() + STARTUP_S
    while not state.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "corral up did not come up"
        time.sleep(0.2)
    loaded: dict[str, object] = json.loads(state.read_text("utf-8"))
    return loaded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def _healthz(socket_path: str) -> int:
    transport = httpx.HTTPTransport(uds=socket_path)
    with httpx.Client(transport=transport, base_url="http://corral", timeout=10) as client:
        return client.get("/healthz").status_code


@pytest.mark.timeout(400)
def test_up_starts_three_healthy_children_and_ctrl_c_stops_them_all(data_dir: Path) -> None:
    process = _start(data_dir, _env())
    try:
        state = _wait_up(process, data_dir / "up.json")
        children = state["children"]
        assert isinstance(children, list)
        assert [c["name"] for c in children] == ["broker", "control", "host"]
        for child in children:
            assert _healthz(child["socket"]) == 200, child
            assert _alive(child["pid"])
            # Its own session: a terminal's Ctrl-C does not reach it directly.
            assert os.getsid(child["pid"]) != os.getsid(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    order = [output.index(f"corral {name}: stopping") for name in ("host", "control", "broker")]
    assert order == sorted(order), output
    assert "killed" not in output  # each stopped within its grace on SIGTERM
    for child in children:
        assert not _alive(child["pid"]), child
        assert not Path(child["socket"]).exists()
    assert _processes_mentioning(str(data_dir)) == []
    assert not (data_dir / "up.json").exists()


@pytest.mark.timeout(300)
def test_a_child_that_dies_at_start_is_reported_with_its_log(data_dir: Path) -> None:
    blocker = data_dir / "not-a-directory"
    blocker.write_text("")
    env = _env(CORRAL_CONTROL__DATABASE_URL=f"sqlite:///{blocker}/control.db")
    process = _start(data_dir, env)
    output, _ = process.communicate(timeout=280)
    assert process.returncode == 1, output
    assert "corral control exited with status" in output, output
    assert "before it was ready" in output
    assert "control.log" in output
    assert _processes_mentioning(str(data_dir)) == []  # the broker, started first, was stopped


@pytest.mark.timeout(120)
def test_aws_needs_the_kms_key(data_dir: Path) -> None:
    result = subprocess.run(
        [*CORRAL, "--data-dir", str(data_dir), "up", "--aws"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=110,
    )
    assert result.returncode == 1
    assert "broker.kms_key_id" in result.stderr
    assert _processes_mentioning(str(data_dir)) == []


def test_aws_environment_selects_kms_and_dynamodb() -> None:
    from corral.core.settings import load_settings
    from corral.up import aws_environment

    settings = load_settings(broker={"kms_key_id": "alias/corral"})
    env = aws_environment(settings)
    assert env["CORRAL_BROKER__KEY_PROVIDER"] == "aws-kms"
    assert env["CORRAL_AUDIT__ANCHOR__BACKEND"] == "dynamodb"
    assert env["CORRAL_BROKER__REGION"] == env["CORRAL_AUDIT__ANCHOR__REGION"] == "us-west-2"


def test_every_child_gets_the_same_settings(tmp_path: Path) -> None:
    from corral.core.settings import load_settings
    from corral.up import standard_children

    config = tmp_path / "corral.toml"
    config.write_text('deployment = "brightsmile.example"\n')
    settings = load_settings(config, data_dir=tmp_path / "data")
    children = standard_children(settings, config)
    assert [c.name for c in children] == ["broker", "control", "host"]
    for child in children:
        argv = list(child.argv)
        assert argv[argv.index("--config") + 1] == str(config.resolve())
        assert argv[argv.index("--data-dir") + 1] == str((tmp_path / "data").resolve())
        assert argv[-1] == "serve"
    assert children[1].socket == settings.control_socket().resolve()
