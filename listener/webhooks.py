"""Stripe's two webhook endpoints. Inside Stripe's request we only verify, store, enqueue:
everything slow (API calls, matching, mail) happens in the workers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, make_response, request
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from config import CONNECT, PLATFORM, THIN, Config
from db import EventStatus, RejectedDelivery, StoreFailed, ids_named, utcnow
from listener.context import current_config, current_db, current_throttle
from listener.metrics import DELIVERIES, ENQUEUE_FAILURES, REQUEST_SECONDS, VERIFICATION_FAILURES
from listener.signature import Rejected, Secrets, verify, verify_thin
from workers import EVENT, THIN_EVENT, THIN_TYPES, try_enqueue

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

@bp.record_once
def _keep_secrets(state: BlueprintSetupState) -> None:
    """The signing secrets, gathered once per app rather than on every delivery."""
    config: Config = state.app.config["MISMATCH"]
    state.app.extensions["webhook_secrets"] = Secrets(
        config.webhook_secrets, config.connect_webhook_secrets, config.thin_webhook_secrets)


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


Check = Callable[[bytes, str | None, Secrets, int], dict[str, Any]]
CHECKS: dict[str, Check] = {  # each endpoint's verification (listener/signature.py)
    PLATFORM: functools.partial(verify, PLATFORM),
    CONNECT: functools.partial(verify, CONNECT),
    THIN: verify_thin,
}


def _verified(endpoint: str, started: float) -> tuple[bytes, dict[str, Any]]:
    """The body and what the endpoint's check made of it. A refusal is counted and
    recorded, and ends the request with its status and reason."""
    config = current_config()
    body = b""
    try:
        body = _read_body(config.max_webhook_bytes)
        return body, CHECKS[endpoint](body, request.headers.get("Stripe-Signature"),
                                      current_app.extensions["webhook_secrets"],
                                      config.webhook_tolerance)
    except Rejected as rejected:
        _record_rejection(endpoint, rejected, body)
        REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        abort(make_response(jsonify(error=rejected.message, reason=rejected.reason),
                            rejected.status))


def receive(endpoint: str) -> tuple[Response, int]:
    started = time.perf_counter()
    config = current_config()
    body, event = _verified(endpoint, started)
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


@bp.post("/stripe/thin")
def thin() -> ResponseReturnValue:
    started = time.perf_counter()
    config = current_config()
    body, notification = _verified(THIN, started)
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
def platform() -> ResponseReturnValue:
    return receive(PLATFORM)


@bp.post("/stripe/connect")
def connect() -> ResponseReturnValue:
    return receive(CONNECT)
