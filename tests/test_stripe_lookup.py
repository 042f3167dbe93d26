"""Rule 3's last step: Customer.retrieve by ID, as the right account, with back-off."""

from __future__ import annotations

import pytest

from tests.stripe_servers import LocalStripe, RecordingStripe
from tests.support import PLATFORM_ACCOUNT, event, post_event, subscription
from workers.stripe_side.api import StripeApi

GYM = "acct_1Gym000000000000"


@pytest.fixture
def stripe_env(env, monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_lookup")
    return env


@pytest.fixture
def localstripe(tmp_path):
    server = LocalStripe(tmp_path)
    yield server
    server.stop()


def _venue(api, account, members=()):
    api.put(f"/api/venues/{account}", json={"name": "Studio", "admin_emails": [],
                                            "livemode": False})
    for ref, email, cus in members:
        api.put(f"/api/venues/{account}/members/{ref}",
                json={"email": email, "name": None, "stripe_customer_id": cus})


def _only(api):
    rows = api.get("/api/mismatches").json["mismatches"]
    assert len(rows) == 1, rows
    return rows[0]


def test_unmirrored_platform_customer_is_read_from_stripe_once(stripe_env, monkeypatch,
                                                               localstripe, api, client, work):
    monkeypatch.setenv("STRIPE_API_BASE", localstripe.url)
    customer = localstripe.client().v1.customers.create(
        params={"email": "Walk.In@example.com", "name": "Walk In"})
    _venue(api, PLATFORM_ACCOUNT, [("m1", "walk.in@example.com", None)])
    calls = StripeApi.calls
    post_event(client, event("customer.subscription.created",
                             subscription("sub_W1", customer.id)))
    work()
    m = _only(api)
    assert (m["case"], m["customer_email"]) == (2, "Walk.In@example.com")
    assert StripeApi.calls - calls == 1
    # The answer is mirrored: the next subscription of that customer costs no call.
    post_event(client, event("customer.subscription.created",
                             subscription("sub_W2", customer.id)))
    work()
    assert StripeApi.calls - calls == 1


def _recorder(monkeypatch, responder):
    server = RecordingStripe(responder)
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    return server


def test_connect_lookup_acts_as_the_connected_account(stripe_env, monkeypatch, api, client,
                                                      work):
    server = _recorder(monkeypatch, lambda path, headers: (200, {
        "id": path.rsplit("/", 1)[-1], "object": "customer", "email": "conn@example.com"}))
    try:
        _venue(api, GYM, [("m1", "conn@example.com", "cus_Other")])
        post_event(client, event("customer.subscription.created",
                                 subscription("sub_C", "cus_Conn"), account=GYM))
        work()
    finally:
        server.stop()
    assert _only(api)["case"] == 1
    [(path, headers)] = server.requests
    assert path == "/v1/customers/cus_Conn"
    assert headers["Stripe-Account"] == GYM
    assert headers["Authorization"] == "Bearer sk_test_lookup"


def test_stripe_python_retries_what_stripe_says_to_retry(stripe_env, monkeypatch, api, client,
                                                         work):
    """A 429 marked Stripe-Should-Retry (a lock timeout) is retried by stripe-python itself,
    within the one job: the event is handled on its first attempt."""
    lock_timeout = (429, {"error": {"type": "rate_limit_error", "code": "lock_timeout",
                                    "message": "slow down"}}, {"Stripe-Should-Retry": "true"})
    requests, attempts = _lookup_after(monkeypatch, api, client, work, [lock_timeout] * 2)
    assert (requests, attempts) == (3, 1)


def test_a_plain_429_waits_for_the_jobs_next_try(stripe_env, monkeypatch, api, client, work):
    """stripe-python does not retry a 429 without Stripe-Should-Retry: the event's job fails
    this attempt (no transaction was open) and RQ's back-off tries again."""
    plain = (429, {"error": {"type": "rate_limit_error", "message": "slow down"}})
    requests, attempts = _lookup_after(monkeypatch, api, client, work, [plain])
    assert (requests, attempts) == (2, 2)


def _lookup_after(monkeypatch, api, client, work, refusals):  # type: ignore[no-untyped-def]
    """A subscription of GYM whose customer Stripe gives only after `refusals`; returns
    (requests Stripe got, attempts on the event) once the customer's email is known."""
    answers = iter(refusals)

    def responder(path, headers):
        return next(answers, (200, {"id": "cus_R", "object": "customer",
                                    "email": "rate@example.com"}))

    server = _recorder(monkeypatch, responder)
    payload = event("customer.subscription.created", subscription("sub_R", "cus_R"),
                    account=GYM)
    try:
        _venue(api, GYM)
        post_event(client, payload)
        work()
    finally:
        server.stop()
    assert _only(api)["customer_email"] == "rate@example.com"
    return len(server.requests), api.get(f"/api/events/{payload['id']}").json["attempts"]


def test_stripe_down_fails_the_event_instead_of_guessing(stripe_env, monkeypatch, api, client,
                                                         work):
    monkeypatch.setenv("STRIPE_MAX_RETRIES", "1")  # stripe-python's own: 2 requests a job
    server = _recorder(monkeypatch, lambda path, headers: (
        503, {"error": {"type": "api_error", "message": "down"}}))
    payload = event("customer.subscription.created", subscription("sub_D", "cus_D"),
                    account=GYM)
    try:
        _venue(api, GYM)
        post_event(client, payload)
        work()
    finally:
        server.stop()
    assert api.get("/api/mismatches").json["mismatches"] == []
    status = api.get(f"/api/events/{payload['id']}").json
    assert status["status"] == "failed" and "Stripe" in status["last_error"]
    assert status["attempts"] == 3  # the first run and two RQ retries
    assert len(server.requests) == 6
