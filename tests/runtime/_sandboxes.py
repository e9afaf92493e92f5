"""Real sandboxes for the runtime tests: the ``backend`` fixture (bwrap and gVisor), a fresh
work directory and listening channel socket per sandbox, and a helper that runs a command to
its end and collects what it printed.

Import the fixture with its name::

    from tests.runtime._sandboxes import backend_fixture  # noqa: F401

A backend this machine cannot run fails the test in CI and skips it elsewhere
(:func:`tests.conftest.need_service`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.runtime.bwrap import BwrapBackend
from corral.runtime.gvisor import GVisorBackend
from corral.runtime.sandbox import Backend, Identity, Limits, Sandbox, SandboxSpec
from tests.conftest import need_service

BACKENDS = ("bwrap", "gvisor")
TIMEOUT_S = {"bwrap": 30.0, "gvisor": 90.0}
"""How long one sandbox may run in a test before it is stopped (gVisor's ptrace platform
makes every syscall ~500x slower)."""

_instances: dict[str, Backend] = {}


def backend_named(name: str) -> Backend:
    """One instance per backend for the whole session, so ``available()`` runs once."""
    if name not in _instances:
        _instances[name] = BwrapBackend() if name == "bwrap" else GVisorBackend()
    return _instances[name]


def limit_mechanisms(backend: Backend) -> dict[str, str]:
    """What bounds each limit with ``backend`` on this host (both backends report it)."""
    assert isinstance(backend, BwrapBackend | GVisorBackend)
    return backend.limit_mechanisms()


def require(name: str) -> Backend:
    backend = backend_named(name)
    availability = backend.available()
    if not availability.ok:
        need_service(f"sandbox backend {name!r}", availability.reason)
    return backend


@pytest.fixture(name="backend", scope="module", params=BACKENDS)
def backend_fixture(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn; fails in CI and skips elsewhere when it cannot run here."""
    return require(str(request.param))


@dataclass
class Place:
    """A sandbox's host side: its work directory and its channel socket (listening)."""

    root: Path
    name: str
    work: Path = field(init=False)
    channel: Path = field(init=False)
    listener: socket.socket | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.work = self.root / self.name / "work"
        self.work.mkdir(parents=True)
        # A short directory of its own: AF_UNIX paths stop at 107 bytes, pytest's are long.
        self.channel = Path(tempfile.mkdtemp(prefix="corral-ch-")) / "channel.sock"

    def listen(self) -> Place:
        """Bind and listen on the channel with a plain socket (nothing accepts)."""
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.channel))
        self.listener.listen()
        return self

    def spec(
        self,
        command: Sequence[str],
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxSpec:
        return SandboxSpec(
            identity=Identity("tenant-test", "agent-test", f"sbx-{self.name}"),
            command=list(command),
            work_dir=self.work,
            channel=self.channel,
            limits=limits or Limits(),
            env=dict(env or {}),
        )

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        shutil.rmtree(self.channel.parent, ignore_errors=True)


@pytest.fixture(name="places")
def places_fixture(tmp_path: Path) -> Iterator[PlaceFactory]:
    factory = PlaceFactory(tmp_path)
    yield factory
    factory.close()


class PlaceFactory:
    """Makes :class:`Place` objects under one directory and closes them all afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: list[Place] = []

    def __call__(self, name: str, *, listen: bool = True) -> Place:
        place = Place(self.root, name)
        self._made.append(place)
        return place.listen() if listen else place

    def close(self) -> None:
        for place in self._made:
            place.close()


@dataclass(frozen=True)
class Run:
    """What a sandbox did, once it ended."""

    returncode: int
    stdout: bytes
    stderr: bytes
    elapsed_s: float
    timed_out: bool

    def report(self) -> Any:
        """The JSON object the guest printed last (probes print one line of JSON)."""
        lines = self.stdout.decode(errors="replace").strip().splitlines()
        assert lines, f"the guest printed nothing; rc={self.returncode} stderr={self.stderr!r}"
        return json.loads(lines[-1])

    def explain(self) -> str:
        return f"rc={self.returncode} stdout={self.stdout[-2000:]!r} stderr={self.stderr[-2000:]!r}"


async def finish(sandbox: Sandbox, timeout_s: float, started: float) -> Run:
    """Wait for ``sandbox`` to end (stopping it after ``timeout_s``) and collect its output."""
    timed_out = False
    try:
        code = await asyncio.wait_for(sandbox.wait(), timeout_s)
    except TimeoutError:
        timed_out = True
        code = await sandbox.stop(grace_s=0)
    elapsed = time.perf_counter() - started
    out, err = await sandbox.output()
    await sandbox.stop()
    return Run(code, out, err, elapsed, timed_out)


async def run_async(backend: Backend, spec: SandboxSpec, timeout_s: float | None = None) -> Run:
    started = time.perf_counter()
    sandbox = await backend.start(spec)
    return await finish(sandbox, timeout_s or TIMEOUT_S[backend.name], started)


def run(backend: Backend, spec: SandboxSpec, timeout_s: float | None = None) -> Run:
    """Start a sandbox from ``spec``, run it to its end, and return what it did."""
    return asyncio.run(run_async(backend, spec, timeout_s))


def run_python(
    backend: Backend,
    place: Place,
    code: str,
    *,
    limits: Limits | None = None,
    timeout_s: float | None = None,
) -> Run:
    """Run ``python -c code`` with the guest's Python in a sandbox at ``place``."""
    return run(backend, place.spec(["python", "-c", code], limits), timeout_s)
