"""The Firecracker backend, contract-tested against Firecracker's v1.16.1 API specification.

No test here boots a VM: this machine is itself a Firecracker guest on PVM-based KVM, with no
``firecracker`` binary (``test_available_names_what_is_missing_here`` records exactly why).
Instead the real backend and client talk to ``_firecracker_fake``, which validates every
request body against the operation's schema in ``specs/firecracker-v1.16.1.yaml`` and enforces
Firecracker's ordering rules. In the start-path tests the fake *is* the ``firecracker`` binary
of development mode (``jailer=None``), so process spawn, socket wait, the channel relay,
scratch-drive creation, cleanup and the error path all run for real. The jailer itself is
covered by its argv only.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.guest import wire
from corral.runtime import firecracker as fc
from corral.runtime._firecracker_api import (
    BootSource,
    Drive,
    EntropyDevice,
    FirecrackerAPI,
    FirecrackerAPIError,
    Logger,
    MachineConfiguration,
    MemoryBackend,
    Metrics,
    RateLimiter,
    SnapshotCreateParams,
    SnapshotLoadParams,
    TokenBucket,
    Vsock,
    VsockOverride,
    body,
)
from corral.runtime.sandbox import (
    GUEST_CHANNEL,
    Backend,
    Identity,
    IsolationLevel,
    Limits,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
)
from tests.runtime._firecracker_fake import SPEC_PATH, FakeFirecracker, Spec, serve

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("_firecracker_fake.py")
BUILD_SCRIPT = REPO / "images" / "firecracker" / "build-guest.sh"
INIT = REPO / "images" / "firecracker" / "init.py"
SPEC = Spec()
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


# ----------------------------------------------------------------------------------------------
# Helpers


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def fake_firecracker(tmp_path: Path, *faults: str, name: str = "firecracker") -> Path:
    """A ``firecracker`` executable that runs the spec-checking fake on its ``--api-sock``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    logs = tmp_path / "fake-logs"
    logs.mkdir(exist_ok=True)
    fail = " ".join(f"--fail '{fault}'" for fault in faults)
    script = bin_dir / name
    script.write_text(
        f"#!/bin/sh\nexec '{sys.executable}' '{FAKE}' --log-dir '{logs}' {fail} \"$@\"\n"
    )
    script.chmod(0o755)
    return script


def fake_log(tmp_path: Path, sandbox: str) -> list[dict[str, Any]]:
    path = tmp_path / "fake-logs" / f"{fc.jail_id_for(sandbox)}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def fake_pid(tmp_path: Path, sandbox: str) -> int:
    return int((tmp_path / "fake-logs" / f"{fc.jail_id_for(sandbox)}.pid").read_text())


def dev_config(tmp_path: Path, firecracker: Path) -> fc.FirecrackerConfig:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / "vmlinux").write_bytes(b"\x7fELF not really a kernel")
    (images / "rootfs.ext4").write_bytes(b"\0" * 4096)
    return fc.FirecrackerConfig(
        firecracker=firecracker,
        jailer=None,
        kernel=images / "vmlinux",
        rootfs=images / "rootfs.ext4",
        uid=os.getuid(),
        gid=os.getgid(),
        chroot_base=tmp_path / "jails",
        snapshot_dir=tmp_path / "snapshots",
        socket_timeout_s=20.0,
    )


def make_spec(
    tmp_path: Path,
    sandbox: str = "sbx_0000000001",
    limits: Limits | None = None,
    command: tuple[str, ...] = ("python3", "-m", "corral.guest.run"),
) -> SandboxSpec:
    work = tmp_path / f"work-{sandbox}"
    work.mkdir(exist_ok=True)
    (work / "hello.txt").write_text("hello from the host\n")
    return SandboxSpec(
        identity=Identity(tenant="acme", agent="books", sandbox=sandbox),
        command=command,
        work_dir=work,
        channel=tmp_path / f"{sandbox}.sock",
        limits=limits or Limits(),
        env={"AGENT_MODE": "test"},
    )


class HostChannel:
    """The host's end of one sandbox's channel: collects the frames the guest sends."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def start(self, path: Path) -> HostChannel:
        self.server = await asyncio.start_unix_server(self._serve, path=str(path))
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (frame := await wire.read_frame(reader)) is not None:
                await self.frames.put(frame)
        except (ConnectionError, wire.WireError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def operations(log: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["method"], entry["template"]) for entry in log]


def assert_all_fit_the_spec(log: list[dict[str, Any]]) -> None:
    assert log, "no request reached the fake"
    for entry in log:
        assert entry["template"] is not None, entry
        assert entry["template"] in SPEC.document["paths"]
        assert entry["method"].lower() in SPEC.document["paths"][entry["template"]]
        assert entry["errors"] == [], entry
        assert SPEC.errors(entry["method"], entry["path"], entry["body"]) == []


def load_init() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corral_guest_init", INIT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def debugfs_cat(image: Path, path: str) -> str:
    debugfs = shutil.which("debugfs", path=SBIN)
    if debugfs is None:
        pytest.skip("debugfs (e2fsprogs) is not installed")
    result = subprocess.run(
        [debugfs, "-R", f"cat {path}", str(image)], capture_output=True, check=True
    )
    return result.stdout.decode()


# ----------------------------------------------------------------------------------------------
# The specification file and the request dataclasses


def test_spec_is_the_verbatim_release_file() -> None:
    digest = hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest()
    assert digest == "a514abec7b29700c5ca8bdaebbb960e4ffb46fe1fd4869094c6c63630a6fa41c"
    readme = (SPEC_PATH.parent / "README.md").read_text()
    assert digest in readme
    assert "2038188f145fb81b8d098147a10e9d9f392fd22f" in readme
    assert SPEC.document["info"]["version"] == "1.16.1"


REQUEST_CLASSES = [
    Logger,
    Metrics,
    MachineConfiguration,
    BootSource,
    TokenBucket,
    RateLimiter,
    Drive,
    Vsock,
    EntropyDevice,
    SnapshotCreateParams,
    MemoryBackend,
    VsockOverride,
    SnapshotLoadParams,
]


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=lambda c: c.__name__)
def test_request_dataclasses_are_named_after_the_spec(cls: type) -> None:
    import dataclasses

    definition = SPEC.definitions[cls.__name__]
    properties = set(definition.get("properties", {}))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) <= properties, set(fields) - properties
    for name in definition.get("required", []):
        assert name in fields, f"{cls.__name__} lacks required {name}"
        assert fields[name].default is dataclasses.MISSING, f"{name} is required by the spec"


# ----------------------------------------------------------------------------------------------
# 1. Every request the client sends, validated against the spec (in-process fake)


def test_every_client_request_fits_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("vmlinux", "rootfs.ext4", "scratch.ext4", "fc.log", "fc.metrics"):
        (tmp_path / name).write_bytes(b"")
    bucket = TokenBucket(size=1 << 20, refill_time=100, one_time_burst=0)

    async def main() -> tuple[FakeFirecracker, FakeFirecracker]:
        booted, restored = FakeFirecracker(), FakeFirecracker()
        servers = [await serve(booted, "api.sock"), await serve(restored, "api2.sock")]
        async with FirecrackerAPI(str(tmp_path / "api.sock")) as api:
            await api.put_logger(Logger("fc.log", level="Info", show_level=True))
            await api.put_metrics(Metrics("fc.metrics"))
            await api.put_machine_config(MachineConfiguration(2, 512, smt=False))
            await api.put_boot_source(BootSource("vmlinux", boot_args=fc.BOOT_ARGS))
            await api.put_drive(
                Drive(
                    "rootfs",
                    True,
                    path_on_host="rootfs.ext4",
                    is_read_only=True,
                    cache_type="Unsafe",
                    io_engine="Sync",
                    rate_limiter=RateLimiter(bandwidth=bucket, ops=TokenBucket(100, 1000)),
                )
            )
            await api.put_drive(Drive("scratch", False, "scratch.ext4", is_read_only=False))
            await api.put_vsock(Vsock(guest_cid=3, uds_path="v.sock"))
            await api.put_entropy(EntropyDevice(rate_limiter=RateLimiter(ops=bucket)))
            await api.instance_start()
            assert (await api.describe_instance()).state == "Running"
            await api.pause()
            assert (await api.describe_instance()).state == "Paused"
            await api.create_snapshot(SnapshotCreateParams("vm.state", "vm.mem", "Full"))
            await api.resume()
            await api.send_ctrl_alt_del()
        async with FirecrackerAPI(str(tmp_path / "api2.sock")) as api:
            await api.put_logger(Logger("fc.log"))
            await api.load_snapshot(
                SnapshotLoadParams(
                    "vm.state",
                    MemoryBackend("File", "vm.mem"),
                    resume_vm=True,
                    track_dirty_pages=False,
                    vsock_override=VsockOverride("v2.sock"),
                )
            )
            assert (await api.describe_instance()).state == "Running"
        for server in servers:
            server.close()
        return booted, restored

    booted, restored = run(main())
    log = [entry.to_json() for entry in booted.log + restored.log]
    assert_all_fit_the_spec(log)
    assert {entry["status"] for entry in log} <= {200, 204}
    sent = {(entry["method"], entry["template"]) for entry in log}
    assert sent == {
        ("GET", "/"),
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/{drive_id}"),
        ("PUT", "/vsock"),
        ("PUT", "/entropy"),
        ("PUT", "/actions"),
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
        ("PUT", "/snapshot/load"),
    }
    public = {name for name in vars(FirecrackerAPI) if not name.startswith("_")} - {"aclose"}
    assert len(public) == 14  # one method per request: every one was called above


@pytest.mark.parametrize(
    ("method", "path", "payload", "why"),
    [
        ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 128}, "minimum"),
        ("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 128}, "maximum"),
        ("PUT", "/machine-config", {"vcpu_count": 1}, "mem_size_mib"),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": "128"}, "integer"),
        ("PUT", "/vsock", {"guest_cid": 2, "uds_path": "v.sock"}, "minimum"),
        ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True, "ro": 1}, "ro"),
        ("PUT", "/actions", {"action_type": "Reboot"}, "Reboot"),
        ("PUT", "/snapshot/load", {"resume_vm": True}, "snapshot_path"),
        ("PUT", "/network", {}, "not an operation"),
    ],
)
def test_the_fake_refuses_what_the_spec_refuses(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    payload: dict[str, Any],
    why: str,
) -> None:
    """The validator is live: bodies outside the spec get Firecracker's 400 + fault_message."""
    monkeypatch.chdir(tmp_path)

    async def main() -> httpx.Response:
        server = await serve(FakeFirecracker(), "api.sock")
        transport = httpx.AsyncHTTPTransport(uds=str(tmp_path / "api.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            response = await c.request(method, path, json=payload)
        server.close()
        return response

    response = run(main())
    assert response.status_code == 400
    assert why in response.json()["fault_message"]


def test_the_fake_enforces_firecrackers_ordering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vmlinux").write_bytes(b"")

    async def main() -> None:
        server = await serve(FakeFirecracker(), "api.sock")
        async with FirecrackerAPI(str(tmp_path / "api.sock")) as api:
            with pytest.raises(FirecrackerAPIError, match="without kernel configuration"):
                await api.instance_start()
            await api.put_machine_config(MachineConfiguration(1, 128))
            with pytest.raises(FirecrackerAPIError, match="snapshot not allowed") as info:
                await api.load_snapshot(
                    SnapshotLoadParams("vm.state", MemoryBackend("File", "vm.mem"))
                )
            assert info.value.status == 400
            assert "configuring boot-specific resources" in info.value.fault_message
            await api.put_boot_source(BootSource("vmlinux"))
            await api.instance_start()
            with pytest.raises(FirecrackerAPIError, match="after starting"):
                await api.put_vsock(Vsock(3, "v.sock"))
            with pytest.raises(FirecrackerAPIError, match="not paused"):
                await api.create_snapshot(SnapshotCreateParams("s", "m"))
        server.close()

    run(main())


# ----------------------------------------------------------------------------------------------
# The whole start path, with the fake as the firecracker binary (development mode)


def test_cold_start_boot_sequence_channel_and_stop(tmp_path: Path) -> None:
    config = dev_config(tmp_path, fake_firecracker(tmp_path))
    backend = fc.FirecrackerBackend(config)
    spec = make_spec(tmp_path, limits=Limits(memory_mib=384, cpu_quota=1.5, tmp_mib=32))

    async def main() -> dict[str, Any]:
        channel = await HostChannel().start(spec.channel)
        sandbox = await backend.start(spec)
        assert isinstance(sandbox, Sandbox)
        assert (sandbox.backend, sandbox.level, sandbox.identity) == (
            "firecracker",
            IsolationLevel.VM,
            spec.identity,
        )
        root = sandbox.jail_root
        jail_id = fc.jail_id_for("sbx_0000000001")
        assert root == config.chroot_base / "firecracker" / jail_id / "root"
        assert root.parent.name == fc.jail_id_for(spec.identity.sandbox)
        # the guest's vsock connection to CID 2:52 lands on the relay and reaches the host
        frame = await asyncio.wait_for(channel.frames.get(), 20)
        assert frame["method"] == "sandbox.ready"
        observed = {
            "relay_is_socket": (root / "run" / "v.sock_52").is_socket(),
            "boot": (root / "boot.cfg").read_bytes(),
            "hello": debugfs_cat(root / "scratch.ext4", "/hello.txt"),
            "returncode_running": sandbox.returncode,
        }
        observed["status"] = await sandbox.stop()
        observed["again"] = await sandbox.stop()  # idempotent
        observed["stdout"] = (await sandbox.output())[0]
        observed["jail_left"] = root.parent.exists()
        await channel.close()
        return observed

    observed = run(main())
    assert observed["relay_is_socket"]
    assert observed["hello"] == "hello from the host\n"
    assert observed["returncode_running"] is None
    assert observed["status"] == observed["again"] == 0  # the guest's corral-exit line
    assert b"corral-exit: 0" in observed["stdout"]
    assert not observed["jail_left"]
    boot = load_init().parse_boot(observed["boot"])
    assert boot["argv"] == ["python3", "-m", "corral.guest.run"]
    assert boot["limits"]["tmp_mib"] == 32

    log = fake_log(tmp_path, spec.identity.sandbox)
    assert_all_fit_the_spec(log)
    assert [entry["status"] for entry in log] == [204] * len(log)
    assert operations(log) == [
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/{drive_id}"),
        ("PUT", "/drives/{drive_id}"),
        ("PUT", "/drives/{drive_id}"),
        ("PUT", "/vsock"),
        ("PUT", "/entropy"),
        ("PUT", "/actions"),
        ("PUT", "/actions"),  # stop(): SendCtrlAltDel
    ]
    bodies = [entry["body"] for entry in log]
    assert bodies[2] == {
        "vcpu_count": 2,
        "mem_size_mib": 384,
        "smt": False,
        "track_dirty_pages": False,
    }
    assert bodies[3]["boot_args"].startswith("console=ttyS0 reboot=k panic=1 pci=off")
    rootfs, scratch, config_drive = bodies[4:7]
    assert rootfs == {
        "drive_id": "rootfs",
        "path_on_host": "rootfs.ext4",
        "is_root_device": True,
        "is_read_only": True,
    }
    assert scratch["is_read_only"] is False and scratch["is_root_device"] is False
    assert config_drive["is_read_only"] is True and config_drive["path_on_host"] == "boot.cfg"
    assert bodies[7] == {"guest_cid": 3, "uds_path": "run/v.sock"}
    assert bodies[9] == {"action_type": "InstanceStart"}
    assert bodies[10] == {"action_type": "SendCtrlAltDel"}
    # InstanceStart comes after every configuration request; no NIC ever
    start = operations(log).index(("PUT", "/actions"))
    assert all(entry["method"] == "PUT" for entry in log[:start])
    assert not any("network" in entry["path"] for entry in log)


def test_warm_snapshot_and_restore(tmp_path: Path) -> None:
    config = dev_config(tmp_path, fake_firecracker(tmp_path))
    backend = fc.FirecrackerBackend(config)
    warm = make_spec(tmp_path, sandbox="warm-py311")
    clone = make_spec(tmp_path, sandbox="clone-1")

    async def main() -> tuple[fc.FirecrackerSnapshot, dict[str, Any]]:
        warm_channel = await HostChannel().start(warm.channel)
        snapshot = await backend.warm_snapshot(warm, "py311", ready_timeout_s=20)
        clone_channel = await HostChannel().start(clone.channel)
        sandbox = await backend.start_from_snapshot(snapshot, clone)
        frame = await asyncio.wait_for(clone_channel.frames.get(), 20)
        status = await sandbox.stop()
        with pytest.raises(fc.UnsupportedLimits, match="snapshot 'py311'"):
            await backend.start_from_snapshot(
                snapshot, make_spec(tmp_path, "clone-2", Limits(memory_mib=512))
            )
        await warm_channel.close()
        await clone_channel.close()
        return snapshot, {"frame": frame, "status": status}

    snapshot, observed = run(main())
    assert observed["frame"]["method"] == "sandbox.ready"
    assert observed["status"] == 0
    assert snapshot.directory == config.snapshot_dir / "py311"  # type: ignore[operator]
    for path in (snapshot.state, snapshot.memory, snapshot.scratch, snapshot.boot):
        assert path.is_file()
    assert fc.FirecrackerSnapshot.load(snapshot.directory) == snapshot
    assert debugfs_cat(snapshot.scratch, "/hello.txt") == "hello from the host\n"  # sparse copy
    assert not list(config.chroot_base.rglob("root"))  # both jails removed

    warm_log = fake_log(tmp_path, "warm-py311")
    assert_all_fit_the_spec(warm_log)
    assert operations(warm_log)[-3:] == [
        ("PUT", "/actions"),
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
    ]
    assert warm_log[-2]["body"] == {"state": "Paused"}
    assert warm_log[-1]["body"]["snapshot_type"] == "Full"

    clone_log = fake_log(tmp_path, "clone-1")
    assert_all_fit_the_spec(clone_log)
    assert [entry["status"] for entry in clone_log] == [204] * len(clone_log)
    assert operations(clone_log) == [
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/snapshot/load"),  # first on a fresh process, after logger/metrics only
        ("PUT", "/actions"),  # stop(): SendCtrlAltDel
    ]
    assert clone_log[2]["body"] == {
        "snapshot_path": "snapshot/vm.state",
        "mem_backend": {"backend_type": "File", "backend_path": "snapshot/vm.mem"},
        "resume_vm": True,
        "vsock_override": {"uds_path": "run/v.sock"},
    }
    assert not fake_log(tmp_path, "clone-2")  # refused before any request


# ----------------------------------------------------------------------------------------------
# 2. Limits → machine config: always inside the spec, or refused before any request


@settings(max_examples=300, deadline=None)
@given(
    memory=st.integers(min_value=1, max_value=1 << 20),
    cpu=st.floats(min_value=0.001, max_value=64, allow_nan=False, allow_infinity=False),
    pids=st.integers(min_value=1, max_value=1 << 16),
)
def test_every_machine_config_fits_the_spec(memory: int, cpu: float, pids: int) -> None:
    limits = Limits(memory_mib=memory, cpu_quota=cpu, pids=pids)
    try:
        config = fc.machine_config_for(limits)
    except fc.UnsupportedLimits:
        assert memory < fc.MIN_GUEST_MEMORY_MIB or math.ceil(cpu) > fc.MAX_VCPUS
        return
    assert SPEC.errors("PUT", "/machine-config", body(config)) == []
    assert config.vcpu_count - 1 < cpu <= config.vcpu_count
    assert config.mem_size_mib == memory and config.smt is False
    for version in (1, 2):
        settings_ = dict(s.split("=", 1) for s in fc.cgroup_settings(limits, version, 64))
        memory_key = "memory.max" if version == 2 else "memory.limit_in_bytes"
        assert int(settings_[memory_key]) == (memory + 64) << 20
        if version == 2:
            quota, period = map(int, settings_["cpu.max"].split())
        else:
            quota, period = int(settings_["cpu.cfs_quota_us"]), int(settings_["cpu.cfs_period_us"])
        assert quota == max(1000, round(cpu * period))
        assert int(settings_["pids.max"]) == config.vcpu_count + fc.VMM_THREADS


@pytest.mark.parametrize(
    ("limits", "why"),
    [(Limits(memory_mib=16), "memory_mib=16"), (Limits(cpu_quota=40), "Firecracker allows 32")],
)
def test_unsupported_limits_are_refused_before_any_request(
    tmp_path: Path, limits: Limits, why: str
) -> None:
    backend = fc.FirecrackerBackend(dev_config(tmp_path, fake_firecracker(tmp_path)))
    spec = make_spec(tmp_path, limits=limits)
    with pytest.raises(fc.UnsupportedLimits, match=why):
        run(backend.start(spec))
    assert not list((tmp_path / "fake-logs").iterdir())  # no process was ever spawned
    assert not (tmp_path / "jails").exists()


# ----------------------------------------------------------------------------------------------
# 3. The jailer's argv and the jail layout


@pytest.fixture
def jailed(tmp_path: Path) -> Iterator[fc.FirecrackerConfig]:
    release = tmp_path / "release" / "firecracker-v1.16.1-x86_64"
    release.parent.mkdir()
    release.write_bytes(b"")
    link = tmp_path / "firecracker"
    link.symlink_to(release)
    yield fc.FirecrackerConfig(
        firecracker=link,
        jailer=Path("/usr/local/bin/jailer"),
        kernel=Path("/var/lib/corral/vmlinux"),
        rootfs=Path("/var/lib/corral/rootfs.ext4"),
        uid=123,
        gid=100,
        chroot_base=Path("/srv/jailer"),
        cgroup_version=2,
    )


def test_jailer_argv_cgroup_v2(jailed: fc.FirecrackerConfig) -> None:
    limits = Limits(memory_mib=512, cpu_quota=1.5, pids=64)
    assert fc.jailer_argv(jailed, "sbx-1", limits) == [
        "/usr/local/bin/jailer",
        "--id",
        "sbx-1",
        "--exec-file",
        str(jailed.firecracker),
        "--uid",
        "123",
        "--gid",
        "100",
        "--chroot-base-dir",
        "/srv/jailer",
        "--cgroup-version",
        "2",
        "--cgroup",
        f"memory.max={(512 + 64) * 1024 * 1024}",
        "--cgroup",
        "cpu.max=150000 100000",
        "--cgroup",
        "pids.max=10",
        "--",
        "--api-sock",
        "/run/firecracker.socket",
    ]


def test_jailer_argv_cgroup_v1_and_parent(jailed: fc.FirecrackerConfig) -> None:
    from dataclasses import replace

    config = replace(jailed, cgroup_version=1, parent_cgroup="corral/vms", vmm_overhead_mib=32)
    argv = fc.jailer_argv(config, "sbx-1", Limits(memory_mib=256, cpu_quota=0.5))
    cgroups = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--cgroup"]
    assert cgroups == [
        f"memory.limit_in_bytes={(256 + 32) << 20}",
        "cpu.cfs_period_us=100000",
        "cpu.cfs_quota_us=50000",
        "pids.max=9",
    ]
    assert argv[argv.index("--cgroup-version") + 1] == "1"
    assert argv[argv.index("--parent-cgroup") + 1] == "corral/vms"
    assert argv[argv.index("--") :] == ["--", "--api-sock", "/run/firecracker.socket"]
    assert "--new-pid-ns" not in argv and "--daemonize" not in argv


def test_jail_layout_follows_the_jailer(jailed: fc.FirecrackerConfig, tmp_path: Path) -> None:
    # the jailer canonicalises --exec-file: the chroot is named after the real file
    assert jailed.exec_name == "firecracker-v1.16.1-x86_64"
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n"
        "cgroup /sys/fs/cgroup/devices cgroup rw,devices 0 0\n"
    )
    from dataclasses import replace

    v2 = fc.FirecrackerBackend(replace(jailed, proc_mounts=mounts))
    assert v2._cgroup_dirs("sbx-1") == [Path("/sys/fs/cgroup/firecracker-v1.16.1-x86_64/sbx-1")]
    v1 = fc.FirecrackerBackend(replace(jailed, proc_mounts=mounts, cgroup_version=1))
    assert v1._cgroup_dirs("sbx-1") == [
        Path(f"/sys/fs/cgroup/{c}/firecracker-v1.16.1-x86_64/sbx-1")
        for c in ("memory", "cpu,cpuacct", "pids")
    ]


@pytest.mark.parametrize(
    "sandbox", ["sbx-1", "sbx_01HZX3ABCDEF", "a.b:c@d", "x" * 128, "a_b", "a-b"]
)
def test_jail_ids_fit_the_jailer(sandbox: str) -> None:
    jail_id = fc.jail_id_for(sandbox)
    assert 1 <= len(jail_id) <= 64
    assert all(c.isalnum() or c == "-" for c in jail_id)
    assert jail_id == fc.jail_id_for(sandbox)
    if sandbox in ("sbx-1", "a-b"):
        assert jail_id == sandbox
    assert fc.jail_id_for("a_b") != fc.jail_id_for("a-b")


def test_guest_command_environment_and_boot_drive(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, command=(sys.executable, "-m", "corral.guest.run"))
    assert fc.guest_argv(spec.command) == ["python3", "-m", "corral.guest.run"]
    assert fc.guest_argv(["/opt/other/python3", "x"])[0] == "/opt/other/python3"
    env = fc.guest_environment(spec)
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["PYTHONPATH"] == fc.GUEST_CORRAL_SRC
    assert env["CORRAL_CHANNEL"] == str(GUEST_CHANNEL)
    assert env["AGENT_MODE"] == "test"
    from dataclasses import replace

    own = replace(spec, env={"PYTHONPATH": "/work/lib"})
    assert fc.guest_environment(own)["PYTHONPATH"] == "/work/lib"
    raw = fc.boot_config(spec)
    assert raw.startswith(fc.BOOT_MAGIC) and len(raw) % 4096 == 0
    document = load_init().parse_boot(raw)
    assert document["env"] == env
    assert document["channel"] == {"cid": 2, "port": 52, "path": str(GUEST_CHANNEL)}
    assert load_init().parse_boot(b"\0" * 4096) is None
    with pytest.raises(SandboxError, match="needs a command"):
        fc.boot_config(replace(spec, command=()))


# ----------------------------------------------------------------------------------------------
# 4. available() on this machine


def test_available_names_what_is_missing_here(tmp_path: Path) -> None:
    backend = fc.FirecrackerBackend(
        fc.FirecrackerConfig(
            firecracker=tmp_path / "nowhere" / "firecracker",
            jailer=tmp_path / "nowhere" / "jailer",
            kernel=tmp_path / "nowhere" / "vmlinux",
            rootfs=tmp_path / "nowhere" / "rootfs.ext4",
            uid=123,
            gid=100,
        )
    )
    assert isinstance(backend, Backend)
    assert (backend.name, backend.level) == ("firecracker", IsolationLevel.VM)
    availability = backend.available()
    assert not availability.ok
    reason = availability.reason
    assert f"no firecracker binary at {tmp_path}/nowhere/firecracker" in reason
    assert "no jailer binary" in reason
    assert "no guest kernel" in reason and "no guest rootfs" in reason
    modules = Path("/sys/module")
    if not Path("/dev/kvm").exists():
        assert "no /dev/kvm" in reason
    elif (modules / "kvm_pvm").exists() and not (modules / "kvm_intel").exists():
        assert "PVM-based KVM (module kvm_pvm" in reason  # this project's machines


def test_available_distinguishes_kvm_failures(tmp_path: Path) -> None:
    from dataclasses import replace

    base = dev_config(tmp_path, fake_firecracker(tmp_path))
    missing = fc.FirecrackerBackend(replace(base, kvm_device=tmp_path / "kvm")).available()
    assert not missing.ok and f"no {tmp_path}/kvm" in missing.reason
    not_kvm = fc.FirecrackerBackend(replace(base, kvm_device=Path("/dev/null"))).available()
    assert not not_kvm.ok and "/dev/null is not a KVM device" in not_kvm.reason
    if Path("/dev/kvm").exists():
        pvm = tmp_path / "modules"
        (pvm / "kvm_pvm").mkdir(parents=True)
        result = fc.FirecrackerBackend(replace(base, sys_module=pvm)).available()
        assert "PVM-based" in result.reason or "/dev/kvm" in result.reason


# ----------------------------------------------------------------------------------------------
# 5. The error path: a 400 from Firecracker, a Firecracker that dies


def test_api_error_is_raised_and_everything_is_cleaned_up(tmp_path: Path) -> None:
    fault = "Invalid Memory Configuration: the fake refuses"
    config = dev_config(tmp_path, fake_firecracker(tmp_path, f"PUT /machine-config={fault}"))
    backend = fc.FirecrackerBackend(config)
    spec = make_spec(tmp_path)

    async def main() -> None:
        channel = await HostChannel().start(spec.channel)
        with pytest.raises(FirecrackerAPIError) as info:
            await backend.start(spec)
        assert info.value.fault_message == fault
        assert info.value.status == 400
        assert f"PUT /machine-config (400): {fault}" in str(info.value)
        await channel.close()

    run(main())
    pid = fake_pid(tmp_path, spec.identity.sandbox)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert not (config.chroot_base / "firecracker").exists()
    assert spec.channel.exists()  # the host's socket is the host's
    assert operations(fake_log(tmp_path, spec.identity.sandbox))[-1] == ("PUT", "/machine-config")


def test_a_firecracker_that_dies_is_reported_with_its_words(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "firecracker"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho 'Error: Kvm(Error(19)): No such device' >&2\nexit 1\n")
    script.chmod(0o755)
    config = dev_config(tmp_path, script)
    with pytest.raises(SandboxError, match=r"exited before .*No such device"):
        run(fc.FirecrackerBackend(config).start(make_spec(tmp_path)))
    assert not (config.chroot_base / "firecracker").exists()


def test_missing_images_are_unavailable(tmp_path: Path) -> None:
    from dataclasses import replace

    config = replace(dev_config(tmp_path, fake_firecracker(tmp_path)), kernel=tmp_path / "no")
    with pytest.raises(SandboxUnavailable, match=f"image {tmp_path}/no"):
        run(fc.FirecrackerBackend(config).start(make_spec(tmp_path)))


# ----------------------------------------------------------------------------------------------
# 6. The guest build script


def test_build_script_parses() -> None:
    subprocess.run(["bash", "-n", str(BUILD_SCRIPT)], check=True)


def test_build_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    subprocess.run([shellcheck, str(BUILD_SCRIPT)], check=True)
