"""The seccomp filter every ``bwrap`` sandbox runs under: a deny-list compiled to classic BPF.

**Why a deny-list.** The guest is CPython plus whatever C extensions an agent imports; they call
hundreds of syscalls that vary with the libc, the extension and the kernel. An allow-list would
break them in ways found only in production; a deny-list keeps everything ordinary working
and removes the syscalls that exist to administer the host, inspect other processes or reach
the kernel's least-trodden code. The capabilities bubblewrap drops already refuse most of these;
the filter is the second wall, and it also covers the ones no capability guards
(``unshare(CLONE_NEWUSER)``, ``keyctl``, ``userfaultfd``, ``io_uring``, ``perf_event_open``).

**Which profile.** The groups follow the table of "significant syscalls blocked by the default
profile" in Docker's "Seccomp security profiles for Docker" (moby's default profile, for a
container without ``CAP_SYS_ADMIN``), plus what bubblewrap's manual names (``--seccomp`` takes
exactly such a compiled classic BPF program; ``--new-session`` exists because of ``TIOCSTI``,
CVE-2017-5226) and, for filtering on arguments rather than whole syscalls (clone flags, ioctl
requests), the approach of Firecracker's seccomp documentation (``docs/seccomp.md``). The
setuid/setgid rules mirror systemd's ``RestrictSUIDSGID=``. The rules here are written from
those documents; no profile is copied.

Denied calls fail with ``EPERM`` (what a program sees when it lacks the privilege, so library
code takes its error path) except those in :data:`ENOSYS`, whose arguments sit in a struct a
filter cannot read: they pretend not to exist, so that libc falls back to the older call the
filter can check. Syscalls of another ABI (i386 via ``int 0x80``, x32) kill the process:
libseccomp's bad-architecture action, since those numbers would bypass every rule here.
"""

from __future__ import annotations

import errno
import functools
import importlib
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DENIED",
    "ENOSYS",
    "ArgRule",
    "arg_rules",
    "denied_syscalls",
    "filter_bpf",
    "syscall_number",
]

# pyseccomp ships no type information (no py.typed); everything it returns is plain ints.
_seccomp: Any = importlib.import_module("pyseccomp")

DENIED: dict[str, tuple[str, ...]] = {
    # Reading or steering another process: ptrace is the classic sandbox escape (and how a
    # guest would tamper with bwrap's own pid 1); process_vm_* read memory without ptrace;
    # kcmp and pidfd_getfd compare or steal another process's descriptors.
    "other processes": (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kcmp",
        "pidfd_getfd",
    ),
    # Changing the filesystem view: the read-only root is only read-only while nothing can be
    # mounted over it. The old API and the new fd-based one (fsopen ... mount_setattr).
    "mounts": (
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
    ),
    # New namespaces hand a process a full capability set inside them: the door to most
    # kernel bugs reachable "unprivileged" (netfilter, overlayfs, ...). clone's flags below.
    "namespaces": ("unshare", "setns"),
    # The kernel keyring is not namespaced: keys would be shared with the host.
    "keyring": ("keyctl", "add_key", "request_key"),
    # Programs loaded into the kernel, and its performance counters (side channels, CVEs).
    "bpf and perf": ("bpf", "perf_event_open"),
    # Replacing or extending the running kernel.
    "kernel code": (
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
    ),
    # A file handle opens an inode without a path, so past every bind mount ("shocker").
    "file handles": ("open_by_handle_at", "name_to_handle_at"),
    # userfaultfd pauses the kernel mid-copy: the standard tool to win kernel races.
    # io_uring: a second syscall interface, where most recent kernel escapes live (Docker
    # blocks it since 2023).
    "exploit primitives": (
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ),
    # Administering the host: swap, power, accounting, quotas, the kernel log, the clock,
    # names (the UTS namespace is private, but nothing in a guest needs to rename it).
    "host administration": (
        "swapon",
        "swapoff",
        "reboot",
        "acct",
        "quotactl",
        "quotactl_fd",
        "lookup_dcookie",
        "syslog",
        "vhangup",
        "settimeofday",
        "clock_settime",
        "sethostname",
        "setdomainname",
        "nfsservctl",
        "uselib",
    ),
    # Raw port I/O on x86.
    "hardware": ("iopl", "ioperm"),
}
"""Syscalls refused outright with ``EPERM``, by group (the key says why; comments say more)."""

ENOSYS: tuple[str, ...] = ("clone3", "openat2")
"""Syscalls that pretend not to exist, because what the filter must see sits in a struct it
cannot read: ``clone3``'s flags (glibc falls back to ``clone``, whose flags :func:`arg_rules`
checks, only on ``ENOSYS``) and ``openat2``'s mode (libc never calls it on its own)."""

# Flags from <linux/sched.h>. CLONE_NEWTIME is left out: in clone()'s first argument its bit
# (0x80) belongs to the exit signal, and clone() cannot create a time namespace anyway.
_CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# ioctl requests from <asm-generic/ioctls.h>: pushing bytes into a terminal's input queue
# (TIOCSTI, CVE-2017-5226, the reason for bwrap's --new-session) and the Linux console's
# multiplexer (TIOCLINUX, which can do the same through selection paste).
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C


# Mode bits from <sys/stat.h> and open flags from <asm-generic/fcntl.h>.
_S_ISUID = 0o4000
_S_ISGID = 0o2000
_O_CREAT = 0o100
_O_TMPFILE = 0o20000000  # __O_TMPFILE, the bit that makes an unnamed file


@dataclass(frozen=True)
class ArgRule:
    """A syscall refused only when, for every ``(index, mask, value)`` in ``when``,
    ``args[index] & mask == value``."""

    syscall: str
    when: tuple[tuple[int, int, int], ...]
    errno: int
    why: str


def _setid_rules() -> list[ArgRule]:
    """No setuid or setgid file can be made. The guest is its host uid (root, when corral runs
    as root) inside its user namespace, so a setuid file it leaves in ``/work`` would be a
    setuid-root program on the host. ``/work`` is mounted nosuid in the sandbox, not on the
    host. (systemd's ``RestrictSUIDSGID=`` refuses the same calls.)"""
    rules: list[ArgRule] = []
    for bit, label in ((_S_ISUID, "setuid"), (_S_ISGID, "setgid")):
        mode = (bit, bit)
        rules += [
            ArgRule("chmod", ((1, *mode),), errno.EPERM, f"chmod {label}"),
            ArgRule("fchmod", ((1, *mode),), errno.EPERM, f"fchmod {label}"),
            ArgRule("fchmodat", ((2, *mode),), errno.EPERM, f"fchmodat {label}"),
            ArgRule("fchmodat2", ((2, *mode),), errno.EPERM, f"fchmodat2 {label}"),
            ArgRule("creat", ((1, *mode),), errno.EPERM, f"creat {label}"),
            ArgRule("mknod", ((1, *mode),), errno.EPERM, f"mknod {label}"),
            ArgRule("mknodat", ((2, *mode),), errno.EPERM, f"mknodat {label}"),
        ]
        for create in (_O_CREAT, _O_TMPFILE):
            rules += [
                ArgRule("open", ((1, create, create), (2, *mode)), errno.EPERM, f"open {label}"),
                ArgRule(
                    "openat", ((2, create, create), (3, *mode)), errno.EPERM, f"openat {label}"
                ),
            ]
    return rules


def arg_rules() -> tuple[ArgRule, ...]:
    """The conditional rules: clone with a namespace flag, terminal injection, setuid and
    setgid files."""
    rules = [
        ArgRule("clone", ((0, flag, flag),), errno.EPERM, f"clone with {name}")
        for name, flag in _CLONE_NAMESPACE_FLAGS.items()
    ]
    # The kernel compares only the low 32 bits of an ioctl request, so mask to them.
    rules.append(ArgRule("ioctl", ((1, 0xFFFFFFFF, _TIOCSTI),), errno.EPERM, "TIOCSTI"))
    rules.append(ArgRule("ioctl", ((1, 0xFFFFFFFF, _TIOCLINUX),), errno.EPERM, "TIOCLINUX"))
    return (*rules, *_setid_rules())


def denied_syscalls() -> tuple[str, ...]:
    """Every syscall refused unconditionally, flattened."""
    return tuple(name for group in DENIED.values() for name in group)


# Syscalls a libseccomp older than the kernel may not know (fchmodat2 is Linux 6.6): by number,
# in the table every architecture but alpha and ia64 has shared since Linux 5.1 (asm-generic).
_NEWER_THAN_LIBSECCOMP = {"fchmodat2": 452}


def syscall_number(name: str) -> int:
    """The native number of syscall ``name`` (negative: absent on this architecture)."""
    number = int(_seccomp.resolve_syscall(_seccomp.Arch.NATIVE, name))
    if number == -1 and name in _NEWER_THAN_LIBSECCOMP:
        return _NEWER_THAN_LIBSECCOMP[name]
    if number == -1:  # __NR_SCMP_ERROR: libseccomp has never heard of it (a typo here)
        raise ValueError(f"libseccomp does not know the syscall {name!r}")
    # Negative pseudo-numbers name syscalls absent on this architecture; libseccomp accepts
    # rules for them and emits nothing, which is right (an absent syscall cannot be called).
    return number


@functools.cache
def filter_bpf() -> bytes:
    """The filter as classic BPF for the native architecture (``bwrap --seccomp FD`` reads
    exactly this); compiled once per process."""
    flt = _seccomp.SyscallFilter(_seccomp.ALLOW)
    flt.set_attr(_seccomp.Attr.ACT_BADARCH, _seccomp.KILL_PROCESS)
    for name in denied_syscalls():
        flt.add_rule(_seccomp.ERRNO(errno.EPERM), syscall_number(name))
    for name in ENOSYS:
        flt.add_rule(_seccomp.ERRNO(errno.ENOSYS), syscall_number(name))
    for rule in arg_rules():
        flt.add_rule(
            _seccomp.ERRNO(rule.errno),
            syscall_number(rule.syscall),
            *(
                _seccomp.Arg(index, _seccomp.MASKED_EQ, mask, value)
                for index, mask, value in rule.when
            ),
        )
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:  # struct sock_filter is 8 bytes
        raise RuntimeError(f"libseccomp exported {len(program)} bytes, not a BPF program")
    return program
