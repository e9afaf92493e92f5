"""The isolation suite, run for every backend: each check is a probe inside a real sandbox.

One probe script (:data:`PROBE`) runs most checks in one sandbox ("B") while another sandbox
("A") is running beside it, and prints a JSON report; the tests below each assert one part of
it. The memory hog, the fork bomb and the channel get sandboxes of their own.

What is asserted about ptrace differs by backend, because the kernels differ:

- bwrap (host kernel): ``ptrace(PTRACE_TRACEME)`` fails with EPERM (the seccomp filter), the
  process has no capabilities, and a filter is installed (``Seccomp: 2``).
- gVisor: ptrace is implemented by the Sentry and only ever reaches the sandbox's own
  processes, so TRACEME may succeed. Asserted instead: the guest's kernel is gVisor's (its
  ``/proc/version`` and release are not the host's), and ``PTRACE_ATTACH`` on the pid of this
  test process (a host pid) fails, that pid being absent from the guest's ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.guest import wire
from corral.runtime.bwrap import GUEST_ETC, HOST_ETC
from corral.runtime.sandbox import GUEST_CHANNEL, Backend, Limits, guest_env, python_paths
from corral.runtime.seccomp import syscall_number
from tests.conftest import need_service
from tests.runtime._sandboxes import (
    TIMEOUT_S,
    PlaceFactory,
    backend_fixture,  # noqa: F401
    finish,
    limit_mechanisms,
    places_fixture,  # noqa: F401
    run,
    run_async,
    run_python,
)

pytestmark = pytest.mark.timeout(600)

PROBE = r'''
import ctypes, errno, json, os, socket, stat, sys

args = json.load(open("/work/probe-args.json"))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def unhide(value):
    # Secrets travel reversed, so that the probe's own files do not contain them.
    return value[::-1]


def name(code):
    return errno.errorcode.get(code, str(code))


def result(ret):
    return "ok" if ret != -1 else name(ctypes.get_errno())


def in_child(fn):
    """Run fn in a forked child (for calls with side effects); its result string."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            out = fn()
        except BaseException as exc:
            out = "raised " + repr(exc)
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    return data


report = {}

# 1. network
def tcp(host, port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as exc:
        return name(exc.errno) if exc.errno else type(exc).__name__
    finally:
        s.close()

report["tcp"] = {host: tcp(host, args["tcp_port"]) for host in args["tcp_hosts"]}
report["interfaces"] = sorted(n for _, n in socket.if_nameindex())

# 2. other sandboxes and the host
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmdlines = {}
for pid in pids:
    try:
        cmdlines[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        pass
report["pids"] = pids
report["other_marker_in_proc"] = any(unhide(args["other_marker"]) in c for c in cmdlines.values())
report["host_pid_visible"] = os.path.exists(f"/proc/{args['host_pid']}")
report["paths_visible"] = {p: os.path.exists(p) for p in args["host_paths"]}
report["root"] = sorted(os.listdir("/"))
report["etc"] = sorted(os.listdir("/etc"))

# 3. ptrace, mount, kernel, capabilities
report["ptrace_traceme"] = in_child(lambda: result(libc.ptrace(0, 0, None, None)))
PTRACE_ATTACH = 16
report["ptrace_attach_host"] = in_child(
    lambda: result(libc.ptrace(PTRACE_ATTACH, args["host_pid"], None, None))
)
report["mount"] = result(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))
report["release"] = os.uname().release
report["proc_version"] = open("/proc/version").read().strip()
lines = open("/proc/self/status").read().splitlines()
status = dict(line.split(":", 1) for line in lines if ":" in line)
report["cap_eff"] = status.get("CapEff", "").strip()
report["seccomp_mode"] = status.get("Seccomp", "").strip()

# 4. writes
def try_write(path, text="x"):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        return name(exc.errno)
    return "ok"

report["writes"] = {p: try_write(p) for p in args["write_targets"]}
report["work_write"] = try_write("/work/written-by-guest.txt", args["work_text"])
try_write("/work/chmod-setuid")
try:
    os.chmod("/work/chmod-setuid", 0o4755)
    report["chmod_setuid"] = "ok"
except OSError as exc:
    report["chmod_setuid"] = name(exc.errno)
try:
    os.close(os.open("/work/create-setuid", os.O_CREAT | os.O_WRONLY, 0o6755))
    report["create_setuid"] = "ok"
except OSError as exc:
    report["create_setuid"] = name(exc.errno)

# 8. canaries: every place a secret could have leaked to
needles = [unhide(n).encode() for n in args["needles"]]
found = {str(i): [] for i in range(len(needles))}
scanned = []

def scan(where, data):
    scanned.append(where)
    for i, needle in enumerate(needles):
        if needle in data:
            found[str(i)].append(where)

scan("os.environ", "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode())
for pid in pids:
    for what in ("environ", "cmdline"):
        try:
            scan(f"/proc/{pid}/{what}", open(f"/proc/{pid}/{what}", "rb").read())
        except OSError:
            pass
for root in ("/work", "/tmp", "/run", "/etc"):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in args["skip"]]
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                with open(path, "rb") as f:
                    scan(path, f.read(16 << 20))
            except OSError:
                pass
for path in args["data_paths"]:
    try:
        if os.path.isdir(path):
            for entry in os.listdir(path):
                scan(os.path.join(path, entry), open(os.path.join(path, entry), "rb").read())
        else:
            scan(path, open(path, "rb").read())
    except OSError:
        pass
report["canaries"] = found
report["scanned"] = len(scanned)

# 9. seccomp
nums = args["syscalls"]
def sys_call(nr, *a):
    return result(libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a]))

report["seccomp"] = {
    "keyctl": in_child(lambda: sys_call(nums["keyctl"], 1, 0)),  # KEYCTL_JOIN_SESSION_KEYRING
    "unshare_newuser": in_child(lambda: result(libc.unshare(0x10000000))),
    "bpf": in_child(lambda: sys_call(nums["bpf"], 0, 0, 0)),
    "perf_event_open": in_child(lambda: sys_call(nums["perf_event_open"], 0, 0, -1, -1, 0)),
}
print(json.dumps(report))
'''

DENIED = {"EPERM", "EACCES", "EROFS"}


def _hide(value: str) -> str:
    return value[::-1]


def _host_addresses() -> list[str]:
    """127.0.0.1 and, when the host has a route out, its own address on that route."""
    hosts = ["127.0.0.1"]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
        address = s.getsockname()[0]
        if address not in hosts:
            hosts.append(address)
    return hosts


@dataclass(frozen=True)
class Probe:
    report: dict[str, Any]
    rc: int
    stderr: bytes
    backend: str
    other_running: bool
    work: Path
    work_text: str
    write_targets: list[str]
    host_paths: list[str]


@pytest.fixture(name="probe", scope="module")
def probe_fixture(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    """Run :data:`PROBE` in sandbox B while sandbox A runs, with canaries planted on the host."""
    root = tmp_path_factory.mktemp(f"isolation-{backend.name}")
    places = PlaceFactory(root)
    canary_env = f"corral-canary-env-{secrets.token_hex(8)}"
    canary_file = f"corral-canary-key-{secrets.token_hex(8)}"
    control = f"corral-canary-control-{secrets.token_hex(8)}"
    marker = f"corral-marker-{secrets.token_hex(8)}"
    keys = root / ".corral" / "broker" / "keys"
    keys.mkdir(parents=True)
    (keys / "tenant.key").write_text(canary_file)

    a = places("a")
    (a.work / "a-private.txt").write_text(marker)
    b = places("b")
    (b.work / "control.txt").write_text(control)  # the scan must find this one
    (b.work / "probe.py").write_text(PROBE)
    corral_src = str(Path(wire.__file__).parents[2])
    write_targets = [
        "/usr/corral-probe",
        "/etc/corral-probe",
        "/corral-probe",
        "/run/corral/probe",
        f"{sys.base_prefix}/corral-probe",
        f"{sys.prefix}/corral-probe",
        f"{corral_src}/corral-probe",
        *(f"{p}/corral-probe" for p in python_paths()),
    ]
    host_paths = [str(a.work), str(root), str(keys), str(a.channel.parent)]
    work_text = f"written in {backend.name} {secrets.token_hex(4)}"
    args = {
        "tcp_hosts": _host_addresses(),
        "host_pid": os.getpid(),
        "other_marker": _hide(marker),
        "host_paths": host_paths,
        "write_targets": write_targets,
        "work_text": work_text,
        "needles": [_hide(canary_env), _hide(canary_file), _hide(control), _hide(marker)],
        "data_paths": [str(keys), str(keys / "tenant.key")],
        "syscalls": {n: syscall_number(n) for n in ("keyctl", "bpf", "perf_event_open")},
        # The host's Python, mounted read-only on purpose: walking it in gVisor takes minutes.
        "skip": [str(p) for p in python_paths()],
    }
    with socket.create_server(("0.0.0.0", 0)) as server:
        args["tcp_port"] = server.getsockname()[1]
        (b.work / "probe-args.json").write_text(json.dumps(args))

        async def both() -> tuple[Any, bool]:
            sleeper = await backend.start(
                a.spec(["python", "-c", f"import time; time.sleep(300)  # {marker}"])
            )
            try:
                await asyncio.sleep(0.5 if backend.name == "bwrap" else 2.0)
                result = await run_async(backend, b.spec(["python", "/work/probe.py"]))
                running = sleeper.returncode is None
            finally:
                await sleeper.stop(grace_s=0)
            return result, running

        os.environ["CORRAL_TEST_CANARY"] = canary_env
        try:
            result, running = asyncio.run(both())
        finally:
            del os.environ["CORRAL_TEST_CANARY"]
    try:
        assert result.returncode == 0, result.explain()
        yield Probe(
            result.report(),
            result.returncode,
            result.stderr,
            backend.name,
            running,
            b.work,
            work_text,
            write_targets,
            host_paths,
        )
    finally:
        places.close()


def test_no_network(probe: Probe) -> None:
    """1. A server on the host (all addresses) is unreachable; the only interface is lo."""
    assert probe.report["tcp"], "no address was tried"
    for host, outcome in probe.report["tcp"].items():
        assert outcome != "connected", f"{probe.backend} guest reached the host at {host}"
        assert outcome in {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "TimeoutError"}, outcome
    assert probe.report["interfaces"] == ["lo"]


def test_other_sandbox_and_host_invisible(probe: Probe) -> None:
    """2. Sandbox A's processes and work dir, the host's processes and data dirs: not there."""
    assert probe.other_running, "sandbox A had ended before B looked: the check proves nothing"
    assert probe.report["other_marker_in_proc"] is False
    # A's marker (in its work dir and its command line) is nowhere B could read.
    assert probe.report["canaries"]["3"] == []
    assert probe.report["host_pid_visible"] is False
    assert len(probe.report["pids"]) < 10, probe.report["pids"]  # only its own few processes
    for path in probe.host_paths:
        assert probe.report["paths_visible"][path] is False, path


def test_root_holds_only_the_layout(probe: Probe) -> None:
    """Nothing of the host's tree but /usr (and its links), the synthesised /etc, the Python's
    top directories, and the runtime's own /proc, /dev, /tmp, /work, /run (gVisor adds /sys,
    its own)."""
    expected = {"usr", "bin", "lib", "lib64", "sbin", "etc", "proc", "dev", "tmp", "work", "run"}
    expected |= {p.parts[1] for p in python_paths()}
    if probe.backend == "gvisor":
        expected.add("sys")
    assert set(probe.report["root"]) <= expected, set(probe.report["root"]) - expected
    etc = {Path(p).name for p in GUEST_ETC} | {Path(p).name for p in HOST_ETC if Path(p).exists()}
    assert set(probe.report["etc"]) == etc


def test_ptrace_and_mount_fail(probe: Probe) -> None:
    """3. See the module docstring for what is asserted per backend."""
    report = probe.report
    assert report["mount"] in DENIED, report["mount"]
    assert report["ptrace_attach_host"] in {"ESRCH", "EPERM"}, report["ptrace_attach_host"]
    if probe.backend == "bwrap":
        assert report["ptrace_traceme"] == "EPERM"
        assert int(report["cap_eff"], 16) == 0
        assert report["seccomp_mode"] == "2"
    else:
        host_version = Path("/proc/version").read_text().strip()
        assert report["release"] != os.uname().release
        assert report["proc_version"] != host_version
        assert report["release"] == "4.4.0", report["proc_version"]  # what gVisor reports


def test_writes_only_to_work(probe: Probe) -> None:
    """4. Everything but /work is read-only; a write to /work lands in the host work dir."""
    for target in probe.write_targets:
        outcome = probe.report["writes"][target]
        assert outcome in DENIED | {"ENOENT"}, f"{target}: {outcome}"
        assert outcome != "ok"
    assert probe.report["work_write"] == "ok"
    assert (probe.work / "written-by-guest.txt").read_text() == probe.work_text


def test_no_setuid_file_reaches_the_host(probe: Probe, request: pytest.FixtureRequest) -> None:
    """The guest is root (mapped to the host uid corral runs as): a setuid file it left in
    /work would be a setuid-root program on the host. bwrap's seccomp filter refuses setting
    the bits. gVisor's gofer applies them on the host: a known gap, kept visible here."""
    if probe.backend == "gvisor":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="runsc's gofer creates the guest's setuid files on the host; the fix is "
                "an unprivileged host uid per sandbox (see the report)",
            )
        )
    setid = sorted(
        p.name for p in probe.work.iterdir() if p.is_file() and p.stat().st_mode & 0o6000
    )
    assert setid == [], f"setuid/setgid files from {probe.backend} on the host: {setid}"
    assert probe.report["chmod_setuid"] == "EPERM"
    assert probe.report["create_setuid"] == "EPERM"


def test_no_canary_leaks(probe: Probe) -> None:
    """8. Neither the host's environment nor its data dir reaches the guest; the control
    canary, put in /work on purpose, is found (so the scan does look)."""
    canaries = probe.report["canaries"]
    assert canaries["2"] == ["/work/control.txt"], canaries
    assert canaries["0"] == [], f"host environment canary leaked to {canaries['0']}"
    assert canaries["1"] == [], f"data dir canary leaked to {canaries['1']}"
    assert probe.report["scanned"] > 5


def test_seccomp_refuses(probe: Probe) -> None:
    """9. bwrap: keyctl, unshare(CLONE_NEWUSER), bpf and perf_event_open get EPERM from the
    filter. gVisor has no such filter (the Sentry is the boundary): keyctl, bpf and
    perf_event_open fail there too, and unshare only makes a namespace in the Sentry's kernel."""
    seccomp = probe.report["seccomp"]
    if probe.backend == "bwrap":
        assert seccomp == {
            "keyctl": "EPERM",
            "unshare_newuser": "EPERM",
            "bpf": "EPERM",
            "perf_event_open": "EPERM",
        }
    else:
        for call in ("keyctl", "bpf", "perf_event_open"):
            assert seccomp[call] != "ok", (call, seccomp)


HOG = """
import sys
chunks = []
try:
    for i in range({n}):
        chunks.append(b"\\1" * (8 << 20))  # written, so the pages are really used
except MemoryError:
    print("MemoryError after", i * 8, "MiB", flush=True)
    sys.exit(3)
print("survived", flush=True)
"""


def test_memory_hog_is_contained(backend: Backend, places: PlaceFactory) -> None:
    """5. A guest allocating 4x its limit dies or gets MemoryError; the next sandbox starts."""
    limit = 64
    hog = run_python(
        backend, places("hog"), HOG.format(n=4 * limit // 8), limits=Limits(memory_mib=limit)
    )
    assert not hog.timed_out
    assert b"survived" not in hog.stdout, hog.explain()
    assert hog.returncode == 3 or hog.returncode == -9, hog.explain()
    after = run_python(backend, places("after-hog"), "print('fine')")
    assert (after.returncode, after.stdout) == (0, b"fine\n"), after.explain()


BOMB = """
import errno, json, os, time
forked, failure = 0, None
for _ in range(10_000):
    try:
        pid = os.fork()
    except OSError as exc:
        failure = errno.errorcode.get(exc.errno, str(exc.errno))
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    forked += 1
print(json.dumps({"forked": forked, "failure": failure}), flush=True)
"""


def test_fork_bomb_is_contained(backend: Backend, places: PlaceFactory) -> None:
    """6. Forking 10,000 times hits the pids bound (EAGAIN) or kills the sandbox; afterwards a
    new sandbox starts in normal time."""
    pids_bound = limit_mechanisms(backend)["pids"]
    if pids_bound.startswith("none"):
        need_service("a pids bound (cgroup v1 pids)", pids_bound)
    before = run_python(backend, places("before-bomb"), "pass")
    assert before.returncode == 0, before.explain()
    pids = 32
    bomb = run_python(backend, places("bomb"), BOMB, limits=Limits(pids=pids), timeout_s=120)
    assert not bomb.timed_out, bomb.explain()
    if bomb.returncode == 0:
        report = bomb.report()
        assert report["failure"] == "EAGAIN", report
        assert report["forked"] < pids, report
    else:  # the sandbox as a whole was killed (gVisor: OOM or the Sentry out of threads)
        assert b'"forked"' not in bomb.stdout, bomb.explain()
    after = run_python(backend, places("after-bomb"), "pass")
    assert after.returncode == 0, after.explain()
    assert after.elapsed_s < max(3 * before.elapsed_s, before.elapsed_s + 2.0), (
        before.elapsed_s,
        after.elapsed_s,
    )


CHANNEL_GUEST = """
import json, os, socket
from corral.guest import wire
sock = socket.socket(socket.AF_UNIX)
sock.connect(os.environ["CORRAL_CHANNEL"])
wire.write_frame_sync(sock, wire.request("ping", {"n": 7}, id=1))
print(json.dumps({"path": os.environ["CORRAL_CHANNEL"], "reply": wire.read_frame_sync(sock)}))
"""


def test_channel_exchanges_a_frame(backend: Backend, places: PlaceFactory) -> None:
    """7. The guest reaches the host's server at /run/corral/channel.sock; one frame each way."""
    place = places("channel", listen=False)
    received: list[dict[str, Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        message = await wire.read_frame(reader)
        assert message is not None
        received.append(message)
        await wire.write_frame(writer, wire.result(message["id"], {"pong": message["params"]}))
        writer.close()

    async def go() -> Any:
        server = await asyncio.start_unix_server(serve, path=str(place.channel))
        async with server:
            started = time.perf_counter()
            sandbox = await backend.start(place.spec(["python", "-c", CHANNEL_GUEST]))
            return await finish(sandbox, TIMEOUT_S[backend.name], started)

    result = asyncio.run(go())
    assert result.returncode == 0, result.explain()
    assert received == [{"jsonrpc": "2.0", "method": "ping", "params": {"n": 7}, "id": 1}]
    assert result.report() == {
        "path": str(GUEST_CHANNEL),
        "reply": {"jsonrpc": "2.0", "id": 1, "result": {"pong": {"n": 7}}},
    }


def test_guest_environment_is_exactly_the_guest_env(backend: Backend, places: PlaceFactory) -> None:
    """The guest's environment is ``guest_env(spec)`` (bwrap adds PWD, which it always sets)."""
    place = places("env")
    spec = place.spec(
        ["python", "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        env={"AGENT_SETTING": "on"},
    )
    os.environ["CORRAL_TEST_HOST_ONLY"] = "host"
    try:
        result = run(backend, spec)
    finally:
        del os.environ["CORRAL_TEST_HOST_ONLY"]
    assert result.returncode == 0, result.explain()
    env = result.report()
    if backend.name == "bwrap":
        assert env.pop("PWD") == "/work"
    assert env == guest_env(spec)
    assert env["AGENT_SETTING"] == "on"
