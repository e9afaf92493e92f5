"""The five pages and their actions, through HTTP (no browser): what each shows, that every
proof handed to the browser is right, that every POST needs the session's CSRF token (and a
refused one changes nothing), and that no credential is ever rendered."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import tarfile
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.audit import merkle, note, verify_bundle
from corral.audit.entries import parse_entry
from tests.dashboard._world import CANARY, A, Client, World, build_world

ACTIONS: list[tuple[str, dict[str, str]]] = [
    ("/approvals/esc-refund-a", {"decision": "approve"}),
    ("/approvals/charge-a2", {"decision": "deny"}),
    ("/connections/connect/stripe", {"cred_api_key": "sk_test_CANARY-POSTED-0a1b2c"}),
    ("/connections/rotate/twilio-a1", {"cred_account_sid": "ACx", "cred_auth_token": "T0K3N"}),
    ("/connections/revoke/twilio-a1", {}),
    ("/agents/opt-in", {"template": "dental-front-desk", "version": "1.5.0"}),
    ("/logout", {}),
]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path, per_page=10)
    try:
        yield world
    finally:
        world.close()


def signed_in(world: World, test: Callable[[Client], Awaitable[None]], tenant: str = A) -> None:
    async def go() -> None:
        client = Client(world.app)
        assert (await client.login(tenant)).status_code == 303
        try:
            await test(client)
        finally:
            await client.aclose()

    asyncio.run(go())


def attr(html: str, name: str) -> list[str]:
    return re.findall(rf'{name}="([^"]*)"', html)


def state(world: World) -> Any:
    """Everything an action could change."""
    return (
        [e.call_id for e in world.control.pending(A)],
        world.log(A),
        list(world.connections.calls),
        {k: dict(v) for k, v in world.connections.rows.items()},
        list(world.opted),
    )


def test_the_timeline_is_prose_newest_first_with_proofs_that_check_out(world: World) -> None:
    async def test(client: Client) -> None:
        page = await client.get("/activity")
        assert page.status_code == 200
        html = page.text
        sentences = re.findall(r'<p class="sentence">(.*?)</p>', html)
        assert len(sentences) == 10
        assert sentences[0].startswith("Agent receptionist-1 asked to charge customer cus_ana")
        assert 'data-state="checking"' in html  # the browser decides, not the server
        checkpoint = world.chain.store.latest_checkpoint(A)
        assert checkpoint is not None and checkpoint.size == len(world.log(A))
        notes = attr(html, "data-note")
        opened = note.open(
            base64.b64decode(notes[0]), [note.Verifier.from_key(world.chain.log_key(A))]
        )
        root = note.Checkpoint.parse(opened.text).root
        leaves = re.findall(r'data-index="(\d+)" data-leaf="([^"]+)"\s+data-proof="([^"]*)"', html)
        assert len(leaves) >= 10
        for index, leaf, proof in leaves:
            hashes = [base64.b64decode(h) for h in proof.split(",") if h]
            raw = base64.b64decode(leaf)
            assert raw == world.log(A)[int(index)]
            assert merkle.verify_inclusion(
                merkle.leaf_hash(raw), int(index), checkpoint.size, hashes, root
            )
        assert 'data-server-matches="true"' in html

    signed_in(world, test)


def test_filters_and_pages_reload_only_the_timeline(world: World) -> None:
    async def test(client: Client) -> None:
        hx = {"HX-Request": "true", "HX-Target": "timeline"}
        billing = await client.get("/activity?agent=billing-1", headers=hx)
        assert billing.text.lstrip().startswith('<section id="timeline"')
        assert "<html" not in billing.text
        agents = set(re.findall(r'<span class="chip agent">([^<]+)</span>', billing.text))
        assert agents == {"billing-1"}
        blocked = await client.get("/activity?outcome=blocked&page=1")
        outcomes = set(attr(blocked.text, "data-outcome"))
        assert outcomes == {"blocked"}
        assert "Denied" in blocked.text
        first, second = await client.get("/activity?page=1"), await client.get("/activity?page=2")
        one, two = set(attr(first.text, "data-call")), set(attr(second.text, "data-call"))
        assert one and two and not one & two
        assert "Page 2 of" in second.text and 'rel="prev"' in second.text
        odd = await client.get("/activity?page=nope&outcome=<script>")
        assert odd.status_code == 200 and "<script>" not in odd.text

    signed_in(world, test)


def test_approvals_show_both_calls_and_the_rule_and_a_decision_leaves_the_queue(
    world: World,
) -> None:
    async def test(client: Client) -> None:
        page = await client.get("/approvals")
        html = page.text
        assert html.count('class="card escalation"') == 2
        assert "The refund of $480.00 is above your approval limit." in html
        assert "Customer cus_ana was already charged $90.00 in the last 24 hours" in html
        conflict = html[html.index('data-call="charge-a2"') :]
        assert "Agent billing-1 asked to charge customer cus_ana $90.00." in conflict
        assert "charge-a1" in conflict and "In progress" in conflict
        size = len(world.log(A))
        hx = {"HX-Request": "true"}
        answer = await client.post("/approvals/esc-refund-a", {"decision": "approve"}, headers=hx)
        assert answer.status_code == 200
        assert 'data-call="esc-refund-a"' not in answer.text
        assert 'hx-swap-oob="innerHTML"' in answer.text and "Approved" in answer.text
        assert [e.call_id for e in world.control.pending(A)] == ["charge-a2"]
        decision = parse_entry(world.log(A)[size]).model_dump(mode="json")
        assert decision["kind"] == "operator.decision"
        assert decision["data"] == {
            "call_id": "esc-refund-a",
            "escalation_id": "esc-refund-a",
            "decision": "approve",
        }
        owner = world.owners.authenticate(
            A, "lee@brightsmile.example", "correct horse battery staple"
        )
        assert owner is not None and decision["actor"]["id"] == owner.owner_id  # no email in a leaf
        plain = await client.post("/approvals/charge-a2", {"decision": "deny"})
        assert plain.status_code == 303 and plain.headers["location"].endswith("done=deny")
        assert world.control.pending(A) == []
        again = await client.post("/approvals/charge-a2", {"decision": "deny"})
        assert again.status_code == 404
        bad = await client.post("/approvals/charge-a2", {"decision": "maybe"})
        assert bad.status_code == 400

    signed_in(world, test)


def test_connections_never_render_a_secret(world: World) -> None:
    posted = "sk_test_CANARY-POSTED-0a1b2c"
    rotated = "CANARY-ROTATED-TOKEN-77ee"
    secrets = [v for fields in CANARY.values() for v in fields.values()]
    secrets += [v for fields in world.connections.secrets.values() for v in fields.values()]
    secrets += [posted, rotated]

    async def test(client: Client) -> None:
        bodies = []
        page = await client.get("/connections")
        bodies.append(page.text)
        assert page.text.count('class="card provider"') == 6
        assert set(re.findall(r'data-status="(\w+)"', page.text)) == {
            "connected",
            "needs_reconnect",
            "not_connected",
        }
        assert "Google refused the saved refresh token" in page.text
        missing = await client.post("/connections/connect/twilio", {"cred_auth_token": posted})
        assert missing.status_code == 400 and "Account SID" in missing.text
        bodies.append(missing.text)
        connected = await client.post(
            "/connections/connect/stripe", {"cred_api_key": posted}, headers={"HX-Request": "true"}
        )
        assert connected.status_code == 200
        bodies.append(connected.text)
        assert 'data-provider="stripe" data-status="connected"' in connected.text
        new = next(
            k for k, v in world.connections.rows.items() if v["provider"] == "stripe" and k[0] == A
        )
        assert world.connections.secrets[new] == {"api_key": posted}  # reached the source intact
        rotate = await client.post(
            "/connections/rotate/gcal-a1",
            {"cred_client_id": "id", "cred_client_secret": rotated, "cred_refresh_token": rotated},
        )
        assert rotate.status_code == 303
        bodies.append((await client.get("/connections?done=rotate")).text)
        assert world.connections.rows[(A, "gcal-a1")]["status"] == "active"
        world.connections.unavailable = True
        refused = await client.post(
            "/connections/connect/calendly",
            {"cred_client_id": "i", "cred_client_secret": posted, "cred_refresh_token": posted},
        )
        assert refused.status_code == 409 and "corral broker connect" in refused.text
        bodies.append(refused.text)
        for body in bodies:
            for secret in secrets:
                assert secret not in body
        assert 'type="password"' in page.text and 'autocomplete="new-password"' in page.text

    signed_in(world, test)


def test_agents_show_isolation_and_setup_and_opt_in_to_an_upgrade(world: World) -> None:
    async def test(client: Client) -> None:
        page = await client.get("/agents")
        html = page.text
        assert html.count('class="card agent-card"') == 3
        card = html[html.index('data-agent="booking-1"') :]
        assert "gVisor" in card and "sbx-2" in card and "dental-front-desk" in card
        assert "Upgrade to 1.5.0" in html
        answer = await client.post(
            "/agents/opt-in",
            {"template": "dental-front-desk", "version": "1.5.0"},
            headers={"HX-Request": "true"},
        )
        assert answer.status_code == 200 and "Scheduled" in answer.text
        assert "Upgrade to 1.5.0" not in answer.text
        assert world.opted == [(A, "dental-front-desk", "1.5.0")]
        unknown = await client.post(
            "/agents/opt-in", {"template": "dental-front-desk", "version": "9.9.9"}
        )
        assert unknown.status_code == 404 and len(world.opted) == 1

    signed_in(world, test)


def test_audit_shows_keys_checkpoints_anchors_and_serves_a_bundle_that_verifies(
    world: World, tmp_path: Path
) -> None:
    async def test(client: Client) -> None:
        page = await client.get("/audit")
        html = page.text
        assert world.chain.log_key(A) in html and world.chain.anchorer.verifier_key in html
        checkpoint = world.chain.store.latest_checkpoint(A)
        assert checkpoint is not None
        assert base64.b64encode(checkpoint.root).decode() in html
        assert 'status-connected">Yes' in html  # the anchor matches
        for fmt in ("tar.gz", "zip"):
            answer = await client.get(f"/audit/bundle?format={fmt}")
            assert answer.status_code == 200
            out = tmp_path / fmt.replace(".", "-")
            if fmt == "zip":
                zipfile.ZipFile(io.BytesIO(answer.content)).extractall(out)
            else:
                with tarfile.open(fileobj=io.BytesIO(answer.content), mode="r:gz") as tar:
                    tar.extractall(out, filter="data")
            (bundle,) = out.iterdir()
            report = verify_bundle(bundle, trusted_log_keys=[world.chain.log_key(A)])
            assert report.entries == len(world.log(A))
            assert f'filename="{bundle.name}.{fmt}"' in answer.headers["content-disposition"]

    signed_in(world, test)


@pytest.mark.parametrize(("path", "form"), ACTIONS, ids=[p for p, _ in ACTIONS])
@pytest.mark.parametrize("token", ["missing", "wrong", "other session"])
def test_every_action_needs_the_csrf_token_and_a_refused_one_changes_nothing(
    world: World, path: str, form: dict[str, str], token: str
) -> None:
    async def other_csrf() -> str:
        other = Client(world.app)
        await other.login(A)
        await other.get("/activity")
        assert other.csrf is not None
        await other.aclose()
        return other.csrf

    async def test(client: Client) -> None:
        await client.get("/activity")
        before = state(world)
        csrf: str | bool
        if token == "missing":
            csrf = False
        elif token == "wrong":
            csrf = "x" * 43
        else:
            csrf = await other_csrf()
        for headers in ({}, {"HX-Request": "true"}):
            answer = await client.post(path, form, csrf=csrf, headers=headers)
            assert answer.status_code == 403
            assert "expired" in answer.text
        assert state(world) == before
        assert (await client.get("/activity")).status_code == 200  # still signed in
        # The same request with the token goes through (so the 403 was the token's doing).
        ok = await client.post(path, form, headers={"X-CSRF-Token": client.csrf or ""}, csrf=False)
        assert ok.status_code in (200, 303)
        assert state(world) != before or path == "/logout"

    signed_in(world, test)
