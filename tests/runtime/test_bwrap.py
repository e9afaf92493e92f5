"""The bubblewrap backend: its argv, its limit mechanisms (cgroup v1 or rlimits), cleanup of
cgroups and mountpoints, stop (graceful, forceful, idempotent), bounded output."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from corral.runtime.bwrap import (
    GUEST_ETC,
    HOST_ETC,
    MIB,
    OUTPUT_CAP,
    BwrapBackend,
    BwrapSandbox,
    CgroupV1,
    exit_status,
    root_entries,
    work_mountpoints,
)
from corral.runtime.sandbox import (
    GUEST_CHANNEL,
    Limits,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    guest_env,
    python_paths,
)
from tests.conftest import need_service
from tests.runtime._sandboxes import PlaceFactory, places_fixture, require, run  # noqa: F401

pytestmark = pytest.mark.timeout(300)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _bwrap() -> BwrapBackend:
    backend = require("bwrap")
    assert isinstance(backend, BwrapBackend)
    return backend


def _need_cgroups() -> None:
    reasons = [r for r in CgroupV1.probe(CGROUP_ROOT).values() if r is not None]
    if reasons:
        need_service("writable cgroup v1 (memory, pids, cpu)", "; ".join(reasons))


def _pairs(argv: list[str], flag: str, arity: int) -> list[tuple[str, ...]]:
    return [tuple(argv[i + 1 : i + 1 + arity]) for i, a in enumerate(argv) if a == flag]


def test_argv(places: PlaceFactory) -> None:
    """The flags the design requires, the environment exactly ``guest_env``, and no host path
    mounted but /usr, two /etc files, the Python, the work dir and the channel."""
    place = places("argv")
    spec = place.spec(["python", "-m", "corral.guest.run"], Limits(tmp_mib=16), env={"A": "1"})
    os.environ["CORRAL_TEST_HOST_SECRET"] = "never-in-argv"
    try:
        argv = BwrapBackend().argv(spec, {"seccomp": 10, **{p: 11 for p in GUEST_ETC}}, info_fd=12)
    finally:
        del os.environ["CORRAL_TEST_HOST_SECRET"]
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                 "--new-session", "--clearenv"):  # fmt: skip
        assert flag in argv
    assert _pairs(argv, "--cap-drop", 1) == [("ALL",)]
    assert _pairs(argv, "--hostname", 1) == [("sbx-argv",)]
    assert _pairs(argv, "--seccomp", 1) == [("10",)]
    assert _pairs(argv, "--info-fd", 1) == [("12",)]
    assert _pairs(argv, "--remount-ro", 1) == [("/",)]
    assert _pairs(argv, "--chdir", 1) == [("/work",)]
    assert ("--size", str(16 * MIB), "--tmpfs", "/tmp") in [
        tuple(argv[i : i + 4]) for i in range(len(argv))
    ]
    assert argv[-4:] == ["--", "python", "-m", "corral.guest.run"]
    # Environment: cleared first, then exactly guest_env.
    assert argv.index("--clearenv") < argv.index("--setenv")
    assert dict(_pairs(argv, "--setenv", 2)) == guest_env(spec)  # type: ignore[arg-type]
    assert "never-in-argv" not in argv
    # Mounts: nothing of the host but what is listed.
    binds = _pairs(argv, "--bind", 2)
    assert binds == [(str(place.work), "/work"), (str(place.channel), str(GUEST_CHANNEL))]
    ro = _pairs(argv, "--ro-bind", 2)
    allowed = {str(p) for p in python_paths()} | {p for p, t in root_entries() if t is None}
    assert {src for src, dst in ro} == allowed
    assert all(src == dst for src, dst in ro)
    assert {src for src, _ in _pairs(argv, "--ro-bind-try", 2)} == set(HOST_ETC)
    # The Python is mounted after /work (it may lie inside it) and the root goes read-only last.
    work_at = _position(argv, "--bind", str(place.work), "/work")
    python_at = [_position(argv, "--ro-bind", str(p), str(p)) for p in python_paths()]
    assert min(python_at) > work_at
    assert _position(argv, "--remount-ro", "/") > max(python_at)


def _position(argv: list[str], *items: str) -> int:
    """Where the run ``items`` starts in ``argv``."""
    for i in range(len(argv)):
        if tuple(argv[i : i + len(items)]) == items:
            return i
    raise AssertionError(f"{items} not in argv")


SLEEPER = "import time; print('up', flush=True); time.sleep(120)"


async def _started(backend: BwrapBackend, spec: SandboxSpec) -> BwrapSandbox:
    sandbox = await backend.start(spec)
    assert isinstance(sandbox, BwrapSandbox)
    return sandbox


def test_cgroups_hold_the_limits_and_go_away(places: PlaceFactory) -> None:
    """Limits are written to the sandbox's cgroups, bwrap joined them before exec, the report
    says cgroup v1, and stop removes them (twice is harmless)."""
    backend = _bwrap()
    _need_cgroups()
    limits = Limits(memory_mib=96, pids=20, cpu_quota=0.5)
    place = places("cgroups")

    async def go() -> tuple[BwrapSandbox, dict[str, str], set[int], int, int]:
        sandbox = await _started(backend, place.spec(["python", "-c", SLEEPER], limits))
        cgroups = sandbox.cgroups
        assert cgroups is not None and set(cgroups.dirs) == {"memory", "pids", "cpu"}
        values = {
            "memory": (cgroups.dirs["memory"] / "memory.limit_in_bytes").read_text().strip(),
            "memsw": (cgroups.dirs["memory"] / "memory.memsw.limit_in_bytes").read_text().strip()
            if (cgroups.dirs["memory"] / "memory.memsw.limit_in_bytes").exists()
            else str(96 * MIB),
            "pids": (cgroups.dirs["pids"] / "pids.max").read_text().strip(),
            "quota": (cgroups.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip(),
        }
        deadline = time.monotonic() + 10
        while len(members := cgroups.pids()) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the guest is exec'd a moment after start() returns
        first = await sandbox.stop(grace_s=0.2)
        second = await sandbox.stop()
        return sandbox, values, members, first, second

    sandbox, values, members, first, second = asyncio.run(go())
    assert values == {
        "memory": str(96 * MIB),
        "memsw": str(96 * MIB),
        "pids": str(20 + CgroupV1.BWRAP_PROCESSES),
        "quota": "50000",
    }
    assert sandbox.pid in members  # the bwrap process itself, hence everything it started
    assert len(members) >= 3  # bwrap, the sandbox's pid 1, the guest
    assert sandbox.enforcement["pids"].startswith("cgroup v1 pids.max=")
    assert sandbox.enforcement["memory"].startswith("cgroup v1 memory.limit_in_bytes=")
    assert first == second == sandbox.returncode == -15  # SIGTERM, no handler
    assert sandbox.cgroups is not None and sandbox.cgroups.dirs == {}
    for controller in ("memory", "pids", "cpu"):
        assert not (CGROUP_ROOT / controller / "corral" / sandbox.cgroups.name).exists()


def test_rlimits_without_cgroups(places: PlaceFactory) -> None:
    """With cgroups off the guest still runs under RLIMIT_DATA/CPU/NOFILE/CORE, and the
    sandbox says that no pids bound is left."""
    _bwrap()
    backend = BwrapBackend(cgroup_root=None)
    limits = Limits(memory_mib=200, cpu_seconds=30, open_files=100)
    code = (
        "import json, resource as r; print(json.dumps({n: r.getrlimit(getattr(r, n)) for n in"
        " ('RLIMIT_DATA', 'RLIMIT_CPU', 'RLIMIT_NOFILE', 'RLIMIT_CORE')}))"
    )

    async def go() -> tuple[dict[str, str], bytes, int]:
        sandbox = await _started(backend, places("rlimits").spec(["python", "-c", code], limits))
        code_ = await sandbox.wait()
        out, _ = await sandbox.output()
        assert sandbox.cgroups is None
        return sandbox.enforcement, out, code_

    enforcement, out, rc = asyncio.run(go())
    assert rc == 0
    assert json.loads(out) == {
        "RLIMIT_DATA": [200 * MIB, 200 * MIB],
        "RLIMIT_CPU": [30, 31],
        "RLIMIT_NOFILE": [100, 100],
        "RLIMIT_CORE": [0, 0],
    }
    assert enforcement["memory"] == "RLIMIT_DATA"
    assert enforcement["pids"].startswith("none")
    assert BwrapBackend(cgroup_root=None).limit_mechanisms()["pids"].startswith("none")


SPLIT_HOG = """
import os, sys
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = b"\\1" * (40 << 20)  # under each process's RLIMIT_DATA, over the sum's limit
        import time; time.sleep(5)
        os._exit(0)
    children.append(pid)
statuses = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in children]
print(statuses, flush=True)
"""


def test_memory_cgroup_bounds_the_sum(places: PlaceFactory) -> None:
    """Four processes each under RLIMIT_DATA but together over the limit: the cgroup's OOM
    killer (SIGKILL), not a MemoryError, stops them."""
    backend = _bwrap()
    _need_cgroups()
    result = run(
        backend,
        places("split-hog").spec(["python", "-c", SPLIT_HOG], Limits(memory_mib=64)),
    )
    if result.returncode == 0:
        statuses = json.loads(result.stdout)
        assert -9 in statuses, result.explain()
    else:  # the OOM killer chose the parent
        assert result.returncode == -9, result.explain()


def test_stop_is_graceful_then_forceful(places: PlaceFactory) -> None:
    backend = _bwrap()
    polite = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    ready = "open('/work/ready', 'w').close()\ntime.sleep(120)\n"

    inits: list[int | None] = []

    async def stop(code: str, name: str) -> tuple[int, int, int, float]:
        place = places(name)
        sandbox = await _started(backend, place.spec(["python", "-c", code + ready]))
        inits.append(sandbox.guest_init_pid)
        deadline = time.monotonic() + 30
        while not (place.work / "ready").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # until the handler is installed
        started = time.perf_counter()
        first = await sandbox.stop(grace_s=1.0)
        took = time.perf_counter() - started
        return first, await sandbox.stop(), await sandbox.wait(), took

    first, again, waited, took = asyncio.run(stop(polite, "polite"))
    assert (first, again, waited) == (7, 7, 7)
    assert took < 1.0  # it left on SIGTERM, before the grace ran out
    first, again, waited, took = asyncio.run(stop(stubborn, "stubborn"))
    assert (first, again, waited) == (-9, -9, -9)
    assert took >= 1.0
    # Killed through its pid 1, which bwrap's monitor reaped: no orphan left for the host's
    # init to reap (or not), no zombie.
    assert inits[-1] is not None and not Path(f"/proc/{inits[-1]}").exists()


def test_natural_exit_cleans_up(places: PlaceFactory) -> None:
    """wait() alone releases the cgroups and the mountpoints the Python mounts made in /work."""
    backend = _bwrap()
    place = places("natural")
    made = work_mountpoints(place.work)

    async def go() -> tuple[BwrapSandbox, bytes, int]:
        sandbox = await _started(backend, place.spec(["python", "-c", "print('bye')"]))
        code = await sandbox.wait()
        out, _ = await sandbox.output()
        return sandbox, out, code

    sandbox, out, rc = asyncio.run(go())
    # The guest ran the Python, so its mounts (and mountpoints under /work, if any) existed.
    assert (rc, out) == (0, b"bye\n")
    assert not any(p.exists() for p in made)
    assert list(place.work.iterdir()) == []
    if sandbox.cgroups is not None:
        assert sandbox.cgroups.dirs == {}


def test_output_is_bounded_and_complete(places: PlaceFactory) -> None:
    """A guest writing 3 MiB does not block: the first 1 MiB is kept, stderr separately."""
    backend = _bwrap()
    code = (
        "import sys; sys.stdout.write('ab' * (3 << 19)); sys.stdout.flush();"
        " sys.stderr.write('to stderr')"
    )
    result = run(backend, places("chatty").spec(["python", "-c", code]), timeout_s=60)
    assert result.returncode == 0 and not result.timed_out
    assert result.stdout == b"ab" * (OUTPUT_CAP // 2)
    assert result.stderr == b"to stderr"


def test_start_refuses_a_bad_spec(places: PlaceFactory) -> None:
    backend = _bwrap()
    place = places("bad", listen=False)  # no socket at the channel path
    with pytest.raises(SandboxError, match="not a socket"):
        asyncio.run(backend.start(place.spec(["true"])))
    listening = places("gone")
    spec = listening.spec(["true"])
    listening.work.rmdir()
    with pytest.raises(SandboxError, match="does not exist"):
        asyncio.run(backend.start(spec))


def test_missing_binary_is_unavailable(places: PlaceFactory) -> None:
    backend = BwrapBackend(bwrap="bwrap-not-installed")
    availability = backend.available()
    assert not availability.ok and "not found" in availability.reason
    assert backend.available() is availability  # cached
    with pytest.raises(SandboxUnavailable, match="not found"):
        asyncio.run(backend.start(places("none").spec(["true"])))


def test_exit_status_maps_signals() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(137) == -9
    assert exit_status(143) == -15
    assert exit_status(128) == 128
