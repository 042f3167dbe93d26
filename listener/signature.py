"""Verifying a delivery, for both webhook paths (snapshot and thin events): pure functions,
like stripe-python's `_webhook.py`; the secrets and the tolerance are passed in, nothing is
read from the app. A refusal is `Rejected`: its status, metric label and message."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass

import stripe

from config import CONNECT, PLATFORM, SECRET_VARS, THIN, WEBHOOK_PATHS
from db import is_stripe_token

ROUTES = {name: f"POST {path}" for name, path in WEBHOOK_PATHS.items()}


@dataclass(frozen=True)
class Secrets:
    """The signing secrets of each path (each a list: rotation keeps the old one a while)."""

    platform: tuple[str, ...]
    connect: tuple[str, ...]
    thin: tuple[str, ...]


class Rejected(Exception):
    """A delivery we refuse; `reason` is the metric label, `message` goes back to the caller."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class Signature:
    timestamp: int
    signatures: tuple[str, ...]


def parse_signature_header(header: str | None) -> Signature:
    if not header:
        raise Rejected(400, "missing_signature", "missing Stripe-Signature header")
    timestamp: int | None = None
    v1: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if timestamp is not None:
                # stripe-python signs and checks the first t=; a second one could make an old
                # signature look fresh to a check of the last (a replay), so neither is read.
                raise Rejected(400, "malformed_signature",
                               "malformed Stripe-Signature header: more than one t=")
            try:
                timestamp = int(value)
            except ValueError:
                raise Rejected(400, "malformed_signature",
                               "malformed Stripe-Signature header: t= is not a number") from None
        elif key == "v1" and value:
            v1.append(value)
    if timestamp is None:
        raise Rejected(400, "malformed_signature",
                       "malformed Stripe-Signature header: no t=<timestamp>")
    if not v1:
        raise Rejected(400, "malformed_signature",
                       "malformed Stripe-Signature header: no v1= signature")
    return Signature(timestamp, tuple(v1))


def signed_by(payload: str, header: str, secrets: tuple[str, ...]) -> bool:
    """True when any secret (rotation) produced any v1 signature in the header."""
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
            return True
        except stripe.SignatureVerificationError:
            continue
    return False



def _check_timestamp(sig: Signature, tolerance: int) -> None:
    now = time.time()
    if sig.timestamp < now - tolerance:
        raise Rejected(400, "stale_timestamp", f"signature timestamp is older than {tolerance}s")
    if sig.timestamp > now + tolerance:
        raise Rejected(400, "future_timestamp",
                       f"signature timestamp is over {tolerance}s in the future")


def signed(body: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int,
           *, unset: str) -> tuple[str, str]:
    """The one check both endpoints make: a secret is configured (else 503, `unset` names the
    setting), the header parses, the body is UTF-8, one of `secrets` signed it, and the
    timestamp is within `tolerance`. Returns the body as text and the secret that signed it."""
    if not secrets:
        # Not the sender's fault: 503 makes Stripe retry until the secret is configured.
        raise Rejected(503, "endpoint_not_configured",
                       f"{unset}: this endpoint cannot verify events")
    sig = parse_signature_header(header)
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "invalid_body", "body is not UTF-8 text") from None
    assert header is not None
    secret = next((one for one in secrets if signed_by(payload, header, (one,))), None)
    if secret is None:
        raise Rejected(400, "bad_signature",
                       "no signature matches the body with any configured secret")
    _check_timestamp(sig, tolerance)
    return payload, secret


def verify(endpoint: str, body: bytes, header: str | None, secrets: Secrets,
           tolerance: int) -> dict:
    """A snapshot event for `endpoint` (platform or Connect): signature, timestamp and shape;
    the event as a dict, or Rejected."""
    own, other = (secrets.platform, secrets.connect) if endpoint == PLATFORM else (
        secrets.connect, secrets.platform)
    other_endpoint = CONNECT if endpoint == PLATFORM else PLATFORM
    try:
        payload, _ = signed(body, header, own, tolerance,
                            unset=f"{SECRET_VARS[endpoint]} is not set")
    except Rejected as rejected:
        if rejected.reason == "bad_signature" and other and header is not None \
                and signed_by(body.decode("utf-8"), header, other):
            raise Rejected(
                400, "wrong_endpoint_secret",
                f"signed with the {other_endpoint.capitalize()} endpoint's secret — is the URL in "
                f"Stripe right? Events from that endpoint belong at {ROUTES[other_endpoint]}",
            ) from None
        raise
    try:
        event = json.loads(payload)
    except ValueError:
        raise Rejected(400, "invalid_json", "body is not JSON") from None
    except RecursionError:
        raise Rejected(400, "invalid_json", "body is JSON nested too deeply") from None
    if not (
        isinstance(event, dict)
        and event.get("object") == "event"
        and is_stripe_token(event.get("id"), 255)
        and is_stripe_token(event.get("type"), 128)
        and type(event.get("created")) is int
        and 0 <= event["created"] < 2**63
        and isinstance(event.get("data"), dict)
    ):
        raise Rejected(400, "not_an_event",
                       "body is not a Stripe event (needs object=event, id, type, created, data)")
    if type(event.get("livemode", False)) is not bool:
        raise Rejected(400, "not_an_event", "event 'livemode' is not true or false")
    obj = event["data"].get("object")
    if isinstance(obj, dict) and "id" in obj and not is_stripe_token(obj["id"], 255):
        raise Rejected(400, "not_an_event", "event's object 'id' is not a Stripe id")
    account = event.get("account") or None
    if account is not None and not isinstance(account, str):
        raise Rejected(400, "not_an_event", "event 'account' is not a string")
    if account and not is_stripe_token(account, 64):
        raise Rejected(400, "not_an_event", "event 'account' is not an account id")
    if endpoint == CONNECT and not account:
        raise Rejected(400, "wrong_endpoint",
                       f"event has no 'account': platform events belong at {ROUTES[PLATFORM]}")
    if endpoint == PLATFORM and account:
        raise Rejected(400, "wrong_endpoint",
                       f"event carries 'account': Connect events belong at {ROUTES[CONNECT]}")
    return event


# --- thin events (Stripe Event Destinations) ------------------------------------------------

@functools.cache
def _notification_parser() -> stripe.StripeClient:
    """stripe-python's client, used only to parse thin events (it sends no request here;
    the worker fetches with the real key)."""
    return stripe.StripeClient("sk_parse_only")


def verify_thin(body: bytes, header: str | None, secrets: Secrets, tolerance: int) -> dict:
    """A thin event: signature and timestamp, then stripe-python's own parser; its fields
    as a dict, or Rejected."""
    # An Event Destination's own secret, or either endpoint's: the same lists as snapshot
    # deliveries (a destination set up beside an endpoint may share its secret).
    payload, secret = signed(
        body, header, secrets.thin + secrets.platform + secrets.connect, tolerance,
        unset=f"none of {SECRET_VARS[THIN]}, {SECRET_VARS[PLATFORM]}, {SECRET_VARS[CONNECT]} "
              f"is set")
    assert header is not None
    try:
        notification = _notification_parser().parse_event_notification(
            payload, header, secret, tolerance=tolerance)
    except stripe.SignatureVerificationError:
        raise Rejected(400, "bad_signature", "signature does not verify") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        snapshot = "snapshot" in str(exc) or "construct_event" in str(exc)
        raise Rejected(400, "not_an_event",
                       "a snapshot event: it belongs at POST /webhooks/stripe or "
                       "/webhooks/stripe/connect" if snapshot else
                       "body is not a thin event (needs object=v2.core.event, id, type, "
                       "created)") from None
    context = str(notification.context) if notification.context else None
    if not (is_stripe_token(notification.id, 255) and is_stripe_token(notification.type, 128)
            and isinstance(notification.created, str)):
        raise Rejected(400, "not_an_event", "thin event id, type or created is not valid")
    if context is not None and not is_stripe_token(context, 64):
        raise Rejected(400, "not_an_event", "thin event 'context' is not an account id")
    snapshot_event = json.loads(payload).get("snapshot_event")
    if snapshot_event is not None and not is_stripe_token(snapshot_event, 255):
        raise Rejected(400, "not_an_event", "thin event 'snapshot_event' is not an event id")
    return {"id": notification.id, "type": notification.type, "context": context,
            "livemode": bool(notification.livemode)}
