"""``corral up`` (the three processes on one machine) and ``corral demo`` (a clinic's day)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.cli._console import app_of
from corral.core.errors import CorralError

__all__ = ["demo", "register", "up"]


@contextmanager
def stack_progress(console: Console) -> Iterator[Progress]:
    """One spinner line per child while it starts (plain lines when not on a terminal)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as bar:
        yield bar


def _reporter(console: Console, bar: Progress) -> Callable[[str, str], None]:
    tasks: dict[str, TaskID] = {}

    def report(name: str, event: str) -> None:
        if event == "starting":
            tasks[name] = bar.add_task(f"starting corral {name}", total=1)
        elif event == "ready" and name in tasks:
            bar.update(tasks[name], description=f"corral {name} ready", completed=1)
        if not console.is_terminal or event not in ("starting", "ready"):
            console.print(f"corral {name}: {event}", markup=False)

    return report


def up(
    ctx: typer.Context,
    aws: Annotated[
        bool,
        typer.Option("--aws", help="AWS defaults: KMS key (broker.kms_key_id), DynamoDB anchors"),
    ] = False,
) -> None:
    """Start corral broker, control and host on this machine; Ctrl-C stops them all."""
    from corral.up import (
        Stack,
        aws_environment,
        backend_label,
        dashboard_url,
        prepare,
        standard_children,
        stop_signals,
        wait_for_stop,
        write_state,
    )

    cli = app_of(ctx)
    settings = cli.settings()
    out = cli.out
    try:
        extra = aws_environment(settings) if aws or settings.up.aws else {}
        prepare(settings)
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    state = settings.data_dir / "up.json"
    with stop_signals() as stop, stack_progress(out) as bar:
        stack = Stack(
            standard_children(settings, cli.config),
            logs=settings.data_dir / "logs",
            env={**_environ(), **extra},
            start_timeout_s=settings.up.start_timeout_s,
            stop_grace_s=settings.up.stop_grace_s,
            progress=_reporter(out, bar),
            stop_requested=stop,
        )
        try:
            started = stack.start()
        except CorralError as exc:
            cli.abort(exc.diagnostics())
        bar.stop()
        if not started:
            out.print("stopped before everything was up", markup=False)
            return
        url = dashboard_url(settings)
        write_state(state, stack, {"dashboard": url})
        _where(
            out, stack.describe(), settings.data_dir, backend_label(settings), url, aws=bool(extra)
        )
        try:
            ended = wait_for_stop(stack, stop)
            if ended is not None:
                code = ended.process.returncode
                cli.err.print(
                    f"error: corral {ended.name} exited with status {code}; the end "
                    f"of its log ({ended.log}):\n{ended.tail()}",
                    markup=False,
                )
        finally:
            out.print("stopping: host, control, broker", markup=False)
            stack.stop()
            state.unlink(missing_ok=True)
        if ended is not None:
            raise typer.Exit(1)
        out.print("all stopped", markup=False)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _where(
    out: Console,
    children: list[dict[str, object]],
    data_dir: Path,
    backend: str,
    dashboard: str | None,
    *,
    aws: bool,
) -> None:
    table = Table(title="corral is up")
    for column in ("process", "pid", "socket", "log"):  # paths whole: they are copied
        table.add_column(column, overflow="fold")
    for child in children:
        table.add_row(
            f"corral {child['name']}", str(child["pid"]), str(child["socket"]), str(child["log"])
        )
    out.print(table)
    out.print(f"data directory: {data_dir.resolve()}", markup=False)
    out.print(f"sandbox backend: {backend}", markup=False)
    if aws:
        out.print("AWS: broker key in KMS, anchors in DynamoDB", markup=False)
    if dashboard is not None:
        out.print(
            f"dashboard: {dashboard} (owners sign in; add one with "
            "`corral control add-owner --tenant T --email E`)",
            markup=False,
        )
    out.print("Ctrl-C stops everything", markup=False)


def demo(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="the demo's own data directory (wiped if a demo made it)"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="the day's seed: same seed, same day")] = 7,
    speed: Annotated[
        float, typer.Option("--speed", min=60, help="simulated seconds per real second")
    ] = 3600.0,
    backend: Annotated[
        str,
        typer.Option("--backend", help="the agents' sandboxes: auto, gvisor or bwrap"),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """A dental clinic's day, end to end: four sandboxed agents, every call through the host,
    control and the broker to the local provider sandboxes; then the summary."""
    from corral.demo.run import DemoOptions, run_demo
    from corral.demo.summary import render

    cli = app_of(ctx)
    where = data_dir or cli.data_dir or Path(".corral/demo-day")
    options = DemoOptions(
        data_dir=where, seed=seed, speed=speed, config=cli.config, backend=backend
    )
    console = cli.err if as_json else cli.out
    try:
        summary = run_demo(options, console)
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    if as_json:
        cli.out.print_json(json.dumps(summary.to_json()))
    else:
        render(summary, cli.out)
    if not summary.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """``corral up`` and ``corral demo`` on the root command."""
    app.command("up")(up)
    app.command("demo")(demo)
