"""`mismatch stripe setup` and `mismatch stripe check` against the Connect stand-in (its
webhook endpoints behave as Stripe's: `connect` and `api_version` fixed at creation, the
secret in the creation answer only, writes once per idempotency key)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from db import StripeAction
from tests.stripe_servers import ConnectStripe
from tests.support import CONNECT_SECRET, PLATFORM_ACCOUNT, run_cli, sign
from workers.matching.handlers import HANDLERS
from workers.stripe_side.setup import API_VERSION

BASE = "https://mismatch.example"
GYM = "acct_1Gym000000000000"
CLUB = "acct_1Club00000000000"


@pytest.fixture
def stand_in(env, monkeypatch):
    server = ConnectStripe()
    server.platform_account = PLATFORM_ACCOUNT
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_setup")
    monkeypatch.setenv("PUBLIC_BASE_URL", BASE)
    yield server
    server.stop()


cli = run_cli  # the `mismatch` command itself, in this process, on the test's environment


def writes(server: ConnectStripe) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in server.requests
            if method in ("POST", "DELETE") and "webhook_endpoints" in path]


def test_setup_creates_both_endpoints_and_a_second_run_changes_nothing(stand_in, app, db):
    result = cli("stripe", "setup", "--url", BASE, "--yes")
    assert result.exit_code == 0, result.output
    by_url = {e["url"]: e for e in stand_in.webhook_endpoints}
    platform, connect = by_url[f"{BASE}/webhooks/stripe"], by_url[f"{BASE}/webhooks/stripe/connect"]
    for endpoint, scoped in ((platform, False), (connect, True)):
        assert sorted(endpoint["enabled_events"]) == sorted(HANDLERS)
        assert endpoint["api_version"] == API_VERSION
        assert bool(endpoint["application"]) is scoped
    # Each secret printed once, with the variable it goes in.
    assert f"STRIPE_WEBHOOK_SECRETS={platform['secret']}" in result.output
    assert f"STRIPE_CONNECT_WEBHOOK_SECRETS={connect['secret']}" in result.output
    # Audited, with the idempotency key sent; the secret is nowhere in the record.
    with db.session() as s:
        rows = list(s.scalars(select(StripeAction).order_by(StripeAction.id)))
    assert [(r.kind, r.status) for r in rows] == [("create_webhook_endpoint", "done")] * 2
    assert [r.result for r in rows] == [platform["id"], connect["id"]]
    assert set(stand_in.keys[-2:]) == {r.idempotency_key for r in rows}
    assert not any(platform["secret"] in (r.result or "") + (r.error or "") for r in rows)

    before = writes(stand_in)
    again = cli("stripe", "setup", "--url", BASE, "--yes")
    assert again.exit_code == 0, again.output
    assert "Nothing to change." in again.output and "whsec_" not in again.output
    assert writes(stand_in) == before and len(stand_in.webhook_endpoints) == 2


def test_setup_repairs_a_dashboard_made_setup_after_asking(stand_in, app):
    """The common wrong set-ups: the Connect URL on a "Your account" endpoint (scope cannot be
    changed: replaced), the platform one disabled and short of event types (updated)."""
    wrong_scope = stand_in.add_endpoint(f"{BASE}/webhooks/stripe/connect", sorted(HANDLERS),
                                        connect=False, api_version=API_VERSION)
    short = stand_in.add_endpoint(f"{BASE}/webhooks/stripe", ["customer.created"],
                                  connect=False, api_version=API_VERSION, status="disabled")
    declined = cli("stripe", "setup", "--url", BASE, input="n\n")
    assert declined.exit_code != 0 and "Aborted" in declined.output
    assert "replace (create new, delete old): scoped to the platform's own account" in \
        declined.output
    assert writes(stand_in) == []

    result = cli("stripe", "setup", "--url", BASE, input="y\n")
    assert result.exit_code == 0, result.output
    by_url = {e["url"]: e for e in stand_in.webhook_endpoints}
    assert by_url[f"{BASE}/webhooks/stripe"]["id"] == short["id"]  # updated in place
    assert by_url[f"{BASE}/webhooks/stripe"]["status"] == "enabled"
    assert sorted(by_url[f"{BASE}/webhooks/stripe"]["enabled_events"]) == sorted(HANDLERS)
    new_connect = by_url[f"{BASE}/webhooks/stripe/connect"]
    assert new_connect["id"] != wrong_scope["id"] and new_connect["application"]
    assert len(stand_in.webhook_endpoints) == 2  # the wrong one deleted
    assert f"STRIPE_CONNECT_WEBHOOK_SECRETS={new_connect['secret']}" in result.output
    assert "STRIPE_WEBHOOK_SECRETS=" not in result.output  # updated: its secret is unchanged
    assert "Nothing to change." in cli("stripe", "setup", "--url", BASE, "--yes").output


def test_setup_refuses_a_bad_url_in_one_line(stand_in, app):
    result = cli("stripe", "setup", "--url", "mismatch.example", "--yes")
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("Error: --url: expected https://")


# --- the doctor -----------------------------------------------------------------------------

def codes(output: str) -> set[str]:
    return {line.split("]")[0].split("[")[1] for line in output.splitlines()
            if line.startswith("PROBLEM [")}


def test_check_passes_on_what_setup_made(stand_in, app, api, monkeypatch):
    stand_in.connected_accounts = [GYM]
    api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": ["o@gym.test"],
                                        "livemode": False})
    assert cli("stripe", "setup", "--yes").exit_code == 0
    result = cli("stripe", "check")
    assert result.exit_code == 0, result.output
    assert "Stripe set-up OK" in result.output


def test_each_wrong_setup_is_a_finding_with_its_fix(stand_in, app, api, client, monkeypatch):
    """Deliberately wrong: the key's account is not STRIPE_PLATFORM_ACCOUNT, a live venue
    with a test key, a venue not connected, the Connect endpoint scoped to "Your account",
    the platform one short of a type and on an old API version, no Connect secret, plain
    http in production, and deliveries signed with the other endpoint's secret."""
    from listener.app import create_app
    from tests.pages_support import SUPPORT_USERS, sign_in

    stand_in.platform_account = "acct_1SomeoneElse000000"
    stand_in.connected_accounts = [GYM]
    for account, live in ((GYM, False), (CLUB, True)):
        api.put(f"/api/venues/{account}", json={"name": account[-4:], "livemode": live,
                                                "admin_emails": ["o@venue.test"]})
    api.put("/api/venues/acct_1Lost000000000000", json={"name": "Lost", "livemode": False,
                                                         "admin_emails": ["o@lost.test"]})
    stand_in.add_endpoint("http://mismatch.example/webhooks/stripe/connect", sorted(HANDLERS),
                          connect=False, api_version=API_VERSION)
    stand_in.add_endpoint("http://mismatch.example/webhooks/stripe",
                          [t for t in sorted(HANDLERS) if t != "invoice.paid"],
                          connect=False, api_version="2024-06-20")
    body = json.dumps({"id": "evt_1", "object": "event", "type": "customer.created",
                       "created": 1, "data": {"object": {}}})
    for _ in range(2):
        assert client.post("/webhooks/stripe", data=body, headers={
            "Stripe-Signature": sign(body, CONNECT_SECRET)}).status_code == 400
    monkeypatch.setenv("PUBLIC_BASE_URL", "http://mismatch.example")
    monkeypatch.setenv("MISMATCH_ENV", "production")
    monkeypatch.setenv("STRIPE_CONNECT_WEBHOOK_SECRETS", "")

    result = cli("stripe", "check")
    assert result.exit_code == 1
    assert codes(result.output) == {
        "production_smtp_url", "production_secret_key",  # and the laptop defaults
        "public_url_http", "connect_secret_missing", "key_mode", "platform_account_wrong",
        "venues_unreachable", "connect_endpoint_scope", "platform_endpoint_events",
        "platform_endpoint_api_version", "rejected_wrong_endpoint_secret"}
    assert "Set STRIPE_PLATFORM_ACCOUNT=acct_1SomeoneElse000000" in result.output
    assert "acct_1Lost000000000000" in result.output and CLUB in result.output
    assert "lacks" not in result.output and "does not send invoice.paid" in result.output
    assert "2 deliveries refused in the last 24 h: wrong_endpoint_secret" in result.output
    assert "secrets are swapped" in result.output

    # The dashboard shows the same findings, each with its fix.
    monkeypatch.setenv("MISMATCH_ENV", "")
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    from config import load_config

    console = create_app(load_config(), TESTING=True).test_client()
    sign_in(console)
    page = console.get("/support").get_data(as_text=True)
    assert "Stripe set-up" in page and "connect_endpoint_scope" in page
    assert "scoped to &#34;Your account&#34;" in page or "scoped to \"Your account\"" in page
    assert "Run `mismatch stripe setup --url http://mismatch.example`." in page


def test_check_without_a_key_says_so_and_fails(env, app):
    result = cli("stripe", "check")
    assert result.exit_code == 1 and "[no_key]" in result.output


def test_the_dashboard_says_when_nothing_was_checked_yet(env, app, monkeypatch):
    from config import load_config
    from listener.app import create_app
    from tests.pages_support import SUPPORT_USERS, sign_in

    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    console = create_app(load_config(), TESTING=True).test_client()
    sign_in(console)
    page = console.get("/support").get_data(as_text=True)
    assert "Not checked yet: run <code>mismatch stripe check</code>" in page
