"""Stripe's two webhook endpoints. Inside Stripe's request we only verify, store, enqueue:
everything slow (API calls, matching, mail) happens in the workers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass

import stripe
from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from config import CONNECT, PLATFORM, SECRET_VARS, THIN, WEBHOOK_PATHS
from db import EventStatus, RejectedDelivery, StoreFailed, ids_named, utcnow
from listener.context import current_config, current_db, current_throttle
from listener.metrics import DELIVERIES, ENQUEUE_FAILURES, REQUEST_SECONDS, VERIFICATION_FAILURES
from workers import EVENT, THIN_EVENT, THIN_TYPES, try_enqueue

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

ROUTES = {name: f"POST {path}" for name, path in WEBHOOK_PATHS.items()}


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


# What every Stripe event id, type and account id is: printable ASCII without spaces. No
# control character (CR/LF would forge log lines and break mail headers), no NUL, no lone
# surrogate from a JSON \\ud800 escape.
_STRIPE_TOKEN = re.compile(r"[!-~]+")


def _storable(value: object, limit: int) -> bool:
    """A Stripe token (id, type, account) the inbox can hold: within the column's length."""
    return isinstance(value, str) and 0 < len(value) <= limit \
        and _STRIPE_TOKEN.fullmatch(value) is not None


def _check_timestamp(sig: Signature, tolerance: int) -> None:
    now = time.time()
    if sig.timestamp < now - tolerance:
        raise Rejected(400, "stale_timestamp", f"signature timestamp is older than {tolerance}s")
    if sig.timestamp > now + tolerance:
        raise Rejected(400, "future_timestamp",
                       f"signature timestamp is over {tolerance}s in the future")


def verify(endpoint: str, body: bytes, header: str | None) -> dict:
    """Check signature, timestamp and shape; return the event as a dict or raise Rejected."""
    config = current_config()
    own = config.webhook_secrets if endpoint == PLATFORM else config.connect_webhook_secrets
    other_endpoint = CONNECT if endpoint == PLATFORM else PLATFORM
    other = config.connect_webhook_secrets if endpoint == PLATFORM else config.webhook_secrets
    if not own:
        # Not the sender's fault: 503 makes Stripe retry until the secret is configured.
        raise Rejected(503, "endpoint_not_configured",
                       f"{SECRET_VARS[endpoint]} is not set: this endpoint cannot verify events")
    sig = parse_signature_header(header)
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "invalid_body", "body is not UTF-8 text") from None
    assert header is not None
    if not signed_by(payload, header, own):
        if other and signed_by(payload, header, other):
            raise Rejected(
                400, "wrong_endpoint_secret",
                f"signed with the {other_endpoint.capitalize()} endpoint's secret — is the URL in "
                f"Stripe right? Events from that endpoint belong at {ROUTES[other_endpoint]}",
            )
        raise Rejected(400, "bad_signature",
                       "no signature matches the body with any configured secret")
    _check_timestamp(sig, config.webhook_tolerance)
    try:
        event = json.loads(payload)
    except ValueError:
        raise Rejected(400, "invalid_json", "body is not JSON") from None
    except RecursionError:
        raise Rejected(400, "invalid_json", "body is JSON nested too deeply") from None
    if not (
        isinstance(event, dict)
        and event.get("object") == "event"
        and _storable(event.get("id"), 255)
        and _storable(event.get("type"), 128)
        and type(event.get("created")) is int
        and 0 <= event["created"] < 2**63
        and isinstance(event.get("data"), dict)
    ):
        raise Rejected(400, "not_an_event",
                       "body is not a Stripe event (needs object=event, id, type, created, data)")
    if type(event.get("livemode", False)) is not bool:
        raise Rejected(400, "not_an_event", "event 'livemode' is not true or false")
    obj = event["data"].get("object")
    if isinstance(obj, dict) and "id" in obj and not _storable(obj["id"], 255):
        raise Rejected(400, "not_an_event", "event's object 'id' is not a Stripe id")
    account = event.get("account") or None
    if account is not None and not isinstance(account, str):
        raise Rejected(400, "not_an_event", "event 'account' is not a string")
    if account and not _storable(account, 64):
        raise Rejected(400, "not_an_event", "event 'account' is not an account id")
    if endpoint == CONNECT and not account:
        raise Rejected(400, "wrong_endpoint",
                       f"event has no 'account': platform events belong at {ROUTES[PLATFORM]}")
    if endpoint == PLATFORM and account:
        raise Rejected(400, "wrong_endpoint",
                       f"event carries 'account': Connect events belong at {ROUTES[CONNECT]}")
    return event


def _record_rejection(endpoint: str, rejected: Rejected, body: bytes) -> None:
    """Count every rejection; store and log it while its address is within
    REJECTIONS_RECORDED_PER_MINUTE, so junk traffic cannot grow the table (or the log) without
    bound."""
    VERIFICATION_FAILURES.labels(endpoint, rejected.reason).inc()
    DELIVERIES.labels(endpoint, "rejected").inc()
    if not current_throttle().record_rejection(request.remote_addr or "-"):
        return
    log.warning("webhook rejected endpoint=%s reason=%s", endpoint, rejected.reason)
    too_large = rejected.reason == "too_large"
    try:
        with current_db().session() as s:
            s.add(RejectedDelivery(
                endpoint=endpoint,
                reason=rejected.reason,
                detail=rejected.message,
                remote_addr=(request.remote_addr or "")[:64],
                # An oversized body is never read: record its declared size and no hash.
                body_sha256=None if too_large else hashlib.sha256(body).hexdigest(),
                body_size=len(body) if not too_large else (request.content_length or len(body)),
            ))
    except SQLAlchemyError:
        log.error("could not record rejected delivery endpoint=%s reason=%s",
                  endpoint, rejected.reason)


class _SlowBody(Exception):
    """The body did not arrive within BODY_SECONDS."""


# Stripe sends a delivery's body at once; a client still sending after this is holding a
# connection open on purpose (listener/gunicorn.conf.py bounds the headers the same way).
BODY_SECONDS = 10


def _within(seconds: float) -> contextlib.AbstractContextManager:
    """A deadline for reading the body where gevent serves the request (gevent's Timeout: a
    slow client holds only its own greenlet, and only this long); nothing elsewhere."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        import gevent

        return gevent.Timeout(seconds, _SlowBody)
    return contextlib.nullcontext()


def _read_body(limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise Rejected(413, "too_large", f"body over the {limit}-byte limit")
    try:
        with _within(BODY_SECONDS):
            body = request.stream.read(limit + 1)
    except _SlowBody:
        raise Rejected(408, "slow_body", f"body not received within {BODY_SECONDS}s") from None
    if len(body) > limit:
        raise Rejected(413, "too_large", f"body over the {limit}-byte limit")
    return body


def receive(endpoint: str) -> tuple[Response, int]:
    started = time.perf_counter()
    config = current_config()
    body = b""
    try:
        body = _read_body(config.max_webhook_bytes)
        event = verify(endpoint, body, request.headers.get("Stripe-Signature"))
    except Rejected as rejected:
        _record_rejection(endpoint, rejected, body)
        REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return jsonify(error=rejected.message, reason=rejected.reason), rejected.status

    event_id = event["id"]
    subscription_id, customer_id = ids_named(event)
    try:
        row_id = current_db().store_event(  # committed before we enqueue or answer
            dict(
                event_id=event_id,
                endpoint=endpoint,
                account_id=event.get("account") or None,
                livemode=event.get("livemode", False),
                type=event["type"],
                created=event["created"],
                payload=body.decode("utf-8"),
                subscription_id=subscription_id,
                customer_id=customer_id,
                status=EventStatus.RECEIVED.value,  # a plain str: no enum adaptation per request
                attempts=0,
                received_at=utcnow(),
            ),
        )
    except StoreFailed as exc:
        DELIVERIES.labels(endpoint, "store_failed").inc()
        log.error("could not store event %s: %s", event_id, exc)
        REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return jsonify(error="could not store the event; Stripe will retry"), 503

    duplicate = row_id is None
    if not duplicate and not try_enqueue(config, EVENT, event_id):
        ENQUEUE_FAILURES.labels(endpoint).inc()
    DELIVERIES.labels(endpoint, "duplicate" if duplicate else "accepted").inc()
    log.info("webhook %s %s type=%s account=%s", "duplicate" if duplicate else "stored",
             event_id, event["type"], event.get("account") or "-")
    REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
    return jsonify(received=True, duplicate=duplicate), 200


# --- thin events (Stripe Event Destinations) ------------------------------------------------

@functools.cache
def _notification_parser() -> stripe.StripeClient:
    """stripe-python's client, used only to parse thin events (it sends no request here;
    the worker fetches with the real key)."""
    return stripe.StripeClient("sk_parse_only")


def verify_thin(body: bytes, header: str | None) -> dict:
    """Check a thin event's signature and timestamp, then parse it with stripe-python's
    own parser; its fields as a dict, or raise Rejected."""
    config = current_config()
    # An Event Destination's own secret, or either endpoint's: the same lists as snapshot
    # deliveries (a destination set up beside an endpoint may share its secret).
    secrets = (config.thin_webhook_secrets + config.webhook_secrets
               + config.connect_webhook_secrets)
    if not secrets:
        raise Rejected(503, "endpoint_not_configured",
                       f"none of {SECRET_VARS[THIN]}, {SECRET_VARS[PLATFORM]}, "
                       f"{SECRET_VARS[CONNECT]} is set: this endpoint cannot verify events")
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
    _check_timestamp(sig, config.webhook_tolerance)
    try:
        notification = _notification_parser().parse_event_notification(
            payload, header, secret, tolerance=config.webhook_tolerance)
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
    if not (_storable(notification.id, 255) and _storable(notification.type, 128)
            and isinstance(notification.created, str)):
        raise Rejected(400, "not_an_event", "thin event id, type or created is not valid")
    if context is not None and not _storable(context, 64):
        raise Rejected(400, "not_an_event", "thin event 'context' is not an account id")
    snapshot_event = json.loads(payload).get("snapshot_event")
    if snapshot_event is not None and not _storable(snapshot_event, 255):
        raise Rejected(400, "not_an_event", "thin event 'snapshot_event' is not an event id")
    return {"id": notification.id, "type": notification.type, "context": context,
            "livemode": bool(notification.livemode)}


@bp.post("/stripe/thin")
def thin():  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    config = current_config()
    body = b""
    try:
        body = _read_body(config.max_webhook_bytes)
        notification = verify_thin(body, request.headers.get("Stripe-Signature"))
    except Rejected as rejected:
        _record_rejection(THIN, rejected, body)
        REQUEST_SECONDS.labels(THIN).observe(time.perf_counter() - started)
        return jsonify(error=rejected.message, reason=rejected.reason), rejected.status
    event_id = notification["id"]
    if notification["type"] not in THIN_TYPES:  # a ping, or a type we do not handle
        DELIVERIES.labels(THIN, "ignored").inc()
        REQUEST_SECONDS.labels(THIN).observe(time.perf_counter() - started)
        return jsonify(received=True, ignored=True), 200
    try:
        new = current_db().store_thin_event(dict(
            event_id=event_id, type=notification["type"], context=notification["context"],
            livemode=notification["livemode"], payload=body.decode("utf-8"),
            status="received", attempts=0, received_at=utcnow()))
    except StoreFailed as exc:
        DELIVERIES.labels(THIN, "store_failed").inc()
        log.error("could not store thin event %s: %s", event_id, exc)
        REQUEST_SECONDS.labels(THIN).observe(time.perf_counter() - started)
        return jsonify(error="could not store the event; Stripe will retry"), 503
    if new and not try_enqueue(config, THIN_EVENT, event_id):
        ENQUEUE_FAILURES.labels(THIN).inc()
    DELIVERIES.labels(THIN, "accepted" if new else "duplicate").inc()
    log.info("thin webhook %s %s type=%s context=%s", "stored" if new else "duplicate",
             event_id, notification["type"], notification["context"] or "-")
    REQUEST_SECONDS.labels(THIN).observe(time.perf_counter() - started)
    return jsonify(received=True, duplicate=not new), 200


@bp.post("/stripe")
def platform():  # type: ignore[no-untyped-def]
    return receive(PLATFORM)


@bp.post("/stripe/connect")
def connect():  # type: ignore[no-untyped-def]
    return receive(CONNECT)
