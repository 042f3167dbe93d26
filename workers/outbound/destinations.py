"""Destinations and their deliveries, as the API, the console and the CLI change them: one
function per thing a person does (create, rotate, replay, test), each in the caller's
transaction, none of them sending anything (the drain does, after the commit)."""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from config import Config
from db import Database, Delivery, DeliveryStatus, Destination, Message, isoformat, utcnow
from db.contract import MESSAGE_TYPES
from db.records import InvalidInput, check_account_id
from workers.outbound.address import Refused, check_url, public_address

log = logging.getLogger(__name__)

BOOKING = "booking"  # the destination BOOKING_WEBHOOK_URL configures
TEST_TYPE = "destination.test"
ROTATION_OVERLAP = timedelta(hours=24)
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def new_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise InvalidInput("a destination's name is 1-64 lower-case letters, digits, '-' or "
                           "'_', starting with a letter or digit")
    return name


def refused_url(url: Any, *, allow_private: bool) -> str | None:
    """Why an API-made destination may not use `url`, or None. Resolved now as well as on
    every connection (a name may point elsewhere later)."""
    try:
        scheme, host, port = check_url(url, allow_private=allow_private)
        if not allow_private:
            public_address(host, port)
    except Refused as exc:
        return str(exc)
    return None


def _values(config: Config, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object (Content-Type: application/json)")
    unknown = sorted(set(data) - {"url", "event_types", "account_id"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)} (a destination has url, "
                           f"event_types, account_id)")
    why = refused_url(data.get("url"), allow_private=config.allow_private_destinations)
    if why is not None:
        raise InvalidInput(f"url refused: {why}")
    types = data.get("event_types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InvalidInput("event_types must be a list of message types")
    wrong = sorted(set(types) - set(MESSAGE_TYPES))
    if wrong:
        raise InvalidInput(f"event_types: unknown {', '.join(wrong)} (known: "
                           f"{', '.join(MESSAGE_TYPES)})")
    account = data.get("account_id")
    if account is not None:
        if not isinstance(account, str):
            raise InvalidInput("account_id must be a string or null")
        check_account_id(account)
    return {"url": data["url"], "event_types": sorted(set(types)), "account_id": account}


def find(session: Session, name: str) -> Destination | None:
    return session.scalar(select(Destination).where(Destination.name == name))


def put_destination(session: Session, config: Config, name: str, data: Any
                    ) -> tuple[Destination, str | None]:
    """Create or replace an API-made destination; returns it and, when it is new, its
    secret (shown this once)."""
    check_name(name)
    if name == BOOKING:
        raise InvalidInput(f"'{BOOKING}' is BOOKING_WEBHOOK_URL's destination, set in the "
                           f"configuration")
    values = _values(config, data)
    destination = find(session, name)
    if destination is not None:
        for key, value in values.items():
            setattr(destination, key, value)
        return destination, None
    secret = new_secret()
    destination = Destination(name=name, secrets=[{"secret": secret, "expires_at": None}],
                              from_config=False, enabled=True, **values)
    session.add(destination)
    session.flush()
    return destination, secret


def rotate(destination: Destination) -> str:
    """A new secret signs from now on; the current ones keep signing for 24 hours more, so
    a receiver can switch over without refusing a message."""
    ends = isoformat(utcnow() + ROTATION_OVERLAP)
    kept = [{**s, "expires_at": s.get("expires_at") or ends} for s in destination.secrets or []
            if not s.get("expires_at") or datetime.fromisoformat(
                s["expires_at"].replace("Z", "+00:00")) > utcnow()]
    secret = new_secret()
    destination.secrets = [{"secret": secret, "expires_at": None}, *kept]
    return secret


def sync_configured(session: Session, config: Config) -> None:
    """Keep BOOKING_WEBHOOK_URL's destination row as the configuration says (its secrets
    stay in the configuration); unset, the row is disabled, never deleted."""
    row = find(session, BOOKING)
    if config.booking_webhook_url is None:
        if row is not None and row.enabled:
            row.enabled, row.disabled_reason = False, "BOOKING_WEBHOOK_URL is not set"
        return
    if row is None:
        session.add(Destination(name=BOOKING, url=config.booking_webhook_url, secrets=[],
                                event_types=[], from_config=True, enabled=True))
    elif row.url != config.booking_webhook_url or not row.from_config:
        row.url, row.from_config = config.booking_webhook_url, True


def sync_destinations(db: Database, config: Config) -> None:
    """At start-up (web and workers): the configured destination as configured. A database
    not there yet (before `mismatch db upgrade`) is left for the next start."""
    try:
        with db.session() as session:
            sync_configured(session, config)
    except DBAPIError as exc:
        log.warning("destinations not synced (%s)", type(exc.orig).__name__)


def set_enabled(destination: Destination, enabled: bool, reason: str | None = None) -> None:
    destination.enabled = enabled
    destination.disabled_reason = None if enabled else (reason or "disabled by support")
    if enabled:
        destination.draining_until = None


def replay(session: Session, destination: Destination, *, message_id: str | None = None,
           failed_since: datetime | None = None) -> int:
    """Owe the destination one message again (by its webhook-id), or every one that failed
    since a time; each goes out with its retries afresh. Returns how many."""
    now = utcnow()
    again = dict(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now,
                 finished_at=None)
    if message_id is not None:
        message = session.scalar(select(Message).where(Message.message_id == message_id))
        if message is None:
            raise InvalidInput(f"no message {message_id}")
        found = session.scalar(select(Delivery).where(
            Delivery.destination_id == destination.id, Delivery.message_id == message.id))
        if found is None:
            session.add(Delivery(destination_id=destination.id, message_id=message.id,
                                 created_at=now, **again))
        else:
            for key, value in again.items():
                setattr(found, key, value)
        return 1
    assert failed_since is not None
    result = session.execute(
        update(Delivery).where(Delivery.destination_id == destination.id,
                               Delivery.status == DeliveryStatus.FAILED,
                               Delivery.finished_at >= failed_since).values(**again)
        .returning(Delivery.id))
    return len(result.all())


def queue_test(session: Session, destination: Destination) -> str:
    """A `destination.test` message to this destination alone (never in the pull feed)."""
    now = utcnow()
    message_id = f"msg_{uuid.uuid4().hex}"
    body = {"type": TEST_TYPE, "timestamp": isoformat(now),
            "data": {"destination": destination.name,
                     "note": "A test from the mismatch detector: answer 2xx."}}
    message = Message(message_id=message_id, type=TEST_TYPE, mismatch_id=None,
                      account_id=None, revision=0, created_at=now,
                      body=json.dumps(body, separators=(",", ":")))
    session.add(message)
    session.flush()
    session.add(Delivery(destination_id=destination.id, message_id=message.id,
                         status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now,
                         created_at=now))
    return message_id


def counts(session: Session, destination_id: int) -> dict[str, int]:
    """How many of its deliveries are pending, delivered and failed."""
    rows = session.execute(select(Delivery.status, func.count()).where(
        Delivery.destination_id == destination_id).group_by(Delivery.status)).all()
    found = {status: n for status, n in rows}
    return {status.value: found.get(status.value, 0) for status in DeliveryStatus}


def destination_json(session: Session, d: Destination) -> dict[str, Any]:
    """A destination as the API shows it: never a secret, only how many sign."""
    return {"name": d.name, "url": d.url, "event_types": d.event_types or [],
            "account_id": d.account_id, "from_config": d.from_config, "enabled": d.enabled,
            "disabled_reason": d.disabled_reason,
            "secrets": len(d.secrets or []) if not d.from_config else None,
            "created_at": isoformat(d.created_at), "deliveries": counts(session, d.id)}


def recent_deliveries(session: Session, destination_id: int, limit: int = 50
                      ) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Delivery, Message.message_id, Message.type)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.destination_id == destination_id)
        .order_by(Delivery.id.desc()).limit(limit)).all()
    return [{"message_id": message_id, "type": kind, "status": d.status,
             "attempts": d.attempts, "last_status_code": d.last_status_code,
             "last_latency_ms": d.last_latency_ms, "last_error": d.last_error,
             "next_attempt_at": isoformat(d.next_attempt_at)
             if d.status == DeliveryStatus.PENDING else None,
             "created_at": isoformat(d.created_at), "finished_at": isoformat(d.finished_at)}
            for d, message_id, kind in rows]


LATENCY_BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass
class DeliveryFigures:
    """What /metrics shows of the outbound side, read at scrape time (the worker processes
    keep no metrics of their own): deliveries by destination and status, and a histogram of
    the delivered ones' response times."""

    by_status: dict[tuple[str, str], int] = field(default_factory=dict)
    # destination → (cumulative count per bucket of LATENCY_BUCKETS_MS, sum in ms, count)
    latency: dict[str, tuple[list[int], int, int]] = field(default_factory=dict)


def delivery_figures(session: Session) -> DeliveryFigures:
    figures = DeliveryFigures()
    names = dict(session.execute(select(Destination.id, Destination.name)).all())
    for destination_id, status, n in session.execute(
            select(Delivery.destination_id, Delivery.status, func.count())
            .group_by(Delivery.destination_id, Delivery.status)):
        figures.by_status[(names.get(destination_id, "?"), status)] = n
    latency = func.coalesce(Delivery.last_latency_ms, 0)
    buckets = [func.sum(case((latency <= b, 1), else_=0)) for b in LATENCY_BUCKETS_MS]
    for destination_id, total, n, *counted in session.execute(
            select(Delivery.destination_id, func.sum(latency), func.count(), *buckets)
            .where(Delivery.status == DeliveryStatus.DELIVERED)
            .group_by(Delivery.destination_id)):
        figures.latency[names.get(destination_id, "?")] = (
            [int(c or 0) for c in counted], int(total or 0), n)
    return figures
