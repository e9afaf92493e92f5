"""The seccomp deny-list on its own: the exact BPF bytes bwrap gets, loaded into a child process
with ``prctl``, refuse what they should and leave ordinary Python (fork, threads) working.

Each check runs twice, with and without the filter, so a refusal is shown to be the filter's.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.runtime.seccomp import (
    DENIED,
    ENOSYS,
    arg_rules,
    denied_syscalls,
    filter_bpf,
    syscall_number,
)

CHILD = r"""
import ctypes, errno, json, os, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nums = json.loads(sys.argv[2])


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


if sys.argv[1] != "-":
    program = open(sys.argv[1], "rb").read()
    count = len(program) // 8
    prog = SockFprog(count, (SockFilter * count).from_buffer_copy(program))
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, ul(2), ctypes.byref(prog), ul(0), ul(0)) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def outcome(ret):
    return "ok" if ret != -1 else errno.errorcode.get(ctypes.get_errno(), "?")


def sys_call(name, *args):
    return outcome(libc.syscall(ctypes.c_long(nums[name]), *[ctypes.c_long(a) for a in args]))


def in_child(fn):
    # Calls that change the process (unshare, ptrace, clone) run in a throwaway child.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, fn().encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    return out


def clone_newuser():
    ret = libc.syscall(ctypes.c_long(nums["clone"]), ctypes.c_long(0x10000000 | 17),
                       ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    if ret == 0:
        os._exit(0)  # the clone's child
    if ret > 0:
        os.waitpid(ret, 0)
        return "ok"
    return outcome(ret)


def thread_runs():
    done = []
    t = threading.Thread(target=lambda: done.append(1))
    t.start()
    t.join()
    return "ok" if done else "no"


def fork_runs():
    pid = os.fork()
    if pid == 0:
        os._exit(5)
    return "ok" if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 5 else "no"


report = {
    "getpid": outcome(os.getpid()),
    "fork": fork_runs(),
    "thread": thread_runs(),
    "keyctl": in_child(lambda: sys_call("keyctl", 1, 0)),  # KEYCTL_JOIN_SESSION_KEYRING
    "unshare_newuser": in_child(lambda: outcome(libc.unshare(0x10000000))),
    "clone_newuser": in_child(clone_newuser),
    "clone3": sys_call("clone3", 0, 0),
    "ptrace_traceme": in_child(lambda: outcome(libc.ptrace(0, 0, None, None))),
    "mount_missing_target": outcome(libc.mount(b"none", b"/nonexistent-corral", b"tmpfs", 0, None)),
    "tiocsti": outcome(libc.ioctl(0, ctypes.c_ulong(0x5412), ctypes.c_char_p(b"x"))),
    "userfaultfd": sys_call("userfaultfd", 0),
    "io_uring_setup": sys_call("io_uring_setup", 1, 0),
    "openat2": sys_call("openat2", -100, 0, 0, 0),
}


def try_(fn):
    try:
        fn()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"


work = sys.argv[3]
open(f"{work}/plain", "w").close()
report["chmod_setuid"] = try_(lambda: os.chmod(f"{work}/plain", 0o4755))
report["chmod_setgid"] = try_(lambda: os.chmod(f"{work}/plain", 0o2755))
report["chmod_plain"] = try_(lambda: os.chmod(f"{work}/plain", 0o755))
CREATE = os.O_CREAT | os.O_WRONLY
report["create_setuid"] = try_(lambda: os.close(os.open(f"{work}/new", CREATE, 0o4755)))
report["create_plain"] = try_(lambda: os.close(os.open(f"{work}/new2", CREATE, 0o644)))
report["setuid_files"] = sorted(
    name for name in os.listdir(work) if os.stat(f"{work}/{name}").st_mode & 0o6000
)
print(json.dumps(report))
"""

NUMBERS = {
    name: syscall_number(name)
    for name in ("keyctl", "clone", "clone3", "userfaultfd", "io_uring_setup", "getpid", "openat2")
}


def _run_child(
    tmp_path: Path, filtered: bool, code: str = CHILD
) -> subprocess.CompletedProcess[str]:
    bpf = tmp_path / "filter.bpf"
    bpf.write_bytes(filter_bpf())
    script = tmp_path / "child.py"
    script.write_text(code)
    work = tmp_path / ("filtered" if filtered else "unfiltered")
    work.mkdir()
    return subprocess.run(
        [
            sys.executable,
            str(script),
            str(bpf) if filtered else "-",
            json.dumps(NUMBERS),
            str(work),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _report(tmp_path: Path, filtered: bool) -> dict[str, Any]:
    done = _run_child(tmp_path, filtered)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_program_is_bpf_and_cached() -> None:
    program = filter_bpf()
    assert program is filter_bpf()
    assert len(program) % 8 == 0 and len(program) // 8 > len(denied_syscalls())
    # The first instruction loads seccomp_data.arch (offset 4): every rule is per architecture.
    code, _jt, _jf, k = struct.unpack("=HBBI", program[:8])
    assert (code, k) == (0x20, 4)


def test_every_named_syscall_is_known() -> None:
    """A typo in the lists would raise here (libseccomp knows every real syscall name)."""
    for name in [*denied_syscalls(), *ENOSYS, *(rule.syscall for rule in arg_rules())]:
        syscall_number(name)
    with pytest.raises(ValueError, match="does not know"):
        syscall_number("not_a_syscall")


def test_the_brief_list_is_denied() -> None:
    required = {
        "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
        "chroot", "keyctl", "add_key", "request_key", "bpf", "unshare", "setns",
        "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module",
        "delete_module", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "swapon",
        "swapoff", "reboot", "acct", "quotactl", "lookup_dcookie", "iopl", "ioperm",
    }  # fmt: skip
    assert required <= set(denied_syscalls())
    assert len(denied_syscalls()) == len(set(denied_syscalls())), "a syscall listed twice"
    assert all(DENIED.values())
    assert any(r.syscall == "clone" and r.when == ((0, 1 << 28, 1 << 28),) for r in arg_rules())


def test_filter_refuses_what_it_should(tmp_path: Path) -> None:
    report = _report(tmp_path, filtered=True)
    assert report["keyctl"] == "EPERM"
    assert report["unshare_newuser"] == "EPERM"
    assert report["clone_newuser"] == "EPERM"
    assert report["clone3"] == "ENOSYS"
    assert report["ptrace_traceme"] == "EPERM"
    assert report["mount_missing_target"] == "EPERM"
    assert report["tiocsti"] == "EPERM"
    assert report["userfaultfd"] == "EPERM"
    assert report["io_uring_setup"] == "EPERM"
    assert report["openat2"] == "ENOSYS"
    assert report["chmod_setuid"] == report["chmod_setgid"] == "EPERM"
    assert report["create_setuid"] == "EPERM"
    assert report["setuid_files"] == []


def test_filter_keeps_python_working(tmp_path: Path) -> None:
    """fork uses clone without namespace flags; threads fall back from clone3 to clone; files
    are made and chmod-ed as usual."""
    report = _report(tmp_path, filtered=True)
    assert (report["getpid"], report["fork"], report["thread"]) == ("ok", "ok", "ok")
    assert (report["chmod_plain"], report["create_plain"]) == ("ok", "ok")


def test_without_the_filter_the_same_calls_get_past_it(tmp_path: Path) -> None:
    """The control: unfiltered, these calls succeed or fail for another reason, so the EPERMs
    above are the filter's doing."""
    report = _report(tmp_path, filtered=False)
    assert report["clone3"] != "ENOSYS"
    assert report["mount_missing_target"] == "ENOENT"
    assert report["tiocsti"] != "EPERM"
    assert report["ptrace_traceme"] == "ok"
    assert report["openat2"] != "ENOSYS"
    assert report["chmod_setuid"] == report["create_setuid"] == "ok"
    assert report["setuid_files"] == ["new"]  # ("plain" was chmod-ed back to 0755 after)
    # As root these succeed; elsewhere they may be refused by the kernel's own policy.
    if os.geteuid() == 0:
        assert report["unshare_newuser"] == "ok"
        assert report["clone_newuser"] == "ok"


X32 = """
libc.syscall(ctypes.c_long(0x40000000 + 39))  # getpid through the x32 ABI
print("survived")
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x32 ABI exists on x86_64 only")
def test_other_abi_kills_the_process(tmp_path: Path) -> None:
    """A syscall through the x32 ABI would dodge every rule keyed on x86_64 numbers: killed."""
    loader = CHILD.split("def outcome", 1)[0]  # the part that installs the filter
    done = _run_child(tmp_path, filtered=True, code=loader + X32)
    assert done.returncode == -signal.SIGSYS, (done.returncode, done.stdout, done.stderr)
    assert "survived" not in done.stdout
