"""Input that once got a 500: ids and offsets beyond what the database holds, JSON nested
5,000 deep, NUL and lone surrogates in names, notes and member refs, bodies of any size. Each
now gets a 4xx with a message, and nothing is stored."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from db import Member
from tests.pages_support import SUPPORT_USERS, sign_in
from tests.support import API_TOKEN, CONNECT_SECRET, GYM, sign

DEEP = "[" * 5000 + "]" * 5000
AUTH = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def venue(api):  # type: ignore[no-untyped-def]
    assert api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": [],
                                               "livemode": False}).status_code == 201
    return api


def members(db) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Member))


@pytest.mark.parametrize("path", ["/api/mismatches/9223372036854775808", "/api/mismatches/0",
                                  "/api/mismatches/99999999999999999999999"])
def test_api_ids_beyond_the_column_are_404(api, path):
    response = api.get(path)
    assert response.status_code == 404 and response.is_json


def test_console_ids_beyond_the_column_are_404(client, monkeypatch, env):
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    from listener.app import create_app

    app = create_app()
    app.config["TESTING"] = True
    console = app.test_client()
    sign_in(console)
    for path in ("/mismatches/9223372036854775808", "/mismatches/9223372036854775808?t=x",
                 "/mismatches/2147483648"):  # past 32 bits: a row id like any other
        assert console.get(path).status_code == 404, path
    response = console.post("/mismatches/9223372036854775808/resolve", data={"note": "x"})
    assert response.status_code in (400, 404)  # no CSRF token: refused before the lookup
    for query in ("offset=9223372036854775808", "offset=-5", "account=acct_%ED%A0%80"):
        assert console.get(f"/mismatches?{query}").status_code == 200, query
    assert console.get("/mismatches?account=acct_%00x").status_code == 400  # edge-refused


@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=1000000001",
                                   "limit=0", "limit=abc"])
def test_api_listing_out_of_range_is_400(api, query):
    response = api.get(f"/api/mismatches?{query}")
    assert response.status_code == 400 and "error" in response.json


def test_deeply_nested_json_is_400_at_the_api_and_intake(client, venue, db):
    response = client.put(f"/api/venues/{GYM}/members/m-1", data=DEEP, headers=AUTH)
    assert response.status_code == 400 and "nested too deeply" in response.json["error"]
    response = client.post("/api/mismatches/1/resolve", data=DEEP, headers=AUTH)
    assert response.status_code == 400
    response = client.post("/webhooks/stripe/connect", data=DEEP,
                           headers={"Stripe-Signature": sign(DEEP, CONNECT_SECRET)})
    assert response.status_code == 400 and response.json["reason"] == "invalid_json"
    assert members(db) == 0


@pytest.mark.parametrize("field,value", [
    ("name", "Carl\x00Case"), ("name", "Carl \ud800"), ("name", "Carl\r\nX-Injected: 1"),
    ("email", "carl\x00@example.com"),
])
def test_unstorable_text_in_a_member_is_400(venue, db, field, value):
    body = {"email": "carl@example.com", "name": "Carl", field: value}
    response = venue.put(f"/api/venues/{GYM}/members/m-1", json=body)
    assert response.status_code == 400 and field in response.json["error"]
    assert members(db) == 0


@pytest.mark.parametrize("ref", ["m%00x", "m%0D%0Ax"])
def test_unstorable_member_ref_is_400(venue, db, ref):
    response = venue.put(f"/api/venues/{GYM}/members/{ref}",
                         json={"email": "carl@example.com"})
    assert response.status_code == 400 and "member_ref" in response.json["error"]
    assert members(db) == 0


def test_unstorable_note_is_400(venue):
    for note in ("done\x00", "done \udfff"):
        response = venue.post("/api/mismatches/1/resolve", json={"note": note})
        assert response.status_code == 400 and "note" in response.json["error"]


def test_api_bodies_are_capped(client, venue, db):
    huge = json.dumps({"email": "carl@example.com", "name": "x" * (20 * 1024 * 1024)})
    response = client.put(f"/api/venues/{GYM}/members/m-1", data=huge, headers=AUTH)
    assert response.status_code == 413 and response.is_json
    assert members(db) == 0


def test_security_headers_on_json_and_error_responses(client, api):
    for response in (client.get("/healthz"), client.get("/nowhere"), api.get("/api/mismatches"),
                     client.post("/webhooks/stripe", data="{}"), client.get("/metrics")):
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.request.path
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"


def test_metrics_need_the_token_when_one_is_set(env, db, redis, monkeypatch):
    from config import load_config
    from listener.app import create_app

    monkeypatch.setenv("METRICS_TOKEN", "scrape-secret")
    client = create_app(load_config(), TESTING=True).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert response.status_code == 200 and b"mismatch_webhook_deliveries_total" in response.data


def test_rejected_deliveries_are_recorded_up_to_a_cap_per_address(client, db):
    from prometheus_client.parser import text_string_to_metric_families

    from db import RejectedDelivery

    cap = client.application.config["MISMATCH"].rejections_recorded_per_minute

    def rejected() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == "mismatch_webhook_deliveries_total"
                   and sample.labels == {"endpoint": "platform", "outcome": "rejected"})

    before = rejected()
    for _ in range(cap + 25):
        assert client.post("/webhooks/stripe", data="junk",
                           headers={"Stripe-Signature": "t=1,v1=00"}).status_code == 400
    with db.session() as s:
        stored = s.scalar(select(func.count()).select_from(RejectedDelivery))
    assert stored == cap == 60
    assert rejected() - before == cap + 25  # every one still counted
