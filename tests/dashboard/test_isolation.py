"""An owner of one tenant never sees or touches another tenant's data.

Every page is fetched by each owner, with the other tenant named in the query string as an
attacker would try; none shows a string that belongs to the other tenant. Every action is tried
by QuickFix's owner with Bright Smile's ids (and a ``tenant`` form field): each is refused as
not found, and nothing of Bright Smile's changes.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.audit.entries import parse_entry
from tests.dashboard._world import MARKERS, A, B, Client, World, build_world

PAGES = [
    "/activity",
    "/activity?page=2",
    "/activity?outcome=blocked",
    "/activity?outcome=system",
    "/activity?agent=receptionist-1",
    "/activity?agent=dispatcher-1",
    "/approvals",
    "/connections",
    "/agents",
    "/audit",
]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path, per_page=10)
    try:
        yield world
    finally:
        world.close()


@pytest.mark.parametrize(("me", "other"), [(A, B), (B, A)])
def test_no_page_shows_another_tenants_data(world: World, me: str, other: str) -> None:
    async def go() -> None:
        client = Client(world.app)
        await client.login(me)
        for path in PAGES:
            for suffix in ("", f"{'&' if '?' in path else '?'}tenant={other}"):
                page = await client.get(path + suffix)
                assert page.status_code == 200, path
                for marker in MARKERS[other]:
                    assert marker not in page.text, (path + suffix, marker)
                assert MARKERS[me][0] in page.text  # the page is about me
        bundle = await client.get(f"/audit/bundle?tenant={other}")
        with tarfile.open(fileobj=io.BytesIO(bundle.content), mode="r:gz") as tar:
            names = tar.getnames()
            assert all(f"corral-audit-{me}-" in name for name in names)
            entries = tar.extractfile(next(n for n in names if n.endswith("entries.jsonl")))
            assert entries is not None
            text = entries.read().decode()
        assert f'"tenant":"{me}"' in text and f'"tenant":"{other}"' not in text
        await client.aclose()

    asyncio.run(go())


def test_no_action_reaches_another_tenant(world: World) -> None:
    before_log = world.log(A)
    before_pending = [e.call_id for e in world.control.pending(A)]
    before_rows = {k: dict(v) for k, v in world.connections.rows.items()}

    async def go() -> None:
        client = Client(world.app)
        await client.login(B)
        await client.get("/activity")
        hx = {"HX-Request": "true"}
        attempts = [
            ("/approvals/esc-refund-a", {"decision": "approve", "tenant": A}),
            ("/approvals/charge-a2", {"decision": "deny", "tenant": A}),
            ("/connections/revoke/twilio-a1", {"tenant": A}),
            (
                "/connections/rotate/gcal-a1",
                {
                    "tenant": A,
                    "cred_client_id": "x",
                    "cred_client_secret": "y",
                    "cred_refresh_token": "z",
                },
            ),
            ("/agents/opt-in", {"template": "dental-front-desk", "version": "1.5.0", "tenant": A}),
        ]
        for path, form in attempts:
            for headers in ({}, hx):
                answer = await client.post(f"{path}?tenant={A}", form, headers=headers)
                assert answer.status_code == 404, path
                for marker in MARKERS[A]:
                    assert marker not in answer.text, (path, marker)
        # A connect names no id: it is made for the session's tenant, whatever the form says.
        made = await client.post(
            f"/connections/connect/twilio?tenant={A}",
            {"tenant": A, "cred_account_sid": "ACb", "cred_auth_token": "t"},
        )
        assert made.status_code == 303
        await client.aclose()

    asyncio.run(go())
    assert world.log(A) == before_log
    assert [e.call_id for e in world.control.pending(A)] == before_pending
    assert [e.call_id for e in world.control.pending(B)] == ["esc-refund-b"]
    assert {k: v for k, v in world.connections.rows.items() if k[0] == A} == {
        k: v for k, v in before_rows.items() if k[0] == A
    }
    assert world.connections.calls[-1] == ("connect", B, "twilio")
    assert all(tenant == B for _, tenant, _ in world.connections.calls)
    assert world.opted == []
    assert all(parse_entry(leaf).kind != "operator.decision" for leaf in world.log(B)[-3:])


def test_an_owner_of_a_tenant_with_nothing_recorded_sees_empty_pages(world: World) -> None:
    world.owners.create_owner("newbiz", "kim@newbiz.example", "a brand new business!")
    tenants_before = world.chain.store.tenants()

    async def go() -> None:
        client = Client(world.app)
        answer = await client.login(
            "newbiz", email="kim@newbiz.example", password="a brand new business!"
        )
        assert answer.status_code == 303
        for path in PAGES:
            page = await client.get(path)
            assert page.status_code == 200, path
            for marker in MARKERS[A] + MARKERS[B]:
                assert marker not in page.text, (path, marker)
        assert "nothing recorded yet" in (await client.get("/activity")).text
        assert (await client.get("/audit/bundle")).status_code == 404
        await client.aclose()

    asyncio.run(go())
    assert world.chain.store.tenants() == tenants_before  # looking created no log
    assert "newbiz" not in world.control.tenants
