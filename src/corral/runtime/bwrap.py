"""The bubblewrap backend (``namespaces``): the host kernel, behind every namespace, a read-only
root, no capabilities, a seccomp deny-list and per-sandbox resource bounds.

bubblewrap builds the sandbox from nothing: an empty tmpfs root into which only ``/usr`` (and
the usrmerge symlinks ``/bin``, ``/lib``, ...), a few synthesised ``/etc`` files, the host's
Python (:func:`~corral.runtime.sandbox.python_paths`), the work directory and the channel
socket are mounted, then the root is remounted read-only. Every namespace is new (user, mount,
pid, network, ipc, uts, cgroup), so the guest sees no host process and no interface but ``lo``;
nested user namespaces are disabled twice (``--disable-userns`` and the seccomp filter).

Limits: cgroup v1 where it is mounted and writable (``memory`` with ``memsw``, ``pids``, ``cpu``
quota), the process joining its cgroups before ``exec`` so nothing escapes them; and always
rlimits (``RLIMIT_DATA``, ``RLIMIT_CPU``, ``RLIMIT_NOFILE``, ``RLIMIT_CORE``).
:attr:`BwrapSandbox.enforcement` says which mechanism bounds what. There is no rlimit
fallback for the number of processes: see :func:`_rlimits`.

Identity: the guest is root in its user namespace, mapped to the uid corral runs as (host root
on a server), with no capabilities. It can therefore do to the files it sees what that uid
could without privileges; everything but ``/work`` is read-only, and the seccomp filter stops
it leaving setuid or setgid files there. It can read the host paths of its own mounts (in
``/proc/1/cmdline`` and ``/proc/self/mountinfo``), never what lies beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from corral.runtime import seccomp
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
    "GRACE_KILL_S",
    "GUEST_ETC",
    "GUEST_TMP",
    "HOST_ETC",
    "MIB",
    "OUTPUT_CAP",
    "ROOT_DIRS",
    "BoundedOutput",
    "BwrapBackend",
    "BwrapSandbox",
    "CgroupV1",
    "exit_status",
    "guest_python_paths",
    "remove_mountpoints",
    "root_entries",
    "work_mountpoints",
]

_log = logging.getLogger(__name__)

MIB: Final = 1 << 20
OUTPUT_CAP: Final = 1 << 20
"""Bytes of stdout and of stderr kept per sandbox; the rest is read and dropped."""

ROOT_DIRS: Final = ("/usr", "/bin", "/lib", "/lib64", "/sbin")
"""Host directories the guest sees read-only (on usrmerge hosts all but ``/usr`` are symlinks)."""

HOST_ETC: Final = ("/etc/ld.so.cache", "/etc/localtime")
"""Host ``/etc`` files the guest gets read-only, when present: the dynamic loader's cache and
the time zone. Nothing else of the host's ``/etc`` (users, hosts, configuration) goes in."""

GUEST_ETC: Final[Mapping[str, str]] = {
    # Synthesised so that getpwuid(), getpass.getuser() and "localhost" work, without telling
    # the guest the host's users, groups or hosts.
    "/etc/passwd": (
        "root:x:0:0:corral sandbox:/work:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "/etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
}

GUEST_TMP: Final = "/tmp"  # noqa: S108 (the guest's own tmpfs, not a host path)
"""The guest's private tmpfs, sized by ``Limits.tmp_mib``."""

GRACE_KILL_S: Final = 5.0
"""How long to wait for a killed sandbox to be reaped before giving up on it."""


# ---------------------------------------------------------------------------------------------
# Shared with the gVisor backend: the guest's root, output, exit status, mountpoints.


def root_entries() -> list[tuple[str, str | None]]:
    """``(path, symlink target or None)`` for each :data:`ROOT_DIRS` entry present here: a
    symlink is recreated as one (Debian's usrmerge), a directory is bind-mounted read-only."""
    entries: list[tuple[str, str | None]] = []
    for path in ROOT_DIRS:
        if os.path.islink(path):
            entries.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            entries.append((path, None))
    return entries


def guest_python_paths() -> list[Path]:
    """:func:`python_paths`, parents before children (the mount order), refusing any that would
    cover the work directory (mounting it would hide ``/work``)."""
    paths = sorted(python_paths(), key=lambda p: (len(p.parts), str(p)))
    for path in paths:
        if path == GUEST_WORK or GUEST_WORK.is_relative_to(path):
            raise SandboxError(
                f"the host's Python lives at {path}, which would cover the guest's {GUEST_WORK}"
            )
    return paths


def work_mountpoints(work_dir: Path) -> list[Path]:
    """Directories that mounting :func:`python_paths` inside ``/work`` will create in the host
    work directory, deepest first, so they can be removed afterwards.

    When the host's Python or corral's source is itself under ``/work`` (a checkout at
    ``/work/...``, as on this project's machines), its guest mountpoint lies inside the bound
    work directory, and the runtime has to create the empty directories there. Only the ones
    that did not exist before are listed (and later removed, if still empty)."""
    made: list[Path] = []
    for path in python_paths():
        if not path.is_relative_to(GUEST_WORK):
            continue
        host = work_dir
        for part in path.relative_to(GUEST_WORK).parts:
            host = host / part
            if not host.exists() and host not in made:
                made.append(host)
    return sorted(made, key=lambda p: len(p.parts), reverse=True)


def remove_mountpoints(made: Sequence[Path]) -> None:
    for path in made:
        with contextlib.suppress(OSError):  # not empty: the guest wrote there; keep it
            path.rmdir()


def exit_status(code: int) -> int:
    """A sandbox's exit status in :class:`~corral.runtime.sandbox.Sandbox` terms.

    bwrap and runsc both report a guest killed by signal N as exit code 128+N; that is mapped
    to -N (as :mod:`subprocess` does), so "killed by the OOM killer" reads as -9 whichever
    runtime ran it. A guest that itself exits with 129-192 is indistinguishable; corral's
    guests do not."""
    if 128 < code <= 128 + signal.SIGRTMAX:
        return -(code - 128)
    return code


class BoundedOutput:
    """Drains a pipe to its end, keeping the first ``cap`` bytes: a chatty guest can neither
    fill the host's memory nor block on a full pipe."""

    def __init__(self, stream: asyncio.StreamReader | None, cap: int = OUTPUT_CAP) -> None:
        self._data = bytearray()
        self.truncated = False
        self._cap = cap
        self._task: asyncio.Task[None] | None = (
            asyncio.create_task(self._drain(stream)) if stream is not None else None
        )

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            room = self._cap - len(self._data)
            if room > 0:
                self._data += chunk[:room]
            if len(chunk) > room:
                self.truncated = True

    async def result(self, timeout_s: float = GRACE_KILL_S) -> bytes:
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:  # a descendant outside the sandbox holds the pipe: give up
                self._task.cancel()
        return bytes(self._data)


def _memfd(name: str, data: bytes) -> int:
    """A sealed-off anonymous file holding ``data``, offset 0, for bwrap to read from."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ---------------------------------------------------------------------------------------------
# cgroup v1, written by hand: the kernel's files are the whole interface.


class CgroupV1:
    """One sandbox's cgroups: ``<root>/{memory,pids,cpu}/corral/<name>``.

    Each controller is used only if its hierarchy is mounted and writable; :meth:`create`
    reports per controller what it set or why not, and the sandbox falls back to rlimits for
    the rest. The sandbox's first process joins by writing ``0`` ("the writer") to each
    ``cgroup.procs`` from a descriptor opened here, between fork and exec."""

    CONTROLLERS: Final = ("memory", "pids", "cpu")
    CFS_PERIOD_US: Final = 100_000
    BWRAP_PROCESSES: Final = 2
    """bwrap's own processes in the cgroup: the monitor outside and pid 1 inside."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.dirs: dict[str, Path] = {}

    @staticmethod
    def probe(root: Path) -> dict[str, str | None]:
        """Per controller: ``None`` if usable, else why not."""
        found: dict[str, str | None] = {}
        for controller in CgroupV1.CONTROLLERS:
            base = root / controller
            if not (base / "cgroup.procs").exists():
                found[controller] = f"no cgroup v1 {controller} hierarchy at {base}"
            elif not os.access(base, os.W_OK):
                found[controller] = f"{base} is not writable (cgroups need root)"
            else:
                found[controller] = None
        return found

    def create(self, limits: Limits) -> dict[str, str]:
        """Make the cgroups and set their limits; what each controller now bounds, or why it
        does not (the caller then relies on rlimits alone)."""
        settings: dict[str, list[tuple[str, int]]] = {
            "memory": [
                ("memory.limit_in_bytes", limits.memory_mib * MIB),
                # memsw bounds memory plus swap: without it the limit spills into swap.
                ("memory.memsw.limit_in_bytes", limits.memory_mib * MIB),
            ],
            "pids": [("pids.max", limits.pids + self.BWRAP_PROCESSES)],
            "cpu": [
                ("cpu.cfs_period_us", self.CFS_PERIOD_US),
                ("cpu.cfs_quota_us", max(1000, round(limits.cpu_quota * self.CFS_PERIOD_US))),
            ],
        }
        report: dict[str, str] = {}
        for controller, reason in self.probe(self.root).items():
            if reason is not None:
                report[controller] = f"unavailable: {reason}"
                continue
            path = self.root / controller / "corral" / self.name
            try:
                path.mkdir(parents=True)
                written = []
                for file, value in settings[controller]:
                    if file == "memory.memsw.limit_in_bytes" and not (path / file).exists():
                        continue  # swap accounting off: nothing to bound
                    (path / file).write_text(str(value))
                    written.append(f"{file}={value}")
            except OSError as exc:
                with contextlib.suppress(OSError):
                    path.rmdir()
                report[controller] = f"unavailable: {path}: {exc.strerror}"
                continue
            self.dirs[controller] = path
            report[controller] = f"cgroup v1 {', '.join(written)}"
        return report

    def open_procs(self) -> list[int]:
        """Descriptors on each ``cgroup.procs``, for the child to join with before exec."""
        return [
            os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            for path in self.dirs.values()
        ]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            with contextlib.suppress(OSError):
                found.update(int(line) for line in (path / "cgroup.procs").read_text().split())
        return found

    def kill(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def remove(self, timeout_s: float = GRACE_KILL_S) -> bool:
        """Kill what is left and remove the cgroups; ``False`` if one would not go."""
        deadline = time.monotonic() + timeout_s
        while self.dirs:
            for controller, path in list(self.dirs.items()):
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    continue  # dying processes still in it: retry
                del self.dirs[controller]
            if not self.dirs:
                return True
            if time.monotonic() > deadline:
                return False
            self.kill()
            await asyncio.sleep(0.01)
        return True


# ---------------------------------------------------------------------------------------------
# The backend.


def _rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """The rlimits every sandbox gets, cgroups or not: ``(resource, soft, hard)``.

    - ``RLIMIT_DATA``, not ``RLIMIT_AS``: it counts the heap and private writable mappings,
      which is what a memory hog grows, whereas ``RLIMIT_AS`` also counts reserved address
      space (thread stacks, glibc's 64 MiB per-thread arenas) and breaks ordinary threaded
      Python long before it uses that memory. Per process; the memory cgroup bounds the sum.
    - ``RLIMIT_CPU``: SIGXCPU at the limit, SIGKILL a second later. Per process.
    - ``RLIMIT_NOFILE``, and ``RLIMIT_CORE`` = 0 (a core dump would copy guest memory to the
      host's disk).
    - No ``RLIMIT_NPROC``: it counts every process of the host uid, not of one sandbox; the
      guest runs as the host's root (bwrap maps the caller's uid), which the kernel exempts
      from it anyway. Only the pids cgroup bounds a fork bomb.
    """
    data = limits.memory_mib * MIB
    return [
        (resource.RLIMIT_DATA, data, data),
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]


def _preexec(
    cgroup_fds: Sequence[int], rlimits: Sequence[tuple[int, int, int]]
) -> Callable[[], None]:
    """Runs in the child between fork and exec: join the cgroups, then set the rlimits, so that
    bwrap and everything it starts is bounded from its first instruction. Only syscalls on
    descriptors opened beforehand, nothing that takes a lock another thread could hold."""

    def run() -> None:
        for fd in cgroup_fds:
            os.write(fd, b"0")
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))

    return run


class BwrapSandbox:
    """One running bubblewrap sandbox."""

    def __init__(
        self,
        spec: SandboxSpec,
        process: asyncio.subprocess.Process,
        argv: Sequence[str],
        enforcement: Mapping[str, str],
        cgroups: CgroupV1 | None,
        made_dirs: Sequence[Path],
    ) -> None:
        self.spec = spec
        self.process = process
        self.argv = list(argv)
        self.enforcement = dict(enforcement)
        """Which mechanism bounds each limit (``memory``, ``pids``, ``cpu``, ...)."""
        self.cgroups = cgroups
        self.guest_init_pid: int | None = None
        """Host pid of the sandbox's pid 1 (bwrap's reaper), from ``--info-fd``."""
        self._made_dirs = list(made_dirs)
        self._stdout = BoundedOutput(process.stdout)
        self._stderr = BoundedOutput(process.stderr)
        self._lock = asyncio.Lock()
        self._release_task: asyncio.Task[None] | None = None

    @property
    def identity(self) -> Identity:
        return self.spec.identity

    @property
    def backend(self) -> str:
        return BwrapBackend.name

    @property
    def level(self) -> IsolationLevel:
        return BwrapBackend.level

    @property
    def pid(self) -> int:
        """Host pid of the bwrap process (leader of its own process group)."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        code = self.process.returncode
        return None if code is None else exit_status(code)

    async def wait(self) -> int:
        await self.process.wait()
        await self._release()
        code = self.returncode
        assert code is not None
        return code

    async def stop(self, grace_s: float = 2.0) -> int:
        """SIGTERM the guest's command (not bwrap: bwrap forwards no signal and would take the
        guest down with SIGKILL at once), SIGKILL the whole sandbox after ``grace_s``, reap it,
        remove its cgroups. Idempotent."""
        async with self._lock:
            try:
                if self.process.returncode is None and grace_s > 0:
                    self._signal_guest(signal.SIGTERM)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.process.wait(), grace_s)
                if self.process.returncode is None:
                    await self._kill()
            finally:  # whatever went wrong above, a sandbox that has ended is released
                if self.process.returncode is not None:
                    await self._release()
        code = self.returncode
        assert code is not None
        return code

    async def output(self) -> tuple[bytes, bytes]:
        await self.process.wait()
        return await self._stdout.result(), await self._stderr.result()

    def _signal_guest(self, sig: int) -> None:
        """Signal the children of the sandbox's pid 1 (the guest's command), found by parent pid
        in ``/proc``; before ``--info-fd`` has named pid 1, signal bwrap's process group."""
        init = self.guest_init_pid
        if init is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            return
        for pid in _children(init):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def _kill(self) -> None:
        """SIGKILL the sandbox's pid 1: the kernel then kills its whole pid namespace, and
        bwrap's monitor reaps it and exits. Killing the monitor first would orphan pid 1 to
        the host's init, which may leave it a zombie for a long while (this machine's does).
        Only if the monitor does not go: its process group, and whatever the cgroup holds."""
        init = self.guest_init_pid
        if init is not None and _parent(init) == self.process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), GRACE_KILL_S / 2)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            if self.cgroups is not None:
                self.cgroups.kill()
            await asyncio.wait_for(self.process.wait(), GRACE_KILL_S)

    async def _release(self) -> None:
        """Release once, whoever asks first; a caller cancelled meanwhile (the host cancels
        waits) does not cut the release short."""
        if self._release_task is None:
            self._release_task = asyncio.ensure_future(self._release_now())
        await asyncio.shield(self._release_task)

    async def _release_now(self) -> None:
        if self.cgroups is not None and not await self.cgroups.remove():
            _log.warning(
                "sandbox %s: cgroups %s would not go", self.identity.sandbox, self.cgroups.dirs
            )
        remove_mountpoints(self._made_dirs)


def _parent(pid: int) -> int | None:
    """The parent pid of ``pid``, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[-1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (this kernel has no ``/proc/PID/task/TID/children``)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and ')', so split at the last one.
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


async def _read_fd(fd: int) -> bytes:
    """All of a pipe's read end, without blocking the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.read()
    finally:
        transport.close()


class BwrapBackend:
    """Sandboxes made by bubblewrap (``bwrap``), isolation level ``namespaces``."""

    name: Final = "bwrap"
    level: Final = IsolationLevel.NAMESPACES

    def __init__(
        self, bwrap: str = "bwrap", cgroup_root: Path | None = Path("/sys/fs/cgroup")
    ) -> None:
        """``cgroup_root=None`` turns cgroups off (rlimits only), e.g. to test the fallback."""
        self._bwrap = bwrap
        self.cgroup_root = cgroup_root
        self._availability: Availability | None = None

    def limit_mechanisms(self) -> dict[str, str]:
        """What would bound each limit on this host: a cgroup controller or an rlimit."""
        probe = CgroupV1.probe(self.cgroup_root) if self.cgroup_root else {}
        cgroup = {c: probe.get(c, "cgroups turned off") is None for c in CgroupV1.CONTROLLERS}
        return {
            "memory": "cgroup v1 memory + RLIMIT_DATA" if cgroup["memory"] else "RLIMIT_DATA",
            "pids": "cgroup v1 pids" if cgroup["pids"] else "none (no pids cgroup; see _rlimits)",
            "cpu": "cgroup v1 cpu quota + RLIMIT_CPU" if cgroup["cpu"] else "RLIMIT_CPU",
            "open_files": "RLIMIT_NOFILE",
            "tmp": "tmpfs size",
        }

    def available(self) -> Availability:
        """Whether bwrap is installed and a trivial sandbox (the guest Python, seccomp and all)
        runs here; the answer is cached."""
        if self._availability is None:
            self._availability = self._check()
        return self._availability

    def _check(self) -> Availability:
        exe = shutil.which(self._bwrap)
        if exe is None:
            return Availability(
                False, f"{self._bwrap} not found on PATH (apt-get install bubblewrap)"
            )
        with tempfile.TemporaryDirectory(prefix="corral-bwrap-check-") as tmp:
            work = Path(tmp) / "work"
            work.mkdir()
            with socket.socket(socket.AF_UNIX) as listener:
                listener.bind(str(Path(tmp) / "channel.sock"))
                listener.listen()
                spec = SandboxSpec(
                    identity=Identity("check", "check", "check"),
                    command=["python", "-c", "pass"],
                    work_dir=work,
                    channel=Path(tmp) / "channel.sock",
                )
                fds = self._open_fds()
                try:
                    made = work_mountpoints(work)
                    try:
                        argv = self.argv(spec, fds)
                    except SandboxError as exc:
                        return Availability(False, str(exc))
                    try:
                        done = subprocess.run(  # noqa: S603 (argv built here)
                            [exe, *argv],
                            env=guest_env(spec),
                            pass_fds=list(fds.values()),
                            capture_output=True,
                            timeout=30,
                            check=False,
                        )
                    except subprocess.TimeoutExpired:
                        return Availability(False, "a trivial bwrap sandbox did not finish in 30 s")
                    finally:
                        remove_mountpoints(made)
                finally:
                    for fd in fds.values():
                        os.close(fd)
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-500:]
            return Availability(False, f"a trivial bwrap sandbox failed ({done.returncode}): {err}")
        return Availability(True, f"{exe} runs sandboxes; limits: {self.limit_mechanisms()}")

    @staticmethod
    def _open_fds() -> dict[str, int]:
        """The memfds bwrap reads: the seccomp program and the synthesised ``/etc`` files."""
        fds = {"seccomp": _memfd("corral-seccomp", seccomp.filter_bpf())}
        for path, text in GUEST_ETC.items():
            fds[path] = _memfd("corral" + path.replace("/", "-"), text.encode())
        return fds

    def argv(
        self, spec: SandboxSpec, fds: Mapping[str, int], info_fd: int | None = None
    ) -> list[str]:
        """bwrap's arguments (without the program name) for ``spec``; ``fds`` from
        :meth:`_open_fds`, numbered as the child will see them (``pass_fds`` keeps numbers)."""
        args = [
            "--unshare-all",  # user, ipc, pid, net, uts, cgroup (and mount, always)
            "--unshare-user",  # --unshare-all only *tries* the user namespace: insist
            "--unshare-cgroup",
            "--disable-userns",  # no nested user namespace (also refused by seccomp)
            "--die-with-parent",
            "--new-session",  # no controlling terminal: no TIOCSTI injection
            "--cap-drop",
            "ALL",
            "--hostname",
            spec.identity.sandbox[:64],  # HOST_NAME_MAX
            "--clearenv",
        ]
        for key, value in guest_env(spec).items():
            args += ["--setenv", key, value]
        for path, target in root_entries():
            args += ["--symlink", target, path] if target is not None else ["--ro-bind", path, path]
        args += ["--dir", "/etc"]
        for path in GUEST_ETC:
            args += ["--ro-bind-data", str(fds[path]), path]
        for path in HOST_ETC:
            args += ["--ro-bind-try", path, path]
        args += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(spec.limits.tmp_mib * MIB), "--tmpfs", GUEST_TMP,
            "--bind", str(spec.work_dir), str(GUEST_WORK),
        ]  # fmt: skip
        for python in guest_python_paths():  # after /tmp and /work: they may lie inside them
            args += ["--ro-bind", str(python), str(python)]
        # The socket file itself, not its directory: a directory shared by several sandboxes'
        # sockets would hand this guest the others' channels.
        args += ["--bind", str(spec.channel), str(GUEST_CHANNEL)]
        args += ["--remount-ro", "/", "--chdir", str(GUEST_WORK)]
        args += ["--seccomp", str(fds["seccomp"])]
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        return [*args, "--", *spec.command]

    async def start(self, spec: SandboxSpec) -> BwrapSandbox:
        availability = self.available()
        if not availability.ok:
            raise SandboxUnavailable(f"bwrap backend: {availability.reason}")
        exe = shutil.which(self._bwrap)
        if exe is None:
            raise SandboxUnavailable(f"bwrap backend: {self._bwrap} not found on PATH")
        if not spec.work_dir.is_dir():
            raise SandboxError(f"work directory {spec.work_dir} does not exist")
        if not spec.channel.is_socket():
            raise SandboxError(f"channel {spec.channel} is not a socket")

        enforcement = {
            "memory": "RLIMIT_DATA",
            "pids": "none: no pids cgroup (RLIMIT_NPROC cannot bound one sandbox)",
            "cpu": "RLIMIT_CPU",
            "open_files": "RLIMIT_NOFILE",
            "tmp": f"tmpfs size={spec.limits.tmp_mib} MiB",
        }
        cgroups: CgroupV1 | None = None
        if self.cgroup_root is not None:
            cgroups = CgroupV1(self.cgroup_root, f"{spec.identity.sandbox}.{secrets.token_hex(4)}")
            report = cgroups.create(spec.limits)
            for controller, how in report.items():
                if controller in cgroups.dirs:
                    enforcement[controller] = how + (
                        {"memory": " + RLIMIT_DATA", "cpu": " + RLIMIT_CPU"}.get(controller, "")
                    )
                else:
                    enforcement[controller] += f" ({how})"

        fds = self._open_fds()
        info_r, info_w = os.pipe()
        cgroup_fds: list[int] = []
        made = work_mountpoints(spec.work_dir)
        try:
            cgroup_fds = cgroups.open_procs() if cgroups is not None else []
            argv = self.argv(spec, fds, info_w)
            process = await asyncio.create_subprocess_exec(
                exe,
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # bwrap's own environment is readable as the guest's /proc/1/environ: give it
                # the guest's, never the host's.
                env=guest_env(spec),
                pass_fds=[*fds.values(), info_w],
                start_new_session=True,
                preexec_fn=_preexec(cgroup_fds, _rlimits(spec.limits)),
            )
        except BaseException:
            os.close(info_r)
            if cgroups is not None:
                await cgroups.remove()
            remove_mountpoints(made)
            raise
        finally:
            for fd in [*fds.values(), info_w, *cgroup_fds]:
                os.close(fd)

        sandbox = BwrapSandbox(spec, process, [exe, *argv], enforcement, cgroups, made)
        # bwrap writes the sandbox's pid 1 once the namespaces exist, and closes the pipe;
        # an empty read means it failed before that, and its stderr says why.
        try:
            info = await asyncio.wait_for(_read_fd(info_r), 30)
        except TimeoutError:
            await sandbox.stop(grace_s=0)
            raise SandboxError("bwrap did not set up the sandbox within 30 s") from None
        if not info:
            await sandbox.wait()
            _, err = await sandbox.output()
            raise SandboxError(
                f"bwrap failed to start the sandbox: {err.decode(errors='replace').strip()}"
            )
        with contextlib.suppress(ValueError, KeyError):
            sandbox.guest_init_pid = int(json.loads(info)["child-pid"])
        return sandbox
