"""Firecracker backend (``vm``): each sandbox is a microVM behind the jailer, built to
``specs/firecracker-v1.16.1.yaml`` (see ``specs/README.md``).

**Start** (:meth:`FirecrackerBackend.start`). A jail is prepared at
``<chroot_base>/<firecracker file name>/<jail id>/root`` (the jailer's layout):

============================ ======================================================
``vmlinux``, ``rootfs.ext4`` hard links (copies across filesystems) of the guest kernel and the
                             shared read-only root filesystem
``scratch.ext4``             this sandbox's writable drive, mounted at ``/work`` in the guest
``boot.cfg``                 a read-only raw drive holding the guest command (see below)
``run/v.sock_52``            the channel relay: the host end of the guest's vsock connection
``run/firecracker.socket``   the API socket (made by Firecracker)
============================ ======================================================

then ``jailer --id … --exec-file <firecracker> --uid U --gid G --chroot-base-dir D
--cgroup-version V --cgroup …=… -- --api-sock /run/firecracker.socket`` is spawned (flags as in
Firecracker's ``docs/jailer.md``), the API socket is awaited, and the requests go out in order,
each waiting for its 204: ``PUT /logger``, ``/metrics`` (optional), ``/machine-config``,
``/boot-source``, ``/drives/rootfs``, ``/drives/scratch``, ``/drives/config``, ``/vsock``,
``/entropy`` (optional), then ``PUT /actions InstanceStart``. No network interface is ever
configured: the guest has loopback only, and its one way out is the channel.

**The scratch drive** is made per sandbox with ``mkfs.ext4 -d <work dir>`` on a sparse file
(no journal: the drive dies with the sandbox). This ships the caller's work directory into the
guest without root, loop devices or a second copy step, costs a few milliseconds, and occupies
only the blocks written. (An empty image formatted at start would need another channel to seed
``/work``.) What the guest writes stays in the image: ``/work`` on Firecracker is not shared
back to ``spec.work_dir`` (Firecracker has no shared filesystem device).

**The guest command** travels on a third, read-only drive (``boot.cfg``): ``CORRAL-BOOT/1\\n``,
then one line of JSON (argv, environment, limits, channel port), zero-padded to 4 KiB blocks.
The guest init finds it by that magic. Not on the kernel command line, which is capped at
2 KiB by Firecracker on x86_64, needs quoting for arbitrary argv/env, and is frozen into a
snapshot; not a file on the scratch drive, where it would sit in the agent's ``/work``.
The host's interpreter is not visible in the guest, so an ``argv[0]`` naming the host's Python
becomes the guest's ``python3``, and ``PATH``/``PYTHONPATH`` point at the guest image's copy of
``corral.guest`` (unless ``spec.env`` sets them).

**The channel.** The guest init connects vsock CID 2 port 52; Firecracker forwards that to the
Unix socket ``<uds_path>_52`` (``uds_path`` = ``run/v.sock``, relative to the jail), so the
guest's connection arrives at ``<jail root>/run/v.sock_52`` on the host. The backend *listens
there itself* and relays each connection, byte for byte, to ``spec.channel``. Neither a
symlink (it would be resolved inside the chroot) nor a hard link or bind mount of
``spec.channel`` (same-filesystem and mount requirements, and they would need the host's
socket to be writable by the jail's uid) works in general; the relay works identically with and
without the jailer and after a snapshot restore, and since it is this sandbox's own listener,
the identity of the socket on the host's side is unchanged. Host paths under the jail are
reached through an ``O_PATH`` descriptor of ``run/`` (``/proc/self/fd/N/…``), so a long
chroot base never hits the 108-byte ``sun_path`` limit.

**Exit status.** The guest init prints ``corral-exit: <status>`` on the serial console
(``console=ttyS0``), then reboots, which ends Firecracker (``reboot=k``). The backend drains
Firecracker's stdout/stderr continuously (bounded) and reports that status; if the VM ended
without one, the Firecracker process's own status.

**Snapshots.** :meth:`FirecrackerBackend.warm_snapshot` boots a sandbox, waits until the
guest has connected its channel (the kernel has finished booting, as Firecracker requires),
pauses it and takes a Full snapshot into ``snapshot_dir/<name>/`` with a copy of its scratch
drive and its boot drive. :meth:`FirecrackerBackend.start_from_snapshot` prepares a fresh jail
with the same relative paths, spawns a fresh Firecracker and sends ``PUT /snapshot/load``
(``resume_vm: true``, ``vsock_override`` naming the new jail's vsock socket) before anything but
the logger and metrics, as the API requires. Vsock connections are reset by a restore, so the
guest's bridge reconnects. Clones share the snapshot's RNG state until the guest kernel reseeds
(VMGenID, guest ≥ 5.18): nothing secret is in a guest, but do not mint identity in it before
the snapshot.

**Stop.** ``PUT /actions SendCtrlAltDel`` (the init ends the command and reboots), SIGKILL
after the grace period, then the jail directory and the jailer's cgroups are removed.

**Development mode** (``jailer=None``): Firecracker is run directly in the jail directory as
the current user, without chroot, cgroups or privilege drop, as Firecracker's getting-started
guide does for development. Never use it for tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.core.ids import check_id
from corral.runtime._firecracker_api import (
    BootSource,
    Drive,
    EntropyDevice,
    FirecrackerAPI,
    Logger,
    MachineConfiguration,
    MemoryBackend,
    Metrics,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vsock,
    VsockOverride,
    wait_for_socket,
)
from corral.runtime.sandbox import (
    GUEST_CHANNEL,
    GUEST_WORK,
    Availability,
    Identity,
    IsolationLevel,
    Limits,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    guest_env,
    python_paths,
)

__all__ = [
    "API_SOCKET",
    "BOOT_ARGS",
    "BOOT_MAGIC",
    "CHANNEL_PORT",
    "GUEST_CID",
    "GUEST_CORRAL_SRC",
    "GUEST_UID",
    "MAX_VCPUS",
    "MIN_GUEST_MEMORY_MIB",
    "VSOCK_UDS",
    "FirecrackerBackend",
    "FirecrackerConfig",
    "FirecrackerSandbox",
    "FirecrackerSnapshot",
    "UnsupportedLimits",
    "boot_config",
    "cgroup_settings",
    "guest_argv",
    "guest_environment",
    "jail_id_for",
    "jailer_argv",
    "machine_config_for",
]

GUEST_CID = 3
"""The guest's vsock context id (3 is the lowest the spec allows)."""
CHANNEL_PORT = 52
"""The vsock port the guest connects to on the host (CID 2) for the channel."""
VSOCK_UDS = "run/v.sock"
"""``uds_path`` of the vsock device, relative to the jail root (Firecracker's cwd)."""
API_SOCKET = "/run/firecracker.socket"
"""The API socket as the jailed Firecracker sees it (the jailer's documented default)."""
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/corral-init"
"""Kernel command line; Firecracker appends ``root=/dev/vda ro`` for the read-only root drive."""
BOOT_MAGIC = b"CORRAL-BOOT/1\n"
"""First bytes of the boot drive, by which the guest init recognises it."""
GUEST_CORRAL_SRC = "/opt/corral/src"
"""Where the guest image holds ``corral`` (``__init__`` and ``guest``): its ``PYTHONPATH``."""
GUEST_UID = 1000
"""The unprivileged guest user the command runs as (rlimits bind it; ``/work`` is its own)."""
GUEST_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_VCPUS = 32
"""Firecracker's ``vcpu_count`` maximum (``MachineConfiguration`` in the spec)."""
MIN_GUEST_MEMORY_MIB = 64
"""Below this the guest kernel, init and Python do not fit; refused before any request."""
CPU_PERIOD_US = 100_000
VMM_THREADS = 8
"""Host threads of one Firecracker besides its vCPUs (VMM, API, event loops): ``pids.max``."""

_MIB = 1 << 20
_KERNEL = "vmlinux"
_ROOTFS = "rootfs.ext4"
_SCRATCH = "scratch.ext4"
_BOOTCFG = "boot.cfg"
_LOG = "firecracker.log"
_METRICS = "firecracker.metrics"
_SNAPSHOT_STATE = "snapshot/vm.state"
_SNAPSHOT_MEM = "snapshot/vm.mem"
_API_SOCKET_REL = "run/firecracker.socket"
_OUTPUT_LIMIT = 256 * 1024
_MAX_BOOT_CONFIG = 1 << 20
_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_API_VERSION = 12
_JAIL_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_EXIT_LINE = re.compile(rb"corral-exit: (-?\d{1,4})")


class UnsupportedLimits(SandboxError, ValueError):
    """Limits a microVM cannot honour (too little memory, more vCPUs than Firecracker allows)."""


# ----------------------------------------------------------------------------------------------
# Pure functions: what corral sends, from a spec and its limits (tested against the spec).


def machine_config_for(limits: Limits) -> MachineConfiguration:
    """``vcpu_count`` is the CPU quota rounded up (the host cgroup enforces the fraction);
    ``mem_size_mib`` is the memory limit; SMT off. Raises :class:`UnsupportedLimits` first."""
    if limits.memory_mib < MIN_GUEST_MEMORY_MIB:
        raise UnsupportedLimits(
            f"memory_mib={limits.memory_mib} is below the {MIN_GUEST_MEMORY_MIB} MiB a microVM "
            "guest needs"
        )
    vcpus = max(1, math.ceil(limits.cpu_quota))
    if vcpus > MAX_VCPUS:
        raise UnsupportedLimits(
            f"cpu_quota={limits.cpu_quota} needs {vcpus} vCPUs; Firecracker allows {MAX_VCPUS}"
        )
    return MachineConfiguration(
        vcpu_count=vcpus, mem_size_mib=limits.memory_mib, smt=False, track_dirty_pages=False
    )


def cgroup_settings(limits: Limits, version: int, vmm_overhead_mib: int) -> list[str]:
    """The jailer's ``--cgroup <file>=<value>`` settings: memory (guest + VMM overhead), CPU
    quota (the fractional share), and the VMM's thread count."""
    vcpus = machine_config_for(limits).vcpu_count
    memory = (limits.memory_mib + vmm_overhead_mib) * _MIB
    quota = max(1000, round(limits.cpu_quota * CPU_PERIOD_US))
    pids = vcpus + VMM_THREADS
    if version == 2:
        return [f"memory.max={memory}", f"cpu.max={quota} {CPU_PERIOD_US}", f"pids.max={pids}"]
    if version == 1:
        return [
            f"memory.limit_in_bytes={memory}",
            f"cpu.cfs_period_us={CPU_PERIOD_US}",
            f"cpu.cfs_quota_us={quota}",
            f"pids.max={pids}",
        ]
    raise ValueError(f"cgroup version must be 1 or 2, got {version}")


def jail_id_for(sandbox: str) -> str:
    """The jailer accepts ids of 1-64 letters, digits and hyphens; corral's ids may hold
    ``._:@``. Valid ids pass unchanged; others become a readable prefix plus a hash."""
    if _JAIL_ID.match(sandbox):
        return sandbox
    cleaned = re.sub(r"[^A-Za-z0-9-]", "-", sandbox)[:47].strip("-") or "sandbox"
    return f"{cleaned}-{hashlib.sha256(sandbox.encode()).hexdigest()[:16]}"


def guest_argv(command: Sequence[str]) -> list[str]:
    """``command`` for the guest: an ``argv[0]`` naming the host's Python (under
    :func:`python_paths`) becomes ``python3``, the guest image's interpreter."""
    argv = list(command)
    if not argv:
        raise SandboxError("a sandbox needs a command")
    first = Path(argv[0])
    if first.is_absolute() and first.name.startswith("python"):
        for prefix in python_paths():
            if first == prefix or prefix in first.parents:
                argv[0] = "python3"
                break
    return argv


def guest_environment(spec: SandboxSpec) -> dict[str, str]:
    """:func:`guest_env` with ``PATH`` and ``PYTHONPATH`` of the guest image, since the host's
    interpreter and source tree are not inside a VM (``spec.env`` still wins)."""
    env = guest_env(spec)
    for key, value in {"PATH": GUEST_PATH, "PYTHONPATH": GUEST_CORRAL_SRC}.items():
        if key not in spec.env:
            env[key] = value
    return env


def boot_config(spec: SandboxSpec) -> bytes:
    """The boot drive's bytes: magic, one JSON line, zero padding to 4 KiB blocks."""
    document = {
        "sandbox": spec.identity.sandbox,
        "argv": guest_argv(spec.command),
        "env": guest_environment(spec),
        "work": str(GUEST_WORK),
        "uid": GUEST_UID,
        "channel": {"cid": 2, "port": CHANNEL_PORT, "path": str(GUEST_CHANNEL)},
        "limits": {
            "pids": spec.limits.pids,
            "cpu_seconds": spec.limits.cpu_seconds,
            "open_files": spec.limits.open_files,
            "tmp_mib": spec.limits.tmp_mib,
        },
    }
    raw = BOOT_MAGIC + json.dumps(document, separators=(",", ":")).encode() + b"\n"
    if len(raw) > _MAX_BOOT_CONFIG:
        raise SandboxError(f"sandbox command and environment exceed {_MAX_BOOT_CONFIG} bytes")
    return raw + b"\0" * (-len(raw) % 4096)


# ----------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class FirecrackerConfig:
    """Where the binaries and guest images are, and how to jail. ``jailer=None`` is the
    development mode described in the module docstring."""

    firecracker: Path
    jailer: Path | None
    kernel: Path
    """Uncompressed ``vmlinux`` built by ``images/firecracker/build-guest.sh``."""
    rootfs: Path
    """Read-only ext4 root filesystem built by the same script."""
    uid: int
    gid: int
    chroot_base: Path = Path("/srv/jailer")
    snapshot_dir: Path | None = None
    cgroup_version: Literal[1, 2] | None = None
    """``None``: 2 if ``/sys/fs/cgroup/cgroup.controllers`` exists, else 1."""
    parent_cgroup: str | None = None
    """The jailer's ``--parent-cgroup``; ``None`` keeps its default (the exec file's name)."""
    vmm_overhead_mib: int = 64
    """Host memory allowed above the guest's for the VMM and the drives' page cache."""
    scratch_mib: int = 1024
    """Apparent size of the sparse scratch drive (only written blocks take space)."""
    log_level: Literal["Error", "Warning", "Info", "Debug"] | None = "Warning"
    entropy_device: bool = True
    socket_timeout_s: float = 5.0
    kvm_device: Path = Path("/dev/kvm")
    sys_module: Path = Path("/sys/module")
    proc_mounts: Path = Path("/proc/mounts")

    @property
    def exec_name(self) -> str:
        """The jailer's ``exec_file_name``: the last component of the canonical binary path."""
        return self.firecracker.resolve().name

    def resolved_cgroup_version(self) -> int:
        if self.cgroup_version is not None:
            return self.cgroup_version
        return 2 if Path("/sys/fs/cgroup/cgroup.controllers").exists() else 1


def jailer_argv(config: FirecrackerConfig, jail_id: str, limits: Limits) -> list[str]:
    """The jailer's command line (flags per Firecracker's ``docs/jailer.md``). No
    ``--new-pid-ns`` and no ``--daemonize``: the jailer then execs Firecracker in place, so the
    spawned process *is* the VMM, whose exit and output the backend observes directly."""
    if config.jailer is None:
        raise ValueError("jailer_argv needs a jailer (development mode runs firecracker directly)")
    version = config.resolved_cgroup_version()
    argv = [
        str(config.jailer),
        "--id",
        jail_id,
        "--exec-file",
        str(config.firecracker),
        "--uid",
        str(config.uid),
        "--gid",
        str(config.gid),
        "--chroot-base-dir",
        str(config.chroot_base),
        "--cgroup-version",
        str(version),
    ]
    for setting in cgroup_settings(limits, version, config.vmm_overhead_mib):
        argv += ["--cgroup", setting]
    if config.parent_cgroup is not None:
        argv += ["--parent-cgroup", config.parent_cgroup]
    return [*argv, "--", "--api-sock", API_SOCKET]


# ----------------------------------------------------------------------------------------------
# Snapshots.


@dataclass(frozen=True)
class FirecrackerSnapshot:
    """A Full snapshot on disk: VM state, guest memory, and the drives it was taken with."""

    name: str
    directory: Path
    vcpu_count: int
    mem_size_mib: int

    @property
    def state(self) -> Path:
        return self.directory / "vm.state"

    @property
    def memory(self) -> Path:
        return self.directory / "vm.mem"

    @property
    def scratch(self) -> Path:
        return self.directory / _SCRATCH

    @property
    def boot(self) -> Path:
        return self.directory / _BOOTCFG

    @classmethod
    def load(cls, directory: Path) -> FirecrackerSnapshot:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        return cls(
            name=str(meta["name"]),
            directory=directory,
            vcpu_count=int(meta["vcpu_count"]),
            mem_size_mib=int(meta["mem_size_mib"]),
        )

    def _write_meta(self, directory: Path) -> None:
        meta = {
            "name": self.name,
            "vcpu_count": self.vcpu_count,
            "mem_size_mib": self.mem_size_mib,
            "firecracker_api": "1.16.1",
        }
        (directory / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Files, jail, relay, output capture.


def _copy_sparse(src: Path, dst: Path) -> None:
    """Copy a (sparse) disk image keeping its holes, so a 1 GiB scratch drive with a few MiB
    written costs a few MiB: only the data extents (``SEEK_DATA``/``SEEK_HOLE``) are copied,
    with ``copy_file_range`` (positional, unbuffered; reflinks where the filesystem can)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd_in).st_size
            offset = 0
            while offset < size:
                try:
                    data = os.lseek(fd_in, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole remains
                        break
                    raise
                hole = os.lseek(fd_in, data, os.SEEK_HOLE)
                position = data
                while position < hole:
                    copied = _copy_range(fd_in, fd_out, hole - position, position)
                    if copied == 0:
                        break
                    position += copied
                offset = hole
            os.ftruncate(fd_out, size)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _copy_range(fd_in: int, fd_out: int, count: int, offset: int) -> int:
    """``copy_file_range`` at the same offset in both files; ``pread``/``pwrite`` where the
    filesystem pair does not support it."""
    try:
        return os.copy_file_range(fd_in, fd_out, count, offset, offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    data = os.pread(fd_in, min(count, 4 * _MIB), offset)
    written = 0
    while written < len(data):
        written += os.pwrite(fd_out, data[written:], offset + written)
    return len(data)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (the jailer's documented way to put images in a jail); copy across
    filesystems."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        _copy_sparse(src, dst)


class _Jail:
    """One sandbox's jail directory, and a short path to its ``run/`` for Unix sockets."""

    def __init__(self, config: FirecrackerConfig, sandbox: str) -> None:
        self.jail_id = jail_id_for(sandbox)
        self.base = config.chroot_base / config.exec_name / self.jail_id
        self.root = self.base / "root"
        self._owner = None if config.jailer is None else (config.uid, config.gid)
        if self.base.exists():
            raise SandboxError(
                f"jail {self.base} exists: sandbox {sandbox!r} is running or was not stopped"
            )
        (self.root / "run").mkdir(parents=True)
        (self.root / "snapshot").mkdir()
        self.own(self.root)
        self.own(self.root / "run")
        self.own(self.root / "snapshot")
        self._run_fd: int | None = os.open(
            self.root / "run", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        )

    def own(self, path: Path) -> None:
        """Give a file to the jail's uid/gid (jailed mode only), so Firecracker can use it."""
        if self._owner is not None:
            os.chown(path, *self._owner)

    def run_path(self, name: str) -> str:
        """``run/<name>`` as a path short enough for ``sun_path`` however deep the jail is."""
        if self._run_fd is None:
            raise SandboxError("jail already released")
        return f"/proc/self/fd/{self._run_fd}/{name}"

    def release(self) -> None:
        if self._run_fd is not None:
            os.close(self._run_fd)
            self._run_fd = None
        shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.base.parent.rmdir()  # the per-binary directory, if no other jail is in it


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class _ChannelRelay:
    """Listens where Firecracker delivers the guest's vsock connections to port 52 and
    relays each to ``spec.channel`` (the module docstring says why)."""

    def __init__(self, listen_path: str, target: Path, owner: tuple[int, int] | None) -> None:
        self._listen_path = listen_path
        self._target = target
        self._owner = owner
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=self._listen_path)
        os.chmod(self._listen_path, 0o600)
        if self._owner is not None:
            os.chown(self._listen_path, *self._owner)

    async def _accept(self, g_reader: asyncio.StreamReader, g_writer: asyncio.StreamWriter) -> None:
        self._writers.add(g_writer)
        self.connected.set()
        try:
            try:
                h_reader, h_writer = await asyncio.open_unix_connection(str(self._target))
            except OSError:
                return  # the host is not listening: the guest sees its connection close
            self._writers.add(h_writer)
            try:
                await asyncio.gather(_pump(g_reader, h_writer), _pump(h_reader, g_writer))
            finally:
                self._writers.discard(h_writer)
                h_writer.close()
        finally:
            self._writers.discard(g_writer)
            g_writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None


class _Capture:
    """The last bytes of one output stream, drained continuously (an undrained serial console
    would stall the guest); on stdout it also picks up the guest's ``corral-exit:`` line."""

    def __init__(self, limit: int = _OUTPUT_LIMIT) -> None:
        self._limit = limit
        self.data = bytearray()
        self._line = bytearray()
        self.exit_status: int | None = None

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            self.data += chunk
            if len(self.data) > self._limit:
                del self.data[: len(self.data) - self._limit]
            self._scan(chunk)

    def _scan(self, chunk: bytes) -> None:
        self._line += chunk
        *lines, rest = self._line.split(b"\n")
        for line in lines:
            match = _EXIT_LINE.fullmatch(line.strip())
            if match:
                self.exit_status = int(match.group(1))
        self._line = bytearray(rest[-4096:])

    def tail(self, size: int = 2000) -> str:
        return bytes(self.data[-size:]).decode(errors="replace").strip()


# ----------------------------------------------------------------------------------------------
# The sandbox.


class FirecrackerSandbox:
    """One microVM: its process, API client, channel relay and jail. :meth:`stop` releases
    all of them, whatever state a failed start left them in."""

    def __init__(
        self,
        identity: Identity,
        jail: _Jail,
        relay: _ChannelRelay,
        cgroup_dirs: list[Path],
    ) -> None:
        self._identity = identity
        self._jail = jail
        self._relay = relay
        self._cgroup_dirs = cgroup_dirs
        self._process: asyncio.subprocess.Process | None = None
        self._api: FirecrackerAPI | None = None
        self._stdout = _Capture()
        self._stderr = _Capture()
        self._drains: list[asyncio.Task[None]] = []
        self._released = False
        self._lock = asyncio.Lock()

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def backend(self) -> str:
        return "firecracker"

    @property
    def level(self) -> IsolationLevel:
        return IsolationLevel.VM

    @property
    def jail_root(self) -> Path:
        return self._jail.root

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def api(self) -> FirecrackerAPI:
        if self._api is None:
            raise SandboxError("the Firecracker API is not connected")
        return self._api

    @property
    def returncode(self) -> int | None:
        if self._process is None or self._process.returncode is None:
            return None
        if self._stdout.exit_status is not None:
            return self._stdout.exit_status
        return self._process.returncode

    def _attach(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._drains = [
            asyncio.create_task(self._stdout.drain(process.stdout)),
            asyncio.create_task(self._stderr.drain(process.stderr)),
        ]

    def _connect_api(self) -> FirecrackerAPI:
        self._api = FirecrackerAPI(self._jail.run_path("firecracker.socket"))
        return self._api

    def _alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def _settle_output(self) -> None:
        """Let the drains reach end of file (bounded; never cancels them, so a still-running
        guest's console keeps being drained)."""
        if self._drains:
            await asyncio.wait(self._drains, timeout=2.0)

    async def _died(self) -> str:
        """Firecracker's last words, for an error message."""
        await self._settle_output()
        words = self._stderr.tail() or self._stdout.tail()
        return f"; firecracker said: {words}" if words else ""

    async def wait_ready(self, timeout_s: float) -> None:
        """Until the guest has connected its channel (its kernel and init are up)."""
        try:
            await asyncio.wait_for(self._relay.connected.wait(), timeout_s)
        except TimeoutError:
            last_words = "" if self._alive() else await self._died()
            raise SandboxError(
                f"sandbox {self._identity.sandbox!r}: the guest did not connect its channel "
                f"within {timeout_s:g} s{last_words}"
            ) from None

    async def wait(self) -> int:
        if self._process is None:
            raise SandboxError("the sandbox was never started")
        await self._process.wait()
        await self._settle_output()
        code = self.returncode
        assert code is not None
        return code

    async def stop(self, grace_s: float = 2.0) -> int:
        async with self._lock:
            if self._alive():
                assert self._process is not None
                if grace_s > 0 and self._api is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._api.send_ctrl_alt_del(), min(grace_s, 1.0))
                try:
                    await asyncio.wait_for(self._process.wait(), max(grace_s, 0.0))
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        self._process.kill()
                    await self._process.wait()
            await self._release()
        if self._process is None:
            return -int(signal.SIGKILL)  # never spawned: a failed start, already cleaned up
        return await self.wait()

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._settle_output()
        await self._relay.close()
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._api.aclose()
        self._jail.release()
        for directory in self._cgroup_dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()

    async def output(self) -> tuple[bytes, bytes]:
        await self._settle_output()
        return bytes(self._stdout.data), bytes(self._stderr.data)


# ----------------------------------------------------------------------------------------------
# The backend.


class FirecrackerBackend:
    """Starts :class:`FirecrackerSandbox` es; see the module docstring for the whole path."""

    def __init__(self, config: FirecrackerConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return "firecracker"

    @property
    def level(self) -> IsolationLevel:
        return IsolationLevel.VM

    # -- availability -------------------------------------------------------------------------

    def available(self) -> Availability:
        problems = [*self._kvm_problems(), *self._file_problems()]
        if problems:
            return Availability(False, "; ".join(problems))
        mode = "jailed" if self.config.jailer else "DEVELOPMENT mode, no jailer"
        return Availability(True, f"KVM usable; firecracker at {self.config.firecracker} ({mode})")

    def _kvm_problems(self) -> list[str]:
        device = self.config.kvm_device
        if not device.exists():
            return [f"no {device}: KVM is not loaded or not exposed to this machine"]
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except PermissionError:
            return [f"{device} is not read-writable by uid {os.geteuid()} (add it to group kvm)"]
        except OSError as exc:
            return [f"{device} cannot be opened: {exc.strerror}"]
        try:
            try:
                version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
            except OSError as exc:
                return [f"{device} is not a KVM device (KVM_GET_API_VERSION: {exc.strerror})"]
            if version != _KVM_API_VERSION:
                return [f"{device} speaks KVM API {version}; Firecracker needs 12"]
            try:
                vm = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
            except OSError as exc:
                return [
                    f"{device} answers KVM_GET_API_VERSION but KVM_CREATE_VM fails "
                    f"({exc.strerror}): hardware virtualisation is unavailable here"
                ]
            os.close(vm)
        finally:
            os.close(fd)
        modules = self.config.sys_module
        if (modules / "kvm_pvm").exists() and not any(
            (modules / name).exists() for name in ("kvm_intel", "kvm_amd")
        ):
            return [
                f"{device} is PVM-based KVM (module kvm_pvm, no kvm_intel/kvm_amd): it creates "
                "VMs, but stock Firecracker does not run on it"
            ]
        return []

    def _file_problems(self) -> list[str]:
        config = self.config
        problems: list[str] = []
        if not _executable(config.firecracker):
            problems.append(f"no firecracker binary at {config.firecracker}")
        elif config.jailer is not None and "firecracker" not in config.exec_name:
            problems.append(
                f"the jailer needs an exec file named *firecracker*: {config.exec_name}"
            )
        if config.jailer is not None:
            if not _executable(config.jailer):
                problems.append(f"no jailer binary at {config.jailer}")
            if os.geteuid() != 0:
                problems.append("the jailer must be started as root")
        for what, path in (("guest kernel", config.kernel), ("guest rootfs", config.rootfs)):
            if not path.is_file():
                problems.append(
                    f"no {what} at {path} (build it with images/firecracker/build-guest.sh)"
                )
        if _mkfs() is None:
            problems.append("no mkfs.ext4 (install e2fsprogs) to make scratch drives")
        return problems

    # -- start --------------------------------------------------------------------------------

    async def start(self, spec: SandboxSpec) -> FirecrackerSandbox:
        """Boot a fresh microVM for ``spec``; raises :class:`SandboxUnavailable` naming a
        missing binary or image, :class:`UnsupportedLimits`, or the API error that stopped it."""
        machine = machine_config_for(spec.limits)
        self._require_files(kernel=True)
        boot = boot_config(spec)
        config = self.config

        async def populate(jail: _Jail) -> None:
            _link_or_copy(config.kernel, jail.root / _KERNEL)
            _link_or_copy(config.rootfs, jail.root / _ROOTFS)
            await _make_scratch(jail.root / _SCRATCH, spec.work_dir, config.scratch_mib)
            jail.own(jail.root / _SCRATCH)
            (jail.root / _BOOTCFG).write_bytes(boot)

        async def configure(api: FirecrackerAPI) -> None:
            await api.put_machine_config(machine)
            await api.put_boot_source(BootSource(kernel_image_path=_KERNEL, boot_args=BOOT_ARGS))
            await api.put_drive(
                Drive(
                    drive_id="rootfs",
                    path_on_host=_ROOTFS,
                    is_root_device=True,
                    is_read_only=True,
                )
            )
            await api.put_drive(
                Drive(
                    drive_id="scratch",
                    path_on_host=_SCRATCH,
                    is_root_device=False,
                    is_read_only=False,
                )
            )
            await api.put_drive(
                Drive(
                    drive_id="config",
                    path_on_host=_BOOTCFG,
                    is_root_device=False,
                    is_read_only=True,
                )
            )
            await api.put_vsock(Vsock(guest_cid=GUEST_CID, uds_path=VSOCK_UDS))
            if config.entropy_device:
                await api.put_entropy(EntropyDevice())
            await api.instance_start()

        return await self._launch(spec, populate, configure)

    async def _launch(
        self,
        spec: SandboxSpec,
        populate: Callable[[_Jail], Awaitable[None]],
        configure: Callable[[FirecrackerAPI], Awaitable[None]],
    ) -> FirecrackerSandbox:
        config = self.config
        jail = _Jail(config, spec.identity.sandbox)
        owner = None if config.jailer is None else (config.uid, config.gid)
        relay = _ChannelRelay(jail.run_path(f"v.sock_{CHANNEL_PORT}"), spec.channel, owner)
        sandbox = FirecrackerSandbox(
            spec.identity, jail, relay, self._cgroup_dirs(jail.jail_id) if config.jailer else []
        )
        try:
            await populate(jail)
            for name in (_LOG, _METRICS):
                (jail.root / name).touch()
                jail.own(jail.root / name)
            await relay.start()
            if config.jailer is None:
                argv = [str(config.firecracker), "--id", jail.jail_id]
                argv += ["--api-sock", _API_SOCKET_REL]
            else:
                argv = jailer_argv(config, jail.jail_id, spec.limits)
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=jail.root,
                env={"PATH": "/usr/bin:/bin"},
                start_new_session=True,
            )
            sandbox._attach(process)
            try:
                await wait_for_socket(
                    jail.run_path("firecracker.socket"),
                    timeout_s=config.socket_timeout_s,
                    alive=sandbox._alive,
                )
            except SandboxError as exc:
                raise SandboxError(f"{exc}{await sandbox._died()}") from None
            api = sandbox._connect_api()
            if config.log_level is not None:
                await api.put_logger(Logger(log_path=_LOG, level=config.log_level))
                await api.put_metrics(Metrics(metrics_path=_METRICS))
            await configure(api)
        except BaseException:
            await sandbox.stop(grace_s=0)
            raise
        return sandbox

    def _require_files(self, *, kernel: bool) -> None:
        config = self.config
        missing = []
        binaries = [config.firecracker] + ([config.jailer] if config.jailer else [])
        missing += [f"binary {path}" for path in binaries if not _executable(path)]
        images = ([config.kernel] if kernel else []) + [config.rootfs]
        missing += [f"image {path}" for path in images if not path.is_file()]
        if _mkfs() is None:
            missing.append("mkfs.ext4")
        if missing:
            raise SandboxUnavailable(f"firecracker backend: missing {', '.join(missing)}")

    def _cgroup_dirs(self, jail_id: str) -> list[Path]:
        """Where the jailer makes this jail's cgroups (removed at stop: the jailer does not)."""
        version = self.config.resolved_cgroup_version()
        parent = self.config.parent_cgroup or self.config.exec_name
        try:
            mounts = self.config.proc_mounts.read_text().splitlines()
        except OSError:
            return []
        dirs: list[Path] = []
        for line in mounts:
            fields = line.split()
            if len(fields) < 4:
                continue
            mount, fstype, options = fields[1], fields[2], fields[3].split(",")
            if (version == 2 and fstype == "cgroup2") or (
                version == 1
                and fstype == "cgroup"
                and any(c in options for c in ("memory", "cpu", "pids"))
            ):
                dirs.append(Path(mount) / parent / jail_id)
        return list(dict.fromkeys(dirs))

    # -- snapshots ----------------------------------------------------------------------------

    async def warm_snapshot(
        self, spec: SandboxSpec, name: str, *, ready_timeout_s: float = 30.0
    ) -> FirecrackerSnapshot:
        """Boot ``spec``, wait for its guest to connect the channel, pause, and save a Full
        snapshot as ``snapshot_dir/<name>`` (replacing one of that name). The sandbox is
        stopped afterwards; clone it with :meth:`start_from_snapshot`."""
        check_id(name, "snapshot name")
        if self.config.snapshot_dir is None:
            raise SandboxError("the firecracker backend has no snapshot_dir configured")
        machine = machine_config_for(spec.limits)
        sandbox = await self.start(spec)
        try:
            await sandbox.wait_ready(ready_timeout_s)
            await sandbox.api.pause()
            await sandbox.api.create_snapshot(
                SnapshotCreateParams(
                    snapshot_path=_SNAPSHOT_STATE,
                    mem_file_path=_SNAPSHOT_MEM,
                    snapshot_type="Full",
                )
            )
            snapshot = FirecrackerSnapshot(
                name=name,
                directory=self.config.snapshot_dir / name,
                vcpu_count=machine.vcpu_count,
                mem_size_mib=machine.mem_size_mib,
            )
            partial = self.config.snapshot_dir / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            root = sandbox.jail_root
            shutil.move(root / _SNAPSHOT_STATE, partial / "vm.state")
            shutil.move(root / _SNAPSHOT_MEM, partial / "vm.mem")
            _copy_sparse(root / _SCRATCH, partial / _SCRATCH)  # paused: consistent with memory
            shutil.copyfile(root / _BOOTCFG, partial / _BOOTCFG)
            snapshot._write_meta(partial)
            self._own_snapshot(partial)
            shutil.rmtree(snapshot.directory, ignore_errors=True)
            os.replace(partial, snapshot.directory)
        finally:
            await sandbox.stop(grace_s=0)
        return snapshot

    def _own_snapshot(self, directory: Path) -> None:
        """Snapshot files are hard-linked into each clone's jail: give them to the jail's
        uid/gid (jailed mode), readable by it alone."""
        for path in directory.iterdir():
            os.chmod(path, 0o600)
            if self.config.jailer is not None:
                os.chown(path, self.config.uid, self.config.gid)

    async def start_from_snapshot(
        self, snapshot: FirecrackerSnapshot, spec: SandboxSpec
    ) -> FirecrackerSandbox:
        """A new sandbox resumed from ``snapshot``: fresh jail and process, ``PUT
        /snapshot/load`` first (after logger/metrics), this sandbox's own vsock socket and
        channel. The guest's command is the snapshot's; hand it work over the channel."""
        machine = machine_config_for(spec.limits)
        if (machine.vcpu_count, machine.mem_size_mib) != (
            snapshot.vcpu_count,
            snapshot.mem_size_mib,
        ):
            raise UnsupportedLimits(
                f"snapshot {snapshot.name!r} has {snapshot.vcpu_count} vCPU and "
                f"{snapshot.mem_size_mib} MiB; the spec asks {machine.vcpu_count} vCPU and "
                f"{machine.mem_size_mib} MiB"
            )
        self._require_files(kernel=False)
        for path in (snapshot.state, snapshot.memory, snapshot.scratch, snapshot.boot):
            if not path.is_file():
                raise SandboxUnavailable(f"snapshot {snapshot.name!r} lacks {path}")
        config = self.config

        async def populate(jail: _Jail) -> None:
            _link_or_copy(config.rootfs, jail.root / _ROOTFS)
            _copy_sparse(snapshot.scratch, jail.root / _SCRATCH)  # private and writable
            jail.own(jail.root / _SCRATCH)
            _link_or_copy(snapshot.boot, jail.root / _BOOTCFG)
            _link_or_copy(snapshot.state, jail.root / _SNAPSHOT_STATE)
            _link_or_copy(snapshot.memory, jail.root / _SNAPSHOT_MEM)  # mapped private: immutable

        async def configure(api: FirecrackerAPI) -> None:
            await api.load_snapshot(
                SnapshotLoadParams(
                    snapshot_path=_SNAPSHOT_STATE,
                    mem_backend=MemoryBackend(backend_type="File", backend_path=_SNAPSHOT_MEM),
                    resume_vm=True,
                    vsock_override=VsockOverride(uds_path=VSOCK_UDS),
                )
            )

        return await self._launch(spec, populate, configure)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _mkfs() -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("mkfs.ext4", path=search)


async def _make_scratch(image: Path, work_dir: Path, size_mib: int) -> None:
    """A sparse ext4 image holding ``work_dir`` (see the module docstring for the choice)."""
    mkfs = _mkfs()
    if mkfs is None:
        raise SandboxUnavailable("no mkfs.ext4 (install e2fsprogs) to make the scratch drive")
    if not work_dir.is_dir():
        raise SandboxError(f"work directory {work_dir} does not exist")
    with open(image, "wb") as f:
        f.truncate(size_mib * _MIB)
    process = await asyncio.create_subprocess_exec(
        mkfs,
        "-q",
        "-F",
        "-L",
        "corral-work",
        "-O",
        "^has_journal",
        "-E",
        f"lazy_itable_init=1,root_owner={GUEST_UID}:{GUEST_UID}",
        "-d",
        str(work_dir),
        str(image),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        text = (err or out).decode(errors="replace").strip()
        raise SandboxError(f"mkfs.ext4 -d {work_dir} failed ({process.returncode}): {text}")
