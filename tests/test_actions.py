"""What an outside subscription charged (rule 7), and acting on it in Stripe through the API:
cancel and refund, confirmed, carried out by the real worker against the project's Connect
stand-in, once per idempotency key whatever is clicked or retried, audited in the JSON."""

from __future__ import annotations

import pytest

from tests.stripe_servers import ConnectStripe
from tests.support import GYM, customer, event, post_event, subscription

SUB, CUS = "sub_1Outside0000001", "cus_1Outside0000001"


def invoice_old(invoice_id: str, amount: int, charge: str, intent: str) -> dict:
    """An invoice as API versions before 2025-03-31 send it."""
    return {"id": invoice_id, "object": "invoice", "subscription": SUB, "customer": CUS,
            "amount_paid": amount, "currency": "eur", "charge": charge,
            "payment_intent": intent, "status": "paid",
            "status_transitions": {"paid_at": 1_763_800_000}}


def invoice_new(invoice_id: str, amount: int) -> dict:
    """An invoice as 2025-03-31 and later send it: the subscription under `parent`, its
    payments not included."""
    return {"id": invoice_id, "object": "invoice", "customer": CUS, "amount_paid": amount,
            "currency": "eur", "status": "paid",
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": SUB, "metadata": {}}},
            "status_transitions": {"paid_at": 1_763_900_000}}


@pytest.fixture
def stripe_stand_in(env, monkeypatch):  # type: ignore[no-untyped-def]
    server = ConnectStripe()
    server.add_subscription(GYM, SUB, CUS)
    server.invoice_payments["in_1New000000001"] = "pi_1New000000001"
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_actions")
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    yield server
    server.stop()


@pytest.fixture
def outside(stripe_stand_in, venues, client, api, work):  # type: ignore[no-untyped-def]
    """A case-3 mismatch on GYM that charged twice (one invoice of each API shape)."""
    from config import load_config
    from listener.app import create_app

    for payload in (
        event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
        event("customer.subscription.created", subscription(SUB, CUS), account=GYM),
        event("invoice.paid", invoice_old("in_1Old000000001", 4900, "ch_1Old000000001",
                                          "pi_1Old000000001"), account=GYM),
        event("invoice.paid", invoice_new("in_1New000000001", 4900), account=GYM),
    ):
        assert post_event(client, payload).status_code == 200
    work()
    [m] = api.get("/api/mismatches").json["mismatches"]
    # An app that reads the Stripe key and stand-in set above.
    app = create_app(load_config(), TESTING=True)
    return m, app.test_client()


AUTH = {"Authorization": "Bearer test-api-token"}


def test_the_mismatch_knows_each_payment_in_either_shape(outside, api):
    m, _ = outside
    charges = {c["invoice_id"]: c for c in m["charges"]}
    assert charges["in_1Old000000001"] == {
        "invoice_id": "in_1Old000000001", "charge_id": "ch_1Old000000001",
        "payment_intent_id": "pi_1Old000000001", "amount": 4900, "currency": "eur",
        "paid_at": 1_763_800_000, "amount_refunded": 0, "disputed": False}
    assert charges["in_1New000000001"]["amount"] == 4900
    assert charges["in_1New000000001"]["charge_id"] is None  # not in the newer shape
    assert m["actions"] == []


def test_cancel_reaches_stripe_once_whatever_is_clicked_or_retried(outside, stripe_stand_in,
                                                                   work, api, db):
    m, client = outside
    url = f"/api/mismatches/{m['id']}/cancel-subscription"
    assert client.post(url, json={}, headers=AUTH).status_code == 400  # no confirmation
    assert client.post(url, json={"confirm": "sub_other"}, headers=AUTH).status_code == 400
    first = client.post(url, json={"confirm": SUB, "actor": "alice"}, headers=AUTH)
    second = client.post(url, json={"confirm": SUB, "actor": "alice"}, headers=AUTH)  # again
    assert first.status_code == second.status_code == 202
    [action] = first.json["actions"]
    assert second.json["actions"][0]["id"] == action["id"]
    assert (action["kind"], action["status"], action["target"]) == (
        "cancel_subscription", "queued", SUB)
    assert stripe_stand_in.canceled == []  # nothing reaches Stripe inside the request

    work()
    assert stripe_stand_in.canceled == [(GYM, SUB)]
    [done] = api.get(f"/api/mismatches/{m['id']}").json["actions"]
    assert done["status"] == "succeeded" and done["stripe_request_id"].startswith("req_")
    assert done["actor"] == "alice (api)" and done["finished_at"]

    # A worker killed after Stripe answered but before it wrote the answer runs the job
    # again: the same idempotency key gets Stripe's first answer, no second cancel.
    from sqlalchemy import update

    from db import StripeAction
    from workers.jobs import act_on_stripe

    with db.session() as s:
        s.execute(update(StripeAction).values(status="queued"))
    assert act_on_stripe(done["id"]) == "succeeded"
    assert act_on_stripe(done["id"]) == "succeeded"  # a retried job: already done
    assert stripe_stand_in.canceled == [(GYM, SUB)]
    deletes = [r for r in stripe_stand_in.requests if r[0] == "DELETE"]
    assert len(deletes) == 2 and all(account == GYM for _, _, account in deletes)


def test_refund_every_paid_payment_once_in_either_shape(outside, stripe_stand_in, work, api):
    m, client = outside
    url = f"/api/mismatches/{m['id']}/refund"
    first = client.post(url, json={"confirm": SUB}, headers=AUTH)
    again = client.post(url, json={"confirm": SUB}, headers=AUTH)
    assert first.status_code == again.status_code == 202
    assert sorted(a["target"] for a in first.json["actions"]) == [
        "in_1New000000001", "in_1Old000000001"]
    assert [a["id"] for a in again.json["actions"]] == [a["id"] for a in first.json["actions"]]
    work()
    refunds = sorted((r["account"], r.get("charge", "-"), r.get("payment_intent", "-"),
                      r["amount"]) for r in stripe_stand_in.refunds)
    assert refunds == [(GYM, "-", "pi_1New000000001", "4900"),
                       (GYM, "ch_1Old000000001", "-", "4900")]
    after = api.get(f"/api/mismatches/{m['id']}").json
    assert {a["status"] for a in after["actions"]} == {"succeeded"}
    assert all(c["amount_refunded"] == 4900 for c in after["charges"])
    # Nothing left to refund: refused, and no new request.
    response = client.post(url, json={"confirm": SUB}, headers=AUTH)
    assert response.status_code == 202  # the recorded ones, answered again
    assert len(stripe_stand_in.refunds) == 2


def test_refused_with_a_reason(outside, client, api, work, stripe_stand_in, monkeypatch):
    m, app_client = outside
    # A dispute: never refund, escalate.
    assert post_event(client, event("charge.dispute.created", {
        "id": "dp_1", "object": "dispute", "charge": "ch_1Old000000001",
        "payment_intent": "pi_1Old000000001", "amount": 4900}, account=GYM)).status_code == 200
    work()
    response = app_client.post(f"/api/mismatches/{m['id']}/refund", json={"confirm": SUB},
                               headers=AUTH)
    assert response.status_code == 409 and "disputed" in response.json["error"]
    assert [c["disputed"] for c in api.get(f"/api/mismatches/{m['id']}").json["charges"]
            if c["invoice_id"] == "in_1Old000000001"] == [True]

    # Resolved: refused.
    assert api.post(f"/api/mismatches/{m['id']}/resolve", json={"note": "x"}).status_code == 200
    response = app_client.post(f"/api/mismatches/{m['id']}/cancel-subscription",
                               json={"confirm": SUB}, headers=AUTH)
    assert response.status_code == 409 and "resolved" in response.json["error"]
    assert stripe_stand_in.canceled == [] and stripe_stand_in.refunds == []


def test_refused_without_a_stripe_key(venues, client, api, work):
    for payload in (event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
                    event("customer.subscription.created", subscription(SUB, CUS),
                          account=GYM)):
        assert post_event(client, payload).status_code == 200
    work()
    [m] = api.get("/api/mismatches").json["mismatches"]
    response = api.post(f"/api/mismatches/{m['id']}/cancel-subscription", json={"confirm": SUB})
    assert response.status_code == 409 and "STRIPE_SECRET_KEY" in response.json["error"]


def test_a_refund_event_and_a_linked_subscription(venues, client, api, work, db):
    from sqlalchemy import func, select

    from db import Payment

    # A member's own (linked) subscription: its payments are none of ours.
    assert api.put(f"/api/venues/{GYM}/members/m-1", json={
        "email": "member@example.com", "name": None,
        "stripe_customer_id": "cus_1Member"}).status_code == 201
    for payload in (
        event("customer.subscription.created", subscription("sub_1Member", "cus_1Member"),
              account=GYM),
        event("invoice.paid", {**invoice_old("in_1Member", 4900, "ch_1Member", "pi_1Member"),
                               "subscription": "sub_1Member"}, account=GYM),
        event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
        event("customer.subscription.created", subscription(SUB, CUS), account=GYM),
        event("invoice.paid", invoice_old("in_1Old000000001", 4900, "ch_1Old000000001",
                                          "pi_1Old000000001"), account=GYM),
        event("charge.refunded", {"id": "ch_1Old000000001", "object": "charge",
                                  "payment_intent": "pi_1Old000000001", "amount": 4900,
                                  "amount_refunded": 4900, "refunded": True}, account=GYM),
    ):
        assert post_event(client, payload).status_code == 200
    work()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Payment)
                        .where(Payment.invoice_id == "in_1Member")) == 0
    [m] = api.get("/api/mismatches").json["mismatches"]
    [charge] = m["charges"]
    assert charge["amount_refunded"] == 4900
    response = api.post(f"/api/mismatches/{m['id']}/refund", json={"confirm": SUB})
    assert response.status_code == 409  # no STRIPE_SECRET_KEY here; nothing to refund anyway


def test_support_confirms_then_a_worker_cancels_and_the_page_logs_it(outside, stripe_stand_in,
                                                                     work, monkeypatch, env):
    from config import load_config
    from listener.app import create_app
    from tests.pages_support import SUPPORT_USERS, csrf_from, sign_in

    m, _ = outside
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    console = create_app(load_config(), TESTING=True).test_client()
    sign_in(console)
    page = console.get(f"/mismatches/{m['id']}").get_data(as_text=True)
    assert "Cancel subscription in Stripe" in page and "Refund what it charged" in page
    assert "€49.00 charged on 22 Nov 2025 (in_1Old000000001) — refund it" in page

    confirm = console.get(f"/mismatches/{m['id']}/act/cancel_subscription")
    text = confirm.get_data(as_text=True)
    assert confirm.status_code == 200
    assert SUB in text and GYM in text and "no proration" in text and "Test" in text
    token = csrf_from(text)
    wrong = console.post(f"/mismatches/{m['id']}/act/cancel_subscription",
                         data={"csrf_token": token, "confirm": "sub_nope"})
    assert wrong.status_code == 303 and stripe_stand_in.canceled == []
    for _ in range(2):  # a double click
        done = console.post(f"/mismatches/{m['id']}/act/cancel_subscription",
                            data={"csrf_token": token, "confirm": SUB})
        assert done.status_code == 303
    work()
    assert stripe_stand_in.canceled == [(GYM, SUB)]
    page = console.get(f"/mismatches/{m['id']}").get_data(as_text=True)
    assert "Done in Stripe" in page and "alice (support)" in page and "succeeded" in page
    assert "why-not-cancel_subscription" in page  # now off, saying why


def test_venue_admin_links_cannot_act(outside, config, client):
    from notifications.links import mismatch_link

    m, app_client = outside
    link = mismatch_link(config, m["id"], GYM).split("mismatch.test", 1)[-1]
    assert app_client.get(link).status_code == 303
    page = app_client.get(f"/mismatches/{m['id']}").get_data(as_text=True)
    assert "Act in Stripe" not in page
    assert app_client.get(f"/mismatches/{m['id']}/act/refund").status_code == 302  # sign in


def test_booking_product_buttons_from_url_templates(venues, api, work, env, monkeypatch):
    import json

    from config import ConfigError, load_config
    from listener.app import create_app
    from tests.pages_support import SUPPORT_USERS, sign_in
    from tests.support import CONNECT_SECRET, sign

    for bad in ("ftp://app/x", "https://app/{nope}", "https://app/{email"):
        with pytest.raises(ConfigError, match="^INVITE_URL_TEMPLATE: "):
            load_config({**env, "INVITE_URL_TEMPLATE": bad})
    monkeypatch.setenv("INVITE_URL_TEMPLATE",
                       "https://app.example/venues/{account_id}/invite?email={email}")
    monkeypatch.setenv("MEMBER_URL_TEMPLATE", "https://app.example/members/{member_ref}")
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    console = create_app(load_config(), TESTING=True).test_client()
    for payload in (
        event("customer.created", customer(CUS, "Walk+In@example.com"), account=GYM),
        event("customer.subscription.created", subscription(SUB, CUS), account=GYM),
    ):
        body = json.dumps(payload)
        assert console.post("/webhooks/stripe/connect", data=body, headers={
            "Stripe-Signature": sign(body, CONNECT_SECRET)}).status_code == 200
    work()
    [m] = api.get("/api/mismatches").json["mismatches"]
    sign_in(console)
    page = console.get(f"/mismatches/{m['id']}").get_data(as_text=True)
    expected = f"https://app.example/venues/{GYM}/invite?email=Walk%2BIn%40example.com"
    assert "Send invite link" in page and expected in page
    assert "Open member" not in page  # case 3: no member to open
    from email import message_from_bytes, policy

    from notifications.send import outbox_dir

    texts = [message_from_bytes(p.read_bytes(), policy=policy.default)
             .get_body(("plain",)).get_content() for p in outbox_dir(load_config()).glob("*.eml")]
    assert any(f"Send invite link: {expected}" in t for t in texts), texts[:1]


def test_no_such_customer_as_a_page_diagnose_then_fix(env, monkeypatch, venues, api, work, db):
    import json

    from sqlalchemy import select

    from config import load_config
    from db import Member
    from listener.app import create_app
    from tests.pages_support import SUPPORT_USERS, csrf_from, sign_in

    server = ConnectStripe()
    try:
        server.add_customer(None, "cus_1Wrong000", "member@example.com")  # on the platform
        monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_diagnose")
        monkeypatch.setenv("STRIPE_API_BASE", server.url)
        monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
        assert api.put(f"/api/venues/{GYM}/members/m-1", json={
            "email": "member@example.com", "name": "Mia",
            "stripe_customer_id": "cus_1Wrong000"}).status_code == 201
        console = create_app(load_config(), TESTING=True).test_client()
        sign_in(console)
        page = console.get("/support/diagnose").get_data(as_text=True)
        error = json.dumps({"error": {
            "code": "resource_missing", "message": "No such customer: 'cus_1Wrong000'",
            "request_log_url": f"https://dashboard.stripe.com/{GYM}/test/logs/req_1Abc?t=1"}})
        response = console.post("/support/diagnose", data={
            "csrf_token": csrf_from(page), "pasted": error})
        text = response.get_data(as_text=True)
        assert response.status_code == 200
        assert "not in the venue&#39;s connected account" in text or \
            "not in the venue's connected account" in text
        assert "Create the customer and relink" in text and "m-1" in text
        assert [r for r in server.requests if r[0] == "POST"] == []  # reading only so far

        for _ in range(2):  # a double click
            done = console.post("/support/diagnose/fix", data={
                "csrf_token": csrf_from(text), "customer": "cus_1Wrong000", "account": GYM,
                "confirm": "cus_1Wrong000"})
            assert done.status_code == 303
        work()
        creates = [r for r in server.requests if r[:2] == ("POST", "/v1/customers")]
        assert creates == [("POST", "/v1/customers", GYM)]
        with db.session() as s:
            linked = s.scalar(select(Member.stripe_customer_id).where(Member.member_ref == "m-1"))
        assert linked.startswith("cus_New")
        page = console.get(done.headers["Location"]).get_data(as_text=True)
        assert "succeeded" in page and linked in page
        assert "old customer: cus_1Wrong000" in page and f"account: {GYM}" in page
        assert "We have created it in the right account" in page
    finally:
        server.stop()


def test_a_worker_killed_mid_call_cancels_once(outside, stripe_stand_in, config, redis,
                                               tmp_path):
    """A real `mismatch worker` is SIGKILLed after Stripe did the cancel but before it heard
    back; the sweeper queues the action again and the next worker's call, with the same
    idempotency key, gets Stripe's first answer."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from datetime import timedelta
    from pathlib import Path

    from rq import SimpleWorker

    from workers.queue import get_queue
    from workers.runtime import runtime
    from workers.upkeep.sweep import sweep

    m, client = outside
    stripe_stand_in.answer_after = 30.0
    response = client.post(f"/api/mismatches/{m['id']}/cancel-subscription",
                           json={"confirm": SUB}, headers=AUTH)
    assert response.status_code == 202
    mismatch = str(Path(sys.executable).parent / "mismatch")
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([mismatch, "worker", "--sweep-every", "0"],
                                  env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not stripe_stand_in.canceled and time.monotonic() < deadline:
                time.sleep(0.1)
            assert stripe_stand_in.canceled == [(GYM, SUB)], \
                (tmp_path / "worker.log").read_text()
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    [action] = client.get(f"/api/mismatches/{m['id']}", headers=AUTH).json["actions"]
    assert action["status"] == "queued"  # it never heard Stripe's answer

    stripe_stand_in.answer_after = 0.0
    queue = get_queue(config)
    assert sweep(config, runtime()[1], older_than=timedelta(0))["actions"] == 1
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    [action] = client.get(f"/api/mismatches/{m['id']}", headers=AUTH).json["actions"]
    assert action["status"] == "succeeded"
    assert stripe_stand_in.canceled == [(GYM, SUB)]  # still once
    key = f"mismatch-{m['id']}-cancel_subscription-{SUB}"
    assert stripe_stand_in.keys == [key, key]  # the same key, seen twice at "Stripe"


def test_notices_say_what_was_charged(outside, client, work, db, config):
    from sqlalchemy import select

    from db import Notification
    from notifications.render import render_notice

    m, _ = outside
    with db.session() as s:
        notification = s.scalar(select(Notification).where(Notification.mismatch_id == m["id"]))
        rendered = render_notice(config, s, notification)
    for text in (rendered.text, rendered.html):
        assert "€49.00 charged on 22 Nov 2025 (in_1Old000000001) — refund it" in text
        assert "€49.00 charged on 23 Nov 2025 (in_1New000000001) — refund it" in text
    assert "Refund what it charged" in rendered.text

    assert post_event(client, event("charge.dispute.created", {
        "id": "dp_1", "object": "dispute", "charge": "ch_1Old000000001"}, account=GYM)
        ).status_code == 200
    work()
    with db.session() as s:
        rendered = render_notice(config, s, s.get(Notification, notification.id))
    assert "Don't refund: a payment is disputed. Escalate to support." in rendered.text
    assert "(in_1Old000000001) — disputed: don't refund, escalate" in rendered.text


def test_a_trialing_subscription_says_nothing_charged_yet(stripe_stand_in, venues, client,
                                                          work, db, config):
    from sqlalchemy import select

    from db import Notification
    from notifications.render import render_notice

    for payload in (event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
                    event("customer.subscription.created",
                          subscription(SUB, CUS, status="trialing"), account=GYM)):
        assert post_event(client, payload).status_code == 200
    work()
    with db.session() as s:
        rendered = render_notice(config, s, s.scalar(select(Notification)))
    assert "nobody has been charged yet" in rendered.text


def test_refused_on_a_linked_subscription(stripe_stand_in, venues, api, client, work, db):
    from sqlalchemy import select

    from config import load_config
    from db import Mismatch
    from listener.app import create_app

    for payload in (event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
                    event("customer.subscription.created", subscription(SUB, CUS),
                          account=GYM)):
        assert post_event(client, payload).status_code == 200
    work()
    # The venue links the customer to a member: the mismatch resolves as linked.
    assert api.put(f"/api/venues/{GYM}/members/m-1", json={
        "email": "walkin@example.com", "name": None, "stripe_customer_id": CUS}).status_code == 201
    work()
    with db.session() as s:
        m = s.scalar(select(Mismatch))
        assert m.resolution == "linked"
    app_client = create_app(load_config(), TESTING=True).test_client()
    for route in ("cancel-subscription", "refund"):
        response = app_client.post(f"/api/mismatches/{m.id}/{route}", json={"confirm": SUB},
                                   headers=AUTH)
        assert response.status_code == 409, route
        assert "resolved" in response.json["error"] or "linked" in response.json["error"]
    assert stripe_stand_in.canceled == [] and stripe_stand_in.refunds == []


def test_cancel_against_localstripe_on_the_platform_account(env, monkeypatch, tmp_path, api,
                                                            client, work):
    """The platform's own venue against localstripe (stateful; no Connect): the worker's
    cancel really cancels the subscription there, and a second request changes nothing."""
    import json

    from config import load_config
    from listener.app import create_app
    from standins.localstripe import LocalStripe
    from tests.support import PLATFORM_ACCOUNT, PLATFORM_SECRET, sign

    try:
        local = LocalStripe(tmp_path)
    except RuntimeError:
        pytest.skip("localstripe did not start")
    try:
        stripe_client = local.client()
        product = stripe_client.v1.products.create(params={"name": "Membership"})
        plan = stripe_client.v1.plans.create(params={
            "amount": 4900, "currency": "usd", "interval": "month", "product": product.id})
        customer_obj = stripe_client.v1.customers.create(params={"email": "walkin@example.com"})
        sub = stripe_client.v1.subscriptions.create(params={
            "customer": customer_obj.id, "items": [{"plan": plan.id}], "trial_period_days": 14})
        monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_localstripe")
        monkeypatch.setenv("STRIPE_API_BASE", local.url)
        assert api.put(f"/api/venues/{PLATFORM_ACCOUNT}", json={
            "name": "Platform studio", "admin_emails": ["studio@example.com"],
            "livemode": False}).status_code == 201
        for payload in (
            event("customer.created", customer(customer_obj.id, "walkin@example.com")),
            event("customer.subscription.created",
                  subscription(sub.id, customer_obj.id, status="trialing")),
        ):
            body = json.dumps(payload)
            assert client.post("/webhooks/stripe", data=body, headers={
                "Stripe-Signature": sign(body, PLATFORM_SECRET)}).status_code == 200
        work()
        [m] = api.get("/api/mismatches").json["mismatches"]
        assert m["account_id"] == PLATFORM_ACCOUNT and m["charges"] == []
        app_client = create_app(load_config(), TESTING=True).test_client()
        url = f"/api/mismatches/{m['id']}/cancel-subscription"
        assert app_client.post(url, json={"confirm": sub.id}, headers=AUTH).status_code == 202
        assert app_client.post(url, json={"confirm": sub.id}, headers=AUTH).status_code == 202
        refund = app_client.post(f"/api/mismatches/{m['id']}/refund", json={"confirm": sub.id},
                                 headers=AUTH)
        assert refund.status_code == 409 and "nothing to refund" in refund.json["error"]
        work()
        [action] = api.get(f"/api/mismatches/{m['id']}").json["actions"]
        assert action["status"] == "succeeded", action
        assert stripe_client.v1.subscriptions.retrieve(sub.id).status == "canceled"
        cancels = [line for line in local.log_path.read_text().splitlines()
                   if "DELETE /v1/subscriptions/" in line]
        assert len(cancels) == 1
    finally:
        local.stop()
