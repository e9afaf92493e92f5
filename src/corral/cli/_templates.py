"""``corral templates``: list, show and check the agent setup template catalog."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from corral.cli._console import App, app_of
from corral.core.clock import SystemClock, format_time, parse_time
from corral.core.errors import CorralError
from corral.templates import Catalog, CatalogError, Template

app = typer.Typer(
    help="Agent setup templates: versions, lifecycle, validation.", no_args_is_help=True
)

CatalogOption = Annotated[
    Path, typer.Option("--catalog", help="the template catalog directory", file_okay=False)
]
AtOption = Annotated[
    str | None,
    typer.Option("--at", help="judge deprecation and sunset at this RFC 3339 time (default now)"),
]
DEFAULT_CATALOG = Path("templates")


def _load(cli: App, root: Path) -> Catalog:
    try:
        return Catalog.load(root)
    except CorralError as exc:
        cli.abort(exc.diagnostics())


def _at(cli: App, at: str | None) -> datetime:
    if at is None:
        return SystemClock().now()
    try:
        return parse_time(at).astimezone(UTC)
    except ValueError as exc:
        cli.abort(f"--at: {exc}")


def _day(when: datetime | None) -> str:
    return "-" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d")


def _status(template: Template, at: datetime) -> str:
    doc = template.document
    if doc.is_sunset(at):
        return "sunset"
    return "deprecated" if doc.is_deprecated(at) else "active"


@app.command("ls")
def ls(ctx: typer.Context, catalog: CatalogOption = DEFAULT_CATALOG, at: AtOption = None) -> None:
    """List every version of every template: security fixes, the latest release, and the
    deprecation and sunset dates with the status they give at ``--at``."""
    cli = app_of(ctx)
    loaded = _load(cli, catalog)
    when = _at(cli, at)
    table = Table()
    for column in ("template", "version", "notes", "deprecated", "sunset", "status"):
        table.add_column(column, no_wrap=column != "notes")
    for name in loaded.names():
        latest = loaded.latest(name, when)
        for i, template in enumerate(loaded.versions(name)):
            doc = template.document
            notes = [
                word
                for word, yes in (("security", doc.security), ("latest", template is latest))
                if yes
            ]
            table.add_row(
                Text(name if i == 0 else ""),
                Text(doc.version),
                Text(", ".join(notes)),
                Text(_day(doc.deprecated_at)),
                Text(_day(doc.sunset_at)),
                Text(_status(template, when)),
            )
    cli.out.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="template name")],
    version: Annotated[str, typer.Argument(help="exact version, e.g. 1.0.1")],
    catalog: CatalogOption = DEFAULT_CATALOG,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Show one version: roles, tools, policy defaults, lifecycle, changelog and content hash."""
    cli = app_of(ctx)
    loaded = _load(cli, catalog)
    try:
        template = loaded.get(name, version)
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    doc = template.document
    if as_json:
        body = {**doc.model_dump(mode="json"), "content_hash": template.content_hash}
        cli.out.print_json(json.dumps(body))
        return
    out = cli.out
    lines = [
        f"{doc.name} {doc.version}",
        f"summary: {doc.summary}",
        f"content hash: {template.content_hash}",
        f"security fix: {'yes' if doc.security else 'no'}",
        f"deprecated at: {format_time(doc.deprecated_at) if doc.deprecated_at else '-'}",
        f"sunset at: {format_time(doc.sunset_at) if doc.sunset_at else '-'}",
        "roles:",
    ]
    for role in doc.roles:
        lines += [
            f"  {role.name} ({role.entry}): {', '.join(role.tools) or '-'}",
            f"    {role.description}",
        ]
    lines.append("policy defaults:")
    lines += [f"  {line}" for line in json.dumps(doc.policy, indent=2).splitlines()]
    if doc.changelog:
        lines.append("changelog:")
        lines += [f"  {line}" for line in doc.changelog.splitlines()]
    for line in lines:
        out.print(line, markup=False)


@app.command("check")
def check(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="the catalog directory to validate")],
) -> None:
    """Validate a catalog: every document, file and directory name. Exits 1 naming every
    problem."""
    cli = app_of(ctx)
    try:
        loaded = Catalog.load(directory)
    except CatalogError as exc:
        cli.abort(exc.diagnostics())
    count = sum(len(loaded.versions(name)) for name in loaded.names())
    templates = len(loaded.names())
    cli.out.print(
        f"ok: {templates} template{'s' if templates != 1 else ''}, {count} "
        f"version{'s' if count != 1 else ''} in {directory}",
        markup=False,
    )
