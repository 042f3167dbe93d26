"""Replay, reconcile and diagnose against stand-ins for Stripe: localstripe for platform flows,
ConnectStripe for connected accounts (per-account data, pagination, Stripe's errors)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from tests.stripe_servers import ConnectStripe, LocalStripe
from tests.support import PLATFORM_ACCOUNT, post_event, run_cli

GYM = "acct_1Gym000000000000"


@pytest.fixture
def stripe_key(env, monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_recovery")


@pytest.fixture
def localstripe(tmp_path, monkeypatch, stripe_key):
    server = LocalStripe(tmp_path)
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    yield server
    server.stop()


@pytest.fixture
def connect_stripe(monkeypatch, stripe_key):
    server = ConnectStripe()
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    yield server
    server.stop()


def cli(app, *args):

    # A fresh app reads the environment the fixtures just set (STRIPE_API_BASE, key).
    result = run_cli(*args)
    return result


def mismatches(api):
    return api.get("/api/mismatches").json["mismatches"]


def venue(api, account, livemode=False, members=()):
    api.put(f"/api/venues/{account}", json={"name": "Venue " + account[-4:],
                                            "admin_emails": ["boss@venue.test"],
                                            "livemode": livemode})
    for ref, email, cus in members:
        api.put(f"/api/venues/{account}/members/{ref}",
                json={"email": email, "name": None, "stripe_customer_id": cus})


def plan(client):
    product = client.v1.products.create(params={"name": "Membership"})
    return client.v1.plans.create(params={"amount": 3000, "currency": "usd",
                                          "interval": "month", "product": product.id})


def subscribe(client, plan_id, email):
    customer = client.v1.customers.create(params={"email": email})
    sub = client.v1.subscriptions.create(params={"customer": customer.id,
                                                 "items": [{"plan": plan_id}],
                                                 "trial_period_days": 30})
    return customer.id, sub.id


# --- replay ---------------------------------------------------------------------------------

def test_replay_picks_up_missed_events_without_duplicating_delivered_ones(
        localstripe, api, client, work, app):
    venue(api, PLATFORM_ACCOUNT, members=[("m1", "missed@example.com", None)])
    stripe = localstripe.client()
    monthly = plan(stripe)
    delivered_customer, delivered_sub = subscribe(stripe, monthly.id, "delivered@example.com")
    _, missed_sub = subscribe(stripe, monthly.id, "missed@example.com")
    # Only the first customer's customer.created webhook ever reached us.
    events = stripe.v1.events.list(params={"limit": 100}).data
    first = next(e for e in events if e.type == "customer.created"
                 and e.data.object["id"] == delivered_customer).to_dict()
    assert post_event(client, first).status_code == 200
    work()

    result = cli(app, "replay", "--since", datetime.now(UTC).strftime("%Y-%m-%d"))
    assert result.exit_code == 0, result.output
    # customer.created x2 + customer.subscription.created x2 are ours; product/plan are not.
    assert re.search(r"3 new, 1 already in the inbox, 2 of types we do not handle",
                     result.output), result.output
    work()
    by_sub = {m["subscription_id"]: (m["case"], m["customer_email"]) for m in mismatches(api)}
    assert by_sub == {missed_sub: (2, "missed@example.com"),
                      delivered_sub: (3, "delivered@example.com")}


def test_replay_twice_adds_nothing(localstripe, api, work, app):
    venue(api, PLATFORM_ACCOUNT)
    stripe = localstripe.client()
    subscribe(stripe, plan(stripe).id, "again@example.com")
    since = datetime.now(UTC).strftime("%Y-%m-%d")
    assert "2 new" in cli(app, "replay", "--since", since).output
    assert "0 new, 2 already in the inbox" in cli(app, "replay", "--since", since).output


def test_replay_states_the_30_day_window(localstripe, api, app):
    venue(api, PLATFORM_ACCOUNT)
    result = cli(app, "replay", "--since", "2020-01-01")
    assert result.exit_code == 0
    assert "Stripe keeps events for 30 days" in result.output


def test_replay_undelivered_asks_each_account_for_undelivered_events_only(
        connect_stripe, api, work, app):
    """`--undelivered`: Stripe's `delivery_success=false`, per account; only those come in."""
    from tests.support import customer, event

    venue(api, GYM)
    missed = event("customer.created", customer("cus_1Missed", "m@example.com"), account=GYM)
    delivered = event("customer.created", customer("cus_1Came", "c@example.com"), account=GYM)
    connect_stripe.events[GYM] = [(missed, False), (delivered, True)]
    since = datetime.now(UTC).strftime("%Y-%m-%d")

    result = cli(app, "replay", "--since", since, "--undelivered")
    assert result.exit_code == 0, result.output
    assert "listed 1 undelivered events" in result.output and "1 new" in result.output
    asked = [(account, query.get("delivery_success")) for path, account, query
             in connect_stripe.queries if path == "/v1/events"]
    assert (GYM, "false") in asked and all(flag == "false" for _, flag in asked)
    work()
    assert api.get(f"/api/events/{missed['id']}").json["status"] == "processed"
    assert api.get(f"/api/events/{delivered['id']}").status_code == 404


def test_replay_needs_a_key(env, app):
    result = cli(app, "replay", "--since", "2026-01-01")
    assert result.exit_code != 0 and "STRIPE_SECRET_KEY" in result.output


# --- reconcile ------------------------------------------------------------------------------

def test_reconcile_finds_a_subscription_whose_webhook_never_came(localstripe, api, work, app):
    venue(api, PLATFORM_ACCOUNT, members=[("m1", "ann@example.com", "cus_AnnOld"),
                                          ("m2", "bob@example.com", None)])
    stripe = localstripe.client()
    monthly = plan(stripe)
    _, ann_sub = subscribe(stripe, monthly.id, "Ann@Example.com")
    _, bob_sub = subscribe(stripe, monthly.id, "bob@example.com")
    _, eve_sub = subscribe(stripe, monthly.id, "eve@example.com")
    result = cli(app, "reconcile", "--no-member-check")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith(PLATFORM_ACCOUNT))
    assert row.split()[1:5] == ["0", "1", "1", "1"]
    assert "3 new mismatches, 1 list calls" in result.output
    by_sub = {m["subscription_id"]: m["case"] for m in mismatches(api)}
    assert by_sub == {ann_sub: 1, bob_sub: 2, eve_sub: 3}
    # A second run opens nothing new.
    again = cli(app, "reconcile", "--no-member-check")
    assert "0 new mismatches" in again.output


def test_reconcile_is_the_missed_webhook_alarm(localstripe, api, client, work, app,
                                              monkeypatch):
    """How many subscriptions no event had told us about: printed, in /metrics, and mailed
    to SUPPORT_EMAIL once per account per day; a webhook that did arrive is not counted."""
    from prometheus_client.parser import text_string_to_metric_families
    from sqlalchemy import select

    from db import Notification
    from listener.app import create_app

    monkeypatch.setenv("SUPPORT_EMAIL", "oncall@platform.test")
    venue(api, PLATFORM_ACCOUNT)
    stripe = localstripe.client()
    monthly = plan(stripe)
    heard_cus, heard_sub = subscribe(stripe, monthly.id, "heard@example.com")
    _, missed_sub = subscribe(stripe, monthly.id, "missed@example.com")
    events = stripe.v1.events.list(params={"limit": 100}).data
    for e in events:  # only the first subscription's events ever reached us
        if e.to_dict()["data"]["object"].get("id") in (heard_cus, heard_sub):
            assert post_event(client, e.to_dict()).status_code == 200
    work()

    def gauge(name: str) -> float | None:
        text = create_app().test_client().get("/metrics").get_data(as_text=True)
        return next((s.value for f in text_string_to_metric_families(text)
                     for s in f.samples if s.name == name), None)

    assert gauge("mismatch_reconcile_missed_subscriptions") is None  # never ran
    result = cli(app, "reconcile", "--no-member-check")
    assert result.exit_code == 0, result.output
    assert (f"1 subscription had to be repaired because no event had reached us: "
            f"{PLATFORM_ACCOUNT}") in result.output
    assert gauge("mismatch_reconcile_missed_subscriptions") == 1
    assert gauge("mismatch_reconcile_last_run_timestamp_seconds") > 0
    work()
    db = create_app().extensions["db"]
    with db.session() as s:
        [alert] = s.scalars(select(Notification).where(Notification.kind == "missed_webhooks"))
        assert (alert.recipient, alert.status) == ("oncall@platform.test", "sent")
        assert alert.context["subscription_ids"] == [missed_sub]

    again = cli(app, "reconcile", "--no-member-check")
    assert "0 subscriptions had to be repaired" in again.output
    assert gauge("mismatch_reconcile_missed_subscriptions") == 0
    with db.session() as s:
        assert len(list(s.scalars(select(Notification).where(
            Notification.kind == "missed_webhooks")))) == 1


def test_reconcile_2000_subscriptions_over_4_venues_uses_one_call_per_page(connect_stripe,
                                                                           api, app):
    accounts = [f"acct_1Venue{n:09d}" for n in range(4)]
    for n, account in enumerate(accounts):
        venue(api, account)
        for i in range(500):
            cid = f"cus_V{n}C{i:04d}"
            connect_stripe.add_customer(account, cid, f"person{i}@venue{n}.test")
            connect_stripe.add_subscription(account, f"sub_V{n}S{i:04d}", cid)
    result = cli(app, "reconcile", "--no-member-check")
    assert result.exit_code == 0, result.output
    # 500 per venue at 100 per page = 5 pages each; the platform is not a venue here.
    assert "2000 subscriptions, 2000 new mismatches, 20 list calls" in result.output
    lists = [r for r in connect_stripe.requests if r[1] == "/v1/subscriptions"]
    assert len(lists) == 20 and {r[2] for r in lists} == set(accounts)


def test_reconcile_reports_wrong_account_and_wrong_mode_members(connect_stripe, api, app):
    venue(api, GYM, members=[("ok", "ok@example.com", "cus_Good"),
                             ("plat", "plat@example.com", "cus_OnPlatform"),
                             ("mode", "mode@example.com", "cus_LiveOnly")])
    connect_stripe.add_customer(GYM, "cus_Good", "ok@example.com")
    connect_stripe.add_customer(None, "cus_OnPlatform", "plat@example.com")
    connect_stripe.other_mode["cus_LiveOnly"] = "live"
    result = cli(app, "reconcile")
    assert result.exit_code == 0, result.output
    assert re.search(r"member plat -> cus_OnPlatform: wrong account", result.output)
    assert re.search(r"member mode -> cus_LiveOnly: wrong mode", result.output)
    assert "member ok" not in result.output


# --- diagnose -------------------------------------------------------------------------------

def test_diagnose_names_the_wrong_account(connect_stripe, api, app):
    venue(api, GYM, members=[("m1", "ann@example.com", "cus_Plat")])
    connect_stripe.add_customer(None, "cus_Plat", "ann@example.com")
    result = cli(app, "diagnose", "cus_Plat")
    assert result.exit_code == 0, result.output
    assert f"not in the venue's connected account {GYM}" in result.output
    assert f"linked by: {GYM} member m1" in result.output


def test_diagnose_names_the_wrong_mode(connect_stripe, api, app):
    venue(api, GYM, members=[("m1", "ann@example.com", "cus_Live")])
    connect_stripe.other_mode["cus_Live"] = "live"
    result = cli(app, "diagnose", "cus_Live")
    assert "exists only in live mode, but venue" in result.output
    assert "runs in test mode" in result.output


def test_diagnose_names_a_deleted_customer(connect_stripe, api, app):
    venue(api, GYM, members=[("m1", "ann@example.com", "cus_Gone")])
    connect_stripe.add_customer(GYM, "cus_Gone", None, deleted=True)
    result = cli(app, "diagnose", "cus_Gone")
    assert "cus_Gone was deleted in" in result.output and "— deleted" in result.output


def test_diagnose_fix_relinks_and_next_reconcile_is_linked(connect_stripe, api, app, work):
    venue(api, GYM, members=[("m1", "ann@example.com", "cus_Plat")])
    connect_stripe.add_customer(None, "cus_Plat", "ann@example.com")
    refused = cli(app, "diagnose", "cus_Plat", "--fix")
    assert refused.exit_code != 0 and "--yes" in refused.output
    result = cli(app, "diagnose", "cus_Plat", "--fix", "--yes")
    assert result.exit_code == 0, result.output
    new_id = re.search(r"member m1: cus_Plat -> (cus_\w+)", result.output).group(1)
    assert ("POST", "/v1/customers", GYM) in connect_stripe.requests
    [(_, created)] = [(a, c) for a, cs in connect_stripe.customers.items() for c in cs
                      if c == new_id and a == GYM]
    assert created == new_id
    # The member's new membership is billed to the new customer: reconcile sees it linked.
    connect_stripe.add_subscription(GYM, "sub_Fixed", new_id)
    again = cli(app, "reconcile")
    row = next(line for line in again.output.splitlines() if line.startswith(GYM))
    assert row.split()[1] == "1" and "finding" not in again.output


def test_diagnose_rejects_a_non_customer_id(connect_stripe, app):
    result = cli(app, "diagnose", "sub_123")
    assert result.exit_code != 0 and "not a customer ID" in result.output


def test_list_events_json_round_trip(localstripe):
    """localstripe's events carry what replay stores (sanity of the stand-in)."""
    stripe = localstripe.client()
    stripe.v1.customers.create(params={"email": "x@example.com"})
    [evt] = [e for e in stripe.v1.events.list(params={"limit": 10}).data
             if e.type == "customer.created"]
    assert json.loads(json.dumps(evt.to_dict()))["data"]["object"]["email"] == "x@example.com"
