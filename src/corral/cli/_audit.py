"""``corral audit``: export, verify, replay and anchor the audit chain; the demo business."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from corral.audit import merkle
from corral.audit.anchor import ANCHOR_LOG
from corral.audit.anchor_store import DynamoDBAnchorStore, open_anchor_store
from corral.audit.chain import AuditChain, open_chain
from corral.audit.demo import run_demo
from corral.audit.prose import ProseError, RenderContext
from corral.audit.replay import prose_snapshot_path, refresh_prose, render_log
from corral.audit.replay import replay as run_replay
from corral.audit.verify import VerificationError, verify_bundle
from corral.cli._console import App, app_of
from corral.core.clock import SystemClock
from corral.core.errors import CorralError

app = typer.Typer(help="The audit chain: export, verify, replay, anchor.", no_args_is_help=True)
anchor_app = typer.Typer(help="Anchors: Merkle roots of every tenant log, written once.")
app.add_typer(anchor_app, name="anchor")

Tenant = Annotated[str, typer.Option("--tenant", help="tenant id")]


@contextlib.contextmanager
def _chain(cli: App, *, tenant: str | None = None) -> Iterator[AuditChain]:
    """The deployment's audit chain, from the settings; a corral error inside becomes one line
    on stderr and exit 1. With ``tenant``, refuses a tenant that has no log."""
    try:
        with open_chain(cli.settings(), SystemClock()) as chain:
            if tenant is not None and tenant not in chain.store.tenants():
                cli.abort(f"no audit log for tenant {tenant!r}")
            yield chain
    except CorralError as exc:
        cli.abort(exc.diagnostics())


@app.command()
def verify(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="an exported bundle directory")],
    log_key: Annotated[
        list[str] | None, typer.Option("--log-key", help="pin the tenant log's verifier key")
    ] = None,
    anchor_key: Annotated[
        list[str] | None, typer.Option("--anchor-key", help="pin the anchor verifier key")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Check every entry, proof, signature, checkpoint and anchor of a bundle, offline.

    Exits 0 only if all hold; otherwise names the first bad item and exits 1.
    """
    cli = app_of(ctx)
    try:
        report = verify_bundle(
            bundle, trusted_log_keys=log_key or (), trusted_anchor_keys=anchor_key or ()
        )
    except VerificationError as exc:
        if as_json:
            cli.out.print_json(json.dumps({"ok": False, "item": exc.item, "reason": exc.reason}))
        cli.abort(f"verification failed: {exc}")
    if as_json:
        cli.out.print_json(
            json.dumps(
                {
                    "ok": True,
                    "origin": report.origin,
                    "entries": report.entries,
                    "checkpoints": report.checkpoints,
                    "anchors": report.anchors,
                    "anchored_size": report.anchored_size,
                    "payloads": report.payloads,
                    "erased": report.erased,
                    "root": base64.b64encode(report.root).decode(),
                    "notes": report.notes,
                }
            )
        )
        return
    cli.out.print(
        f"verified {report.origin}: {report.entries} entries, {report.checkpoints} checkpoints,"
        f" {report.anchors} anchors (the last covers {report.anchored_size} entries);"
        f" {report.payloads} personal payloads, {report.erased} erased",
        markup=False,
    )
    cli.out.print(f"root {base64.b64encode(report.root).decode()}", markup=False)
    for line in report.notes:
        cli.out.print(f"note: {line}", markup=False)


@app.command()
def export(
    ctx: typer.Context,
    tenant: Tenant,
    out: Annotated[Path, typer.Option("--out", help="bundle directory to write")],
) -> None:
    """Write a self-contained, verifiable bundle of a tenant's log."""
    cli = app_of(ctx)
    with _chain(cli, tenant=tenant) as chain:
        manifest = chain.export(tenant, out)
    cli.out.print(f"exported {manifest.size} entries of {manifest.origin} to {out}", markup=False)


@app.command()
def erase(
    ctx: typer.Context,
    tenant: Tenant,
    seq: Annotated[int, typer.Option("--seq", help="the entry whose personal data goes")],
) -> None:
    """Erase an entry's personal payload (a data-deletion request); proofs stay valid."""
    cli = app_of(ctx)
    with _chain(cli) as chain:
        erased = chain.store.erase_personal(tenant, seq)
        if erased:
            refresh_prose(cli.settings().data_dir, chain.store, tenant)
    if not erased:
        cli.abort(f"entry {seq} of tenant {tenant!r} has no personal payload to erase")
    cli.out.print(f"erased the personal payload of entry {seq} of {tenant}", markup=False)


@anchor_app.command("run")
def anchor_run(ctx: typer.Context) -> None:
    """Anchor every tenant log's latest checkpoint now."""
    cli = app_of(ctx)
    with _chain(cli) as chain:
        for tenant in chain.store.tenants():
            if tenant != ANCHOR_LOG:
                chain.sequencer.checkpoint(tenant)
        record = chain.anchorer.anchor_now()
        latest = chain.anchors.latest(chain.deployment)
    if latest is None:
        cli.out.print("nothing to anchor yet", markup=False)
        return
    root = base64.b64encode(latest.root).decode()
    said = "anchored" if record is not None else "nothing new to anchor; the latest anchor is"
    cli.out.print(f"{said} size {latest.size} root {root}", markup=False)


@anchor_app.command("proof")
def anchor_proof(ctx: typer.Context, tenant: Tenant) -> None:
    """Print the proof that the tenant's latest anchored checkpoint is in an anchor (JSON)."""
    cli = app_of(ctx)
    with _chain(cli, tenant=tenant) as chain:
        proofs = chain.anchorer.proofs(tenant)
    if not proofs:
        cli.abort(f"no checkpoint of tenant {tenant!r} has been anchored yet")
    proof = proofs[-1]
    leaf_hash = merkle.leaf_hash(proof.leaf)
    size, root = proof.anchor.size, proof.anchor.root
    ok = merkle.verify_inclusion(leaf_hash, proof.index, size, proof.inclusion, root)
    if not ok:  # the store disagrees with itself: say so rather than print a false proof
        cli.abort(f"the stored anchor proof of tenant {tenant!r} does not verify")
    cli.out.print_json(
        json.dumps(
            {
                "checkpoint": proof.leaf.decode(),
                "anchor": proof.anchor.note.decode(),
                "index": proof.index,
                "inclusion": [base64.b64encode(h).decode() for h in proof.inclusion],
            }
        )
    )


@anchor_app.command("init")
def anchor_init(ctx: typer.Context) -> None:
    """Create the anchor store (the DynamoDB table, when that backend is selected)."""
    cli = app_of(ctx)
    settings = cli.settings()
    try:
        store = open_anchor_store(settings.audit.anchor, settings.data_dir)
        if isinstance(store, DynamoDBAnchorStore):
            store.create_table()
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    cli.out.print(f"anchor store ready: {store!r}", markup=False)


Locale = Annotated[str, typer.Option("--locale", help="prose language: en or es")]


def _context(cli: App, timezone: str, locale: str, country: str) -> RenderContext:
    try:
        return RenderContext(timezone=timezone, locale=locale, country=country)
    except ProseError as exc:
        cli.abort(str(exc))


@app.command()
def prose(
    ctx: typer.Context,
    tenant: Tenant,
    locale: Locale = "en",
    timezone: Annotated[str, typer.Option("--timezone", help="IANA zone")] = "UTC",
    country: Annotated[str, typer.Option("--country", help="phone numbers' country")] = "US",
) -> None:
    """Print a tenant's audit log as plain sentences, oldest first."""
    cli = app_of(ctx)
    context = _context(cli, timezone, locale, country)
    with _chain(cli, tenant=tenant) as chain:
        lines = render_log(chain.store, tenant, context)
    for line in lines:
        cli.out.print(line, markup=False)


@app.command()
def replay(
    ctx: typer.Context,
    tenant: Tenant,
    locale: Locale = "en",
    timezone: Annotated[str, typer.Option("--timezone", help="IANA zone")] = "UTC",
    country: Annotated[str, typer.Option("--country", help="phone numbers' country")] = "US",
) -> None:
    """Recompute every checkpoint from the stored entries and re-render the prose.

    Exits 1 and lists the differences if anything signed or said no longer follows from the
    entries.
    """
    cli = app_of(ctx)
    context = _context(cli, timezone, locale, country)
    with _chain(cli) as chain:
        report = run_replay(
            chain.store,
            chain.keys,
            deployment=chain.deployment,
            tenant=tenant,
            ctx=context,
            snapshot=prose_snapshot_path(cli.settings().data_dir, tenant, context),
        )
    for line in report.notes:
        cli.out.print(f"note: {line}", markup=False)
    for line in report.differences:
        cli.err.print(f"difference: {line}", markup=False)
    if not report.ok:
        cli.abort(f"replay of {tenant} found {len(report.differences)} differences")
    cli.out.print(
        f"replayed {tenant}: {report.entries} entries, {report.checkpoints} checkpoints and"
        f" {report.prose_lines} prose lines match",
        markup=False,
    )


@app.command()
def demo(
    ctx: typer.Context,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="a fresh directory (a previous demo's is wiped)")
    ] = Path(".corral/demo"),
    locale: Locale = "en",
) -> None:
    """Log a sample dental clinic's day, print it as prose, export it and verify the export."""
    cli = app_of(ctx)
    try:
        with cli.progress("logging the day") as advance:
            result = run_demo(data_dir, locale=locale, progress=advance)
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    cli.out.rule("Bright Smile Dental — Tuesday, as the owner reads it")
    for line in result.lines:
        when, _, sentence = line.partition(" — ")
        cli.out.print(f"[dim]{escape(when)}[/dim] — {escape(sentence)}")
    report = result.report
    cli.out.rule("The record")
    cli.out.print(
        f"{report.entries} entries in log {report.origin}, signed by {report.checkpoints}"
        f" checkpoints and anchored {report.anchors} times; entry {result.erased_seq}'s personal"
        " details were erased on request, and every proof still holds.",
        markup=False,
    )
    cli.out.print(f"Exported to {result.bundle} and verified offline: OK", markup=False)
    cli.out.print(
        f"Check it yourself:  corral audit verify {result.bundle}\n"
        f"Replay it:          corral --data-dir {result.data_dir} audit replay"
        " --tenant brightsmile --timezone America/Los_Angeles",
        markup=False,
    )
