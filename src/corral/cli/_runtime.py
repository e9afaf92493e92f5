"""``corral runtime``, ``corral sandbox`` and ``corral host``: the sandbox runtime's commands.

- ``corral runtime doctor``: which backends this machine can run, and why not;
- ``corral sandbox exec --backend B -- CMD...``: one command in a fresh sandbox with a channel
  (tools relayed to control when there is one), its output printed, its status returned;
- ``corral sandbox ls`` / ``stop ID``: the running host's sandboxes, over its admin socket;
- ``corral host serve [--agents FILE]``: the host daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from corral.cli._console import App, app_of
from corral.core.errors import CorralError

runtime = typer.Typer(help="The sandbox runtime: which backends this machine can run.",
                      no_args_is_help=True)  # fmt: skip
sandbox = typer.Typer(help="Sandboxes: run one command in one, list and stop the host's.",
                      no_args_is_help=True)  # fmt: skip
host = typer.Typer(help="The host daemon: runs agents' sandboxes and relays their channels.",
                   no_args_is_help=True)  # fmt: skip

AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object")]


@runtime.command()
def doctor(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Each backend, its isolation level, and whether this machine can run it (and why not).
    Exits 1 when none can run."""
    cli = app_of(ctx)
    from corral.runtime.backends import doctor as check

    rows = check(cli.settings())
    if as_json:
        cli.out.print_json(json.dumps([
            {"backend": name, "level": level.label, "available": found.ok, "reason": found.reason}
            for name, level, found in rows
        ]))  # fmt: skip
    else:
        table = Table("backend", "level", "available", "why not", title="sandbox backends")
        for name, level, found in rows:
            table.add_row(name, level.label, "yes" if found.ok else "no",
                          "" if found.ok else found.reason)  # fmt: skip
        cli.out.print(table)
    if not any(found.ok for _, _, found in rows):
        raise typer.Exit(1)


@sandbox.command(
    "exec", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True}
)
def exec_(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="the command to run, after --")],
    backend: Annotated[
        str, typer.Option("--backend", help="bwrap, gvisor, firecracker or auto")
    ] = "auto",
    tenant: Annotated[str, typer.Option("--tenant", help="tenant label")] = "cli",
    agent: Annotated[str, typer.Option("--agent", help="agent label")] = "exec",
    tools: Annotated[
        list[str] | None, typer.Option("--tool", help="allowed tool (repeat); default: all")
    ] = None,
    control: Annotated[
        Path | None, typer.Option("--control", help="control's socket (default: configured)")
    ] = None,
) -> None:
    """Run CMD in a fresh sandbox with a channel attached; print its output, exit with its
    status. Tool calls go to control if it is reachable, else are refused."""
    cli = app_of(ctx)
    settings = cli.settings()
    from corral.runtime.backends import backend as named
    from corral.runtime.backends import best_available
    from corral.runtime.relay import ControlRelay, NoControlRelay, Relay

    try:
        chosen = best_available(None, settings) if backend == "auto" else named(backend, settings)
    except CorralError as exc:
        cli.abort(str(exc))
    availability = chosen.available()
    if not availability.ok:
        cli.abort(f"backend {chosen.name!r} is not available: {availability.reason}")
    socket = control or settings.host.control_socket or settings.control_socket()
    relay: Relay
    if control is not None and not control.exists():
        cli.abort(f"no control socket at {control}")
    if socket.exists():
        relay = ControlRelay(socket)
    else:
        relay = NoControlRelay(f"no control socket at {socket} (start `corral control serve`)")
    try:
        code, out, err = asyncio.run(_exec(settings, chosen, relay, command, tenant, agent, tools))
    except (CorralError, ValueError) as exc:
        cli.abort(str(exc))
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    raise typer.Exit(code if code >= 0 else 128 - code)


async def _exec(
    settings: Any, chosen: Any, relay: Any, command: list[str], tenant: str, agent: str,
    tools: list[str] | None,
) -> tuple[int, bytes, bytes]:  # fmt: skip
    from corral.connectors._registry import catalog
    from corral.core.clock import SystemClock
    from corral.core.ids import RandomIds
    from corral.runtime.channel import Channel
    from corral.runtime.host import answer, limits_of
    from corral.runtime.sandbox import Identity, SandboxSpec

    allowed = frozenset(tools) if tools else frozenset(catalog())
    unknown = sorted(allowed - set(catalog()))
    if unknown:
        raise ValueError(f"unknown tools: {', '.join(unknown)}")
    identity = Identity(tenant, agent, RandomIds(SystemClock()).new("sbx"))
    directory = Path(tempfile.mkdtemp(prefix="corral-exec-"))  # short: sun_path is 108 bytes
    work = directory / "work"
    work.mkdir(mode=0o700)

    async def handle(who: Identity, method: str, params: dict[str, Any]) -> Any:
        return await answer(relay, allowed, who, method, params)

    channel = await Channel.open(directory / "channel.sock", identity, handle)
    running = None
    loop = asyncio.get_running_loop()
    try:
        spec = SandboxSpec(identity, command, work, channel.path, limits_of(settings.host.limits))
        running = await chosen.start(spec)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(running.stop(2.0)))
        code: int = await running.wait()
        out, err = await running.output()
        return code, out, err
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if running is not None:
            await running.stop(0.5)
        await channel.close()
        await relay.aclose()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _admin(cli: App) -> Iterator[httpx.Client]:
    socket = cli.settings().host_socket
    if not socket.exists():
        cli.abort(f"corral host is not running (no admin socket at {socket})")
    transport = httpx.HTTPTransport(uds=str(socket))
    with httpx.Client(transport=transport, base_url="http://host", timeout=30) as client:
        try:
            yield client
        except httpx.HTTPError as exc:
            cli.abort(f"corral host at {socket} did not answer: {exc}")


def _problem(cli: App, response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        cli.abort(str(detail))


@sandbox.command("ls")
def ls(ctx: typer.Context, as_json: AsJson = False) -> None:
    """The running host's sandboxes: id, tenant, agent, backend, level, state, restarts."""
    cli = app_of(ctx)
    with _admin(cli) as client:
        response = client.get("/sandboxes")
    _problem(cli, response)
    rows = response.json()["sandboxes"]
    if as_json:
        cli.out.print_json(json.dumps(rows))
        return
    columns = ("id", "tenant", "agent", "backend", "level", "state", "started_at", "restarts")
    table = Table(title=f"{len(rows)} sandboxes")
    for column in columns:  # ids whole even on a narrow terminal: they are typed back in
        table.add_column(column, no_wrap=column == "id", overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row[c]) for c in columns))
    cli.out.print(table)


@sandbox.command()
def stop(
    ctx: typer.Context, sandbox_id: Annotated[str, typer.Argument(help="the sandbox's id")]
) -> None:
    """Stop one sandbox of the running host (its agent is not restarted)."""
    cli = app_of(ctx)
    with _admin(cli) as client:
        response = client.delete(f"/sandboxes/{sandbox_id}")
    _problem(cli, response)
    body = response.json()
    cli.out.print(f"stopped {body['id']} (exit {body['exit_code']})", markup=False)


@host.command()
def serve(
    ctx: typer.Context,
    agents: Annotated[
        Path | None,
        typer.Option("--agents", help="TOML file of [[agents]] to start", dir_okay=False),
    ] = None,
) -> None:
    """Run the host: start the agents, serve the admin API on its socket until SIGTERM, then
    stop every sandbox."""
    cli = app_of(ctx)
    settings = cli.settings()
    from corral.runtime.host import load_agents, serve_host

    specs = []
    if agents is not None:
        try:
            specs = load_agents(agents)
        except ValueError as exc:
            cli.abort(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from corral.core import serving

    try:
        serving.run(serve_host(settings, specs))
    except (CorralError, ValueError) as exc:
        cli.abort(str(exc))
