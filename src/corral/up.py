"""``corral up``: the broker, control and the host as child processes of one command.

One machine, embedded defaults: one data directory, SQLite files, local key files, the
strongest sandbox backend the machine runs (``corral runtime doctor``). The children are the
same commands a deployment runs one by one (``corral broker serve``, ``corral control serve``,
``corral host serve``), started in that order because each needs the one before (control asks
the broker to execute, the host relays to control); each is waited for on its health endpoint
over its Unix socket, with a bound, and a child that dies first is reported with the tail of its
log. ``--config FILE`` and ``CORRAL_*`` variables reach every child unchanged.

On SIGINT (Ctrl-C) or SIGTERM the children are stopped in reverse order: SIGTERM, then
SIGKILL after ``up.stop_grace_s``. They run in their own sessions, so a terminal's Ctrl-C
reaches ``corral up`` alone and the order holds; and each asks the kernel for SIGTERM should
``corral up`` die without stopping them (``PR_SET_PDEATHSIG``), so none is left behind.

``--aws`` (or ``up.aws = true``) selects the AWS defaults of the architecture: the broker's
master key in AWS KMS (``broker.kms_key_id``, region ``us-west-2``) and anchors in DynamoDB
(``audit.anchor``, region ``us-west-2``); :func:`aws_environment` says exactly what changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.core.errors import CorralError
from corral.core.settings import Settings

__all__ = [
    "CORRAL",
    "Child",
    "ChildSpec",
    "Stack",
    "UpError",
    "aws_environment",
    "backend_label",
    "dashboard_url",
    "prepare",
    "root_args",
    "standard_children",
    "wait_for_stop",
]

CORRAL = (sys.executable, "-m", "corral.cli")
"""The ``corral`` command as this interpreter runs it (no console script needed)."""

_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 25


class UpError(CorralError):
    """A child did not start (or was already running); the message says which and why."""


@dataclass(frozen=True)
class ChildSpec:
    """One child process: its name, its command line and the socket its health answers on."""

    name: str
    argv: tuple[str, ...]
    socket: Path
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables added to the inherited environment for this child only."""


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    log: Path
    ready_s: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines of the child's output (stdout and stderr share the log file)."""
        try:
            text = self.log.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


def root_args(settings: Settings, config: Path | None) -> list[str]:
    """The root options that give a child the same settings: the TOML file and the absolute
    data directory (a child may resolve relative paths elsewhere)."""
    args = ["--config", str(config.resolve())] if config is not None else []
    return [*args, "--data-dir", str(settings.data_dir.resolve())]


def standard_children(settings: Settings, config: Path | None) -> list[ChildSpec]:
    """``corral broker serve``, ``corral control serve``, ``corral host serve``: in order."""
    root = [*CORRAL, *root_args(settings, config)]
    return [
        ChildSpec("broker", (*root, "broker", "serve"), settings.broker_socket().resolve()),
        ChildSpec("control", (*root, "control", "serve"), settings.control_socket().resolve()),
        ChildSpec("host", (*root, "host", "serve"), settings.host_socket.resolve()),
    ]


def aws_environment(settings: Settings) -> dict[str, str]:
    """The variables that turn the embedded defaults into the AWS ones: the broker's key in
    KMS and anchors in DynamoDB (both in ``us-west-2`` unless configured otherwise). The KMS
    key itself cannot be defaulted: ``broker.kms_key_id`` must be set."""
    if not settings.broker.kms_key_id:
        raise UpError(
            "--aws needs the KMS key: set broker.kms_key_id (CORRAL_BROKER__KMS_KEY_ID) to the "
            "shared key's id or ARN (docs/broker-keys.md)"
        )
    return {
        "CORRAL_BROKER__KEY_PROVIDER": "aws-kms",
        "CORRAL_BROKER__REGION": settings.broker.region,
        "CORRAL_AUDIT__ANCHOR__BACKEND": "dynamodb",
        "CORRAL_AUDIT__ANCHOR__REGION": settings.audit.anchor.region,
    }


def prepare(settings: Settings) -> None:
    """What must exist before the broker starts: the data directory and, on one machine,
    control's approval key (the broker trusts its public half, ``control/approval.pub``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not settings.broker.approval_vkeys:
        from corral.broker.assembly import control_approval_signer

        control_approval_signer(settings)


def dashboard_url(settings: Settings) -> str | None:
    """Where a browser on this machine finds the dashboard, or ``None`` when it is off."""
    dashboard = settings.dashboard
    if not dashboard.enabled:
        return None
    host, port = dashboard.address()
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/dashboard"


def backend_label(settings: Settings) -> str:
    """The sandbox backend the host will use (``auto``: the strongest available) and its
    isolation level, or why there is none."""
    from corral.runtime.backends import backend, best_available

    try:
        name = settings.host.backend
        chosen = best_available(None, settings) if name == "auto" else backend(name, settings)
    except CorralError as exc:
        return f"none ({exc})"
    return f"{chosen.name} ({chosen.level.label})"


_libc: Any = None


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    """Ask the kernel for SIGTERM when the parent dies. Only a C call here: the library was
    loaded before the fork, so no lock another thread may hold is needed."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _healthy(socket: Path, timeout_s: float = 2.0) -> bool:
    if not socket.exists():
        return False
    transport = httpx.HTTPTransport(uds=str(socket))
    try:
        with httpx.Client(transport=transport, base_url="http://corral", timeout=timeout_s) as c:
            return c.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


Progress = Callable[[str, str], None]
"""``(child name, event)``: ``starting``, ``ready``, ``stopping``, ``stopped``, ``killed``."""


class Stack:
    """Child processes started in order, each healthy before the next; stopped in reverse.

    ``stop_requested`` (an :class:`threading.Event`) aborts a start in progress: whatever
    started is stopped and :meth:`start` returns ``False``.
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        logs: Path,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
        progress: Progress | None = None,
        stop_requested: threading.Event | None = None,
    ) -> None:
        self.specs = list(specs)
        self.logs = logs
        self.env = dict(os.environ if env is None else env)
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.progress: Progress = progress or (lambda _name, _event: None)
        self.stop_requested = stop_requested or threading.Event()
        self.children: list[Child] = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def child(self, name: str) -> Child:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def start(self) -> bool:
        """Start every child in order; ``False`` if a stop was requested meanwhile. Raises
        :class:`UpError` (after stopping what started) when one does not become healthy."""
        for spec in self.specs:
            if _healthy(spec.socket):
                self.stop()
                raise UpError(
                    f"a corral {spec.name} already answers on {spec.socket}: stop it first, or "
                    "use another data directory"
                )
        try:
            for spec in self.specs:
                if self.stop_requested.is_set():
                    self.stop()
                    return False
                child = self._spawn(spec)
                if not self._wait_healthy(child):
                    self.stop()
                    return False
        except BaseException:
            self.stop()
            raise
        return True

    def _spawn(self, spec: ChildSpec) -> Child:
        global _libc
        if _libc is None and sys.platform == "linux":
            with contextlib.suppress(OSError):
                _libc = ctypes.CDLL(None, use_errno=True)
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = self.logs / f"{spec.name}.log"
        self.progress(spec.name, "starting")
        with log.open("ab") as out:
            out.write(f"== corral up: {' '.join(spec.argv[1:])} ==\n".encode())
            out.flush()
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
                spec.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**self.env, **spec.env}, start_new_session=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        child = Child(spec, process, log)
        self.children.append(child)
        return child

    def _wait_healthy(self, child: Child) -> bool:
        started = time.monotonic()
        deadline = started + self.start_timeout_s
        while not _healthy(child.spec.socket, timeout_s=1.0):
            code = child.process.poll()
            if code is not None:
                raise UpError(
                    f"corral {child.name} exited with status {code} before it was ready; the "
                    f"end of its log ({child.log}):\n{child.tail()}"
                )
            if time.monotonic() > deadline:
                raise UpError(
                    f"corral {child.name} did not answer on {child.spec.socket} within "
                    f"{self.start_timeout_s:g} s; the end of its log ({child.log}):\n"
                    f"{child.tail()}"
                )
            if self.stop_requested.wait(0.1):
                return False
        child.ready_s = time.monotonic() - started
        self.progress(child.name, "ready")
        return True

    def exited(self) -> Child | None:
        """A child that ended by itself, if any."""
        for child in self.children:
            if child.process.poll() is not None:
                return child
        return None

    def stop(self) -> None:
        """Stop every child, last started first: SIGTERM, then SIGKILL after the grace."""
        while self.children:
            child = self.children.pop()
            process = child.process
            if process.poll() is not None:
                continue
            self.progress(child.name, "stopping")
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_grace_s)
                self.progress(child.name, "stopped")
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
                self.progress(child.name, "killed")

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "pid": c.process.pid, "socket": str(c.spec.socket),
                 "log": str(c.log), "ready_s": c.ready_s} for c in self.children]  # fmt: skip


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (the previous handlers after)."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def wait_for_stop(stack: Stack, stop: threading.Event) -> Child | None:
    """Block until ``stop`` is set (``None``) or a child ends by itself (that child)."""
    while not stop.wait(0.25):
        ended = stack.exited()
        if ended is not None:
            return ended
    return None


def write_state(path: Path, stack: Stack, extra: Mapping[str, Any]) -> None:
    """``<data dir>/up.json``: this command's pid and its children (for tools and tests)."""
    state = {"pid": os.getpid(), "children": stack.describe(), **extra}
    path.write_text(json.dumps(state, indent=2) + "\n", "utf-8")
