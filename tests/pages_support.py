"""Shared set-up for the support-console tests: two venues, a mismatch of each case, staff."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from werkzeug.security import generate_password_hash

from db import Mismatch
from tests.support import customer, event, post_event, subscription

GYM = "acct_1Gym000000000000"
CLUB = "acct_1Club00000000000"
STAFF_USER = "alice"
STAFF_PASSWORD = "correct horse battery staple"
# pbkdf2 with few rounds keeps the suite fast; production hashes use werkzeug's default.
SUPPORT_USERS = (f"{STAFF_USER}:{generate_password_hash(STAFF_PASSWORD, 'pbkdf2:sha256:1000')},"
                 f"bob:{generate_password_hash('another one', 'pbkdf2:sha256:1000')}")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Scene:
    case_1: int  # Harbour Gym: ann has cus_AnnOld0000001, the sub is on cus_AnnNew0000001
    case_2: int  # Harbour Gym: cara is a member without a Stripe customer
    case_3: int  # City Club: nobody has bob's email


def build_scene(api, client, work, db) -> Scene:  # type: ignore[no-untyped-def]
    """Venues, members and outside subscriptions, delivered as signed events and worked
    off by a real RQ worker, as in production."""
    for account, name in ((GYM, "Harbour Gym"), (CLUB, "City Club")):
        response = api.put(f"/api/venues/{account}", json={
            "name": name, "admin_emails": [f"owner@{name.split()[1].lower()}.test"],
            "livemode": False})
        assert response.status_code == 201, response.json
    for ref, email, cus in (("m-ann", "ann@example.com", "cus_AnnOld0000001"),
                            ("m-cara", "cara@example.com", None)):
        response = api.put(f"/api/venues/{GYM}/members/{ref}", json={
            "email": email, "name": ref[2:].title(), "stripe_customer_id": cus})
        assert response.status_code == 201, response.json
    for account, cus, email, sub in (
        (GYM, "cus_AnnNew0000001", "ann@example.com", "sub_Ann0000000001"),
        (GYM, "cus_Cara000000001", "cara@example.com", "sub_Cara000000001"),
        (CLUB, "cus_Bob0000000001", "bob@example.com", "sub_Bob0000000001"),
    ):
        for payload in (
            event("customer.created", customer(cus, email, name="Outside Buyer"),
                  account=account),
            event("customer.subscription.created", subscription(sub, cus), account=account),
        ):
            assert post_event(client, payload).status_code == 200
    work()
    with db.session() as s:
        ids = {m.subscription_id: m.id for m in s.scalars(select(Mismatch))}
    return Scene(case_1=ids["sub_Ann0000000001"], case_2=ids["sub_Cara000000001"],
                 case_3=ids["sub_Bob0000000001"])


def csrf_from(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def sign_in(client, user: str = STAFF_USER, password: str = STAFF_PASSWORD,  # type: ignore[no-untyped-def]
            next_: str | None = None):
    """Sign a test client in as support staff, through the form (CSRF token included)."""
    token = csrf_from(client.get("/support/login").get_data(as_text=True))
    data = {"csrf_token": token, "username": user, "password": password}
    if next_ is not None:
        data["next"] = next_
    return client.post("/support/login", data=data)
