"""Signing in: argon2 hashes, sessions (server-side, expiring, HttpOnly, SameSite=Strict,
Secure over TLS), the sign-in form's own CSRF token, signing out, and the rate limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from corral.dashboard.auth import AuthError, OwnerExists, owners_table, sessions_table
from tests.dashboard._world import EMAIL, PASSWORD, A, B, Client, World, build_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    try:
        yield world
    finally:
        world.close()


def test_owners_are_stored_with_an_argon2id_hash_never_the_password(tmp_path: Path) -> None:
    world = build_world(tmp_path, hasher=PasswordHasher())  # the library's RFC 9106 defaults
    try:
        with world.owners.engine.connect() as conn:
            rows = conn.execute(sa.select(owners_table)).all()
        assert {(r.tenant, r.email) for r in rows} == {(A, EMAIL[A]), (B, EMAIL[B])}
        for row in rows:
            assert row.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
            assert PASSWORD[row.tenant] not in row.password_hash
            assert row.owner_id.startswith("owner-") and "@" not in row.owner_id
        assert world.owners.authenticate(A, EMAIL[A], PASSWORD[A]) is not None
        with pytest.raises(OwnerExists):
            world.owners.create_owner(A, EMAIL[A].upper(), "another long password")
        with pytest.raises(AuthError, match="12 characters"):
            world.owners.create_owner(A, "new@brightsmile.example", "short")
        with pytest.raises(AuthError, match="email"):
            world.owners.create_owner(A, "not an email", "a long enough password")
    finally:
        world.close()


def test_signing_in_opens_a_session_whose_cookie_is_httponly_and_strict(world: World) -> None:
    async def go() -> None:
        client = Client(world.app)
        answer = await client.login(A)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/dashboard/activity"
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("corral_session=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        assert "Max-Age=28800" in cookie and "Secure" not in cookie  # plain HTTP here
        page = await client.get("/activity")
        assert page.status_code == 200 and "Bright Smile Dental" in page.text
        token = cookie.split(";")[0].split("=", 1)[1]
        with world.owners.engine.connect() as conn:
            stored = conn.execute(sa.select(sessions_table)).all()
        assert len(stored) == 1 and stored[0].tenant == A
        assert token not in {stored[0].token_hash, stored[0].csrf}  # only its SHA-256 is kept
        await client.aclose()

    asyncio.run(go())


def test_the_session_cookie_is_secure_over_tls(world: World) -> None:
    async def go() -> None:
        client = Client(world.app, base_url="https://dash.test")
        answer = await client.login(A)
        cookies = answer.headers.get_list("set-cookie")
        assert any(c.startswith("corral_session=") and "Secure" in c for c in cookies)
        assert (await client.get("/activity")).status_code == 200
        await client.aclose()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("tenant", "email", "password"),
    [
        (A, EMAIL[A], "wrong password, long enough"),
        (B, EMAIL[A], PASSWORD[A]),  # the right owner and password, for another tenant
        ("nobody", EMAIL[A], PASSWORD[A]),
        (A, "stranger@example.com", PASSWORD[A]),
    ],
)
def test_a_wrong_sign_in_opens_nothing(
    world: World, tenant: str, email: str, password: str
) -> None:
    async def go() -> None:
        client = Client(world.app)
        answer = await client.login(tenant, email=email, password=password)
        assert answer.status_code == 401
        assert "Wrong business ID, email or password." in answer.text
        assert not any(
            c.startswith("corral_session=") for c in answer.headers.get_list("set-cookie")
        )
        assert (await client.get("/activity")).status_code == 303
        await client.aclose()

    asyncio.run(go())
    with world.owners.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sessions_table)).scalar() == 0


def test_the_sign_in_form_needs_its_own_csrf_token(world: World) -> None:
    async def go() -> None:
        client = Client(world.app)
        body = {"tenant": A, "email": EMAIL[A], "password": PASSWORD[A]}
        forged = await client.post("/login", body, csrf=False)  # no form token, no cookie
        assert forged.status_code == 403
        await client.get("/login")
        wrong = await client.post("/login", body, csrf="not-the-token")
        assert wrong.status_code == 403
        assert (await client.get("/activity")).status_code == 303
        await client.aclose()

    asyncio.run(go())


def test_a_session_expires(world: World) -> None:
    async def go() -> None:
        client = Client(world.app)
        await client.login(A)
        assert (await client.get("/activity")).status_code == 200
        world.clock.advance(timedelta(hours=8, seconds=1))
        expired = await client.get("/activity")
        assert expired.status_code == 303 and expired.headers["location"] == "/dashboard/login"
        htmx = await client.get("/approvals", headers={"HX-Request": "true"})
        assert htmx.headers["HX-Redirect"] == "/dashboard/login"
        await client.aclose()

    asyncio.run(go())
    with world.owners.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sessions_table)).scalar() == 0


def test_signing_out_needs_the_csrf_token_and_ends_the_session(world: World) -> None:
    async def go() -> None:
        client = Client(world.app)
        await client.login(A)
        await client.get("/activity")
        refused = await client.post("/logout", csrf=False)
        assert refused.status_code == 403
        assert (await client.get("/activity")).status_code == 200  # still signed in
        out = await client.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        client.http.cookies.clear()
        assert (await client.get("/activity")).status_code == 303
        await client.aclose()

    asyncio.run(go())


def test_failed_sign_ins_are_rate_limited_per_tenant_and_address(world: World) -> None:
    async def go() -> None:
        client = Client(world.app, address="198.51.100.9")
        for _ in range(5):
            assert (await client.login(A, password="guess guess guess")).status_code == 401
        limited = await client.login(A)  # even the right password waits now
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
        assert "Too many attempts" in limited.text
        other_tenant = Client(world.app, address="198.51.100.9")
        assert (await other_tenant.login(B)).status_code == 303
        other_address = Client(world.app, address="198.51.100.10")
        assert (await other_address.login(A)).status_code == 303
        world.clock.advance(timedelta(minutes=15, seconds=1))
        assert (await client.login(A)).status_code == 303
        for c in (client, other_tenant, other_address):
            await c.aclose()

    asyncio.run(go())


def test_pages_carry_a_strict_content_security_policy(world: World) -> None:
    async def go() -> None:
        client = Client(world.app)
        page = await client.get("/login")
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["Cache-Control"] == "no-store"
        assert page.headers["X-Frame-Options"] == "DENY"
        assert 'integrity="sha384-' in page.text
        await client.aclose()

    asyncio.run(go())
