"""The gVisor backend: the OCI bundle it writes, cleanup of bundle, state and cgroups, stop,
output through ``runsc run`` arriving intact, and the CPU watchdog."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from corral.runtime.bwrap import GUEST_ETC, HOST_ETC, OUTPUT_CAP, root_entries
from corral.runtime.gvisor import (
    HOST_PIDS_BASE,
    HOST_PIDS_PER_GUEST,
    MIB,
    SENTRY_OVERHEAD_MIB,
    GVisorBackend,
    GVisorSandbox,
    bundle_config,
    write_rootfs,
)
from corral.runtime.sandbox import (
    GUEST_CHANNEL,
    Limits,
    SandboxUnavailable,
    guest_env,
    python_paths,
)
from tests.conftest import need_service
from tests.runtime._sandboxes import PlaceFactory, places_fixture, require, run  # noqa: F401

pytestmark = pytest.mark.timeout(600)


def _gvisor() -> GVisorBackend:
    backend = require("gvisor")
    assert isinstance(backend, GVisorBackend)
    return backend


def _mount(config: dict[str, Any], destination: str) -> dict[str, Any]:
    found = [m for m in config["mounts"] if m["destination"] == destination]
    assert len(found) == 1, (destination, found)
    mount: dict[str, Any] = found[0]
    return mount


def test_bundle_config(places: PlaceFactory, tmp_path: Path) -> None:
    """config.json: the command and exactly guest_env, no capabilities, a read-only root, the
    mounts (rw only /work and /tmp), every namespace but user, and the limits."""
    place = places("bundle")
    limits = Limits(memory_mib=100, pids=10, cpu_quota=0.25, open_files=50, tmp_mib=8)
    spec = place.spec(["python", "-m", "corral.guest.run"], limits, env={"A": "1"})
    config = json.loads(json.dumps(bundle_config(spec, tmp_path, "cid", cgroups=True)))

    process = config["process"]
    assert process["args"] == ["python", "-m", "corral.guest.run"]
    assert dict(e.split("=", 1) for e in process["env"]) == guest_env(spec)
    assert process["cwd"] == "/work" and process["terminal"] is False
    assert process["noNewPrivileges"] is True
    assert set(process["capabilities"]) == {
        "bounding", "effective", "inheritable", "permitted", "ambient",
    }  # fmt: skip
    assert all(caps == [] for caps in process["capabilities"].values())
    rlimits = {r["type"]: (r["soft"], r["hard"]) for r in process["rlimits"]}
    assert rlimits == {"RLIMIT_NOFILE": (50, 50), "RLIMIT_NPROC": (10, 10), "RLIMIT_CORE": (0, 0)}
    assert config["root"] == {"path": str(tmp_path), "readonly": True}
    assert config["hostname"] == "sbx-bundle"

    work = _mount(config, "/work")
    assert (work["source"], work["type"]) == (str(place.work), "bind")
    assert "rw" in work["options"]
    channel = _mount(config, str(GUEST_CHANNEL))
    assert channel["source"] == str(place.channel)  # the socket file, not its directory
    tmp = _mount(config, "/tmp")
    assert tmp["type"] == "tmpfs" and "size=8m" in tmp["options"]
    for path in python_paths():
        mount = _mount(config, str(path))
        assert mount["source"] == str(path) and "ro" in mount["options"]
    sources = {m["source"] for m in config["mounts"] if m["type"] == "bind"}
    allowed = {str(p) for p in python_paths()} | {str(place.work), str(place.channel)}
    allowed |= {p for p, target in root_entries() if target is None}
    allowed |= {os.path.realpath(p) for p in HOST_ETC}
    assert sources <= allowed, sources - allowed
    rw = [m["destination"] for m in config["mounts"] if "rw" in m.get("options", [])]
    assert rw == ["/work", str(GUEST_CHANNEL)]
    order = [m["destination"] for m in config["mounts"]]
    assert all(order.index(str(p)) > order.index("/work") for p in python_paths())

    linux = config["linux"]
    assert {ns["type"] for ns in linux["namespaces"]} == {
        "pid", "network", "ipc", "uts", "mount", "cgroup",
    }  # fmt: skip
    assert linux["cgroupsPath"] == "/corral/cid"
    memory = (100 + SENTRY_OVERHEAD_MIB) * MIB
    assert linux["resources"] == {
        "memory": {"limit": memory, "swap": memory},
        "pids": {"limit": HOST_PIDS_BASE + HOST_PIDS_PER_GUEST * 10},
        "cpu": {"quota": 25_000, "period": 100_000},
    }


def test_bundle_without_cgroups(places: PlaceFactory, tmp_path: Path) -> None:
    """With --ignore-cgroups the memory bound moves into the Sentry as RLIMIT_AS."""
    spec = places("nocg").spec(["true"], Limits(memory_mib=100))
    config = bundle_config(spec, tmp_path, "cid", cgroups=False)
    assert "resources" not in config["linux"] and "cgroupsPath" not in config["linux"]
    rlimits = {r["type"]: r["soft"] for r in config["process"]["rlimits"]}
    assert rlimits["RLIMIT_AS"] == 100 * MIB
    assert GVisorBackend(cgroup_root=None).limit_mechanisms()["memory"].startswith("RLIMIT_AS")


def test_rootfs_is_empty_but_for_links_and_etc(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    write_rootfs(rootfs)
    links = {f"/{p.name}": os.readlink(p) for p in rootfs.iterdir() if p.is_symlink()}
    assert links == {path: target for path, target in root_entries() if target is not None}
    assert {p.name for p in rootfs.iterdir() if not p.is_symlink()} == {"etc"}
    assert {f"/etc/{p.name}": p.read_text() for p in (rootfs / "etc").iterdir()} == dict(GUEST_ETC)


async def _wait_for(path: Path, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


SLEEPER = "import time; time.sleep(120)"


def test_stop_removes_bundle_state_and_cgroups(places: PlaceFactory) -> None:
    """While it runs: the private dir and runsc's cgroups (with our limits) exist. After stop:
    all gone, and stopping again changes nothing."""
    backend = _gvisor()
    limits = Limits(memory_mib=80, pids=16)

    async def go() -> tuple[GVisorSandbox, dict[str, str], int, int]:
        sandbox = await backend.start(places("cleanup").spec(["python", "-c", SLEEPER], limits))
        assert isinstance(sandbox, GVisorSandbox)
        assert (sandbox.private_dir / "bundle" / "config.json").exists()
        seen: dict[str, str] = {}
        if backend.cgroups_usable():
            memory = sandbox.cgroup_dir("memory")
            assert await _wait_for(memory / "memory.limit_in_bytes")
            seen["memory"] = (memory / "memory.limit_in_bytes").read_text().strip()
            seen["pids"] = (sandbox.cgroup_dir("pids") / "pids.max").read_text().strip()
        first = await sandbox.stop(grace_s=0.5)
        return sandbox, seen, first, await sandbox.stop()

    sandbox, seen, first, second = asyncio.run(go())
    assert first == second == sandbox.returncode
    assert first in (-15, -9)
    assert not sandbox.private_dir.exists()
    if seen:
        assert seen == {
            "memory": str((80 + SENTRY_OVERHEAD_MIB) * MIB),
            "pids": str(HOST_PIDS_BASE + HOST_PIDS_PER_GUEST * 16),
        }
        for controller in ("memory", "pids", "cpu", "cpuacct"):
            assert not sandbox.cgroup_dir(controller).exists(), controller
    assert sandbox.enforcement == backend.limit_mechanisms()


def test_graceful_stop_and_natural_exit(places: PlaceFactory) -> None:
    """SIGTERM reaches the guest's command (exit 7 from its handler); a guest that ends by
    itself is cleaned up by wait() alone."""
    backend = _gvisor()
    polite = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "open('/work/ready', 'w').close()\n"
        "time.sleep(120)\n"
    )
    place = places("polite")

    async def go() -> tuple[int, GVisorSandbox, int]:
        sandbox = await backend.start(place.spec(["python", "-c", polite]))
        assert isinstance(sandbox, GVisorSandbox)
        assert await _wait_for(place.work / "ready", 60)
        code = await sandbox.stop(grace_s=20)
        quick = await backend.start(places("quick").spec(["python", "-c", "pass"]))
        assert isinstance(quick, GVisorSandbox)
        return code, quick, await quick.wait()

    code, quick, quick_code = asyncio.run(go())
    assert code == 7
    assert quick_code == 0
    assert not quick.private_dir.exists()


def test_output_arrives_intact(places: PlaceFactory) -> None:
    """runsc run passes the guest's stdout through unchanged (`runsc do` here does not), up
    to the cap; stderr stays separate."""
    backend = _gvisor()
    code = (
        "import sys\n"
        "data = bytes(range(256)) * 1024\n"  # 256 KiB of every byte value
        "sys.stdout.buffer.write(data); sys.stdout.flush()\n"
        "sys.stderr.write('err')\n"
    )
    result = run(backend, places("intact").spec(["python", "-c", code]))
    assert result.returncode == 0, result.explain()
    assert result.stdout == bytes(range(256)) * 1024
    assert result.stderr == b"err"
    big = run(
        backend,
        places("big").spec(["python", "-c", "import sys; sys.stdout.write('z' * (3 << 20))"]),
    )
    assert big.returncode == 0 and big.stdout == b"z" * OUTPUT_CAP


def test_cpu_watchdog_kills_a_spinner(places: PlaceFactory) -> None:
    """This Sentry ignores RLIMIT_CPU; the cgroup watchdog stops a guest past cpu_seconds."""
    backend = _gvisor()
    if not backend.cgroups_usable():
        need_service("writable cgroup v1 for runsc", "the CPU watchdog reads cpuacct")

    async def go() -> tuple[GVisorSandbox, int, float]:
        started = time.perf_counter()
        sandbox = await backend.start(
            places("spin").spec(["python", "-c", "while True: pass"], Limits(cpu_seconds=1))
        )
        assert isinstance(sandbox, GVisorSandbox)
        code = await asyncio.wait_for(sandbox.wait(), 60)
        return sandbox, code, time.perf_counter() - started

    sandbox, code, took = asyncio.run(go())
    assert sandbox.cpu_exceeded
    assert code == -9
    assert took < 30


def test_missing_binary_is_unavailable(places: PlaceFactory) -> None:
    backend = GVisorBackend("runsc-not-installed")
    availability = backend.available()
    assert not availability.ok and "not found" in availability.reason
    with pytest.raises(SandboxUnavailable, match="not found"):
        asyncio.run(backend.start(places("none").spec(["true"])))
