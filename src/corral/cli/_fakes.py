"""``corral fakes``: run the local provider sandboxes for development and demos."""

from __future__ import annotations

import json
from typing import Annotated

import typer
import uvicorn

from corral.cli._console import app_of
from corral.fakes import combined_app, create_fakes

app = typer.Typer(help="Local provider sandboxes that follow each provider's API description.",
                  no_args_is_help=True)  # fmt: skip


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8600,
) -> None:
    """Serve all six fakes on one port, each under /<provider>, and print a test connection
    for each (credential fields valid for that fake) as JSON lines."""
    cli = app_of(ctx)
    fakes = create_fakes()
    root = f"http://{host}:{port}"
    for name, fake in fakes.items():
        endpoints = fake.endpoints(f"{root}/{name}")
        line = {"provider": name, "api_url": endpoints.api, "token_url": endpoints.token,
                "fields": fake.new_connection()}  # fmt: skip
        cli.out.print(json.dumps(line), markup=False, soft_wrap=True)
    uvicorn.run(combined_app(fakes), host=host, port=port, log_level="warning")
