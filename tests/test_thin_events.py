"""Thin events (Stripe Event Destinations): verified with stripe-python's parser, the full
event fetched by a real RQ worker from the Connect stand-in as the event's `context`, stored
in the same inbox as snapshot deliveries, and deduplicated with them."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from db import StripeEvent, ThinEvent
from tests.stripe_servers import ConnectStripe
from tests.support import (
    CONNECT_SECRET,
    PLATFORM_SECRET,
    customer,
    event,
    post_event,
    sign,
    subscription,
)

GYM = "acct_1Gym000000000000"
THIN_SECRET = "whsec_thin_test_secret"


@pytest.fixture
def stand_in(env, monkeypatch):
    server = ConnectStripe()
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_thin")
    monkeypatch.setenv("STRIPE_THIN_WEBHOOK_SECRETS", THIN_SECRET)
    yield server
    server.stop()


@pytest.fixture
def thin_app(stand_in, app):  # type: ignore[no-untyped-def]
    from config import load_config
    from listener.app import create_app

    application = create_app(load_config(), TESTING=True)
    yield application.test_client()
    application.extensions["db"].dispose()


def notification(snapshot: dict, *, context: str | None = GYM, named: bool = True,
                 type_: str | None = None, thin_id: str | None = None) -> dict:
    """The thin version of a snapshot event, as an Event Destination pushes it."""
    obj = snapshot["data"]["object"]
    body = {
        "id": thin_id or "evt_thin_" + snapshot["id"][4:], "object": "v2.core.event",
        "type": type_ or "v1." + snapshot["type"], "livemode": False,
        "created": "2026-12-02T04:00:00.000Z", "context": context,
        "related_object": {"id": obj["id"], "type": obj["object"],
                           "url": f"/v1/{obj['object']}s/{obj['id']}"},
        "reason": {"type": "request", "request": {"id": "req_1", "idempotency_key": "k"}},
    }
    if named:
        body["snapshot_event"] = snapshot["id"]
    return body


def post_thin(client, body: dict, secret: str = THIN_SECRET, timestamp: int | None = None):  # type: ignore[no-untyped-def]
    raw = json.dumps(body)
    return client.post("/webhooks/stripe/thin", data=raw, headers={
        "Stripe-Signature": sign(raw, secret, timestamp), "Content-Type": "application/json"})


def scene(api, stand_in: ConnectStripe) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """Ann is a member linked to cus_AnnOld; someone made her a second customer and a
    subscription in the Dashboard (case 1). Stripe holds both snapshot events."""
    api.put(f"/api/venues/{GYM}", json={"name": "Harbour Gym", "livemode": False,
                                        "admin_emails": ["owner@gym.test"]})
    api.put(f"/api/venues/{GYM}/members/m-ann", json={
        "email": "ann@example.com", "name": "Ann", "stripe_customer_id": "cus_AnnOld0000001"})
    created = event("customer.created", customer("cus_AnnNew0000001", "ann@example.com"),
                    account=GYM)
    subscribed = event("customer.subscription.created",
                       subscription("sub_Ann0000000001", "cus_AnnNew0000001"), account=GYM)
    # As Stripe's API returns an event: no `account` field when read as the account.
    stand_in.events[GYM] = [({k: v for k, v in e.items() if k != "account"}, True)
                            for e in (created, subscribed)]
    return created, subscribed


def mismatches(api) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [(m["case"], m["account_id"], m["subscription_id"], m["customer_id"])
            for m in api.get("/api/mismatches").json["mismatches"]]


EXPECTED = [(1, GYM, "sub_Ann0000000001", "cus_AnnNew0000001")]


def test_thin_events_alone_make_the_mismatch_the_snapshot_events_make(
        stand_in, thin_app, api, work, db):
    created, subscribed = scene(api, stand_in)
    # One names its snapshot event; for the other the worker asks Stripe's v2 event.
    stand_in.thin_events["evt_thin_" + subscribed["id"][4:]] = {
        **notification(subscribed, named=False), "snapshot_event": subscribed["id"]}
    for body in (notification(created), notification(subscribed, named=False)):
        response = post_thin(thin_app, body)
        assert response.status_code == 200 and response.json == {"received": True,
                                                                 "duplicate": False}
    work()
    assert mismatches(api) == EXPECTED
    for snapshot in (created, subscribed):
        row = api.get(f"/api/events/{snapshot['id']}").json
        assert row["status"] == "processed" and row["account_id"] == GYM
    fetched = [(path, account) for method, path, account in stand_in.requests
               if path.startswith(("/v1/events/", "/v2/core/events/"))]
    assert (f"/v1/events/{created['id']}", GYM) in fetched
    assert ("/v2/core/events/evt_thin_" + subscribed["id"][4:], None) in fetched
    with db.session() as s:
        assert {(t.status, t.outcome) for t in s.scalars(select(ThinEvent))} == {
            ("fetched", "stored")}


def test_a_thin_and_a_snapshot_delivery_of_one_event_count_once(stand_in, thin_app, api, work,
                                                                db):
    created, subscribed = scene(api, stand_in)
    assert post_thin(thin_app, notification(created)).status_code == 200  # thin first
    assert post_event(thin_app, subscribed).status_code == 200  # snapshot first
    work()
    late = post_event(thin_app, created)  # the snapshot of what the thin event brought
    assert late.status_code == 200 and late.json["duplicate"] is True
    assert post_thin(thin_app, notification(subscribed)).status_code == 200
    assert post_thin(thin_app, notification(subscribed)).json["duplicate"] is True  # redelivery
    work()
    assert mismatches(api) == EXPECTED
    with db.session() as s:
        outcomes = {t.snapshot_event: t.outcome for t in s.scalars(select(ThinEvent))}
        inbox = sorted(s.scalars(select(StripeEvent.event_id)))
    assert outcomes == {created["id"]: "stored", subscribed["id"]: "duplicate"}
    assert inbox == sorted([created["id"], subscribed["id"]])  # one row per event


def test_thin_deliveries_that_are_not_ours_are_refused_or_ignored(stand_in, thin_app, db):
    created = event("customer.created", customer("cus_X", "x@example.com"), account=GYM)
    wrong_secret = post_thin(thin_app, notification(created), secret="whsec_someone_else")
    assert wrong_secret.status_code == 400 and wrong_secret.json["reason"] == "bad_signature"
    stale = post_thin(thin_app, notification(created), timestamp=int(time.time()) - 3600)
    assert stale.status_code == 400 and stale.json["reason"] == "stale_timestamp"
    snapshot = post_thin(thin_app, created)
    assert snapshot.status_code == 400 and "snapshot event" in snapshot.json["error"]
    junk = post_thin(thin_app, {"object": "v2.core.event", "id": "evt_1"})
    assert junk.status_code == 400 and junk.json["reason"] == "not_an_event"
    for type_ in ("v2.core.event_destination.ping", "v1.invoice.created"):
        ignored = post_thin(thin_app, notification(created, type_=type_, thin_id="evt_" + type_))
        assert ignored.status_code == 200 and ignored.json == {"received": True,
                                                               "ignored": True}
    with db.session() as s:
        assert list(s.scalars(select(ThinEvent))) == []


def test_a_thin_event_stripe_no_longer_has_is_marked_not_lost_silently(
        stand_in, thin_app, api, work, db):
    gone = event("customer.subscription.created", subscription("sub_Gone", "cus_Gone"),
                 account=GYM)
    assert post_thin(thin_app, notification(gone)).status_code == 200
    work()
    with db.session() as s:
        [row] = list(s.scalars(select(ThinEvent)))
    assert (row.status, row.outcome) == ("failed", "not_found")
    assert "kept 30 days" in row.last_error
    assert api.get(f"/api/events/{gone['id']}").status_code == 404


def test_a_thin_event_whose_job_was_lost_is_swept_and_fetched(stand_in, thin_app, api, work,
                                                               db, config, redis):
    """Stored, then its job lost (Redis flushed, as after a crash without persistence): the
    sweeper queues it again and it ends as the mismatch."""
    from datetime import timedelta

    from workers.upkeep.sweep import sweep

    created, subscribed = scene(api, stand_in)
    work()
    for snapshot in (created, subscribed):
        assert post_thin(thin_app, notification(snapshot)).status_code == 200
    redis.flushdb()
    assert sweep(config, db, older_than=timedelta(0))["thin_events"] == 2
    work()
    assert mismatches(api) == EXPECTED


@pytest.mark.parametrize("secret", [PLATFORM_SECRET, CONNECT_SECRET])
def test_a_thin_event_signed_with_either_endpoints_secret_is_accepted(
        stand_in, thin_app, api, work, secret):
    """The same secret lists as snapshot deliveries (the external contract)."""
    created, subscribed = scene(api, stand_in)
    for snapshot in (created, subscribed):
        assert post_thin(thin_app, notification(snapshot), secret=secret).status_code == 200
    work()
    assert mismatches(api) == EXPECTED
