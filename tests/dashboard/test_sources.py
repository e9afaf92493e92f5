"""The sources over the real objects: the audit chain (a damaged or erased log still renders,
and never as verified), the anchor check, the broker's client, the agents' feed."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from corral.audit import merkle
from corral.broker._store import RevocationKind
from corral.broker.client import BrokerClient, BrokerRefused
from corral.core.ids import SequentialIds
from corral.dashboard.sources import (
    BrokerConnections,
    ChainActivity,
    InMemoryAgents,
    NotFound,
    TimelineQuery,
    _anchors,
    _check_anchor,
    _checkpoint,
    connection_views,
)
from tests.broker._world import TENANT as BROKER_TENANT
from tests.broker._world import build_world as build_broker
from tests.dashboard._world import A, World, agents_of, build_world, context_for


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    try:
        yield world
    finally:
        world.close()


def timeline(world: World, **query: Any) -> Any:
    source = ChainActivity(world.chain, context_for=context_for)
    return asyncio.run(source.timeline(A, TimelineQuery(per_page=100, **query)))


def set_leaf(world: World, seq: int, leaf: bytes, table: str = "audit_entries") -> None:
    column = "leaf" if table == "audit_entries" else "payload"
    with world.chain.store.engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {table} SET {column} = :v WHERE tenant = :t AND seq = :s"),
            {"v": leaf, "t": A, "s": seq},
        )


def test_a_leaf_that_is_not_an_entry_is_shown_unreadable_with_its_proof(world: World) -> None:
    set_leaf(world, 3, b"\x00garbage")
    page = timeline(world)
    (bad,) = [i for i in page.items if not i.readable]
    assert "cannot be read" in bad.sentence
    (leaf,) = bad.leaves
    assert leaf.leaf == b"\x00garbage" and leaf.inclusion is not None
    assert page.checkpoint is not None
    assert not merkle.verify_inclusion(  # the browser will say "not verified"
        merkle.leaf_hash(leaf.leaf),
        3,
        page.checkpoint.size,
        list(leaf.inclusion),
        page.checkpoint.root,
    )
    assert page.total == len(timeline(world).items)


def test_a_personal_payload_that_does_not_match_is_not_shown(world: World) -> None:
    store = world.chain.store
    seq = next(
        e.seq for e in store.entries(A, 0, store.log_size(A)) if e.personal and b"Ana" in e.personal
    )
    original = store.entries(A, seq, seq + 1)[0].personal
    assert original is not None
    set_leaf(world, seq, original.replace(b"Ana", b"Eve"), table="audit_personal")
    text = " ".join(i.sentence for i in timeline(world).items)
    assert "Eve" not in text  # unverified personal data is never rendered
    world.chain.store.erase_personal(A, seq)
    assert "[details erased on request]" in " ".join(i.sentence for i in timeline(world).items)


def test_entries_newer_than_the_checkpoint_are_checkpointed_on_read(world: World) -> None:
    asyncio.run(world.control.sandbox_event(A, "booking-1", "sbx-9", "sandbox.started", "gvisor"))
    size = world.chain.store.log_size(A)
    stale = ChainActivity(world.chain, context_for=context_for, checkpoint_on_read=False)
    page = asyncio.run(stale.timeline(A, TimelineQuery()))
    assert page.checkpoint is not None and page.checkpoint.size == size - 1
    assert page.items[0].leaves[0].inclusion is None  # the browser will say why
    fresh = timeline(world)
    assert fresh.checkpoint is not None and fresh.checkpoint.size == size
    assert fresh.items[0].leaves[0].inclusion is not None


def test_the_anchor_check_fails_for_a_checkpoint_it_does_not_lead_to(world: World) -> None:
    checkpoint = _checkpoint(world.chain, A, fresh=True)
    assert checkpoint is not None
    (anchor,) = _anchors(world.chain, A, checkpoint, limit=1)
    assert anchor.matches and anchor.tenant_size == checkpoint.size
    older = _anchors(world.chain, A, checkpoint, limit=5)[-1]
    assert older.tenant_size < checkpoint.size and older.matches  # linked by a consistency proof
    forked = replace(checkpoint, root=merkle.leaf_hash(b"another history"))
    assert not _check_anchor(replace(older, matches=False), forked).matches
    assert not _check_anchor(replace(anchor, inclusion=()), checkpoint).matches
    assert not _check_anchor(replace(anchor, vkey=world.chain.log_key(A)), checkpoint).matches
    page = timeline(world)
    assert page.anchor is not None and base64.b64encode(page.anchor.leaf)


def test_connection_views_are_the_six_providers() -> None:
    rows = [
        {"tenant": "t", "connection_id": "s1", "provider": "stripe", "status": "revoked"},
        {
            "tenant": "t",
            "connection_id": "s2",
            "provider": "stripe",
            "status": "active",
            "created_at": "2026-03-03T15:55:00+00:00",
            "status_reason": "ignored when active",
        },
        {
            "tenant": "t",
            "connection_id": "g1",
            "provider": "ghl",
            "status": "needs_reconnect",
            "status_reason": "invalid_grant",
        },
        {"tenant": "t", "connection_id": "x", "provider": "fax", "status": "active"},
    ]
    views = {v.provider: v for v in connection_views(rows)}
    assert list(views) == ["twilio", "stripe", "google_calendar", "calendly", "quickbooks", "ghl"]
    assert views["stripe"].status == "connected" and views["stripe"].connection_id == "s2"
    assert views["stripe"].detail is None and views["stripe"].connected_at is not None
    assert views["ghl"].status == "needs_reconnect" and views["ghl"].detail == "invalid_grant"
    assert views["twilio"].status == "not_connected" and views["twilio"].fields == (
        "account_sid",
        "auth_token",
    )


def test_broker_connections_through_the_brokers_client(tmp_path: Path) -> None:
    broker = build_broker(tmp_path)
    vault = broker.broker.vault
    recorded: list[tuple[str, str, str, dict[str, Any]]] = []

    async def record(tenant: str, events: list[dict[str, Any]]) -> None:
        recorded.extend((tenant, e["kind"], e["actor"]["id"], e["data"]) for e in events)

    async def go() -> None:
        client = BrokerClient(transport=httpx.ASGITransport(app=broker.app))
        source = BrokerConnections(
            client, approve=broker.approve, ids=SequentialIds(), record=record
        )
        views = await source.connections(BROKER_TENANT)
        assert [v.status for v in views] == ["connected"] * 6
        assert await source.connections("someone-else") == [
            replace(
                v, status="not_connected", connection_id=None, connected_at=None, updated_at=None
            )
            for v in views
        ]
        # Revoke: agents lose it at once and the saved credential is deleted.
        await source.revoke(BROKER_TENANT, "stripe-1", operator="own_lee")
        found = vault.store.revoked(BROKER_TENANT, [(RevocationKind.CONNECTION, "stripe-1")])
        assert [kind for kind, _, _ in found] == [RevocationKind.CONNECTION]
        assert vault.store.credential(BROKER_TENANT, "stripe-1", 1) is None
        assert recorded == [
            (BROKER_TENANT, "credential.revoked", "own_lee",
             {"connection_id": "stripe-1", "provider": "stripe", "reason": "revoked by the owner"}),
        ]  # fmt: skip
        by_provider = {v.provider: v for v in await source.connections(BROKER_TENANT)}
        assert by_provider["stripe"].status == "not_connected"
        for gone in (
            source.revoke(BROKER_TENANT, "stripe-1", operator="own_lee"),  # revoked already
            source.revoke("someone-else", "twilio-1", operator="own_lee"),
            source.rotate(BROKER_TENANT, "nope-1", {"api_key": "sk"}, operator="own_lee"),
            source.connect(BROKER_TENANT, "fax", {"number": "1"}, operator="own_lee"),
        ):
            with pytest.raises(NotFound):
                await gone
        # Connect again: a new connection id, sealed in the broker, the form's dict cleared.
        fields = broker.fakes["stripe"].new_connection()
        posted = dict(fields)
        await source.connect(BROKER_TENANT, "stripe", posted, operator="own_lee")
        assert posted == fields  # the caller's mapping is the caller's
        assert vault.read_fields(vault.connection(BROKER_TENANT, "stripe-2")) == (1, fields)
        # Replace a key: a new version; a refusal other than "no such connection" is the broker's.
        fresh = broker.fakes["twilio"].new_connection()
        await source.rotate(BROKER_TENANT, "twilio-1", fresh, operator="own_lee")
        assert vault.read_fields(vault.connection(BROKER_TENANT, "twilio-1")) == (2, fresh)
        with pytest.raises(BrokerRefused) as refused:
            await source.rotate(BROKER_TENANT, "twilio-1", {"auth_token": "t"}, operator="o")
        assert refused.value.status == 400 and refused.value.code == "invalid_connection"
        assert [kind for _, kind, _, _ in recorded] == [
            "credential.revoked", "credential.connected", "credential.rotated"]  # fmt: skip
        assert not [v for v in (*fields.values(), *fresh.values()) if v in repr(recorded)]
        await client.aclose()

    try:
        asyncio.run(go())
    finally:
        broker.close()


def test_in_memory_agents_opt_in_only_to_offered_upgrades() -> None:
    calls: list[tuple[str, str, str]] = []
    agents = InMemoryAgents(agents_of, on_opt_in=lambda *a: calls.append(a))

    async def go() -> None:
        with pytest.raises(NotFound):
            await agents.opt_in(A, "plumbing-dispatch", "2.1.0")  # another tenant's offer
        await agents.opt_in(A, "dental-front-desk", "1.5.0")
        views = await agents.agents(A)
        assert all(v.upgrade is not None and v.upgrade.opted_in for v in views)
        assert not any(v.upgrade and v.upgrade.opted_in for v in await agents.agents("quickfix"))

    asyncio.run(go())
    assert calls == [(A, "dental-front-desk", "1.5.0")]
