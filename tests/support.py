"""The tests' fixed names and secrets, and delivering a signed event to the test client;
the payload builders are the stand-ins' (standins/events.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

from standins.events import checkout_session, customer, event, sign, subscription

__all__ = ["checkout_session", "customer", "event", "sign", "subscription"]

PLATFORM_SECRET = "whsec_platform_test_secret"
PLATFORM_SECRET_OLD = "whsec_platform_old_secret"
CONNECT_SECRET = "whsec_connect_test_secret"
PLATFORM_ACCOUNT = "acct_1Platform0000000"
GYM = "acct_1Gym000000000000"  # the two venues of the `venues` fixture (conftest.py)
CLUB = "acct_1Club00000000000"
API_TOKEN = "test-api-token"
BOOKING_SECRET = "whsec_" + base64.b64encode(b"booking-product-test-secret-32b!").decode()

def post_event(client, payload: dict[str, Any], *, connect: bool | None = None,  # type: ignore[no-untyped-def]
               secret: str | None = None, timestamp: int | None = None):
    """Sign and deliver an event to the endpoint it belongs to."""
    if connect is None:
        connect = "account" in payload
    body = json.dumps(payload)
    secret = secret or (CONNECT_SECRET if connect else PLATFORM_SECRET)
    url = "/webhooks/stripe/connect" if connect else "/webhooks/stripe"
    return client.post(url, data=body, headers={
        "Stripe-Signature": sign(body, secret, timestamp),
        "Content-Type": "application/json"})


def run_cli(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    """The `mismatch` command, as a shell runs it (it reads the environment the fixtures set)."""
    from click.testing import CliRunner

    from listener.cli import main

    return CliRunner().invoke(main, list(args), input=input)
