"""Thin events (Stripe Event Destinations): a notification names an event and carries no
object, so a worker fetches the snapshot event it stands for — as the account in its
`context` — and stores that in the inbox like any delivery. The inbox is unique by event id,
so a thin notification and the snapshot delivery of the same event become one row, one
outcome, whichever came first.

The fetch runs with no transaction open, under the shared rate limit (StripeApi)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import stripe
from sqlalchemy import select

from config import CONNECT, PLATFORM, Config
from db import Database, EventStatus, ThinEvent, utcnow
from workers.matching.handlers import HANDLERS
from workers.stripe_side.api import StripeApi

log = logging.getLogger(__name__)

# The thin versions of the event types we handle: `v1.` + the snapshot type.
THIN_PREFIX = "v1."
THIN_TYPES = frozenset(THIN_PREFIX + t for t in HANDLERS)


def snapshot_type(thin_type: str) -> str:
    return thin_type[len(THIN_PREFIX):]


def fetch(config: Config, db: Database, api: StripeApi, event_id: str,
          queue_event: Callable[[str], object]) -> str:
    """Fetch and store the snapshot event a thin event stands for; its outcome (stored,
    duplicate, or why not). StripeUnavailable propagates: the job is retried."""
    with db.session() as s:
        row = s.scalar(select(ThinEvent).where(ThinEvent.event_id == event_id))
        if row is None:
            return "missing"
        if row.status != "received":
            return row.outcome or row.status
        context, thin_type, livemode = row.context, row.type, row.livemode
        notification = json.loads(row.payload)
    snapshot_id = notification.get("snapshot_event")
    try:
        if not snapshot_id:
            snapshot_id = api.thin_event(context, event_id).get("snapshot_event")
        if not snapshot_id:
            return _finish(db, event_id, "failed", None, "no_snapshot",
                           "Stripe names no snapshot event for this thin event")
        full = api.event(context, snapshot_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:  # Stripe keeps events for 30 days
            return _finish(db, event_id, "failed", snapshot_id, "not_found",
                           f"Stripe has no event {snapshot_id or event_id} for "
                           f"{context or 'the platform'} (events are kept 30 days)")
        raise
    problem = _not_the_event(full, snapshot_id, thin_type)
    if problem:
        return _finish(db, event_id, "failed", snapshot_id, "not_the_event", problem)
    if context:
        full["account"] = context
    else:
        full.pop("account", None)
    stored = db.store_event(dict(
        event_id=snapshot_id, endpoint=CONNECT if context else PLATFORM, account_id=context,
        livemode=bool(full.get("livemode", livemode)), type=full["type"],
        created=full["created"], payload=json.dumps(full), status=EventStatus.RECEIVED.value,
        attempts=0, received_at=utcnow()))
    if stored is not None:
        queue_event(snapshot_id)
    outcome = "stored" if stored is not None else "duplicate"
    log.info("thin event %s -> %s %s", event_id, snapshot_id, outcome)
    return _finish(db, event_id, "fetched", snapshot_id, outcome, None)


def _not_the_event(full: dict[str, Any], snapshot_id: str, thin_type: str) -> str | None:
    if full.get("object") != "event" or full.get("id") != snapshot_id:
        return f"Stripe's answer for {snapshot_id} is not that event"
    if full.get("type") != snapshot_type(thin_type):
        return f"{snapshot_id} is a {full.get('type')} event, the thin event a {thin_type}"
    if type(full.get("created")) is not int or not isinstance(full.get("data"), dict):
        return f"{snapshot_id} has no created time or data"
    return None


def _finish(db: Database, event_id: str, status: str, snapshot_id: str | None,
            outcome: str, error: str | None) -> str:
    with db.session() as s:
        row = s.scalar(select(ThinEvent).where(ThinEvent.event_id == event_id))
        if row is not None:
            row.status, row.snapshot_event, row.outcome = status, snapshot_id, outcome
            row.last_error, row.fetched_at = error, utcnow()
            row.attempts += 1
    if error:
        log.warning("thin event %s not fetched: %s", event_id, outcome)
    return outcome
