#!/usr/bin/python3 -I
"""corral's guest init for Firecracker (installed as /sbin/corral-init; kernel ``init=``).

Runs as PID 1 on the read-only root filesystem, standard library only:

1. mounts /proc, /sys, /dev (devtmpfs), /run (tmpfs) and brings up loopback (the only
   network interface: the VM has no NIC);
2. finds the boot drive by its magic (``CORRAL-BOOT/1``, written by
   ``corral.runtime.firecracker.boot_config``) and reads the command, environment and limits;
3. mounts the scratch drive (the other non-root virtio disk) at /work and gives its files to
   the agent user (uid 1000), and a tmpfs of ``tmp_mib`` at /tmp;
4. bridges the channel: listens on /run/corral/channel.sock and, for each connection, opens
   AF_VSOCK to CID 2 (the host) port 52, which Firecracker hands to the host's
   ``<uds_path>_52``. A bridge rather than the SDK speaking vsock itself keeps the guest SDK
   identical on every backend (it always connects ``CORRAL_CHANNEL``), and reconnects after a
   snapshot restore (vsock connections are reset) come for free: each new connection is a new
   vsock stream;
5. runs the command as uid 1000 under ``prlimit`` (nproc, nofile, cpu) and ``setpriv``, with
   exactly the environment from the boot drive, stdout/stderr on the serial console;
6. on its exit (or Ctrl-Alt-Del from the host: SIGINT to PID 1) prints
   ``corral-exit: <status>``, syncs and reboots, which ends Firecracker (``reboot=k``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

BOOT_MAGIC = b"CORRAL-BOOT/1\n"
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY = 2, 4, 8, 1
LINUX_REBOOT_CMD_RESTART = 0x01234567
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
VMADDR_CID_HOST = 2

_libc = ctypes.CDLL(None, use_errno=True)
_child_pid = 0
_stopping = False


def log(message: str) -> None:
    sys.stderr.write(f"corral-init: {message}\n")
    sys.stderr.flush()


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        if err != 16:  # EBUSY: already mounted (devtmpfs by CONFIG_DEVTMPFS_MOUNT)
            raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def parse_boot(raw: bytes) -> dict[str, object] | None:
    """The boot drive's document, or None if these bytes are not a boot drive."""
    if not raw.startswith(BOOT_MAGIC):
        return None
    line = raw[len(BOOT_MAGIC) :].split(b"\n", 1)[0]
    document = json.loads(line)
    if not isinstance(document, dict):
        raise ValueError("boot drive does not hold a JSON object")
    return document


def find_drives() -> tuple[dict[str, object], str]:
    """(boot document, scratch device) among the non-root virtio disks."""
    boot, scratch = None, None
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith("vd") or name == "vda":
            continue
        with open(f"/dev/{name}", "rb") as disk:
            head = disk.read(1 << 20)
        document = parse_boot(head)
        if document is not None:
            boot = document
        else:
            scratch = f"/dev/{name}"
    if boot is None or scratch is None:
        raise RuntimeError(f"boot drive found: {boot is not None}; scratch drive: {scratch}")
    return boot, scratch


def give_to_agent(top: str, uid: int) -> None:
    for root, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            if os.lstat(path).st_uid != uid:
                os.lchown(path, uid, uid)
    os.chown(top, uid, uid)


# -- the channel bridge ------------------------------------------------------------------------


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _bridge_one(local: socket.socket, port: int) -> None:
    remote = None
    for attempt in range(50):
        remote = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            remote.connect((VMADDR_CID_HOST, port))
            break
        except OSError:
            remote.close()
            remote = None
            time.sleep(min(0.01 * (attempt + 1), 0.2))
    if remote is None:
        log(f"vsock CID {VMADDR_CID_HOST} port {port}: the host does not answer")
        local.close()
        return
    back = threading.Thread(target=_pump, args=(remote, local), daemon=True)
    back.start()
    _pump(local, remote)
    back.join()
    local.close()
    remote.close()


def start_bridge(path: str, port: int, uid: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chown(path, uid, uid)
    os.chmod(path, 0o600)
    server.listen(8)

    def accept() -> None:
        while True:
            local, _ = server.accept()
            threading.Thread(target=_bridge_one, args=(local, port), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


# -- the command -------------------------------------------------------------------------------


def _on_ctrl_alt_del(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True
    if _child_pid:
        with contextlib.suppress(OSError):
            os.killpg(_child_pid, signal.SIGTERM)
        signal.alarm(1)


def _on_alarm(signum: int, frame: object) -> None:
    if _child_pid:
        with contextlib.suppress(OSError):
            os.killpg(_child_pid, signal.SIGKILL)


def run(boot: dict[str, object]) -> int:
    global _child_pid
    limits, argv_in, env_in = boot["limits"], boot["argv"], boot["env"]
    assert isinstance(limits, dict) and isinstance(argv_in, list) and isinstance(env_in, dict)
    if _stopping:  # the host asked to stop before the command started
        return 128 + signal.SIGINT
    uid = int(str(boot["uid"]))
    argv = [str(a) for a in argv_in]
    env = {str(k): str(v) for k, v in env_in.items()}
    wrapped = [
        "/usr/bin/prlimit",
        f"--nproc={int(limits['pids'])}",
        f"--nofile={int(limits['open_files'])}",
        f"--cpu={int(limits['cpu_seconds'])}",
        "/usr/bin/setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        *argv,
    ]
    child = subprocess.Popen(  # noqa: S603 - the sandbox's own command, in the sandbox
        wrapped, env=env, cwd=str(boot["work"]), stdin=subprocess.DEVNULL, start_new_session=True
    )
    _child_pid = child.pid
    while True:  # PID 1 reaps every orphan; our child's status is the sandbox's
        pid, status = os.waitpid(-1, 0)
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting
            return child.returncode


def main() -> None:
    status = 1
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
        mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
        loopback_up()
        boot, scratch = find_drives()
        limits = boot["limits"]
        assert isinstance(limits, dict)
        uid = int(str(boot["uid"]))
        work = str(boot["work"])
        mount(scratch, work, "ext4", MS_NOSUID | MS_NODEV)
        give_to_agent(work, uid)
        tmp_size = f"size={int(limits['tmp_mib'])}m,mode=1777"
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_size)  # noqa: S108
        channel = boot["channel"]
        assert isinstance(channel, dict)
        start_bridge(str(channel["path"]), int(channel["port"]), uid)
        signal.signal(signal.SIGINT, _on_ctrl_alt_del)
        signal.signal(signal.SIGALRM, _on_alarm)
        status = run(boot)
    except BaseException:
        traceback.print_exc()
    sys.stdout.write(f"corral-exit: {status}\n")
    sys.stdout.flush()
    os.sync()
    _libc.reboot(LINUX_REBOOT_CMD_RESTART)


if __name__ == "__main__":
    main()
