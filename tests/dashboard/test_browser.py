"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the
dashboard served over HTTP by uvicorn on a free loopback port.

These tests are the proof that verification happens *in the browser*: verify.js recomputes
each line's root with WebCrypto and writes it to ``data-computed-root``, which must equal the
root the server signed; a leaf changed in the database after the checkpoint must turn its line
"Not verified". With ``CORRAL_SCREENSHOTS=1`` they also write the pictures in
``docs/screenshots/``.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn

from corral.audit.entries import parse_entry
from tests._serving import free_port
from tests.conftest import need_service
from tests.dashboard._world import EMAIL, PASSWORD, A, World, build_world

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        need_service("Playwright", f"cannot import playwright: {exc}")
    if not CHROMIUM.exists():
        need_service("Chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Served:
    """A world's app served by uvicorn in a thread until :meth:`stop`."""

    def __init__(self, world: World) -> None:
        self.world = world
        port = free_port()
        config = uvicorn.Config(
            world.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            loop="asyncio",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}/dashboard"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    world = build_world(tmp_path)
    served = Served(world)
    try:
        yield served
    finally:
        served.stop()
        world.close()


def sign_in(browser: Any, served: Served, viewport: dict[str, int] = LAPTOP, **kw: Any) -> Any:
    context = browser.new_context(viewport=viewport, **kw)
    page = context.new_page()
    page.goto(f"{served.url}/login")
    page.get_by_label("Business ID").fill(A)
    page.get_by_label("Email").fill(EMAIL[A])
    page.get_by_label("Password").fill(PASSWORD[A])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{served.url}/activity")
    return page


def count(locator: Any, n: int) -> None:
    """Wait until ``locator`` matches ``n`` elements (no eval: the page's CSP forbids it)."""
    from playwright.sync_api import expect

    expect(locator).to_have_count(n, timeout=15000)


def settled(page: Any) -> None:
    """Wait until verify.js has decided every badge on the page."""
    count(page.locator('[data-state="checking"]'), 0)


def shoot(page: Any, name: str) -> None:
    if os.environ.get("CORRAL_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / name))


def root_of(world: World) -> str:
    checkpoint = world.chain.store.latest_checkpoint(A)
    assert checkpoint is not None
    return base64.b64encode(checkpoint.root).decode("ascii")


def test_signing_in_shows_a_timeline_whose_every_line_the_browser_verified(
    browser: Any, served: Served
) -> None:
    page = sign_in(browser, served)
    settled(page)
    lines = page.locator("li.entry")
    assert lines.count() == 25  # the first page, newest first
    states = lines.evaluate_all("els => els.map(e => e.dataset.state)")
    assert set(states) == {"verified"}
    computed = lines.evaluate_all("els => els.map(e => e.dataset.computedRoot)")
    assert set(computed) == {root_of(served.world)}  # WebCrypto folded every proof to the root
    assert page.locator("#checkpoint-check").get_attribute("data-state") == "verified"
    anchor = page.locator("#anchor-check")
    assert anchor.get_attribute("data-state") == "verified", anchor.get_attribute("title")
    assert "matches this record" in page.locator("#anchor-check").inner_text()
    assert page.locator("li.entry .badge-text").first.inner_text() == "Verified"
    shoot(page, "activity.png")
    # The filters reload the timeline in place (htmx) and the new lines are verified too.
    page.get_by_label("Outcome").select_option("blocked")
    count(page.locator("li.entry.done"), 0)
    settled(page)
    assert set(page.locator("li.entry").evaluate_all("e => e.map(x => x.dataset.outcome)")) == {
        "blocked"
    }
    assert set(page.locator("li.entry").evaluate_all("e => e.map(x => x.dataset.state)")) == {
        "verified"
    }
    assert "outcome=blocked" in page.url
    page.context.close()


def test_the_timeline_on_a_phone(browser: Any, served: Served) -> None:
    page = sign_in(browser, served, PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    settled(page)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing sticks out sideways
    assert page.locator("li.entry[data-state='verified']").count() == 25
    shoot(page, "activity-phone.png")
    page.context.close()


def test_approving_an_escalation_takes_it_off_the_queue_and_into_the_record(
    browser: Any, served: Served
) -> None:
    page = sign_in(browser, served)
    page.get_by_role("link", name="Approvals").click()
    cards = page.locator("li.escalation")
    assert cards.count() == 2
    charge = page.locator("li.escalation[data-call='charge-a2']")
    assert charge.locator(".conflict").count() == 1  # both conflicting calls are on screen
    assert "charge-a1" in charge.inner_text()
    shoot(page, "approvals.png")
    refund = page.locator("li.escalation[data-call='esc-refund-a']")
    assert "above your approval limit" in refund.inner_text()
    refund.get_by_role("button", name="Approve").click()
    count(page.locator("li.escalation[data-call='esc-refund-a']"), 0)
    assert page.locator("li.escalation").count() == 1
    assert "Approved" in page.locator("#notice").inner_text()
    assert page.locator("#pending-count").inner_text() == "1"  # swapped in out of band
    kinds = [parse_entry(leaf).kind for leaf in served.world.log(A)]
    assert kinds[-1] == "operator.decision"
    page.get_by_role("link", name="Activity").click()
    settled(page)
    line = page.locator("li.entry[data-call='esc-refund-a']")
    assert "operator.decision" in (line.get_attribute("data-kinds") or "")
    assert "approved" in line.inner_text()
    assert line.get_attribute("data-state") == "verified"
    page.context.close()


def test_revoking_a_connection_changes_its_status(browser: Any, served: Served) -> None:
    page = sign_in(browser, served)
    page.get_by_role("link", name="Connections").click()
    twilio = page.locator("li.provider[data-provider='twilio']")
    assert twilio.get_attribute("data-status") == "connected"
    assert page.locator("li.provider").count() == 6
    shoot(page, "connections.png")
    twilio.get_by_text("Revoke…").click()
    twilio.get_by_role("button", name="Yes, revoke Twilio").click()
    page.wait_for_selector("li.provider[data-provider='twilio'][data-status='not_connected']")
    assert "Revoked" in page.locator("#notice").inner_text()
    assert served.world.connections.calls == [("revoke", A, "twilio-a1")]
    page.context.close()


def test_agents_and_audit_pages(browser: Any, served: Served) -> None:
    page = sign_in(browser, served)
    page.get_by_role("link", name="Agents").click()
    assert page.locator("li.agent-card").count() == 3
    assert (
        "Virtual machine" in page.locator("li.agent-card[data-agent='receptionist-1']").inner_text()
    )
    shoot(page, "agents.png")
    page.locator("li.agent-card[data-agent='booking-1']").get_by_role(
        "button", name="Upgrade to 1.5.0"
    ).click()
    page.wait_for_selector("text=Scheduled")
    assert served.world.opted == [(A, "dental-front-desk", "1.5.0")]
    page.get_by_role("link", name="Audit").click()
    assert page.locator("#log-key").inner_text() == served.world.chain.log_key(A)
    shoot(page, "audit.png")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download .tar.gz").click()
    assert download.value.suggested_filename.startswith(f"corral-audit-{A}-")
    page.context.close()


def test_a_leaf_changed_after_the_checkpoint_shows_as_not_verified(
    browser: Any, served: Served
) -> None:
    world = served.world
    store = world.chain.store
    target = next(
        seq for seq, leaf in enumerate(world.log(A)) if b"pi_7Zx" in leaf and b"requested" in leaf
    )
    leaf = world.log(A)[target]
    forged = leaf.replace(b"pi_7Zx", b"pi_7Zy")  # one byte; still a well-formed entry
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_entries SET leaf = :leaf WHERE tenant = :t AND seq = :s"),
            {"leaf": forged, "t": A, "s": target},
        )
    page = sign_in(browser, served)
    page.get_by_label("Agent").select_option("billing-1")
    count(page.locator("li.entry .chip.agent").filter(has_not_text="billing-1"), 0)
    settled(page)
    bad = page.locator("li.entry[data-state='failed']")
    assert bad.count() == 1
    assert "pi_7Zy" in bad.inner_text()
    assert bad.locator(".badge-text").inner_text() == "Not verified"
    assert bad.get_attribute("data-computed-root") != root_of(world)
    assert page.locator("li.entry[data-state='verified']").count() >= 3
    bad.locator("summary").click()
    assert "the record was changed" in bad.locator("[data-why]").inner_text()
    shoot(page, "tampered.png")
    page.context.close()


def test_screenshots_are_in_the_docs() -> None:
    """The pictures the docs show exist (regenerate with CORRAL_SCREENSHOTS=1)."""
    names = [
        "activity.png",
        "activity-phone.png",
        "approvals.png",
        "connections.png",
        "agents.png",
        "audit.png",
        "tampered.png",
    ]
    for name in names:
        path = SHOTS / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
