"""The gVisor backend (``gvisor``): the guest talks to gVisor's user-space kernel (the Sentry),
never to the host's; ``runsc run`` on an OCI bundle built per sandbox.

Each sandbox gets a private directory holding its OCI bundle (``config.json`` and a root
filesystem that is an empty directory plus the usrmerge symlinks and a synthesised ``/etc``)
and runsc's state (``--root``). The guest sees, read-only, ``/usr``, the loader cache and time
zone, and the host's Python (:func:`~corral.runtime.sandbox.python_paths`); read-write, only
``/work`` and a sized ``/tmp`` tmpfs; and the channel socket, bind-mounted as a single file at
``/run/corral/channel.sock`` and reachable because runsc runs with ``--host-uds=open`` (connect
to host sockets only; the default refuses, see RUNTIME-NOTES). ``--network=none`` leaves the
Sentry's netstack with loopback only.

Limits, as this runsc (``0.0~20221219``) enforces them (measured, not assumed):

- memory: the cgroup v1 memory limit runsc puts on the whole sandbox (Sentry, gofer and guest),
  ``memory_mib`` plus :data:`SENTRY_OVERHEAD_MIB`; the host OOM-kills the sandbox past it.
  This Sentry ignores ``RLIMIT_DATA``; it enforces ``RLIMIT_AS``, used only without cgroups.
- processes: ``RLIMIT_NPROC`` inside the Sentry, whose kernel is private to the sandbox (so
  "per uid" is "per sandbox", and it does not exempt the guest's root), plus a host pids cgroup
  as a backstop sized for the ptrace platform's ~6 host threads per guest process.
- CPU: the cgroup cpu quota (rate) and, because this Sentry ignores ``RLIMIT_CPU``, a watchdog
  that kills the sandbox when its cgroup's ``cpuacct.usage`` passes ``cpu_seconds``.
- open files: ``RLIMIT_NOFILE`` in the Sentry; ``/tmp``: the tmpfs ``size`` option.

When cgroups cannot be set up here runsc runs with ``--ignore-cgroups`` and
:attr:`GVisorSandbox.enforcement` says what is then left.

Known gap: the guest runs as root inside the Sentry, and the gofer applies its ``chmod`` to
files in ``/work`` on the host as is, so a guest can leave a setuid-root file in its host work
directory (nosuid applies only inside the sandbox). Running each sandbox under its own
unprivileged uid closes it; until then the work directories must sit on a nosuid mount or
never be executed from on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from corral.runtime.bwrap import (
    GRACE_KILL_S,
    GUEST_ETC,
    GUEST_TMP,
    HOST_ETC,
    BoundedOutput,
    CgroupV1,
    exit_status,
    guest_python_paths,
    remove_mountpoints,
    root_entries,
    work_mountpoints,
)
from corral.runtime.sandbox import (
    GUEST_CHANNEL,
    GUEST_WORK,
    Availability,
    Identity,
    IsolationLevel,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    guest_env,
)

__all__ = [
    "CFS_PERIOD_US",
    "CGROUP_PARENT",
    "CPU_POLL_S",
    "HOST_PIDS_BASE",
    "HOST_PIDS_PER_GUEST",
    "MIB",
    "NAMESPACES",
    "SENTRY_OVERHEAD_MIB",
    "GVisorBackend",
    "GVisorSandbox",
    "bundle_config",
    "write_rootfs",
]

MIB: Final = 1 << 20
SENTRY_OVERHEAD_MIB: Final = 64
"""Memory the Sentry and gofer use themselves (measured: ~31 + ~20 MiB RSS for an idle Python),
added to the guest's limit in the sandbox's memory cgroup."""
HOST_PIDS_BASE: Final = 128
HOST_PIDS_PER_GUEST: Final = 8
"""The host pids cgroup backstop: the ptrace platform runs ~6 host threads per guest process
(measured: 61 guest processes, 363 host pids) on top of the Sentry's Go threads."""
CFS_PERIOD_US: Final = 100_000
CPU_POLL_S: Final = 0.5
CGROUP_PARENT: Final = "corral"
NAMESPACES: Final = ("pid", "network", "ipc", "uts", "mount", "cgroup")
"""OCI namespaces: all but ``user`` (runsc's gofer cannot start in one here)."""


def _container_id(sandbox: str) -> str:
    """runsc's container ids allow ``[A-Za-z0-9_.+-]``; a random suffix keeps a restarted
    sandbox from colliding with its predecessor's leftovers."""
    return f"corral-{re.sub(r'[^A-Za-z0-9_.+-]', '_', sandbox)[:64]}-{secrets.token_hex(4)}"


def _ro(source: str, destination: str | None = None) -> dict[str, Any]:
    return {
        "destination": destination or source,
        "type": "bind",
        "source": source,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    }


def bundle_config(
    spec: SandboxSpec, rootfs: Path, container_id: str, *, cgroups: bool
) -> dict[str, Any]:
    """The OCI runtime spec (``config.json``, OCI runtime-spec 1.0) for ``spec``."""
    limits = spec.limits
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": GUEST_TMP,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={limits.tmp_mib}m"],
        },
    ]
    mounts += [_ro(path) for path, target in root_entries() if target is None]
    mounts += [_ro(os.path.realpath(path), path) for path in HOST_ETC if os.path.exists(path)]
    mounts.append(
        {
            "destination": str(GUEST_WORK),
            "type": "bind",
            "source": str(spec.work_dir),
            "options": ["rbind", "rw", "nosuid", "nodev"],
        }
    )
    mounts += [_ro(str(path)) for path in guest_python_paths()]  # after /tmp and /work
    # The socket file, not its directory (which may hold other sandboxes' sockets).
    mounts.append(
        {
            "destination": str(GUEST_CHANNEL),
            "type": "bind",
            "source": str(spec.channel),
            "options": ["bind", "rw", "nosuid", "nodev", "noexec"],
        }
    )
    rlimits = [
        {"type": "RLIMIT_NOFILE", "soft": limits.open_files, "hard": limits.open_files},
        {"type": "RLIMIT_NPROC", "soft": limits.pids, "hard": limits.pids},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    if not cgroups:  # the only memory bound left; costly for threaded guests (see bwrap._rlimits)
        rlimits.append(
            {"type": "RLIMIT_AS", "soft": limits.memory_mib * MIB, "hard": limits.memory_mib * MIB}
        )
    linux: dict[str, Any] = {"namespaces": [{"type": ns} for ns in NAMESPACES]}
    if cgroups:
        memory = (limits.memory_mib + SENTRY_OVERHEAD_MIB) * MIB
        linux["cgroupsPath"] = f"/{CGROUP_PARENT}/{container_id}"
        linux["resources"] = {
            "memory": {"limit": memory, "swap": memory},  # swap = memory + swap: none extra
            "pids": {"limit": HOST_PIDS_BASE + HOST_PIDS_PER_GUEST * limits.pids},
            "cpu": {
                "quota": max(1000, round(limits.cpu_quota * CFS_PERIOD_US)),
                "period": CFS_PERIOD_US,
            },
        }
    no_caps: list[str] = []
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.command),
            "env": [f"{key}={value}" for key, value in guest_env(spec).items()],
            "cwd": str(GUEST_WORK),
            "capabilities": {
                kind: no_caps
                for kind in ("bounding", "effective", "inheritable", "permitted", "ambient")
            },
            "noNewPrivileges": True,
            "rlimits": rlimits,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": spec.identity.sandbox[:64],
        "mounts": mounts,
        "linux": linux,
    }


def write_rootfs(rootfs: Path) -> None:
    """An empty root but for the usrmerge symlinks and the synthesised ``/etc``; every other
    path the guest sees is a mount."""
    rootfs.mkdir(mode=0o755)
    for path, target in root_entries():
        if target is not None:
            (rootfs / path.lstrip("/")).symlink_to(target)
    etc = rootfs / "etc"
    etc.mkdir(mode=0o755)
    for path, text in GUEST_ETC.items():
        (rootfs / path.lstrip("/")).write_text(text)


class GVisorSandbox:
    """One running gVisor sandbox (one ``runsc run`` process)."""

    def __init__(
        self,
        spec: SandboxSpec,
        process: asyncio.subprocess.Process,
        runsc: Sequence[str],
        container_id: str,
        private_dir: Path,
        enforcement: Mapping[str, str],
        cgroup_root: Path | None,
        made_dirs: Sequence[Path],
    ) -> None:
        self.spec = spec
        self.process = process
        self.container_id = container_id
        self.private_dir = private_dir
        """Bundle and runsc state; removed when the sandbox is released."""
        self.enforcement = dict(enforcement)
        self.cpu_exceeded = False
        """Set when the CPU watchdog killed the sandbox."""
        self._runsc = list(runsc)
        self._made_dirs = list(made_dirs)
        self._stdout = BoundedOutput(process.stdout)
        self._stderr = BoundedOutput(process.stderr)
        self._lock = asyncio.Lock()
        self._release_task: asyncio.Task[None] | None = None
        self._cgroup_root = cgroup_root
        self._watchdog: asyncio.Task[None] | None = (
            asyncio.create_task(self._watch_cpu()) if cgroup_root is not None else None
        )

    @property
    def identity(self) -> Identity:
        return self.spec.identity

    @property
    def backend(self) -> str:
        return GVisorBackend.name

    @property
    def level(self) -> IsolationLevel:
        return GVisorBackend.level

    @property
    def returncode(self) -> int | None:
        code = self.process.returncode
        return None if code is None else exit_status(code)

    def cgroup_dir(self, controller: str) -> Path:
        """Where runsc puts this sandbox's ``controller`` cgroup (cgroup v1)."""
        root = self._cgroup_root or Path("/sys/fs/cgroup")
        return root / controller / CGROUP_PARENT / self.container_id

    async def wait(self) -> int:
        await self.process.wait()
        await self._release()
        code = self.returncode
        assert code is not None
        return code

    async def stop(self, grace_s: float = 2.0) -> int:
        """``runsc kill TERM`` (the guest's command), ``runsc kill --all KILL`` after
        ``grace_s``, then ``runsc delete --force`` and the private directory. Idempotent."""
        async with self._lock:
            try:
                if self.process.returncode is None and grace_s > 0:
                    await self._runsc_cmd("kill", self.container_id, "TERM")
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

    async def _kill(self) -> None:
        await self._runsc_cmd("kill", "--all", self.container_id, "KILL")
        try:
            await asyncio.wait_for(self.process.wait(), GRACE_KILL_S)
        except TimeoutError:  # runsc itself is stuck: kill its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), GRACE_KILL_S)

    async def _runsc_cmd(self, *args: str) -> int:
        """Run a runsc subcommand against this sandbox's state; its exit status (errors such
        as "container already gone" are expected during teardown and not raised)."""
        proc = await asyncio.create_subprocess_exec(
            *self._runsc,
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        try:
            return await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    async def _watch_cpu(self) -> None:
        """Kill the sandbox once its CPU time (Sentry included) passes ``cpu_seconds``: this
        Sentry does not enforce ``RLIMIT_CPU``."""
        usage = self.cgroup_dir("cpuacct") / "cpuacct.usage"
        budget_ns = self.spec.limits.cpu_seconds * 1_000_000_000
        while self.process.returncode is None:
            await asyncio.sleep(CPU_POLL_S)
            try:
                used = int(usage.read_text())
            except (OSError, ValueError):
                continue  # not created yet, or already gone
            if used > budget_ns:
                self.cpu_exceeded = True
                await self._kill()
                return

    async def _release(self) -> None:
        """Release once, whoever asks first; a caller cancelled meanwhile (the host cancels
        waits) does not cut the release short."""
        if self._release_task is None:
            self._release_task = asyncio.ensure_future(self._release_now())
        await asyncio.shield(self._release_task)

    async def _release_now(self) -> None:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        # `runsc run` deletes its container when the guest exits, but not when runsc itself
        # was killed; delete --force also removes the cgroups runsc made.
        await self._runsc_cmd("delete", "--force", self.container_id)
        shutil.rmtree(self.private_dir, ignore_errors=True)
        remove_mountpoints(self._made_dirs)


class GVisorBackend:
    """Sandboxes run by gVisor's ``runsc``, isolation level ``gvisor``."""

    name: Final = "gvisor"
    level: Final = IsolationLevel.GVISOR

    def __init__(
        self,
        runsc: str = "runsc",
        *,
        state_dir: Path | None = None,
        platform: str | None = None,
        cgroup_root: Path | None = Path("/sys/fs/cgroup"),
    ) -> None:
        """``state_dir``: where the per-sandbox private directories go (default: the system
        temporary directory). ``platform``: runsc's ``--platform`` (default ptrace; systrap does
        not exist in this runsc and kvm hangs on this PVM host). ``cgroup_root=None``: run
        with ``--ignore-cgroups``."""
        self._runsc = runsc
        self._state_dir = state_dir
        self._platform = platform
        self.cgroup_root = cgroup_root
        self._availability: Availability | None = None

    def cgroups_usable(self) -> bool:
        if self.cgroup_root is None:
            return False
        return all(reason is None for reason in CgroupV1.probe(self.cgroup_root).values())

    def limit_mechanisms(self, cgroups: bool | None = None) -> dict[str, str]:
        """What bounds each limit, with or (``cgroups=False``) without cgroups."""
        if cgroups is None:
            cgroups = self.cgroups_usable()
        if cgroups:
            return {
                "memory": f"cgroup v1 memory (runsc, whole sandbox, +{SENTRY_OVERHEAD_MIB} MiB)",
                "pids": "RLIMIT_NPROC in the Sentry + cgroup v1 pids backstop (runsc)",
                "cpu": "cgroup v1 cpu quota (runsc) + cpuacct watchdog for cpu_seconds",
                "open_files": "RLIMIT_NOFILE in the Sentry",
                "tmp": "tmpfs size",
            }
        return {
            "memory": "RLIMIT_AS in the Sentry (--ignore-cgroups)",
            "pids": "RLIMIT_NPROC in the Sentry (--ignore-cgroups)",
            "cpu": "none: --ignore-cgroups, and this Sentry ignores RLIMIT_CPU",
            "open_files": "RLIMIT_NOFILE in the Sentry",
            "tmp": "tmpfs size",
        }

    def _global_flags(self, state: Path) -> list[str]:
        exe = shutil.which(self._runsc) or self._runsc
        flags = [exe, "--root", str(state)]
        if self._platform is not None:
            flags.append(f"--platform={self._platform}")
        return flags

    def _run_argv(self, state: Path, bundle: Path, container_id: str, cgroups: bool) -> list[str]:
        argv = [*self._global_flags(state), "--network=none", "--host-uds=open"]
        if not cgroups:
            argv.append("--ignore-cgroups")
        return [*argv, "run", "--bundle", str(bundle), container_id]

    def _prepare(self, spec: SandboxSpec, cgroups: bool) -> tuple[Path, Path, str, list[str]]:
        """A private directory with the bundle and state dir; ``(dir, state, id, run argv)``."""
        private = Path(tempfile.mkdtemp(prefix="corral-gvisor-", dir=self._state_dir))
        try:
            container_id = _container_id(spec.identity.sandbox)
            bundle, state = private / "bundle", private / "state"
            bundle.mkdir()
            state.mkdir(mode=0o700)
            write_rootfs(bundle / "rootfs")
            config = bundle_config(spec, bundle / "rootfs", container_id, cgroups=cgroups)
            (bundle / "config.json").write_text(json.dumps(config, indent=2))
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        return private, state, container_id, self._run_argv(state, bundle, container_id, cgroups)

    def available(self) -> Availability:
        """Whether runsc is installed and runs a trivial container here (the guest Python and
        the channel mount included); the answer is cached."""
        if self._availability is None:
            self._availability = self._check()
        return self._availability

    def _check(self) -> Availability:
        if shutil.which(self._runsc) is None:
            return Availability(False, f"{self._runsc} not found on PATH (apt-get install runsc)")
        with tempfile.TemporaryDirectory(prefix="corral-gvisor-check-") as tmp:
            work = Path(tmp) / "work"
            work.mkdir()
            with socket.socket(socket.AF_UNIX) as listener:
                listener.bind(str(Path(tmp) / "channel.sock"))
                listener.listen()
                spec = SandboxSpec(
                    identity=Identity("check", "check", "check"),
                    command=["python", "-c", "print('corral-ok')"],
                    work_dir=work,
                    channel=Path(tmp) / "channel.sock",
                )
                cgroups = self.cgroups_usable()
                made = work_mountpoints(work)
                try:
                    private, state, container_id, argv = self._prepare(spec, cgroups)
                except (SandboxError, OSError) as exc:
                    return Availability(False, f"cannot build an OCI bundle here: {exc}")
                try:
                    done = subprocess.run(  # noqa: S603 (argv built here)
                        argv,
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=60,
                        check=False,
                        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                    )
                except subprocess.TimeoutExpired:
                    return Availability(False, "a trivial runsc container did not finish in 60 s")
                finally:
                    subprocess.run(  # noqa: S603
                        [*self._global_flags(state), "delete", "--force", container_id],
                        capture_output=True,
                        timeout=30,
                        check=False,
                    )
                    shutil.rmtree(private, ignore_errors=True)
                    remove_mountpoints(made)
        if done.returncode != 0 or done.stdout != b"corral-ok\n":
            err = done.stderr.decode(errors="replace").strip()[-500:]
            return Availability(
                False,
                f"a trivial runsc container failed ({done.returncode}, {done.stdout!r}): {err}",
            )
        how = "with cgroups" if cgroups else "with --ignore-cgroups"
        return Availability(True, f"runsc runs containers {how}")

    async def start(self, spec: SandboxSpec) -> GVisorSandbox:
        availability = self.available()
        if not availability.ok:
            raise SandboxUnavailable(f"gvisor backend: {availability.reason}")
        if not spec.work_dir.is_dir():
            raise SandboxError(f"work directory {spec.work_dir} does not exist")
        if not spec.channel.is_socket():
            raise SandboxError(f"channel {spec.channel} is not a socket")
        cgroups = self.cgroups_usable()
        made = work_mountpoints(spec.work_dir)
        private, state, container_id, argv = self._prepare(spec, cgroups)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # nothing of the host's
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            remove_mountpoints(made)
            raise
        return GVisorSandbox(
            spec,
            process,
            self._global_flags(state),
            container_id,
            private,
            self.limit_mechanisms(cgroups),
            self.cgroup_root if cgroups else None,
            made,
        )
