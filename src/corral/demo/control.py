"""``python -m corral.demo.control``: ``corral control`` on the demo's accelerated clock.

The supervisor reads the time of day (quiet hours, daily caps, 24-hour windows), so a day in
seconds needs control's decisions on simulated time. This launcher runs ``corral control
serve``'s own :func:`~corral.supervisor.serve.serve_control` — the same ledger, audit chain,
policies, dispatcher, API, dashboard and template maintenance — with its decisions on
:func:`decisions_clock`: an :class:`~corral.core.clock.AcceleratedClock` from the settings'
``up.control_clock`` (``CORRAL_UP__CONTROL_CLOCK__START``, ``..._FACTOR``). The dispatcher
and the dashboard keep the real clock: control's approvals, like the broker's delegations,
expire in real seconds.

The simulated day stands still at its ``start`` until ``POST /demo/clock {"origin": T}`` names
the real instant ``T`` it begins at (the demo starts its agents, then begins the day for all at
once); ``GET /demo/clock`` reads it. Only this launcher has that route, on control's socket
(the dashboard's loopback port serves ``/dashboard`` alone).

``--timings FILE`` (the end-to-end benchmark) also records, per call, control's time on
``POST /calls`` and the broker's ``Server-Timing`` (its own time, the wait for a provider slot,
the provider's time) of the execution, and writes them as JSON lines at shutdown.

The dashboard is mounted and served on ``dashboard.listen`` as ``corral control`` does, unless
``dashboard.enabled`` is false (the benchmark turns it off; ``corral demo`` gives it a free
loopback port).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.core import serving
from corral.core.clock import AcceleratedClock, Clock, SystemClock, format_time
from corral.core.errors import CorralError
from corral.core.settings import Settings, load_settings
from corral.supervisor.dispatch import idempotency_key
from corral.supervisor.serve import serve_control

__all__ = ["Timings", "decisions_clock", "main", "serve_demo_control"]


def decisions_clock(settings: Settings) -> Clock:
    """The clock of control's decisions: accelerated when ``up.control_clock`` is set."""
    configured = settings.up.control_clock
    if configured is None:
        return SystemClock()
    return AcceleratedClock(configured.start, configured.factor)


class Timings:
    """Per-call timings for the benchmark: control's ``POST /calls`` and the broker's
    ``Server-Timing``, joined by the broker idempotency key control derives from the call id."""

    def __init__(self) -> None:
        self.control: dict[str, float] = {}
        self.broker: dict[str, dict[str, float]] = {}

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """An ASGI app that times ``POST /calls`` around ``app``."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] != "/calls" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            body = bytearray()

            async def tee() -> Message:
                message = await receive()
                body.extend(message.get("body", b""))
                return message

            started = time.perf_counter()
            await app(scope, tee, send)
            elapsed = (time.perf_counter() - started) * 1000
            try:
                call = json.loads(body)
                self.control[idempotency_key(call["tenant"], call["call_id"])] = elapsed
            except (ValueError, KeyError, TypeError):
                return

        return timed

    def transport(self, socket: Path) -> httpx.AsyncBaseTransport:
        """The broker client's transport, reading ``Server-Timing`` off each execution."""
        return _TimedTransport(httpx.AsyncHTTPTransport(uds=str(socket)), self.broker)

    def write(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as out:
            for key, control_ms in self.control.items():
                row = {"key": key, "control_ms": control_ms, **self.broker.get(key, {})}
                out.write(json.dumps(row) + "\n")


class _TimedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, into: dict[str, dict[str, float]]) -> None:
        self._inner = inner
        self._into = into

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        if request.url.path != "/execute":
            return response
        await response.aread()
        row: dict[str, float] = {"broker_rtt_ms": (time.perf_counter() - started) * 1000}
        for part in response.headers.get("server-timing", "").split(","):
            name, _, duration = part.strip().partition(";dur=")
            if duration:
                row[f"{name}_ms"] = float(duration)
        try:
            key = json.loads(request.content)["call"]["idempotency_key"]
        except (ValueError, KeyError, TypeError):
            return response
        self._into[str(key)] = row
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _clock_routes(api: FastAPI, clock: AcceleratedClock) -> None:
    """``GET``/``POST /demo/clock`` on control's API (this launcher only)."""
    from fastapi import Body
    from fastapi.responses import JSONResponse

    from corral.core.problems import problem

    def state() -> dict[str, Any]:
        origin = clock.origin
        return {
            "now": format_time(clock.now()),
            "start": format_time(clock.start),
            "factor": clock.factor,
            "origin": format_time(origin) if origin else None,
        }

    async def read() -> dict[str, Any]:
        return state()

    async def begin(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        try:
            origin = datetime.fromisoformat(str(body["origin"]))
            if origin.tzinfo is None:
                raise ValueError("origin needs a UTC offset")
        except (KeyError, ValueError) as exc:
            response: JSONResponse = problem(400, "bad_request", f"origin: {exc}")
            return response
        clock.begin(origin)
        return state()

    api.add_api_route("/demo/clock", read, methods=["GET"])
    api.add_api_route("/demo/clock", begin, methods=["POST"])


async def serve_demo_control(settings: Settings, *, timings: Path | None = None) -> None:
    """:func:`~corral.supervisor.serve.serve_control` with the decisions on
    :func:`decisions_clock`, ``/demo/clock`` when that clock is accelerated, and with
    ``timings`` the per-call timings written there at shutdown."""
    clock = decisions_clock(settings)
    recorder = Timings() if timings is not None else None
    try:
        await serve_control(
            settings,
            decision_clock=clock,
            broker_transport=(
                recorder.transport(settings.broker_socket()) if recorder is not None else None
            ),
            routes=(
                partial(_clock_routes, clock=clock) if isinstance(clock, AcceleratedClock) else None
            ),
            middleware=recorder.wrap if recorder is not None else None,
        )
    finally:
        if recorder is not None and timings is not None:
            recorder.write(timings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.demo.control", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--data-dir", type=Path, help="where corral keeps its state")
    parser.add_argument("--timings", type=Path, help="write per-call timings here at shutdown")
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    try:
        settings = load_settings(args.config, **overrides)
        serving.run(serve_demo_control(settings, timings=args.timings))
    except CorralError as exc:
        print(f"error: {exc.diagnostics()}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
