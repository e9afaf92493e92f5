"""``corral control``: the control plane's supervisor service."""

from __future__ import annotations

import typer

from corral.cli._console import app_of
from corral.core.errors import CorralError

app = typer.Typer(help="The control plane: the supervisor's API.", no_args_is_help=True)


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the supervisor API on its Unix socket (and TCP with TLS if configured)."""
    cli = app_of(ctx)
    from corral.supervisor.serve import run

    try:
        run(cli.settings())
    except CorralError as exc:
        cli.abort(exc.diagnostics())
