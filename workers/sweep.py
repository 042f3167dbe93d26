"""The sweeper: queue again whatever was stored but never queued or never finished (Redis
was down, a worker was killed, a retry's scheduler died). Every row is the record of its
work, so sweeping is always safe: a second run of a job finds its row done."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update

from config import Config
from db import (
    Database,
    EventStatus,
    Notification,
    NotificationStatus,
    StripeAction,
    StripeEvent,
    ThinEvent,
    Venue,
    utcnow,
)
from workers import queue


def sweep(config: Config, db: Database, *, include_failed: bool = False,
          older_than: timedelta | None = None) -> dict[str, int]:
    """Events left in `received`, re-checks requested but not run, and notices still pending,
    each older than `older_than` (default SWEEP_AFTER_SECONDS). With `include_failed`, failed
    events are reset and replayed too."""
    cutoff = utcnow() - (older_than if older_than is not None
                         else timedelta(seconds=config.sweep_after_seconds))
    counts = {"events": 0, "failed_events": 0, "rechecks": 0, "notifications": 0,
              "actions": 0, "thin_events": 0}
    with db.session() as session:
        failed: list[str] = []
        if include_failed:
            failed = list(session.scalars(
                select(StripeEvent.event_id).where(StripeEvent.status == EventStatus.FAILED)))
            session.execute(update(StripeEvent).where(StripeEvent.status == EventStatus.FAILED)
                            .values(status=EventStatus.RECEIVED))
            counts["failed_events"] = len(failed)
        stale = list(session.scalars(
            select(StripeEvent.event_id)
            .where(StripeEvent.status == EventStatus.RECEIVED,
                   or_(StripeEvent.received_at <= cutoff, StripeEvent.event_id.in_(failed)))
            .order_by(StripeEvent.created)
        ))
        venues = list(session.scalars(
            select(Venue.id).where(Venue.recheck_requested_at.is_not(None),
                                   Venue.recheck_requested_at <= cutoff)))
        pending = list(session.scalars(
            select(Notification.id).where(Notification.status == NotificationStatus.PENDING,
                                          Notification.created_at <= cutoff)))
        # Actions on Stripe asked for but not carried out (a worker killed mid-call): their
        # idempotency keys make the second call Stripe's first answer.
        actions = list(session.scalars(
            select(StripeAction.id).where(StripeAction.status == "queued",
                                          # setup's writes are the CLI's own (stripe_setup)
                                          StripeAction.kind.not_like("%_webhook_endpoint"),
                                          StripeAction.requested_at <= cutoff)))
        thin = list(session.scalars(
            select(ThinEvent.event_id).where(ThinEvent.status == "received",
                                             ThinEvent.received_at <= cutoff)))
    # Skip what RQ still holds queued or scheduled: behind a backlog older than the cutoff,
    # re-queueing it on every sweep piled up duplicates faster than workers could drop them.
    waiting = queue.waiting(config, "event", stale)
    stale = [event_id for event_id in stale if event_id not in waiting]
    waiting = queue.waiting(config, "notice", pending)
    pending = [notification_id for notification_id in pending if notification_id not in waiting]
    failed_ids = set(failed)
    for event_id in stale:
        if event_id in failed_ids:
            queue.requeue_event(config, event_id)
        else:
            queue.enqueue_event(config, event_id)
    counts["events"] = len(stale)
    for venue_id in venues:
        queue.enqueue_recheck(config, venue_id)
    counts["rechecks"] = len(venues)
    for notification_id in pending:
        queue.enqueue_notification(config, notification_id)
    counts["notifications"] = len(pending)
    waiting = queue.waiting(config, "action", actions)
    actions = [action_id for action_id in actions if action_id not in waiting]
    for action_id in actions:
        queue.enqueue_action(config, action_id)
    counts["actions"] = len(actions)
    waiting = queue.waiting(config, "thin", thin)
    thin = [event_id for event_id in thin if event_id not in waiting]
    for event_id in thin:
        queue.enqueue_thin_event(config, event_id)
    counts["thin_events"] = len(thin)
    return counts
