"""RQ job functions. Each loads its row by ID, so a job can run twice, late or after a
crash and still leave the same state."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rq import get_current_job
from sqlalchemy import or_, select, update

from config import Config
from db import Database, Mismatch, Notification, StripeEvent, Venue, utcnow
from workers import queue
from workers.handlers import HANDLERS, EventContext, Ignored, sighting
from workers.matching import MatchContext, prefetch, recheck_open_mismatches
from workers.runtime import runtime
from workers.stripe_api import StripeApi

log = logging.getLogger(__name__)

DONE = ("processed", "ignored")


def _last_attempt() -> bool:
    """True when RQ will not run this job again (or it runs outside RQ)."""
    job = get_current_job()
    return job is None or not job.retries_left


def _queue_after_commit(config: Config, items: list[Any]) -> None:
    for notification_id in items:
        try:
            queue.enqueue_notification(config, notification_id)
        except Exception as exc:  # noqa: BLE001 - the sweeper sends pending rows later
            log.warning("could not queue notification %s: %s", notification_id,
                        type(exc).__name__)


def process_event(event_id: str) -> str:
    """Run the handler for one inbox event and record the outcome on the row; a failure is
    recorded on the row too (retried, or failed on the last attempt)."""
    try:
        return process_events([event_id], prefetch_rows=False)[event_id]
    except Exception as exc:
        _record_failure(runtime()[1], event_id, exc)
        raise


def process_events(event_ids: list[str], *, prefetch_rows: bool = True) -> dict[str, str]:
    """Several inbox events in ONE transaction: the handlers run in the order given, with the
    rows they look up loaded beforehand in a few set-based queries (matching.prefetch)
    rather than a dozen statements, a commit and a job per event (benchmarks/matching.py).
    Events already done keep their outcome; ids not in the inbox answer "missing".

    All or nothing: on any error nothing is written and the exception propagates; the worker
    then runs each event's own job, so each gets its own retries and failure record."""
    config, db = runtime()
    outcomes: dict[str, str] = {}
    handled: list[str] = []
    with db.session() as session:
        events = session.scalars(
            select(StripeEvent).where(StripeEvent.event_id.in_(event_ids))
            .order_by(StripeEvent.id).with_for_update()
        ).all()
        # Locked in inbox order (no deadlock between batches), handled in the order given.
        position = {event_id: n for n, event_id in enumerate(event_ids)}
        todo = []
        for event in sorted(events, key=lambda e: position[e.event_id]):
            if event.status in DONE:
                outcomes[event.event_id] = event.outcome or event.status
            else:
                todo.append((event, _payload(event)))
        if prefetch_rows:
            prefetch(session, [s for event, payload in todo
                               if (s := sighting(event, payload, _account(config, event)))])
        match = MatchContext(session, config, StripeApi(config))
        for event, payload in todo:
            outcomes[event.event_id] = _handle(match, event, payload)
            handled.append(event.event_id)
    _queue_after_commit(config, match.after_commit)
    for event_id in handled:
        log.info("event %s -> %s", event_id, outcomes[event_id])
    for event_id in event_ids:
        if event_id not in outcomes:
            log.warning("event %s not in the inbox", event_id)
            outcomes[event_id] = "missing"
    return outcomes


def _payload(event: StripeEvent) -> dict[str, Any]:
    return json.loads(event.payload) if event.type in HANDLERS else {}


def _account(config: Config, event: StripeEvent) -> str | None:
    return event.account_id or config.stripe_platform_account


def _handle(match: MatchContext, event: StripeEvent, payload: dict[str, Any]) -> str:
    """Run the event's handler inside the caller's transaction; set status and outcome."""
    handler = HANDLERS.get(event.type)
    if handler is None:
        event.status, event.outcome = "ignored", "unhandled_type"
    else:
        try:
            context = EventContext(match, event, payload, _account(match.config, event))
            event.outcome = handler(context)
            event.status = "processed"
        except Ignored as why:
            event.status, event.outcome = "ignored", "ignored"
            event.last_error = str(why)
    # Counted here, not before the handler: the row is locked either way and a failure
    # rolls this back (_record_failure counts it), so the end state is the same, and
    # the attempt goes out in the one UPDATE with the outcome instead of an UPDATE of
    # its own at the handler's first autoflush.
    event.attempts += 1
    event.processed_at = utcnow()
    return event.outcome or event.status


def _record_failure(db: Database, event_id: str, exc: Exception) -> None:
    final = _last_attempt()
    message = f"{type(exc).__name__}: {exc}"[:2000]
    log.warning("event %s failed (%s)%s", event_id, type(exc).__name__,
                "" if not final else "; no retries left")
    try:
        with db.session() as session:
            session.execute(
                update(StripeEvent)
                .where(StripeEvent.event_id == event_id, StripeEvent.status.not_in(DONE))
                .values(status="failed" if final else "received",
                        attempts=StripeEvent.attempts + 1, last_error=message)
            )
    except Exception:  # noqa: BLE001 - the database itself may be the failure
        log.error("could not record failure of event %s", event_id)


def recheck_venue(venue_id: int) -> dict[str, int]:
    """Re-classify a venue's open mismatches after its members changed."""
    config, db = runtime()
    with db.session() as session:
        venue = session.get(Venue, venue_id, with_for_update=True)
        if venue is None:
            return {}
        requested = venue.recheck_requested_at
        match = MatchContext(session, config, StripeApi(config))
        counts = recheck_open_mismatches(match, venue)
        if venue.recheck_requested_at == requested:
            venue.recheck_requested_at = None
    _queue_after_commit(config, match.after_commit)
    log.info("venue %s re-checked: %s", venue_id, counts)
    return counts


def recheck_mismatch(mismatch_id: int) -> dict[str, int]:
    """Re-classify one open mismatch on request (support page "Re-check now"): rules 2-4
    against the members as they are now, e.g. after the venue fixed a member's email.

    Scoped to the mismatch's venue and customer, so it never touches another venue; takes
    the venue lock first, like recheck_venue, so it serializes with member changes."""
    config, db = runtime()
    with db.session() as session:
        mismatch = session.get(Mismatch, mismatch_id)
        if mismatch is None or mismatch.status != "open" or mismatch.venue_id is None:
            return {}
        venue = session.get(Venue, mismatch.venue_id, with_for_update=True)
        if venue is None:
            return {}
        match = MatchContext(session, config, StripeApi(config))
        counts = recheck_open_mismatches(match, venue, customer_id=mismatch.customer_id)
    _queue_after_commit(config, match.after_commit)
    log.info("mismatch %s re-checked: %s", mismatch_id, counts)
    return counts


def send_notification(notification_id: int) -> str:
    from notifications.send import deliver

    config, db = runtime()
    return deliver(config, db, notification_id, final_attempt=_last_attempt())


def sweep(config: Config, db: Database, *, include_failed: bool = False,
          older_than: timedelta | None = None,
          enqueue: Callable[[str], None] | None = None) -> dict[str, int]:
    """Queue again whatever was stored but never queued or never finished.

    Events left in `received`/`processing`, re-checks requested but not run, and notices
    still pending, each older than `older_than` (default SWEEP_AFTER_SECONDS). With
    `include_failed`, failed events are reset and replayed too.
    """
    cutoff = utcnow() - (older_than if older_than is not None
                         else timedelta(seconds=config.sweep_after_seconds))
    enqueue = enqueue or (lambda event_id: queue.enqueue_event(config, event_id))
    counts = {"events": 0, "failed_events": 0, "rechecks": 0, "notifications": 0}
    with db.session() as session:
        if include_failed:
            failed = list(session.scalars(
                select(StripeEvent.event_id).where(StripeEvent.status == "failed")))
            session.execute(update(StripeEvent).where(StripeEvent.status == "failed")
                            .values(status="received"))
            counts["failed_events"] = len(failed)
        stale = list(session.scalars(
            select(StripeEvent.event_id)
            .where(StripeEvent.status.in_(("received", "processing")),
                   or_(StripeEvent.received_at <= cutoff,
                       StripeEvent.event_id.in_(failed if include_failed else [])))
            .order_by(StripeEvent.created)
        ))
        venues = list(session.scalars(
            select(Venue.id).where(Venue.recheck_requested_at.is_not(None),
                                   Venue.recheck_requested_at <= cutoff)))
        pending = list(session.scalars(
            select(Notification.id).where(Notification.status == "pending",
                                          Notification.created_at <= cutoff)))
    # Skip what RQ still holds queued or scheduled: behind a backlog older than the cutoff,
    # re-queueing it on every sweep piled up duplicates faster than workers could drop them.
    queued = queue.waiting(config, "event", stale)
    stale = [event_id for event_id in stale if event_id not in queued]
    queued = queue.waiting(config, "notice", pending)
    pending = [notification_id for notification_id in pending if notification_id not in queued]
    for event_id in stale:
        enqueue(event_id)
    counts["events"] = len(stale)
    for venue_id in venues:
        queue.enqueue_recheck(config, venue_id)
    counts["rechecks"] = len(venues)
    for notification_id in pending:
        queue.enqueue_notification(config, notification_id)
    counts["notifications"] = len(pending)
    return counts
