"""Stripe-shaped payloads and signatures, made as Stripe makes them: the tests, the
benchmarks and the demo build what they deliver from these."""

from __future__ import annotations

import itertools
import time
from typing import Any

import stripe

_seq = itertools.count(1)


def sign(body: str, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for `body`, made the way Stripe makes it."""
    return stripe.WebhookSignature.generate_signature_header(
        body, secret, timestamp=timestamp if timestamp is not None else int(time.time()))


def event(type_: str, obj: dict[str, Any], *, account: str | None = None,
          livemode: bool = False, created: int | None = None,
          event_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": event_id or f"evt_test{next(_seq):010d}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": created if created is not None else int(time.time()),
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }
    if account:
        payload["account"] = account
    return payload


def customer(customer_id: str, email: str | None, name: str | None = "Test Customer",
             deleted: bool = False) -> dict[str, Any]:
    obj = {"id": customer_id, "object": "customer", "email": email, "name": name,
           "livemode": False}
    if deleted:
        obj["deleted"] = True
    return obj


def subscription(subscription_id: str, customer_id: str, status: str = "active"
                 ) -> dict[str, Any]:
    return {"id": subscription_id, "object": "subscription", "customer": customer_id,
            "status": status, "items": {"object": "list", "data": []}}


def checkout_session(session_id: str, customer_id: str, subscription_id: str,
                     email: str | None, mode: str = "subscription") -> dict[str, Any]:
    return {"id": session_id, "object": "checkout.session", "mode": mode,
            "customer": customer_id, "subscription": subscription_id,
            "customer_details": {"email": email, "name": "Checkout Buyer"}}
