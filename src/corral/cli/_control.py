"""``corral control``: the control plane's supervisor service and its dashboard's owners."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from corral.cli._console import app_of
from corral.core.errors import CorralError

app = typer.Typer(
    help="The control plane: the supervisor's API and the owners' dashboard.",
    no_args_is_help=True,
)


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the supervisor API on its Unix socket (and TCP with TLS if configured), with the
    dashboard at /dashboard and, for a browser on this machine, on dashboard.listen."""
    cli = app_of(ctx)
    settings = cli.settings()
    from corral.supervisor.serve import run

    if settings.dashboard.enabled:
        host, port = settings.dashboard.address()
        shown = f"[{host}]" if ":" in host else host
        cli.err.print(f"dashboard: http://{shown}:{port}/dashboard/", markup=False)
    try:
        run(settings)
    except CorralError as exc:
        cli.abort(exc.diagnostics())


def _password_from_stdin() -> str:
    """One line of standard input, its line ending removed (a pipe or a file, never argv)."""
    text = sys.stdin.read()
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            text = text[: -len(ending)]
            break
    if "\n" in text or "\r" in text:
        raise ValueError("--password-stdin reads one line: the input has several")
    return text


@app.command("add-owner")
def add_owner(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option("--tenant", help="the business (tenant) id")],
    email: Annotated[str, typer.Option("--email", help="the owner's email, to sign in with")],
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="read the password from standard input"),
    ] = False,
) -> None:
    """Add an owner who signs in to the tenant's dashboard. The password is asked twice,
    hidden (or read from standard input): never an argument, where `ps` and shell history see
    it. It is stored only as an argon2id hash."""
    cli = app_of(ctx)
    settings = cli.settings()
    from corral.core.clock import SystemClock
    from corral.dashboard.auth import MIN_PASSWORD_LENGTH, OwnerStore

    if password_stdin:
        try:
            password = _password_from_stdin()
        except ValueError as exc:
            cli.abort(str(exc))
    else:
        password = typer.prompt(
            "Password", hide_input=True, confirmation_prompt="Repeat the password"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        cli.abort(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    store = OwnerStore.from_url(settings.dashboard_database_url(), clock=SystemClock())
    try:
        store.create_schema()
        owner = store.create_owner(tenant, email, password)
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    except ValueError as exc:  # a tenant id that is not an id
        cli.abort(str(exc))
    finally:
        store.close()
    cli.out.print(f"added {owner.email} as an owner of {owner.tenant} ({owner.owner_id})")
