"""Which sandbox backends this host has, which it can run, and the strongest one it can.

The registry is ordered strongest first: ``firecracker`` (``vm``), ``gvisor``, ``bwrap``
(``namespaces``). Each reports its own :class:`Availability` (a missing binary, no KVM, no user
namespaces): ``corral runtime doctor`` prints them, and :func:`best_available` refuses with all
the reasons at once, so an operator sees what to install rather than only the first miss.

A backend whose module cannot be imported on this machine is still listed, as unavailable with
the import error as its reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from corral.core.settings import Settings, load_settings
from corral.runtime.sandbox import (
    Availability,
    Backend,
    IsolationLevel,
    Sandbox,
    SandboxSpec,
    SandboxUnavailable,
)

__all__ = ["BACKENDS", "backend", "backends", "best_available", "doctor"]

BACKENDS: tuple[tuple[str, IsolationLevel, str, str], ...] = (
    ("firecracker", IsolationLevel.VM, "corral.runtime.firecracker", "FirecrackerBackend"),
    ("gvisor", IsolationLevel.GVISOR, "corral.runtime.gvisor", "GVisorBackend"),
    ("bwrap", IsolationLevel.NAMESPACES, "corral.runtime.bwrap", "BwrapBackend"),
)
"""``(name, level, module, class)``, strongest first."""


@dataclass(frozen=True)
class _Missing:
    """A backend whose code does not load here: listed, never available."""

    name: str
    level: IsolationLevel
    why: str

    def available(self) -> Availability:
        return Availability(False, self.why)

    async def start(self, spec: SandboxSpec) -> Sandbox:
        raise SandboxUnavailable(f"backend {self.name!r} is not available: {self.why}")


def _construct(name: str, level: IsolationLevel, module: str, cls: str,
               settings: Settings) -> Backend:  # fmt: skip
    try:
        loaded = importlib.import_module(module)
        factory: Callable[..., Backend] = getattr(loaded, cls)
    except (ImportError, AttributeError) as exc:
        return _Missing(name, level, f"{module}.{cls} cannot be loaded: {exc}")
    try:
        return _BUILDERS[name](loaded, factory, settings)
    except (TypeError, ValueError, OSError) as exc:
        return _Missing(name, level, f"cannot be configured: {exc}")


def _bwrap(_module: ModuleType, factory: Callable[..., Backend], _settings: Settings) -> Backend:
    return factory()


def _gvisor(_module: ModuleType, factory: Callable[..., Backend], settings: Settings) -> Backend:
    return factory()


def _firecracker(module: ModuleType, factory: Callable[..., Backend],
                 settings: Settings) -> Backend:  # fmt: skip
    fc = settings.host.firecracker
    images = settings.host_dir / "firecracker"
    config = module.FirecrackerConfig(
        firecracker=fc.firecracker, jailer=fc.jailer, kernel=fc.kernel or images / "vmlinux",
        rootfs=fc.rootfs or images / "rootfs.ext4", uid=fc.uid, gid=fc.gid,
        chroot_base=fc.chroot_base, snapshot_dir=fc.snapshot_dir,
    )  # fmt: skip
    return factory(config)


_BUILDERS: dict[str, Callable[[ModuleType, Callable[..., Backend], Settings], Backend]] = {
    "firecracker": _firecracker,
    "gvisor": _gvisor,
    "bwrap": _bwrap,
}


def backends(settings: Settings | None = None) -> list[Backend]:
    """Every backend, strongest first, constructed from ``settings`` (default: the defaults)."""
    settings = settings or load_settings()
    return [_construct(*row, settings) for row in BACKENDS]


def backend(name: str, settings: Settings | None = None) -> Backend:
    """One backend by name (it may be unavailable: check :meth:`Backend.available`)."""
    for row in BACKENDS:
        if row[0] == name:
            return _construct(*row, settings or load_settings())
    known = ", ".join(row[0] for row in BACKENDS)
    raise SandboxUnavailable(f"unknown sandbox backend {name!r} (known: {known})")


def best_available(
    minimum: IsolationLevel | None = None, settings: Settings | None = None
) -> Backend:
    """The strongest backend this host can run, at least ``minimum``; otherwise
    :class:`SandboxUnavailable` naming each backend's reason."""
    reasons = []
    for found in backends(settings):
        if minimum is not None and found.level < minimum:
            reasons.append(f"{found.name}: isolates at {found.level.label}, below "
                           f"the required {minimum.label}")  # fmt: skip
            continue
        availability = found.available()
        if availability.ok:
            return found
        reasons.append(f"{found.name}: {availability.reason}")
    raise SandboxUnavailable("no sandbox backend is available: " + "; ".join(reasons))


def doctor(settings: Settings | None = None) -> list[tuple[str, IsolationLevel, Availability]]:
    """``(backend name, level, availability)`` for every backend, strongest first."""
    return [(found.name, found.level, found.available()) for found in backends(settings)]
