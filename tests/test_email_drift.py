"""Email drift: a linked member's Stripe customer changes its email (customer portal,
checkout) — a finding on the console, and no email to the venue."""

from __future__ import annotations

from sqlalchemy import select

from db import Notification
from tests.pages_support import SUPPORT_USERS, sign_in
from tests.support import customer, event, post_event

GYM = "acct_1Gym000000000000"


def test_a_linked_customer_changing_its_email_is_a_console_finding_only(
        env, api, client, work, db, monkeypatch):
    from config import load_config
    from listener.app import create_app

    api.put(f"/api/venues/{GYM}", json={"name": "Harbour Gym", "livemode": False,
                                        "admin_emails": ["owner@gym.test"]})
    for ref, email, cus in (("m-ann", "ann@example.com", "cus_Ann0000000001"),
                            ("m-bob", "bob@example.com", "cus_Bob0000000001")):
        api.put(f"/api/venues/{GYM}/members/{ref}",
                json={"email": email, "name": ref, "stripe_customer_id": cus})
    for payload in (
        event("customer.created", customer("cus_Ann0000000001", "ann@example.com"),
              account=GYM),
        event("customer.created", customer("cus_Bob0000000001", " Bob@Example.com"),
              account=GYM),  # the same email, differently written: not drift
        event("customer.updated", customer("cus_Ann0000000001", "ann.portal@example.com"),
              account=GYM),
    ):
        assert post_event(client, payload).status_code == 200
    work()

    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    console = create_app(load_config(), TESTING=True).test_client()
    sign_in(console)
    page = console.get("/support").get_data(as_text=True)
    drift = page[page.index('id="email-drift"'):page.index('id="failed"')]
    assert "1 linked member whose Stripe customer's email changed" in drift
    assert "m-ann" in drift and "ann.portal@example.com" in drift and "cus_Ann0000000001" in drift
    assert "m-bob" not in drift
    with db.session() as s:
        assert list(s.scalars(select(Notification))) == []  # the venue is not emailed

    # The customer changes back: the finding goes.
    assert post_event(client, event(
        "customer.updated", customer("cus_Ann0000000001", "ANN@example.com"),
        account=GYM)).status_code == 200
    work()
    page = console.get("/support").get_data(as_text=True)
    assert "Every linked member's Stripe customer has the member's email." in page

    # The member's side: the booking product changes Bob's email, Stripe still has the old.
    api.put(f"/api/venues/{GYM}/members/m-bob", json={
        "email": "robert@example.com", "name": "m-bob", "stripe_customer_id": "cus_Bob0000000001"})
    page = console.get("/support").get_data(as_text=True)
    drift = page[page.index('id="email-drift"'):page.index('id="failed"')]
    assert "1 linked member whose" in drift and "robert@example.com" in drift
    assert "Bob@Example.com" in drift  # what Stripe has
    # Unlinking ends it: no customer, nothing to differ from.
    api.put(f"/api/venues/{GYM}/members/m-bob", json={
        "email": "robert@example.com", "name": "m-bob", "stripe_customer_id": None})
    assert "Every linked member's" in console.get("/support").get_data(as_text=True)
