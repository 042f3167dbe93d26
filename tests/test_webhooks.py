"""Webhook intake: verified, durable, deduplicated, fast.

Everything here runs against the real thing: the Flask app, the real database
(SQLite or PostgreSQL) and a real RQ queue on Redis; nothing of the project is mocked.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import time
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from config import load_config
from db import RejectedDelivery, StripeEvent
from tests.support import (
    CONNECT_SECRET,
    PLATFORM_SECRET,
    customer,
    event,
    post_event,
    sign,
    subscription,
)
from workers.queue import get_queue
from workers.upkeep.sweep import sweep

PLATFORM_URL = "/webhooks/stripe"
CONNECT_URL = "/webhooks/stripe/connect"
URLS = {"platform": PLATFORM_URL, "connect": CONNECT_URL}
SECRETS = {"platform": PLATFORM_SECRET, "connect": CONNECT_SECRET}
VENUE_ACCOUNT = "acct_1VenueIntake0000"
# Text that must never end up in a rejected-delivery row, a log line or a response.
BODY_MARKER = "body-marker-7f3c1e"
CUSTOMER_EMAIL = "Private.Person+gym@example-pii.test"


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def make_client(env, db, redis, monkeypatch):  # type: ignore[no-untyped-def]
    """Build an app from the environment after changing some of it (like a restart would)."""
    from listener.app import create_app

    apps = []

    def make(**overrides: str):  # type: ignore[no-untyped-def]
        for key, value in overrides.items():
            monkeypatch.setenv(key, value)
        app = create_app(load_config(), TESTING=True)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["db"].dispose()


def v1(body: bytes | str, secret: str, timestamp: int) -> str:
    """One v1 signature, computed the way Stripe documents it (HMAC-SHA256 of `t.body`)."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()


def deliver(client, endpoint: str, body: bytes | str, header: str | None):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return client.post(URLS[endpoint], data=body, headers=headers)


def platform_event(**kw):  # type: ignore[no-untyped-def]
    return event("customer.created",
                 customer("cus_Intake001", CUSTOMER_EMAIL, name=f"Name {BODY_MARKER}"), **kw)


def connect_event(**kw):  # type: ignore[no-untyped-def]
    kw.setdefault("account", VENUE_ACCOUNT)
    return event("customer.created",
                 customer("cus_Intake002", CUSTOMER_EMAIL, name=f"Name {BODY_MARKER}"), **kw)


def event_for(endpoint: str) -> dict:
    return platform_event() if endpoint == "platform" else connect_event()


def stored_events(db) -> list[StripeEvent]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return list(s.scalars(select(StripeEvent).order_by(StripeEvent.id)))


def rejections(db) -> list[RejectedDelivery]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return list(s.scalars(select(RejectedDelivery).order_by(RejectedDelivery.id)))


def queued(config) -> list[tuple[str, tuple]]:  # type: ignore[no-untyped-def]
    """(function, args) of every job waiting in the real RQ queue."""
    return [(job.func_name, tuple(job.args)) for job in get_queue(config).jobs]


def metric(client, sample: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """The value of one sample on GET /metrics (0 when the labelled series does not exist)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


FAILURES = "mismatch_webhook_verification_failures_total"
ENQUEUE_FAILURES = "mismatch_webhook_enqueue_failures_total"
DELIVERIES = "mismatch_webhook_deliveries_total"


def assert_no_body_stored(row: RejectedDelivery, body: bytes, hashed: bool = True) -> None:
    """The row keeps a hash and a size, never the body (or any secret)."""
    if hashed:
        assert row.body_sha256 is not None and len(row.body_sha256) == 64
    assert row.body_size is not None
    text = body.decode("utf-8", "replace")
    for column in RejectedDelivery.__table__.columns:
        value = getattr(row, column.key)
        if value is None or isinstance(value, int):
            continue
        value = str(value)
        if len(text) >= 8:
            assert text not in value, f"body stored in rejected_deliveries.{column.key}"
        assert BODY_MARKER not in value, f"body stored in rejected_deliveries.{column.key}"
        assert CUSTOMER_EMAIL not in value
        for secret in (PLATFORM_SECRET, CONNECT_SECRET, "whsec_"):
            assert secret not in value, f"secret stored in rejected_deliveries.{column.key}"


# --- accepted deliveries ---------------------------------------------------------------


def test_valid_platform_event_is_stored_and_queued(client, db, config):
    payload = platform_event(created=1_700_000_123)
    body = json.dumps(payload)

    response = deliver(client, "platform", body, sign(body, PLATFORM_SECRET))

    assert response.status_code == 200
    assert response.json["received"] is True
    assert response.json["duplicate"] is False
    [row] = stored_events(db)
    assert (row.event_id, row.endpoint, row.account_id, row.livemode, row.type, row.created,
            row.status, row.attempts) == (payload["id"], "platform", None, False,
                                          "customer.created", 1_700_000_123, "received", 0)
    assert row.payload == body  # stored verbatim: the exact bytes that were signed
    assert queued(config) == [("workers.jobs.process_event", (payload["id"],))]
    assert rejections(db) == []


def test_valid_connect_event_is_stored_and_queued(client, db, config):
    payload = connect_event(livemode=True, created=1_700_000_456)

    response = post_event(client, payload)

    assert response.status_code == 200
    assert response.json["received"] is True
    assert response.json["duplicate"] is False
    [row] = stored_events(db)
    assert (row.event_id, row.endpoint, row.account_id, row.livemode, row.type, row.created,
            row.status) == (payload["id"], "connect", VENUE_ACCOUNT, True, "customer.created",
                            1_700_000_456, "received")
    assert queued(config) == [("workers.jobs.process_event", (payload["id"],))]


def test_accepted_deliveries_are_counted(client, db):
    before = metric(client, DELIVERIES, endpoint="connect", outcome="accepted")
    assert post_event(client, connect_event()).status_code == 200
    assert metric(client, DELIVERIES, endpoint="connect", outcome="accepted") == before + 1


@pytest.mark.parametrize("signing_secret", ["whsec_new", "whsec_old"])
def test_rotation_accepts_every_configured_secret(make_client, db, config, signing_secret):
    client = make_client(STRIPE_WEBHOOK_SECRETS="whsec_new,whsec_old")
    payload = platform_event()
    body = json.dumps(payload)

    response = deliver(client, "platform", body, sign(body, signing_secret))

    assert response.status_code == 200, response.json
    assert [e.event_id for e in stored_events(db)] == [payload["id"]]
    assert len(queued(config)) == 1


def test_rotation_still_rejects_a_secret_not_configured(make_client, db):
    client = make_client(STRIPE_WEBHOOK_SECRETS="whsec_new,whsec_old")
    body = json.dumps(platform_event())
    response = deliver(client, "platform", body, sign(body, PLATFORM_SECRET))
    assert response.status_code == 400
    assert response.json["reason"] == "bad_signature"
    assert stored_events(db) == []


@pytest.mark.parametrize("endpoint", ["platform", "connect"])
def test_header_with_several_v1_signatures_is_accepted_when_one_matches(client, db, config,
                                                                        endpoint):
    # During a secret roll Stripe signs with both secrets: t=..,v1=<new>,v1=<old> (and v0).
    payload = event_for(endpoint)
    body = json.dumps(payload)
    ts = int(time.time())
    header = (f"t={ts},v1={v1(body, 'whsec_somebody_else', ts)},v1={'0' * 64},"
              f"v1={v1(body, SECRETS[endpoint], ts)},v0={'1' * 64}")

    response = deliver(client, endpoint, body, header)

    assert response.status_code == 200, response.json
    assert [e.event_id for e in stored_events(db)] == [payload["id"]]
    assert len(queued(config)) == 1


def test_ignored_event_type_is_still_acknowledged(client, db, config):
    payload = event("invoice.created", {"id": "in_1", "object": "invoice"})
    response = post_event(client, payload)
    assert response.status_code == 200
    assert [e.type for e in stored_events(db)] == ["invoice.created"]
    assert len(queued(config)) == 1


def test_duplicate_delivery_is_stored_and_queued_once(client, db, config):
    payload = connect_event()

    responses = [post_event(client, payload) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r.json["received"] for r in responses] == [True, True, True]
    assert [r.json["duplicate"] for r in responses] == [False, True, True]
    assert [e.event_id for e in stored_events(db)] == [payload["id"]]
    assert queued(config) == [("workers.jobs.process_event", (payload["id"],))]


def test_duplicate_with_a_fresh_signature_is_still_a_duplicate(client, db, config):
    # Stripe re-signs each retry with a new timestamp; identity is the event id.
    payload = platform_event()
    body = json.dumps(payload)
    now = int(time.time())
    first = deliver(client, "platform", body, sign(body, PLATFORM_SECRET, now - 100))
    second = deliver(client, "platform", body, sign(body, PLATFORM_SECRET, now))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json["duplicate"] is True
    assert len(stored_events(db)) == 1
    assert len(queued(config)) == 1


# --- rejected deliveries ---------------------------------------------------------------


def _wrong_secret(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps(event_for(endpoint))
    return body, sign(body, "whsec_not_ours_at_all")


def _tampered(endpoint):  # type: ignore[no-untyped-def]
    payload = event_for(endpoint)
    body = json.dumps(payload)
    header = sign(body, SECRETS[endpoint])
    payload["type"] = "customer.deleted"
    return json.dumps(payload), header


def _stale(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps(event_for(endpoint))
    return body, sign(body, SECRETS[endpoint], int(time.time()) - 301 - 60)


def _future(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps(event_for(endpoint))
    return body, sign(body, SECRETS[endpoint], int(time.time()) + 301 + 60)


def _missing(endpoint):  # type: ignore[no-untyped-def]
    return json.dumps(event_for(endpoint)), None


def _empty_header(endpoint):  # type: ignore[no-untyped-def]
    return json.dumps(event_for(endpoint)), ""


def _no_timestamp(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps(event_for(endpoint))
    return body, f"v1={v1(body, SECRETS[endpoint], int(time.time()))}"


def _bad_timestamp(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps(event_for(endpoint))
    return body, f"t=yesterday,v1={v1(body, SECRETS[endpoint], int(time.time()))}"


def _no_v1(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps(event_for(endpoint))
    ts = int(time.time())
    return body, f"t={ts},v0={v1(body, SECRETS[endpoint], ts)}"


def _garbage_header(endpoint):  # type: ignore[no-untyped-def]
    return json.dumps(event_for(endpoint)), "not a stripe signature"


def _non_json(endpoint):  # type: ignore[no-untyped-def]
    body = f"this is not json {BODY_MARKER}"
    return body, sign(body, SECRETS[endpoint])


def _non_utf8(endpoint):  # type: ignore[no-untyped-def]
    body = b"\xff\xfe\x00garbage " + BODY_MARKER.encode()
    ts = int(time.time())
    return body, f"t={ts},v1={v1(body, SECRETS[endpoint], ts)}"


def _json_not_event(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps({"hello": BODY_MARKER, "object": "customer"})
    return body, sign(body, SECRETS[endpoint])


def _json_array(endpoint):  # type: ignore[no-untyped-def]
    body = json.dumps([BODY_MARKER, 1, 2])
    return body, sign(body, SECRETS[endpoint])


def _event_missing_created(endpoint):  # type: ignore[no-untyped-def]
    payload = event_for(endpoint)
    del payload["created"]
    body = json.dumps(payload)
    return body, sign(body, SECRETS[endpoint])


def _event_account_not_string(endpoint):  # type: ignore[no-untyped-def]
    payload = event_for(endpoint)
    payload["account"] = {"id": VENUE_ACCOUNT}
    body = json.dumps(payload)
    return body, sign(body, SECRETS[endpoint])


def _replayed(endpoint):  # type: ignore[no-untyped-def]
    """A captured delivery a month old, its header given a fresh t= after the signed one:
    stripe-python checks the signature against the first t=, a tolerance check of the last
    would find it fresh."""
    body = json.dumps(event_for(endpoint))
    old = int(time.time()) - 30 * 86400
    return body, f"t={old},v1={v1(body, SECRETS[endpoint], old)},t={int(time.time())}"


def _signed_event_with(**fields):  # type: ignore[no-untyped-def]
    """A validly signed event with some fields replaced by things no Stripe event carries."""

    def build(endpoint):  # type: ignore[no-untyped-def]
        payload = event_for(endpoint)
        payload.update(fields)
        body = json.dumps(payload)
        return body, sign(body, SECRETS[endpoint])

    return build


REJECTIONS = {
    "wrong_secret": (_wrong_secret, "bad_signature"),
    "tampered_body": (_tampered, "bad_signature"),
    "stale_timestamp": (_stale, "stale_timestamp"),
    "future_timestamp": (_future, "future_timestamp"),
    "missing_header": (_missing, "missing_signature"),
    "empty_header": (_empty_header, "missing_signature"),
    "no_t": (_no_timestamp, "malformed_signature"),
    "t_not_a_number": (_bad_timestamp, "malformed_signature"),
    "no_v1": (_no_v1, "malformed_signature"),
    "garbage_header": (_garbage_header, "malformed_signature"),
    "non_json_signed": (_non_json, "invalid_json"),
    "non_utf8_signed": (_non_utf8, "invalid_body"),
    "json_not_an_event": (_json_not_event, "not_an_event"),
    "json_array": (_json_array, "not_an_event"),
    "event_without_created": (_event_missing_created, "not_an_event"),
    "account_not_a_string": (_event_account_not_string, "not_an_event"),
    # Shapes that once got a 500 (SQLite) or an endless 503 (PostgreSQL) instead of a 400:
    "created_beyond_bigint": (_signed_event_with(created=2**70), "not_an_event"),
    "created_negative": (_signed_event_with(created=-1), "not_an_event"),
    "created_boolean": (_signed_event_with(created=True), "not_an_event"),
    "id_empty": (_signed_event_with(id=""), "not_an_event"),
    "id_with_nul": (_signed_event_with(id="evt_\x00nul"), "not_an_event"),
    "id_with_lone_surrogate": (_signed_event_with(id="evt_\ud800"), "not_an_event"),
    "id_too_long": (_signed_event_with(id="evt_" + "x" * 252), "not_an_event"),
    "type_too_long": (_signed_event_with(type="customer." + "x" * 120), "not_an_event"),
    "type_with_lone_surrogate": (_signed_event_with(type="customer.\udfff"), "not_an_event"),
    "account_too_long": (_signed_event_with(account="acct_" + "x" * 60), "not_an_event"),
    "account_with_nul": (_signed_event_with(account="acct_\x00"), "not_an_event"),
    "account_with_lone_surrogate": (_signed_event_with(account="acct_\ud800"),
                                    "not_an_event"),
    # What no Stripe event holds, though validly signed (once stored, and then forged log
    # lines or failed every notice of the mismatch it made):
    "livemode_a_string": (_signed_event_with(livemode="false"), "not_an_event"),
    "livemode_null": (_signed_event_with(livemode=None), "not_an_event"),
    "id_with_crlf": (_signed_event_with(id="evt_1\r\nforged log line"), "not_an_event"),
    "type_with_lf": (_signed_event_with(type="customer.created\nX"), "not_an_event"),
    "account_with_crlf": (_signed_event_with(account="acct_1\r\nX-Injected: 1"),
                          "not_an_event"),
    "object_id_with_crlf": (_signed_event_with(data={"object": {
        "id": "sub_1\r\nX-Injected: 1", "object": "subscription", "customer": "cus_1"}}),
        "not_an_event"),
    "replayed_signature_with_a_fresh_t": (_replayed, "malformed_signature"),
}


@pytest.mark.parametrize("endpoint", ["platform", "connect"])
@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_delivery(client, db, config, endpoint, case):
    build, reason = REJECTIONS[case]
    body, header = build(endpoint)
    raw = body.encode("utf-8") if isinstance(body, str) else body
    before = metric(client, FAILURES, endpoint=endpoint, reason=reason)

    response = deliver(client, endpoint, raw, header)

    assert response.status_code == 400
    assert response.is_json
    assert set(response.json) == {"error", "reason"}
    assert response.json["reason"] == reason
    assert response.json["error"]
    assert BODY_MARKER not in response.get_data(as_text=True)
    [row] = rejections(db)
    assert (row.endpoint, row.reason) == (endpoint, reason)
    assert row.detail == response.json["error"]
    assert row.received_at is not None
    assert row.body_sha256 == hashlib.sha256(raw).hexdigest()
    assert row.body_size == len(raw)
    assert_no_body_stored(row, raw)
    assert stored_events(db) == []
    assert queued(config) == []
    assert metric(client, FAILURES, endpoint=endpoint, reason=reason) == before + 1


def test_longest_ids_the_inbox_holds_are_accepted(client, db):
    payload = event("x" * 128, {"id": "obj_1"}, event_id="evt_" + "x" * 251,
                    account="acct_" + "x" * 59, created=2**63 - 1)
    response = post_event(client, payload)
    assert response.status_code == 200, response.json
    [row] = stored_events(db)
    assert (len(row.event_id), len(row.type), len(row.account_id), row.created) == (
        255, 128, 64, 2**63 - 1)


def test_rejection_messages_say_what_is_wrong(client, db):
    body = json.dumps(platform_event())
    cases = {
        None: "missing Stripe-Signature",
        "v1=abc": "no t=",
        f"t={int(time.time())}": "no v1=",
    }
    for header, words in cases.items():
        response = deliver(client, "platform", body, header)
        assert response.status_code == 400
        assert words in response.json["error"]
    stale = deliver(client, "platform", body, sign(body, PLATFORM_SECRET, int(time.time()) - 400))
    assert "older than 300s" in stale.json["error"]


@pytest.mark.parametrize("endpoint", ["platform", "connect"])
def test_oversized_body_is_rejected_with_413(make_client, db, config, endpoint):
    client = make_client(MAX_WEBHOOK_BYTES="2048")
    payload = event_for(endpoint)
    payload["data"]["object"]["metadata"] = {"padding": BODY_MARKER * 200}
    body = json.dumps(payload)
    assert len(body) > 2048
    before = metric(client, FAILURES, endpoint=endpoint, reason="too_large")

    response = deliver(client, endpoint, body, sign(body, SECRETS[endpoint]))

    assert response.status_code == 413
    assert response.is_json
    assert set(response.json) == {"error", "reason"}
    assert response.json["reason"] == "too_large"
    assert "2048" in response.json["error"]
    [row] = rejections(db)
    assert (row.endpoint, row.reason) == (endpoint, "too_large")
    # The body is deliberately never read: its declared size is kept, and no hash.
    assert row.body_size == len(body) and row.body_sha256 is None
    assert_no_body_stored(row, body.encode(), hashed=False)
    assert stored_events(db) == []
    assert queued(config) == []
    assert metric(client, FAILURES, endpoint=endpoint, reason="too_large") == before + 1


@pytest.mark.parametrize("padding, status", [(10, 200), (5000, 413)])
def test_size_limit_holds_without_content_length(make_client, db, config, padding, status):
    # A chunked request declares no length: the limit must hold while reading the stream.
    client = make_client(MAX_WEBHOOK_BYTES="2048")
    payload = platform_event()
    payload["data"]["object"]["metadata"] = {"padding": "x" * padding}
    body = json.dumps(payload).encode()
    response = client.post(
        PLATFORM_URL, input_stream=io.BytesIO(body),
        headers={"Stripe-Signature": sign(body.decode(), PLATFORM_SECRET),
                 "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
    assert response.request.environ["CONTENT_LENGTH"] == ""
    assert response.status_code == status, response.json
    if status == 200:
        assert len(stored_events(db)) == 1 and len(queued(config)) == 1
    else:
        assert response.json["reason"] == "too_large"
        assert [r.reason for r in rejections(db)] == ["too_large"]
        assert stored_events(db) == [] and queued(config) == []


def test_body_exactly_at_the_limit_is_accepted(make_client, db, config):
    client = make_client(MAX_WEBHOOK_BYTES="2048")
    payload = platform_event()
    payload["data"]["object"]["metadata"] = {"padding": ""}
    size = len(json.dumps(payload))
    payload["data"]["object"]["metadata"]["padding"] = "x" * (2048 - size)
    body = json.dumps(payload)
    assert len(body) == 2048
    response = deliver(client, "platform", body, sign(body, PLATFORM_SECRET))
    assert response.status_code == 200, response.json
    assert len(stored_events(db)) == 1


@pytest.mark.parametrize("endpoint, variable", [("platform", "STRIPE_WEBHOOK_SECRETS"),
                                                ("connect", "STRIPE_CONNECT_WEBHOOK_SECRETS")])
def test_endpoint_without_secrets_answers_503(make_client, db, config, endpoint, variable):
    client = make_client(**{variable: ""})
    body = json.dumps(event_for(endpoint))
    response = deliver(client, endpoint, body, sign(body, SECRETS[endpoint]))
    assert response.status_code == 503
    assert response.json["reason"] == "endpoint_not_configured"
    assert variable in response.json["error"]
    assert stored_events(db) == []
    assert queued(config) == []


# --- the wrong endpoint ----------------------------------------------------------------


def test_connect_event_without_account_names_the_platform_endpoint(client, db, config):
    payload = platform_event()  # no `account`
    before = metric(client, FAILURES, endpoint="connect", reason="wrong_endpoint")

    response = post_event(client, payload, connect=True)

    assert response.status_code == 400
    assert response.json["reason"] == "wrong_endpoint"
    assert "POST /webhooks/stripe" in response.json["error"]
    assert "/webhooks/stripe/connect" not in response.json["error"]
    assert [r.reason for r in rejections(db)] == ["wrong_endpoint"]
    assert stored_events(db) == []
    assert queued(config) == []
    assert metric(client, FAILURES, endpoint="connect", reason="wrong_endpoint") == before + 1


def test_platform_event_with_account_names_the_connect_endpoint(client, db, config):
    payload = connect_event()

    response = post_event(client, payload, connect=False)

    assert response.status_code == 400
    assert response.json["reason"] == "wrong_endpoint"
    assert "POST /webhooks/stripe/connect" in response.json["error"]
    assert [(r.endpoint, r.reason) for r in rejections(db)] == [("platform", "wrong_endpoint")]
    assert stored_events(db) == []
    assert queued(config) == []


def test_platform_event_signed_with_the_connect_secret(client, db, config):
    body = json.dumps(platform_event())
    before = metric(client, FAILURES, endpoint="platform", reason="wrong_endpoint_secret")

    response = deliver(client, "platform", body, sign(body, CONNECT_SECRET))

    assert response.status_code == 400
    assert response.json["reason"] == "wrong_endpoint_secret"
    assert ("signed with the Connect endpoint's secret — is the URL in Stripe right?"
            in response.json["error"])
    assert "POST /webhooks/stripe/connect" in response.json["error"]
    [row] = rejections(db)
    assert (row.endpoint, row.reason) == ("platform", "wrong_endpoint_secret")
    assert_no_body_stored(row, body.encode())
    assert stored_events(db) == []
    assert queued(config) == []
    assert metric(client, FAILURES, endpoint="platform",
                  reason="wrong_endpoint_secret") == before + 1


def test_connect_event_signed_with_the_platform_secret(client, db, config):
    body = json.dumps(connect_event())
    before = metric(client, FAILURES, endpoint="connect", reason="wrong_endpoint_secret")

    response = deliver(client, "connect", body, sign(body, PLATFORM_SECRET))

    assert response.status_code == 400
    assert response.json["reason"] == "wrong_endpoint_secret"
    assert ("signed with the Platform endpoint's secret — is the URL in Stripe right?"
            in response.json["error"])
    assert response.json["error"].endswith("belong at POST /webhooks/stripe")
    [row] = rejections(db)
    assert (row.endpoint, row.reason) == ("connect", "wrong_endpoint_secret")
    assert_no_body_stored(row, body.encode())
    assert stored_events(db) == []
    assert queued(config) == []
    assert metric(client, FAILURES, endpoint="connect",
                  reason="wrong_endpoint_secret") == before + 1


def test_cross_endpoint_hint_works_with_rotated_secrets(make_client, db):
    client = make_client(STRIPE_CONNECT_WEBHOOK_SECRETS="whsec_connect_new,whsec_connect_old")
    body = json.dumps(platform_event())
    response = deliver(client, "platform", body, sign(body, "whsec_connect_old"))
    assert response.status_code == 400
    assert response.json["reason"] == "wrong_endpoint_secret"


# --- Redis or the database down --------------------------------------------------------


def test_redis_down_stores_the_event_and_the_sweeper_queues_it(make_client, env, monkeypatch,
                                                               db, config, work):
    client = make_client(REDIS_URL="redis://127.0.0.1:1/0")
    payload = platform_event()
    before = metric(client, ENQUEUE_FAILURES, endpoint="platform")

    started = time.perf_counter()
    response = post_event(client, payload)
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert response.json["received"] is True
    assert elapsed < 5  # a dead Redis must not hold Stripe's request for long
    [row] = stored_events(db)
    assert (row.event_id, row.status) == (payload["id"], "received")
    assert metric(client, ENQUEUE_FAILURES, endpoint="platform") == before + 1
    assert queued(config) == []  # the real queue never saw it

    # Redis is back: the sweeper finds the stored-but-unqueued event, a worker runs it.
    monkeypatch.setenv("REDIS_URL", env["REDIS_URL"])
    counts = sweep(config, db, older_than=timedelta(0))
    assert counts["events"] == 1
    assert queued(config) == [("workers.jobs.process_event", (payload["id"],))]
    work()
    [row] = stored_events(db)
    assert row.status in ("processed", "ignored")
    assert row.attempts == 1
    assert queued(config) == []


def test_sweeper_leaves_fresh_events_alone(client, db, config):
    # With the default SWEEP_AFTER_SECONDS a just-stored event is the web request's to queue.
    assert post_event(client, platform_event()).status_code == 200
    get_queue(config).empty()
    assert sweep(config, db)["events"] == 0
    assert queued(config) == []


@pytest.fixture(params=["postgresql", "sqlite"])
def dead_database_url(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        return "postgresql://postgres@127.0.0.1:1/x"
    # A directory where the database file should be: SQLite cannot open it.
    (tmp_path / "db.sqlite3").mkdir()
    return f"sqlite:///{tmp_path / 'db.sqlite3'}"


def test_database_down_answers_503_and_queues_nothing(make_client, db, config,
                                                      dead_database_url):
    client = make_client(DATABASE_URL=dead_database_url)
    payload = connect_event()
    before = metric(client, DELIVERIES, endpoint="connect", outcome="store_failed")

    response = post_event(client, payload)

    assert response.status_code == 503
    assert response.is_json
    assert "error" in response.json
    assert "retry" in response.json["error"]
    assert queued(config) == []
    assert stored_events(db) == []  # the real database was never reached either
    assert metric(client, DELIVERIES, endpoint="connect", outcome="store_failed") == before + 1


def test_a_postgresql_restart_loses_no_delivery(client, db, config):
    """The inbox insert runs without a pre-ping: a connection the server dropped is retried
    once on a fresh one, so the first delivery after a restart is stored, not a 503."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite has no server connections to drop")
    first, second = connect_event(), connect_event()
    assert post_event(client, first).status_code == 200
    from sqlalchemy import create_engine, text

    killer = create_engine(db.url)
    with killer.connect() as conn:  # what a restart does to every pooled connection
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    killer.dispose()
    assert killed >= 1

    response = post_event(client, second)

    assert response.status_code == 200, response.json
    assert [e.event_id for e in stored_events(db)] == [first["id"], second["id"]]
    assert [args for _name, args in queued(config)] == [(first["id"],), (second["id"],)]


def test_database_down_still_rejects_bad_signatures_with_400(make_client, db,
                                                             dead_database_url):
    # Recording the rejection fails too; the answer must still be the 400, not a 500.
    client = make_client(DATABASE_URL=dead_database_url)
    body = json.dumps(platform_event())
    response = deliver(client, "platform", body, sign(body, "whsec_wrong"))
    assert response.status_code == 400
    assert response.json["reason"] == "bad_signature"


# --- logs ------------------------------------------------------------------------------


def test_no_pii_or_secrets_in_logs(client, db, config, work, caplog):
    caplog.set_level(logging.DEBUG)
    payload = connect_event()
    platform = platform_event()

    assert post_event(client, payload).status_code == 200
    assert post_event(client, payload).status_code == 200  # duplicate
    assert post_event(client, platform).status_code == 200
    body = json.dumps(payload)
    assert deliver(client, "connect", body, sign(body, "whsec_wrong")).status_code == 400
    assert deliver(client, "connect", body, sign(body, PLATFORM_SECRET)).status_code == 400
    assert deliver(client, "platform", body, sign(body, PLATFORM_SECRET)).status_code == 400
    assert deliver(client, "platform", b"{" + CUSTOMER_EMAIL.encode(),
                   sign("{" + CUSTOMER_EMAIL, PLATFORM_SECRET)).status_code == 400
    work()  # the worker side of the same events logs too

    assert caplog.records, "expected the intake to log something"
    assert any(payload["id"] in r.getMessage() for r in caplog.records)  # ids are logged
    forbidden = [CUSTOMER_EMAIL, CUSTOMER_EMAIL.casefold(), BODY_MARKER,
                 PLATFORM_SECRET, CONNECT_SECRET, "whsec_"]
    for record in caplog.records:
        text = " ".join([record.getMessage(), repr(record.args), record.exc_text or ""])
        for word in forbidden:
            assert word not in text, f"{word!r} logged by {record.name}: {record.getMessage()}"
    for word in forbidden:
        assert word not in caplog.text


def test_verification_is_pure_one_function_for_both_paths():
    """listener/signature.py reads nothing from the app: the secrets and the tolerance are
    arguments, so it runs (and refuses) outside any request."""
    from listener.signature import Rejected, Secrets, verify, verify_thin

    secrets = Secrets(platform=("whsec_p",), connect=("whsec_c",), thin=())
    payload = event("customer.subscription.created", subscription("sub_P", "cus_P"))
    body = json.dumps(payload)
    assert verify("platform", body.encode(), sign(body, "whsec_p"), secrets, 300)["id"] \
        == payload["id"]
    with pytest.raises(Rejected) as wrong:
        verify("connect", body.encode(), sign(body, "whsec_p"), secrets, 300)
    assert wrong.value.reason == "wrong_endpoint_secret"
    with pytest.raises(Rejected) as stale:
        verify("platform", body.encode(), sign(body, "whsec_p", int(time.time()) - 301),
               secrets, 300)
    assert stale.value.reason == "stale_timestamp"
    with pytest.raises(Rejected) as snapshot:  # the thin path refuses a snapshot event
        verify_thin(body.encode(), sign(body, "whsec_c"), secrets, 300)
    assert snapshot.value.reason == "not_an_event"
