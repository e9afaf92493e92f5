"""The guest runner: ``python -m corral.guest.run [ENTRY [ARGS...]]``, what a sandbox starts.

It connects to the channel (``$CORRAL_CHANNEL``), sends ``sandbox.ready`` and runs the agent:
ENTRY at once when given, else the one named by the host's ``agent.start {entry, argv, seed?}``
notification, which is how a warm-pool sandbox, started before anyone needed it, is handed an
agent. The runner's connection becomes the SDK's (:func:`corral.guest.tools.set_client`): the
host accepts one connection per sandbox.

ENTRY is ``package.module:function`` (called with the argument list) or a path to a ``.py``
script (run as ``__main__`` with ``sys.argv`` set). The exit status is the agent's, with
``sys.exit`` semantics for a function's return value; an exception in the agent is printed and
exits 1; ``sandbox.stop`` (or SIGTERM) ends the agent and exits 0.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import traceback

from corral.guest import tools
from corral.guest._client import ChannelClient, ChannelError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType
    from typing import Any

__all__ = ["main", "run_entry"]

USAGE = (
    "usage: python -m corral.guest.run [ENTRY [ARGS...]]"
    "  (ENTRY: package.module:function or script.py)"
)


class _Stop(BaseException):
    """Raised in the agent's thread to end it on ``sandbox.stop``; not an :class:`Exception`, so
    an agent's ``except Exception`` does not swallow it."""


def _exit_status(code: object) -> int:
    """What ``sys.exit(code)`` would exit with (a non-integer is printed and gives 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_entry(entry: str, argv: Sequence[str], seed: int | None = None) -> int:
    """Run one agent in this thread and return its exit status."""
    if seed is not None:
        import random

        random.seed(seed)
    try:
        if entry.endswith(".py") or os.sep in entry:
            import runpy

            script = os.path.abspath(entry)
            sys.argv = [script, *argv]
            sys.path.insert(0, os.path.dirname(script))  # as ``python script.py`` does
            runpy.run_path(script, run_name="__main__")
            return 0
        module_name, sep, attribute = entry.partition(":")
        if not sep or not module_name or not attribute:
            print(f"corral: cannot run {entry!r}: {USAGE}", file=sys.stderr)
            return 2
        import importlib

        sys.argv = [entry, *argv]
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        return _exit_status(target(list(argv)))
    except SystemExit as exc:
        return _exit_status(exc.code)
    except _Stop:
        raise
    except KeyboardInterrupt:
        return 130
    except BaseException:
        traceback.print_exc()
        return 1


class _Runner:
    """The runner's state, shared between the main thread (the agent) and the channel's reader
    thread (the host's notifications)."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.lock = threading.Lock()
        self.started = False
        self.stopping = False

    def on_start(self, params: dict[str, Any]) -> None:
        with self.lock:
            if self.started:
                print("corral: ignoring agent.start: an agent already runs", file=sys.stderr)
                return
            self.started = True
        self.events.put(("start", params))

    def on_stop(self, _params: dict[str, Any]) -> None:
        with self.lock:
            self.stopping = True
            running = self.started
        self.events.put(("stop", None))
        if running:
            # A real signal to the main thread interrupts a blocking sleep or socket call.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    def on_close(self, error: ChannelError) -> None:
        self.events.put(("closed", error))

    def on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        with self.lock:
            self.stopping = True
        raise _Stop

    def claim(self) -> bool:
        """Mark the agent as started (ENTRY from the command line); false if one already is."""
        with self.lock:
            if self.started:
                return False
            self.started = True
            return True


def _parse_start(params: Any) -> tuple[str, list[str], int | None] | str:
    """``agent.start``'s ``(entry, argv, seed)``, or what is wrong with it."""
    if not isinstance(params, dict):
        return "params is not an object"
    entry, argv, seed = params.get("entry"), params.get("argv", []), params.get("seed")
    if not isinstance(entry, str) or not entry:
        return "entry must be a non-empty string"
    if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
        return "argv must be a list of strings"
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return "seed must be an integer"
    return entry, argv, seed


def main(args: Sequence[str] | None = None) -> int:
    """The runner; returns the exit status."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    runner = _Runner()
    signal.signal(signal.SIGTERM, runner.on_sigterm)
    try:
        try:
            client = ChannelClient.connect(
                handlers={"agent.start": runner.on_start, "sandbox.stop": runner.on_stop}
            )
        except ChannelError as exc:
            print(f"corral: {exc}", file=sys.stderr)
            return 1
        client.on_close(runner.on_close)
        tools.set_client(client)
        if args and runner.claim():
            entry, argv, seed = args[0], args[1:], None
        else:
            kind, value = runner.events.get()
            if kind == "stop":
                return 0
            if kind == "closed":
                print(f"corral: no agent to run: {value}", file=sys.stderr)
                return 1
            parsed = _parse_start(value)
            if isinstance(parsed, str):
                print(f"corral: bad agent.start: {parsed}", file=sys.stderr)
                return 2
            entry, argv, seed = parsed
        if runner.stopping:
            return 0
        return run_entry(entry, argv, seed)
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping anyway: finish the clean-up
        tools.set_client(None)
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    raise SystemExit(main())
