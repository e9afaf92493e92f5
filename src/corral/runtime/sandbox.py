"""What a sandbox is, whatever runs it: the protocol every backend implements.

A :class:`Backend` starts a :class:`Sandbox` from a :class:`SandboxSpec`. The spec names the
sandbox's identity (tenant, agent, sandbox id: the host's labels, never the guest's claim), the
command to run inside, a private writable work directory, the host path of the sandbox's one
channel socket, and its limits. Inside every backend the guest sees the same layout:

- the work directory at :data:`GUEST_WORK` (the only writable place besides a small ``/tmp``);
- the channel at :data:`GUEST_CHANNEL` (a Unix stream socket; vsock on Firecracker, bridged by the
  guest init to the same path), also named by the ``CORRAL_CHANNEL`` environment variable;
- the host's Python and corral's source read-only at their host paths (:func:`python_paths`), so
  ``python -m corral.guest.run`` works; nothing else of the host, and no network;
- an environment of exactly ``spec.env`` plus ``PATH``, ``HOME``, ``LANG`` and
  ``CORRAL_CHANNEL`` (never the host's environment: that is where credentials live).

Backends report an :class:`IsolationLevel`; a tenant policy may require a minimum
(:func:`require_level`).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import corral
from corral.core.errors import CorralError
from corral.core.ids import check_id

__all__ = [
    "GUEST_CHANNEL",
    "GUEST_WORK",
    "Availability",
    "Backend",
    "Identity",
    "IsolationLevel",
    "IsolationTooWeak",
    "Limits",
    "Sandbox",
    "SandboxError",
    "SandboxSpec",
    "SandboxUnavailable",
    "guest_env",
    "python_paths",
    "require_level",
]

GUEST_WORK = Path("/work")
GUEST_CHANNEL = Path("/run/corral/channel.sock")


class SandboxError(CorralError):
    """Base of errors raised by :mod:`corral.runtime`."""


class SandboxUnavailable(SandboxError):
    """This host cannot run the backend (missing binary, no KVM, no permission); says why."""


class IsolationTooWeak(SandboxError, ValueError):
    """A tenant's policy requires a stronger isolation level than the backend offers."""


class IsolationLevel(enum.IntEnum):
    """How strongly a sandbox is separated from the host, weakest first."""

    NAMESPACES = 1
    """Linux namespaces, seccomp and resource limits around the host kernel (bubblewrap)."""
    GVISOR = 2
    """A user-space kernel (gVisor's Sentry) between the agent and the host kernel."""
    VM = 3
    """A hardware-virtualised guest kernel (Firecracker on KVM)."""

    @property
    def label(self) -> str:
        return {1: "namespaces", 2: "gvisor", 3: "vm"}[self.value]

    @classmethod
    def parse(cls, label: str) -> IsolationLevel:
        for level in cls:
            if level.label == label:
                return level
        raise ValueError(f"unknown isolation level {label!r}: expected namespaces, gvisor or vm")


def require_level(backend: Backend, minimum: IsolationLevel) -> None:
    if backend.level < minimum:
        raise IsolationTooWeak(
            f"backend {backend.name!r} isolates at {backend.level.label!r}; "
            f"the tenant's policy requires at least {minimum.label!r}"
        )


@dataclass(frozen=True)
class Identity:
    """Who a sandbox is, as the host labels it. Only the host creates these."""

    tenant: str
    agent: str
    sandbox: str

    def __post_init__(self) -> None:
        check_id(self.tenant, "tenant")
        check_id(self.agent, "agent")
        check_id(self.sandbox, "sandbox")


@dataclass(frozen=True)
class Limits:
    """Bounds on one sandbox; a backend enforces each with cgroups where it can, else rlimits."""

    memory_mib: int = 256
    pids: int = 64
    cpu_seconds: int = 300
    """CPU time before the sandbox is killed (RLIMIT_CPU)."""
    cpu_quota: float = 1.0
    """Share of one core (cgroup cpu quota), where cgroups are available."""
    open_files: int = 256
    tmp_mib: int = 64
    """Size of the sandbox's private ``/tmp``."""

    def __post_init__(self) -> None:
        for name in ("memory_mib", "pids", "cpu_seconds", "open_files", "tmp_mib"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.cpu_quota <= 64:
            raise ValueError(f"limit cpu_quota must be in (0, 64], got {self.cpu_quota}")


@dataclass(frozen=True)
class SandboxSpec:
    identity: Identity
    command: Sequence[str]
    """argv inside the sandbox (``argv[0]`` is looked up on the guest's ``PATH``)."""
    work_dir: Path
    """Host directory, created by the caller, private to this sandbox; ``/work`` inside."""
    channel: Path
    """Host path of the sandbox's channel socket, already listening (the host binds it)."""
    limits: Limits = field(default_factory=Limits)
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Availability:
    """Whether this host can run a backend, and if not, why (for ``corral runtime doctor``)."""

    ok: bool
    reason: str


@runtime_checkable
class Sandbox(Protocol):
    """One running sandbox."""

    @property
    def identity(self) -> Identity: ...

    @property
    def backend(self) -> str: ...

    @property
    def level(self) -> IsolationLevel: ...

    @property
    def returncode(self) -> int | None:
        """The exit status once the sandbox has ended, else ``None``."""
        ...

    async def wait(self) -> int:
        """Wait for the sandbox to end; its exit status (negative: killed by that signal)."""
        ...

    async def stop(self, grace_s: float = 2.0) -> int:
        """Ask the sandbox to end, kill it after ``grace_s``, release everything it held
        (processes, cgroups, mounts, temporary files); its exit status. Idempotent."""
        ...

    async def output(self) -> tuple[bytes, bytes]:
        """stdout and stderr once the sandbox has ended (bounded; the host logs them)."""
        ...


@runtime_checkable
class Backend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def level(self) -> IsolationLevel: ...

    def available(self) -> Availability: ...

    async def start(self, spec: SandboxSpec) -> Sandbox:
        """Start a sandbox; raises :class:`SandboxUnavailable` naming what is missing."""
        ...


def python_paths() -> list[Path]:
    """Host paths to mount read-only (at the same path) so the guest runs this Python and
    ``corral.guest``: the interpreter's prefixes and corral's source directory. Nothing here
    holds a secret: data directories and key files are never under these paths."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(corral.__file__).parent.parent}
    return sorted(p.resolve() for p in paths)


def guest_env(spec: SandboxSpec) -> dict[str, str]:
    """The sandbox's whole environment: ``spec.env`` and the fixed variables."""
    python_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(GUEST_WORK),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(Path(corral.__file__).parent.parent),
        "CORRAL_CHANNEL": str(GUEST_CHANNEL),
        "CORRAL_TENANT": spec.identity.tenant,
        "CORRAL_AGENT": spec.identity.agent,
        "CORRAL_SANDBOX": spec.identity.sandbox,
    }
    env.update(spec.env)
    return env
