"""The booking product hears every mismatch: messages written with the change, signed with
Standard Webhooks, pushed by the outbound workers to a real HTTP receiver on loopback that
verifies them with the `standardwebhooks` library, retried on refusal with the same
webhook-id, and the same messages in the pull feed."""

from __future__ import annotations

import base64
import os

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from db import Delivery, Destination, Notification
from standins.receiver import receiving
from tests.support import BOOKING_SECRET, GYM, customer, event, post_event, subscription

SECRET = BOOKING_SECRET
SUB, CUS = "sub_1Outbound000001", "cus_1Outbound000001"


def open_case_3(client, work) -> None:  # type: ignore[no-untyped-def]
    for payload in (event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
                    event("customer.subscription.created", subscription(SUB, CUS),
                          account=GYM)):
        assert post_event(client, payload).status_code == 200
    work()


def test_opened_then_resolved_reach_a_verifying_receiver_and_the_feed(
        booking, venues, client, api, work, deliver):  # type: ignore[no-untyped-def]
    booking.answers = [503, 503]  # refused twice: the message must come on a retry
    open_case_3(client, work)
    deliver()
    [opened] = booking.received
    assert opened["type"] == "mismatch.opened"
    assert booking.attempts == [opened["webhook_id"]] * 3  # the same id on every retry
    [m] = api.get("/api/mismatches").json["mismatches"]
    assert opened["data"] == m  # exactly what GET /api/mismatches/<id> answers
    assert opened["data"]["case"] == 3 and opened["data"]["subscription_id"] == SUB

    assert post_event(client, event("customer.subscription.deleted",
                                    subscription(SUB, CUS, status="canceled"),
                                    account=GYM)).status_code == 200
    work()
    deliver()
    resolved = booking.received[-1]
    assert resolved["type"] == "mismatch.resolved"
    assert resolved["data"]["status"] == "resolved"
    assert resolved["data"]["resolution"] == "canceled"
    assert resolved["data"]["revision"] > opened["data"]["revision"]
    assert resolved["data"] == api.get(f"/api/mismatches/{m['id']}").json

    pages, cursor = [], None
    while True:
        page = api.get("/api/messages?limit=1" + (f"&after={cursor}" if cursor else "")).json
        pages += page["data"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert [p["id"] for p in pages] == [r["webhook_id"] for r in booking.received]
    assert [p["data"] for p in pages] == [r["data"] for r in booking.received]


def test_nothing_visible_changed_sends_nothing(booking, venues, client, api, work, deliver
                                              ):  # type: ignore[no-untyped-def]
    open_case_3(client, work)
    # The same subscription again (a Stripe redelivery under a new event id): same JSON.
    assert post_event(client, event("customer.subscription.updated", subscription(SUB, CUS),
                                    account=GYM)).status_code == 200
    work()
    deliver()
    assert [r["type"] for r in booking.received] == ["mismatch.opened"]


def test_manual_resolve_from_the_api_is_a_message(booking, venues, client, api, work, deliver
                                                 ):  # type: ignore[no-untyped-def]
    open_case_3(client, work)
    [m] = api.get("/api/mismatches").json["mismatches"]
    assert api.post(f"/api/mismatches/{m['id']}/resolve", json={"note": "ok"}).status_code == 200
    deliver()
    assert [r["type"] for r in booking.received] == ["mismatch.opened", "mismatch.resolved"]
    assert booking.received[-1]["data"]["resolution_note"] == "ok"


def test_410_disables_the_destination_and_tells_support(
        booking, monkeypatch, venues, client, db, work, deliver):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SUPPORT_EMAIL", "support@platform.test")
    booking.answers = [410]
    open_case_3(client, work)
    deliver()
    assert booking.received == [] and len(booking.attempts) == 1
    with db.session() as s:
        booking = s.scalar(select(Destination).where(Destination.name == "booking"))
        assert booking is not None and not booking.enabled
        assert "410" in (booking.disabled_reason or "")
        [delivery] = s.scalars(select(Delivery))
        assert delivery.status == "failed"
        alert = s.scalar(select(Notification).where(Notification.kind == "outbound_trouble"))
        assert alert is not None and alert.context["destination"] == "booking"


def test_running_out_of_retries_fails_the_message(booking, venues, client, db, work, deliver
                                                 ):  # type: ignore[no-untyped-def]
    booking.answers = [500] * 10
    open_case_3(client, work)
    deliver()
    assert len(booking.attempts) == 4  # the first attempt and OUTBOUND_RETRY_SECONDS' three
    with db.session() as s:
        [delivery] = s.scalars(select(Delivery))
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == \
            ("failed", 4, 500)


@pytest.fixture
def private_ok(env, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ALLOW_PRIVATE_DESTINATIONS", "1")


def test_api_destination_rotation_signs_with_old_and_new(
        private_ok, venues, client, api, work, deliver):  # type: ignore[no-untyped-def]
    with receiving(SECRET) as first:
        made = api.put("/api/destinations/crm", json={"url": first.url,
                                                      "event_types": ["mismatch.opened"]})
        assert made.status_code == 201, made.json
        old = made.json["secret"]
        assert old.startswith("whsec_")
        assert "secret" not in api.get("/api/destinations/crm").json  # shown once only
        rotated = api.post("/api/destinations/crm/rotate")
        new = rotated.json["secret"]
        assert new != old and rotated.json["secrets"] == 2
        first.secret = new
        open_case_3(client, work)
        deliver()
        assert first.refused == 0 and len(first.received) == 1
        [attempt] = first.received
    # The request as sent verifies with either secret (rotation without a refused message).
    with receiving(old) as second:
        api.put("/api/destinations/crm", json={"url": second.url})
        api.post(f"/api/mismatches/{attempt['data']['id']}/resolve", json={})
        deliver()
        assert second.refused == 0 and [r["type"] for r in second.received] == [
            "mismatch.resolved"]


@pytest.mark.parametrize("url, why", [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("https://localhost/hook", "localhost resolves to"),
    ("https://[::1]/hook", "loopback"),
    ("http://example.com/hook", "https://"),
    ("https://user:pw@example.com/hook", "user name"),
])
def test_destinations_reaching_inside_are_refused(api, url, why):  # type: ignore[no-untyped-def]
    answer = api.put("/api/destinations/inside", json={"url": url})
    assert answer.status_code == 400
    assert why in answer.json["error"]
    assert api.get("/api/destinations/inside").status_code == 404


def test_a_name_that_later_resolves_inside_is_refused_when_connecting(
        venues, client, db, work, deliver):  # type: ignore[no-untyped-def]
    """Saved while public (as a DNS-rebinding attacker would), then pointing at loopback: the
    check when connecting refuses it, and the receiver on loopback hears nothing."""
    with receiving(SECRET) as inside:
        port = inside.url.split(":")[2].split("/")[0]
        with db.session() as s:
            s.add(Destination(name="rebound", url=f"https://localhost:{port}/hooks",
                              secrets=[{"secret": SECRET, "expires_at": None}],
                              event_types=[], from_config=False, enabled=True))
        open_case_3(client, work)
        deliver()
        assert inside.attempts == []
    with db.session() as s:
        [delivery] = s.scalars(select(Delivery))
        assert delivery.status == "pending" and delivery.attempts == 1
        assert "localhost resolves to 127.0.0.1" in (delivery.last_error or "")


def test_feed_refuses_bad_cursors(api):  # type: ignore[no-untyped-def]
    for query in ("after=abc", "limit=0", "limit=5000", "after=-1"):
        answer = api.get(f"/api/messages?{query}")
        assert answer.status_code == 400 and "error" in answer.json
    assert api.get("/api/messages").json == {"data": [], "has_more": False,
                                             "next_cursor": None}


def test_signature_is_standard_webhooks():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from workers.outbound.post import headers

    body = b'{"type":"mismatch.opened"}'
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    sent = headers([SECRET, other], "msg_1", datetime.now(UTC), body)
    assert len(sent["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, other):
        assert Webhook(secret).verify(body, sent) == {"type": "mismatch.opened"}
