"""The support console in a real browser (headless Chromium, JavaScript off) against the
running service: the real app served over HTTP on 127.0.0.1, on the test database and Redis.

Screenshots land in artifacts/pages/. Links into the Stripe Dashboard are checked by their
href, never followed: the browser may only talk to our server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from werkzeug.serving import WSGIRequestHandler, make_server

from db import Mismatch, StripeEvent
from notifications.links import mismatch_link
from tests.pages_support import (
    CLUB,
    GYM,
    STAFF_PASSWORD,
    STAFF_USER,
    SUPPORT_USERS,
    build_scene,
)
from tests.support import event, post_event, sign, subscription

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (apt-get install -y chromium); CI installs it")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "pages"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DAY = 86400


@pytest.fixture
def config(env, monkeypatch):  # type: ignore[no-untyped-def]
    from config import load_config

    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    return load_config()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class _QuietHandler(WSGIRequestHandler):
    """No access log: a notice link's query string is a credential."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class Live:
    """The running service: its base URL and the config its notices are made with."""

    def __init__(self, base: str, config: Any) -> None:
        self.base = base
        self.config = config

    def link(self, mismatch_id: int, account_id: str, **kw: Any) -> str:
        # Exactly what the notice email carries.
        return mismatch_link(self.config, mismatch_id, account_id, **kw)


@pytest.fixture
def live(app, config) -> Iterator[Live]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    base = f"http://127.0.0.1:{server.server_port}"
    served = replace(config, public_base_url=base)
    app.config["MISMATCH"] = served  # PUBLIC_BASE_URL is the service's own address
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield Live(base, served)
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def page(browser, live) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A fresh browser profile with JavaScript OFF that may only reach our server."""
    context = browser.new_context(java_script_enabled=False,
                                  viewport={"width": 1280, "height": 900})
    blocked: list[str] = []

    def guard(route: Any) -> None:
        if route.request.url.startswith(live.base + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    tab = context.new_page()
    yield tab
    context.close()
    assert blocked == [], f"the pages tried to load something off our server: {blocked}"


@pytest.fixture
def scene(api, client, work, db):  # type: ignore[no-untyped-def]
    return build_scene(api, client, work, db)


def shot(tab: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def text(tab: Any) -> str:
    return tab.inner_text("body")


def test_venue_admin_opens_notice_link_and_resolves(page, live, scene, db):
    link = live.link(scene.case_1, GYM)
    assert link.startswith(f"{live.base}/mismatches/{scene.case_1}?t=")
    response = page.goto(link)
    assert response.status == 200
    assert page.url == f"{live.base}/mismatches/{scene.case_1}"  # the token left the URL

    assert page.inner_text("h1") == "A member is being billed on a second Stripe customer"
    assert page.inner_text(".hero .badge.case") == "Case 1"
    assert page.inner_text(".hero .st-open") == "Open"
    facts = page.inner_text(".facts")
    for value in ("Harbour Gym", GYM, "sub_Ann0000000001", "cus_AnnNew0000001",
                  "cus_AnnOld0000001", "m-ann", "ann@example.com"):
        assert value in facts, value
    font = page.locator("code.id", has_text="cus_AnnNew0000001").first.evaluate(
        "e => getComputedStyle(e).fontFamily")
    assert "monospace" in font.lower()  # IDs are set in a monospace face

    # The Dashboard deep links point at the venue's account, in test mode.
    step = page.get_by_role("link", name="Open the subscription in Stripe")
    assert step.get_attribute("href") == (
        f"https://dashboard.stripe.com/{GYM}/test/subscriptions/sub_Ann0000000001")
    assert step.get_attribute("rel") == "noopener noreferrer"
    linked = page.get_by_role("link", name="The member's linked customer in Stripe")
    assert linked.get_attribute("href") == (
        f"https://dashboard.stripe.com/{GYM}/test/customers/cus_AnnOld0000001")
    timeline = page.locator("#timeline .tl-item")
    assert timeline.count() == 2
    assert "customer.subscription.created" in timeline.first.inner_text()
    shot(page, "mismatch-case-1")

    page.fill("#note", "Canceled sub_Ann0000000001 and refunded; invite link sent to Ann")
    page.get_by_role("button", name="Mark resolved").click()
    assert page.url == f"{live.base}/mismatches/{scene.case_1}"
    assert "Marked as resolved." in page.inner_text(".flash")
    assert page.inner_text(".hero .st-resolved") == "Resolved · manual"
    assert "venue admin (email link): Canceled" in page.inner_text("#resolution")
    assert page.get_by_role("button", name="Mark resolved").count() == 0
    shot(page, "mismatch-resolved")
    with db.session() as s:
        m = s.get(Mismatch, scene.case_1)
        assert (m.status, m.resolution) == ("resolved", "manual")


def test_link_for_one_venue_cannot_open_another(page, live, scene):
    gym_link = live.link(scene.case_1, GYM)
    token = gym_link.split("?t=")[1]
    response = page.goto(f"{live.base}/mismatches/{scene.case_3}?t={token}")
    assert response.status == 403
    assert page.inner_text("h1") == "You can't open this page"
    assert "sub_Bob" not in text(page) and "City Club" not in text(page)

    # A genuine link to the gym's mismatch opens it, and still not the club's.
    assert page.goto(gym_link).status == 200
    response = page.goto(f"{live.base}/mismatches/{scene.case_3}")
    assert response.status == 403 and "sub_Bob" not in text(page)
    assert page.goto(f"{live.base}/support").url.startswith(f"{live.base}/support/login")


def test_expired_link_shows_a_clear_message(page, live, scene):
    expired = live.link(scene.case_2, GYM, issued_at=time.time() - 15 * DAY)
    response = page.goto(expired)
    assert response.status == 403
    assert page.inner_text("h1") == "This link has expired"
    assert "Links in notice emails work for 14 days." in text(page)
    assert "sub_Cara" not in text(page)
    shot(page, "expired-link")


def test_support_dashboard_replay_and_recheck(page, live, scene, client, db, work):
    # Give the dashboard something to show: a rejected delivery, a failed event, an
    # unrouted account, and an event still waiting for the worker.
    body = '{"id": "evt_forged", "object": "event"}'
    client.post("/webhooks/stripe/connect", data=body, headers={
        "Stripe-Signature": sign(body, "whsec_not_ours"), "Content-Type": "application/json"})
    post_event(client, event("customer.subscription.created",
                             subscription("sub_Lost000000001", "cus_Lost000000001"),
                             account="acct_1Unknown00000000"))
    work()
    with db.session() as s:
        failed_id = s.scalar(select(StripeEvent.event_id).where(
            StripeEvent.account_id == CLUB, StripeEvent.type == "customer.created"))
        s.execute(update(StripeEvent).where(StripeEvent.event_id == failed_id).values(
            status="failed", attempts=6,
            last_error="StripeUnavailable: Stripe answered 503 six times"))
    post_event(client, event("customer.subscription.updated",
                             subscription("sub_Cara000000001", "cus_Cara000000001"),
                             account=GYM))

    page.goto(f"{live.base}/support")
    assert page.url.startswith(f"{live.base}/support/login")
    shot(page, "login")
    page.fill("#username", STAFF_USER)
    page.fill("#password", STAFF_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert page.url == f"{live.base}/support"
    assert page.inner_text("h1") == "Support dashboard"
    stats = page.inner_text(".stats")
    assert "OPEN MISMATCHES\n3" in stats.upper()
    assert "QUEUE DEPTH\n1" in stats.upper()
    assert "1 not yet processed" in stats
    assert "Harbour Gym" in page.inner_text("table")
    assert failed_id in page.inner_text("#failed")
    assert "acct_1Unknown00000000" in text(page)
    assert "bad_signature" in page.inner_text(".grid-2")
    shot(page, "dashboard")

    page.locator("#failed").get_by_role("button", name="Replay").click()
    assert f"{failed_id} queued for replay." in page.inner_text(".flash")
    work()
    page.reload()
    assert "No failed events." in page.inner_text("#failed")

    page.get_by_role("link", name=f"#{scene.case_3}").first.click()
    assert page.url == f"{live.base}/mismatches/{scene.case_3}"
    assert page.inner_text(".hero .badge.case") == "Case 3"
    assert page.get_by_role("link", name="Open the subscription in Stripe").get_attribute(
        "href") == f"https://dashboard.stripe.com/{CLUB}/test/subscriptions/sub_Bob0000000001"
    shot(page, "mismatch-case-3")
    page.get_by_role("button", name="Re-check now").click()
    assert "Re-check queued" in page.inner_text(".flash")
    work()

    page.goto(f"{live.base}/guides/case-1")
    assert "Escalate when" in text(page)
    shot(page, "guide-case-1")


def test_mismatch_page_on_a_phone(browser, live, scene):
    context = browser.new_context(java_script_enabled=False,
                                  viewport={"width": 390, "height": 844})
    try:
        tab = context.new_page()
        assert tab.goto(live.link(scene.case_2, GYM)).status == 200
        assert tab.inner_text(".hero .badge.case") == "Case 2"
        # Nothing wider than the phone (long IDs wrap or scroll inside their box).
        wide = tab.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > 392)
            .map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)
            .slice(0, 15)""")
        assert tab.evaluate("() => document.documentElement.scrollWidth") <= 390, wide
        shot(tab, "mismatch-case-2-mobile")
    finally:
        context.close()


LONG_SUB, LONG_CUS = "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw", "cus_1Pgc6rB7WZ01zgkWQk7xVb3m"


@pytest.mark.parametrize("width", [1280, 1024])
def test_mismatch_page_with_real_ids_a_deleted_customer_then_resolved(browser, live, api,
                                                                      client, work, db, width):
    from tests.support import customer

    assert api.put(f"/api/venues/{CLUB}", json={"name": "City Club", "admin_emails": [
        "owner@club.test"], "livemode": False}).status_code == 201
    for payload in (
        event("customer.created", customer(LONG_CUS, " Carl.Case1@Example.COM"), account=CLUB),
        event("customer.subscription.created", subscription(LONG_SUB, LONG_CUS), account=CLUB),
        event("customer.deleted", customer(LONG_CUS, " Carl.Case1@Example.COM", deleted=True),
              account=CLUB),
    ):
        assert post_event(client, payload).status_code == 200
    work()
    with db.session() as s:
        mismatch_id = s.scalar(select(Mismatch.id).where(Mismatch.subscription_id == LONG_SUB))
    context = browser.new_context(java_script_enabled=False,
                                  viewport={"width": width, "height": 900})
    try:
        tab = context.new_page()
        assert tab.goto(live.link(mismatch_id, CLUB)).status == 200
        body = text(tab)
        assert "deleted in Stripe" in body and tab.locator("#customer-deleted").count() == 1
        assert "Carl.Case1@Example.COM" in body and " Carl.Case1" not in tab.inner_text(
            ".facts")
        assert "Keep the customer" not in body  # it is gone: the step says so instead
        # Every ID stays inside its panel.
        overflow = tab.evaluate("""() => [...document.querySelectorAll('section code.id')]
            .filter(e => e.getBoundingClientRect().right >
                         e.closest('section').getBoundingClientRect().right - 1)
            .map(e => `${e.textContent} ${Math.round(e.getBoundingClientRect().right)} > ` +
                      `${Math.round(e.closest('section').getBoundingClientRect().right)}`)""")
        assert overflow == [], overflow
        assert tab.evaluate("() => document.documentElement.scrollWidth") <= width
        shot(tab, f"mismatch-deleted-customer-{width}")

        assert api.post(f"/api/mismatches/{mismatch_id}/resolve",
                        json={"note": "refunded"}).status_code == 200
        assert tab.goto(f"{live.base}/mismatches/{mismatch_id}").status == 200
        body = text(tab)
        assert "Nothing left to do" in body and tab.locator("#fix-steps").count() == 0
        assert "still open" not in body.lower() and "Cancel the outside subscription" not in body
        shot(tab, f"mismatch-resolved-{width}")
    finally:
        context.close()


@pytest.fixture
def connect_stripe_for_actions(env, monkeypatch):  # type: ignore[no-untyped-def]
    """The project's Connect stand-in as Stripe, knowing case 1's subscription (set up
    before the app reads its configuration)."""
    from tests.stripe_servers import ConnectStripe

    server = ConnectStripe()
    server.add_subscription(GYM, "sub_Ann0000000001", "cus_AnnNew0000001")
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_browser")
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    yield server
    server.stop()


def test_case_1_from_the_notice_to_resolved_by_cancel_and_refund(
        connect_stripe_for_actions, page, live, scene, client, work, db):
    stripe = connect_stripe_for_actions
    invoice = {"id": "in_1Ann000000001", "object": "invoice", "subscription": "sub_Ann0000000001",
               "customer": "cus_AnnNew0000001", "amount_paid": 4900, "currency": "eur",
               "charge": "ch_1Ann000000001", "payment_intent": "pi_1Ann000000001",
               "status_transitions": {"paid_at": 1_763_800_000}}
    assert post_event(client, event("invoice.paid", invoice, account=GYM)).status_code == 200
    work()
    clicks = 0

    def click(locator: Any) -> None:
        nonlocal clicks
        clicks += 1
        locator.click()

    assert page.goto(live.link(scene.case_1, GYM)).status == 200  # the notice's link
    assert "Act in Stripe" not in text(page)  # a venue admin reads and resolves only
    click(page.get_by_role("link", name="Support sign-in"))
    page.fill("#username", STAFF_USER)
    page.fill("#password", STAFF_PASSWORD)
    click(page.get_by_role("button", name="Sign in"))
    assert page.url == f"{live.base}/mismatches/{scene.case_1}"  # back where it started
    assert "€49.00 charged on 22 Nov 2025 (in_1Ann000000001) — refund it" in text(page)

    click(page.locator("#act-cancel_subscription"))
    body = text(page)
    assert "Cancel subscription in Stripe?" in body and "sub_Ann0000000001" in body
    assert GYM in body and "no proration" in body
    shot(page, "confirm-cancel")
    page.fill("#confirm-id", "sub_Ann0000000001")
    click(page.get_by_role("button", name="Cancel subscription in Stripe"))
    assert "queued" in page.inner_text(".flash")
    work()
    assert stripe.canceled == [(GYM, "sub_Ann0000000001")]

    page.goto(f"{live.base}/mismatches/{scene.case_1}")
    click(page.locator("#act-refund"))
    body = text(page)
    assert "€49.00 of invoice in_1Ann000000001" in body and "(charge ch_1Ann000000001)" in body
    shot(page, "confirm-refund")
    page.fill("#confirm-id", "sub_Ann0000000001")
    click(page.get_by_role("button", name="Refund what it charged"))
    work()
    assert [(r["account"], r["charge"], r["amount"]) for r in stripe.refunds] == [
        (GYM, "ch_1Ann000000001", "4900")]

    # Stripe tells us the subscription is gone: the mismatch resolves itself.
    deleted = event("customer.subscription.deleted",
                    subscription("sub_Ann0000000001", "cus_AnnNew0000001", status="canceled"),
                    account=GYM)
    assert post_event(client, deleted).status_code == 200
    work()
    page.goto(f"{live.base}/mismatches/{scene.case_1}")
    assert page.inner_text(".hero .st-resolved").startswith("Resolved")
    log = page.inner_text("#done-in-stripe")
    assert log.count("succeeded") == 2 and "alice (support)" in log
    shot(page, "mismatch-acted-on")
    assert clicks == 6  # sign in (link, button), cancel (button, confirm), refund (same)
    with db.session() as s:
        assert s.get(Mismatch, scene.case_1).resolution == "canceled"


@pytest.fixture
def connect_stripe_for_diagnose(env, monkeypatch):  # type: ignore[no-untyped-def]
    """The Connect stand-in with a customer on the platform that a GYM member links."""
    from tests.stripe_servers import ConnectStripe

    server = ConnectStripe()
    server.add_customer(None, "cus_1Wrong000", "mia@example.com")
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_browser")
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    yield server
    server.stop()


def test_diagnose_page_from_a_pasted_error_to_the_relinked_member(
        connect_stripe_for_diagnose, page, live, api, work, db):
    import json

    from db import Member

    stripe = connect_stripe_for_diagnose
    assert api.put(f"/api/venues/{GYM}", json={"name": "Harbour Gym", "admin_emails": [
        "owner@gym.test"], "livemode": False}).status_code == 201
    assert api.put(f"/api/venues/{GYM}/members/m-mia", json={
        "email": "mia@example.com", "name": "Mia", "stripe_customer_id": "cus_1Wrong000"}
        ).status_code == 201
    page.goto(f"{live.base}/support/login")
    page.fill("#username", STAFF_USER)
    page.fill("#password", STAFF_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="No such customer").click()
    error = json.dumps({"error": {
        "code": "resource_missing", "message": "No such customer: 'cus_1Wrong000'",
        "request_log_url": f"https://dashboard.stripe.com/{GYM}/test/logs/req_1Abc?t=1"}},
        indent=2)
    page.fill("#pasted", error)
    page.get_by_role("button", name="Look it up in Stripe").click()
    sentence = page.inner_text("#sentence")
    assert "cus_1Wrong000 lives in" in sentence and GYM in sentence
    assert "m-mia" in page.inner_text("#diagnosis")
    assert page.locator("#diagnose-error").count() == 0
    shot(page, "diagnose")
    page.fill("#confirm-customer", "cus_1Wrong000")
    page.get_by_role("button", name="Create the customer and relink").click()
    work()
    page.reload()
    with db.session() as s:
        linked = s.scalar(select(Member.stripe_customer_id).where(Member.member_ref == "m-mia"))
    assert linked != "cus_1Wrong000" and linked in page.inner_text("#fix-log")
    assert [r for r in stripe.requests if r[:2] == ("POST", "/v1/customers")] == [
        ("POST", "/v1/customers", GYM)]
    note = page.inner_text("#internal-note")
    assert "old customer: cus_1Wrong000" in note and "req_1Abc" in note
    assert "No such customer: 'cus_1Wrong000'" in note
    assert page.locator("#diagnose-error").count() == 0
    shot(page, "diagnose-fixed")
