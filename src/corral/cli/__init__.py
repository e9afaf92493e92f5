"""The ``corral`` command: a typer app, one module per command group.

Each command parses its options, calls one library function and renders through the one
console of :mod:`corral.cli._console`; failures print one line to stderr and exit non-zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral import __version__
from corral.cli import (
    _audit,
    _broker,
    _control,
    _fakes,
    _runtime,
    _supervisor,
    _templates,
    _up,
)
from corral.cli._console import App

__all__ = ["app", "main"]

app = typer.Typer(
    name="corral",
    help="Run a fleet of AI agents on a small business's real accounts, safely.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(_audit.app, name="audit")
app.add_typer(_broker.app, name="broker")
app.add_typer(_fakes.app, name="fakes")
app.add_typer(_supervisor.app, name="supervisor")
app.add_typer(_control.app, name="control")
app.add_typer(_runtime.runtime, name="runtime")
app.add_typer(_runtime.sandbox, name="sandbox")
app.add_typer(_runtime.host, name="host")
app.add_typer(_templates.app, name="templates")
_up.register(app)  # corral up, corral demo


def _version(value: bool) -> None:
    if value:
        typer.echo(f"corral {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML settings file", dir_okay=False)
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="where corral keeps its state")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print version")
    ] = False,
) -> None:
    ctx.obj = App(config=config, data_dir=data_dir)


def main() -> None:
    app()
