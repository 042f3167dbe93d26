"""Property: whatever arrives at either webhook endpoint, the intake never answers 500 and
never stores an event whose signature was not valid for that endpoint."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db import RejectedDelivery, StripeEvent
from tests.support import CONNECT_SECRET, PLATFORM_SECRET

URLS = {"platform": "/webhooks/stripe", "connect": "/webhooks/stripe/connect"}
OWN = {"platform": PLATFORM_SECRET, "connect": CONNECT_SECRET}
OTHER = {"platform": CONNECT_SECRET, "connect": PLATFORM_SECRET}

@pytest.fixture
def env(env, monkeypatch):  # type: ignore[no-untyped-def]
    """Every rejection of the hundreds sent here is stored, so each can be checked (the
    service caps rows per address: tests/test_hostile_input.py)."""
    monkeypatch.setenv("REJECTIONS_RECORDED_PER_MINUTE", "1000000")
    env["REJECTIONS_RECORDED_PER_MINUTE"] = "1000000"
    return env


# --- bodies ----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)

# Any code point, lone surrogates and NUL included (JSON can escape both).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
long_text = st.integers(min_value=50, max_value=300).map(lambda n: "x" * n)

# Mostly well-formed events, with every field sometimes the wrong type, length or range.
event_ids = (st.from_regex(r"\Aevt_[A-Za-z0-9]{1,24}\Z") | st.text(max_size=30) | any_text
             | long_text | st.integers() | st.none())
KNOWN_TYPES = ["customer.created", "customer.updated", "customer.deleted",
               "customer.subscription.created", "checkout.session.completed", "invoice.paid"]
event_types = (st.sampled_from(KNOWN_TYPES)
               | st.text(max_size=30) | any_text | long_text | st.none())
accounts = (st.from_regex(r"\Aacct_[A-Za-z0-9]{1,16}\Z") | st.text(max_size=20) | any_text
            | long_text | json_values)
createds = st.integers(min_value=0, max_value=2**40) | st.integers() | st.booleans() | st.text(
    max_size=5)
objects = st.fixed_dictionaries(
    {"id": st.from_regex(r"\Acus_[A-Za-z0-9]{1,14}\Z"), "object": st.just("customer")},
    optional={"email": st.emails() | st.none(), "deleted": st.booleans()},
)
events = st.fixed_dictionaries(
    {
        "id": event_ids,
        "object": st.sampled_from(["event", "event", "event", "customer"]) | st.text(max_size=6),
        "type": event_types,
        "created": createds,
        "data": st.fixed_dictionaries({"object": objects}) | json_values,
    },
    optional={"account": accounts, "livemode": json_values, "api_version": st.text(max_size=10)},
)


def well_formed_events(endpoint: str) -> st.SearchStrategy[dict]:
    """Events as Stripe sends them to `endpoint` (Connect ones carry `account`)."""
    required = {
        "id": st.from_regex(r"\Aevt_[A-Za-z0-9]{8,24}\Z"),
        "object": st.just("event"),
        "type": st.sampled_from(KNOWN_TYPES)
        | st.from_regex(r"\A[a-z_]{1,20}(\.[a-z_]{1,20}){1,3}\Z"),
        "created": st.integers(min_value=1_300_000_000, max_value=2_000_000_000),
        "data": st.fixed_dictionaries({"object": objects}),
        "livemode": st.booleans(),
    }
    if endpoint == "connect":
        required["account"] = st.from_regex(r"\Aacct_[A-Za-z0-9]{8,16}\Z")
    return st.fixed_dictionaries(required, optional={"api_version": st.text(max_size=10)})


def _dump(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8")),
    json_values.map(_dump),
    events.map(_dump),
    events.map(_dump),
    # Raw (unescaped) text; a lone surrogate becomes bytes that are not UTF-8.
    events.map(lambda e: json.dumps(e, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)

# --- signature headers -----------------------------------------------------------------


def v1(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


# Signed now with the endpoint's own secret: the one header that should get an event stored.
SIGNED = ("valid", lambda endpoint, body, now: f"t={now},v1={v1(body, OWN[endpoint], now)}")

header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
skews = st.integers(min_value=-100, max_value=100) | st.integers(min_value=-10**6,
                                                                 max_value=10**6)

# (kind, builder(endpoint, body, now) -> header or None); only "valid" may lead to a stored row.
headers = st.one_of(
    st.just(SIGNED),
    st.tuples(st.integers(min_value=-100, max_value=100), st.lists(hex64, max_size=3)).map(
        lambda a: ("valid", lambda endpoint, body, now: ",".join(
            [f"t={now + a[0]}"] + [f"v1={h}" for h in a[1]]
            + [f"v1={v1(body, OWN[endpoint], now + a[0])}"]))),
    st.just(("none", lambda endpoint, body, now: None)),
    header_text.map(lambda h: ("text", lambda endpoint, body, now: h)),
    st.tuples(skews, hex64).map(lambda a: (
        "random_v1", lambda endpoint, body, now: f"t={now + a[0]},v1={a[1]}")),
    st.tuples(skews, st.text(min_size=6, max_size=20).map(lambda s: "whsec_" + s)).map(
        lambda a: ("wrong_secret",
                   lambda endpoint, body, now: f"t={now + a[0]},v1={v1(body, a[1], now + a[0])}")),
    skews.map(lambda skew: (
        "other_endpoint_secret",
        lambda endpoint, body, now: f"t={now + skew},v1={v1(body, OTHER[endpoint], now + skew)}")),
    st.integers(min_value=400, max_value=10**7).map(lambda age: (
        "stale",
        lambda endpoint, body, now: f"t={now - age},v1={v1(body, OWN[endpoint], now - age)}")),
)


@st.composite
def deliveries(draw):  # type: ignore[no-untyped-def]
    """(endpoint, body, (header kind, header builder)); a third of the bodies are events
    that endpoint would accept, so the storing path is exercised as much as the refusals."""
    endpoint = draw(st.sampled_from(["platform", "connect"]))
    body = draw(st.one_of(bodies, well_formed_events(endpoint).map(_dump)))
    return endpoint, body, draw(headers)


def _count(db, model) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(delivery=deliveries())
# Signed events the inbox cannot hold: once a 500 on SQLite and an endless 503 on PostgreSQL.
@example(delivery=("platform", _dump({"id": "evt_big", "object": "event", "type": "x",
                                      "created": 2**70, "data": {}}), SIGNED))
@example(delivery=("connect", _dump({"id": "evt_nul\x00", "object": "event", "type": "x\x00",
                                     "created": 1, "data": {}, "account": "acct_\x00"}), SIGNED))
@example(delivery=("platform", _dump({"id": "evt_\ud800", "object": "event", "type": "x",
                                      "created": 1, "data": {}}), SIGNED))
@example(delivery=("platform", _dump({"id": "evt_" + "x" * 300, "object": "event",
                                      "type": "t" * 200, "created": -(2**63) - 1,
                                      "data": {}}), SIGNED))
def test_intake_never_fails_and_never_stores_unverified_events(client, db, delivery):
    # The app, database and queue are built once for the whole run (function-scoped
    # fixtures); the properties are checked as differences, so examples need no reset.
    endpoint, body, (kind, build) = delivery
    now = int(time.time())
    value = build(endpoint, body, now)
    events_before = _count(db, StripeEvent)
    rejected_before = _count(db, RejectedDelivery)

    request_headers = {"Content-Type": "application/json"}
    if value is not None:
        request_headers["Stripe-Signature"] = value
    response = client.post(URLS[endpoint], data=body, headers=request_headers)

    assert response.status_code != 500
    # The database is up, so a 503 ("could not store, retry") would be a bug too: what the
    # inbox cannot hold is not a Stripe event and must get a 400.
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    assert response.is_json
    assert "error" in response.json or response.json.get("received") is True
    events_after = _count(db, StripeEvent)
    event(f"{kind} -> {response.status_code} {response.json.get('reason', 'stored')}")
    if kind != "valid":
        assert response.status_code == 400, response.json
        assert events_after == events_before
        assert _count(db, RejectedDelivery) == rejected_before + 1
    elif response.status_code == 200:
        assert events_after == events_before + (0 if response.json["duplicate"] else 1)
    else:
        assert events_after == events_before
        assert _count(db, RejectedDelivery) == rejected_before + 1
