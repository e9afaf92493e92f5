"""``corral broker``: serve the broker, connect and revoke accounts, mint delegations, rotate keys.

Secrets never come from the command line (argv is visible to every user of the machine and
kept in shell history): ``connect`` reads them from a hidden prompt, or as one JSON object on
stdin with ``--stdin``. Commands other than ``serve`` work on the broker's database and key
material directly (the operator of a broker machine has both); what they change is appended to
the tenant's audit chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from corral.audit.chain import open_chain
from corral.broker._store import RevocationKind
from corral.broker.assembly import BrokerParts, control_approval_signer, open_broker
from corral.broker.demo import run_broker_demo
from corral.broker.events import to_entries
from corral.broker.keys import LocalKeyProvider
from corral.cli._console import App, app_of
from corral.connectors import Endpoints, providers
from corral.core.clock import SystemClock, format_time
from corral.core.errors import CorralError
from corral.core.ids import RandomIds

app = typer.Typer(help="The capability broker: credentials, delegations, execution.",
                  no_args_is_help=True)  # fmt: skip

Tenant = Annotated[str, typer.Option("--tenant", help="tenant id")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object")]


@contextlib.contextmanager
def _broker(cli: App) -> Iterator[BrokerParts]:
    settings = cli.settings()
    # A single-machine deployment: control's approval key lives in the same data directory.
    if not settings.broker.approval_vkeys:
        control_approval_signer(settings)
    try:
        parts = open_broker(settings)
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    try:
        yield parts
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    finally:
        asyncio.run(parts.aclose())


def _record(cli: App, tenant: str, events: list[dict[str, Any]]) -> None:
    """Append the broker's events to the tenant's audit chain."""
    clock = SystemClock()
    with open_chain(cli.settings(), clock) as chain:
        items = to_entries(events, tenant, RandomIds(clock))
        for future in chain.sequencer.submit_many(tenant, items):
            future.result()


def _operator_event(kind: str, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "at": format_time(at), "actor": {"kind": "operator", "id": "cli"},
            "data": data}  # fmt: skip


def _read_fields(cli: App, provider: str, from_stdin: bool) -> dict[str, str]:
    spec = providers()[provider]
    if from_stdin:
        try:
            fields = json.loads(sys.stdin.read())
        except ValueError:
            cli.abort("--stdin expects one JSON object of credential fields")
        if not isinstance(fields, dict):
            cli.abort("--stdin expects one JSON object of credential fields")
        return {str(k): v for k, v in fields.items()}
    fields = {}
    for name in spec.fields:
        fields[name] = typer.prompt(name, hide_input=True, err=True)
    for name in spec.optional_fields:
        value = typer.prompt(f"{name} (optional)", default="", show_default=False, err=True)
        if value:
            fields[name] = value
    return fields


@app.command()
def connect(
    ctx: typer.Context,
    provider: Annotated[
        str, typer.Argument(help="twilio, stripe, google_calendar, calendly, quickbooks or ghl")
    ],
    tenant: Tenant,
    connection_id: Annotated[
        str | None, typer.Option("--connection-id", help="default: <provider>-1")
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", help="provider API base URL (default: the real service)"),
    ] = None,
    token_url: Annotated[
        str | None, typer.Option("--token-url", help="OAuth token endpoint")
    ] = None,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="read the credential fields as JSON on stdin")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Connect a provider account: its secrets are read from a prompt or stdin, never argv."""
    cli = app_of(ctx)
    if provider not in providers():
        cli.abort(f"unknown provider {provider!r} (known: {', '.join(sorted(providers()))})")
    spec = providers()[provider]
    endpoints = None
    if api_url or token_url:
        endpoints = Endpoints(
            api=api_url or spec.endpoints.api, token=token_url or spec.endpoints.token
        )
    fields = _read_fields(cli, provider, stdin)
    with _broker(cli) as parts:
        row = parts.broker.vault.connect(
            tenant, connection_id or f"{provider}-1", provider, fields, endpoints=endpoints
        )
        fields.clear()
    data = {"connection_id": row.connection_id, "provider": provider}
    _record(cli, tenant, [_operator_event("credential.connected", row.created_at, data)])
    if as_json:
        cli.out.print_json(json.dumps(row.public()))
    else:
        cli.out.print(
            f"connected {provider} as {row.connection_id} for tenant {tenant}", markup=False
        )


@app.command()
def connections(ctx: typer.Context, tenant: Tenant, as_json: AsJson = False) -> None:
    """List a tenant's connections and their status; never a secret."""
    cli = app_of(ctx)
    with _broker(cli) as parts:
        rows = parts.broker.vault.store.connections(tenant)
    if as_json:
        cli.out.print_json(json.dumps([row.public() for row in rows]))
        return
    table = Table("connection", "provider", "status", "version", "updated", "API")
    for row in rows:
        table.add_row(row.connection_id, row.provider, row.status.value, str(row.version),
                      format_time(row.updated_at), row.api_url)  # fmt: skip
    cli.out.print(table)


@app.command()
def revoke(
    ctx: typer.Context,
    tenant: Tenant,
    connection: Annotated[
        str | None, typer.Option("--connection", help="disconnect this connection")
    ] = None,
    delegation: Annotated[
        str | None, typer.Option("--delegation", help="revoke one delegation id")
    ] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", help="revoke every delegation of an agent")
    ] = None,
    all_delegations: Annotated[
        bool, typer.Option("--all", help="revoke every delegation of the tenant")
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
) -> None:
    """Revoke; it takes effect on the next call, on every broker replica."""
    cli = app_of(ctx)
    chosen = [x for x in (connection, delegation, agent) if x] + (
        ["all"] if all_delegations else []
    )
    if len(chosen) != 1:
        cli.abort("name exactly one of --connection, --delegation, --agent or --all")
    with _broker(cli) as parts:
        broker = parts.broker
        if connection:
            row = broker.vault.revoke(tenant, connection, reason)
            broker.revoke(tenant, RevocationKind.CONNECTION, connection, reason)
            data = {"connection_id": connection, "provider": row.provider, "reason": reason}
            _record(cli, tenant, [_operator_event("credential.revoked", row.updated_at, data)])
            what = f"connection {connection}"
        elif delegation:
            broker.revoke(tenant, RevocationKind.DELEGATION, delegation, reason)
            what = f"delegation {delegation}"
        elif agent:
            broker.revoke(tenant, RevocationKind.AGENT, agent, reason)
            what = f"every delegation of agent {agent}"
        else:
            broker.revoke(tenant, RevocationKind.TENANT, tenant, reason)
            what = f"every delegation of tenant {tenant}"
    cli.out.print(f"revoked {what}", markup=False)


@app.command()
def delegate(
    ctx: typer.Context,
    tenant: Tenant,
    agent: Annotated[str, typer.Option("--agent", help="agent id")],
    tool: Annotated[
        list[str],
        typer.Option("--tool", help="tool pattern (repeatable): twilio.send_sms, stripe.*"),
    ],
    sandbox: Annotated[str, typer.Option("--sandbox", help="the sandbox it is bound to")] = "cli",
    ttl: Annotated[float, typer.Option("--ttl", help="seconds (at most 300)")] = 300,
    recipient: Annotated[
        list[str] | None, typer.Option("--recipient", help="exact recipient (repeatable)")
    ] = None,
    calendar: Annotated[
        list[str] | None, typer.Option("--calendar", help="calendar key (repeatable)")
    ] = None,
    payment_intent: Annotated[list[str] | None, typer.Option("--payment-intent")] = None,
    max_amount: Annotated[
        str | None, typer.Option("--max-amount", help="e.g. 5000:usd (minor units)")
    ] = None,
    max_uses: Annotated[int | None, typer.Option("--max-uses", min=1)] = None,
    as_json: AsJson = False,
) -> None:
    """Mint a delegation for an agent (lifetime capped at 300 s) and print it."""
    cli = app_of(ctx)
    limit = None
    if max_amount is not None:
        amount, _, currency = max_amount.partition(":")
        if not amount.isdigit() or not currency:
            cli.abort("--max-amount must look like 5000:usd")
        limit = {"amount": int(amount), "currency": currency}
    with _broker(cli) as parts:
        minted, events = parts.broker.mint(
            tenant=tenant, agent=agent, sandbox=sandbox, tools=tool, ttl_s=ttl,
            recipients=recipient, calendars=calendar, payment_intents=payment_intent,
            max_amount=limit, max_uses=max_uses,
        )  # fmt: skip
    _record(cli, tenant, events)
    answer = {
        "delegation": minted.token,
        "id": minted.id,
        "expires_at": format_time(minted.expires_at),
        "scope": minted.delegation.describe(),
    }
    if as_json:
        cli.out.print_json(json.dumps(answer))
    else:
        cli.out.print(f"delegation {minted.id} expires at {answer['expires_at']}", markup=False)
        cli.out.print(minted.token, markup=False)


@app.command("rotate-key")
def rotate_key(ctx: typer.Context) -> None:
    """Start a new master key and rewrap every data key under it, while the broker serves."""
    cli = app_of(ctx)
    with _broker(cli) as parts:
        keys = parts.broker.vault.keys
        # A local key file gets a new master key; with AWS KMS, rotation of the key material is
        # KMS's own (automatic key rotation) and ReEncrypt moves each data key onto it.
        new_key = keys.rotate() if isinstance(keys, LocalKeyProvider) else keys.key_id
        with cli.progress("rewrapping data keys") as progress:
            count = parts.broker.vault.rotate_key(progress)
    cli.out.print(f"rewrapped {count} data keys under master key {new_key}", markup=False)


@app.command()
def demo(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="wiped if a previous demo made it")],
) -> None:
    """A dental clinic's agents use all six providers through the broker (local sandboxes)."""
    cli = app_of(ctx)
    report = run_broker_demo(data_dir)
    out = cli.out
    out.print("Bright Smile Dental: every call goes through the broker (local provider sandboxes)")
    for n, step in enumerate(report.steps, 1):
        timing = f" [{step.broker_ms:.1f} ms in the broker]" if step.broker_ms is not None else ""
        out.print(
            f"{n:>2}. {step.agent} {step.what} ({step.tool}): HTTP {step.http_status}, "
            f"{step.outcome}: {step.detail}{timing}",
            markup=False,
        )
    kinds = ", ".join(sorted({event["kind"] for event in report.events}))
    cli.out.print(f"Audit events the broker reported: {len(report.events)} ({kinds})", markup=False)
    verdict = "none found" if not report.leaks else f"FOUND {', '.join(report.leaks)}"
    cli.out.print(
        f"Secrets searched for in {report.bytes_scanned:,} bytes of answers: "
        f"{report.secrets_checked} credentials and tokens; {verdict}",
        markup=False,
    )
    if report.leaks:
        raise typer.Exit(1)


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the broker's API on its Unix socket (and TCP with TLS if configured)."""
    cli = app_of(ctx)
    from corral.broker.serve import run

    try:
        run(cli.settings())
    except CorralError as exc:
        cli.abort(exc.diagnostics())
