"""The durable work: RQ job functions, thin entry points that load their rows by ID (so a job
can run twice, late or after a crash and still leave the same state), and at the bottom the
table of every kind of work, `WORK`: its job, how the sweeper finds its stale rows, its retry
and failure policy. A new kind is one function and one row."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from redis.exceptions import RedisError
from rq import get_current_job
from sqlalchemy import Select, or_, select

from config import Config
from db import (
    Delivery,
    DeliveryStatus,
    Destination,
    EventStatus,
    Mismatch,
    MismatchStatus,
    Notification,
    NotificationStatus,
    StripeAction,
    StripeEvent,
    ThinEvent,
    Venue,
    utcnow,
)
from db.errors import scrubbed
from notifications.send import deliver
from workers.matching import inbox
from workers.matching.batch import Batch
from workers.matching.classify import recheck_open_mismatches
from workers.outbound.drain import drain
from workers.outbound.post import Sender
from workers.queue import Kind, discard_jobs, get_redis, try_enqueue
from workers.runtime import runtime
from workers.stripe_side import thin
from workers.stripe_side.actions import carry_out
from workers.stripe_side.api import StripeApi

log = logging.getLogger(__name__)


class EventNotDone(Exception):
    """The event waits (for Stripe, for its customer) or failed; RQ retries the job with its
    back-off. The reason is on the event's row and in this message (IDs only)."""


Job = TypeVar("Job", bound=Callable[..., Any])


def told_safely(job: Job) -> Job:
    """RQ logs a failed job's traceback and keeps it in Redis: an exception whose message may
    carry personal data (a database error's DETAIL, an SMTP refusal) is re-raised as
    db.errors.Scrubbed, with the same traceback and its type and code only."""

    @functools.wraps(job)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return job(*args, **kwargs)
        except Exception as exc:
            safe = scrubbed(exc)
            if safe is exc:
                raise
            raise safe from None

    return cast(Job, run)  # functools.wraps: the same call signature as `job`


def _last_attempt() -> bool:
    """True when RQ will not run this job again (or it runs outside RQ)."""
    job = get_current_job()
    return job is None or not job.retries_left


@told_safely
def process_event(event_id: str) -> str:
    """Handle one inbox event, and up to EVENTS_PER_BATCH - 1 other fresh ones with it."""
    config, db = runtime()
    final = _last_attempt()
    try:
        outcomes = inbox.run(config, db, StripeApi(config), event_id, final_attempt=final,
                             after_commit=functools.partial(queue_after_commit, config))
    except Exception as exc:
        inbox.record_failure(db, event_id, exc, final=final)
        raise
    others = [other for other, o in outcomes.items() if other != event_id and o.done]
    if others:
        try:  # their jobs would only find their events done
            discard_jobs(config, EVENT, others)
        except RedisError as exc:
            log.warning("could not take %d handled events' jobs off the queue (%s)",
                        len(others), type(exc).__name__)
    mine = outcomes[event_id]
    if mine.done or mine.status in (inbox.MISSING, inbox.ELSEWHERE):
        return mine.outcome or mine.status
    raise EventNotDone(f"event {event_id}: {mine.reason}")


@told_safely
def fetch_thin_event(event_id: str) -> str:
    """Fetch the snapshot event a thin event stands for and store it in the inbox."""
    config, db = runtime()
    return thin.fetch(config, db, StripeApi(config), event_id,
                      queue_event=functools.partial(try_enqueue, config, EVENT))


def queue_after_commit(config: Config, batch: Batch) -> None:
    """The work a committed unit of matching left to do: its notices, and the events it
    released (their customer became known)."""
    for notification_id in batch.notices:
        try_enqueue(config, NOTICE, notification_id)
    for event_id in batch.events_again:
        try_enqueue(config, EVENT, event_id, again=True)


@told_safely
def recheck_venue(venue_id: int) -> dict[str, int]:
    """Re-classify a venue's open mismatches after its members changed."""
    config, db = runtime()
    with db.session() as session:
        venue = session.get(Venue, venue_id, with_for_update=True)
        if venue is None:
            return {}
        requested = venue.recheck_requested_at
        batch = Batch(session, config)
        counts = recheck_open_mismatches(batch, venue)
        if venue.recheck_requested_at == requested:
            venue.recheck_requested_at = None
    queue_after_commit(config, batch)
    log.info("venue %s re-checked: %s", venue_id, counts)
    return counts


@told_safely
def recheck_mismatch(mismatch_id: int) -> dict[str, int]:
    """Re-classify one open mismatch on request (support page "Re-check now"): rules 2-4
    against the members as they are now, e.g. after the venue fixed a member's email.

    Scoped to the mismatch's venue and customer, so it never touches another venue; takes
    the venue lock first, like recheck_venue, so it serializes with member changes."""
    config, db = runtime()
    with db.session() as session:
        mismatch = session.get(Mismatch, mismatch_id)
        if mismatch is None or mismatch.status != MismatchStatus.OPEN \
                or mismatch.venue_id is None:
            return {}
        venue = session.get(Venue, mismatch.venue_id, with_for_update=True)
        if venue is None:
            return {}
        batch = Batch(session, config)
        counts = recheck_open_mismatches(batch, venue, customer_id=mismatch.customer_id)
    queue_after_commit(config, batch)
    log.info("mismatch %s re-checked: %s", mismatch_id, counts)
    return counts


@told_safely
def send_notification(notification_id: int) -> str:
    config, db = runtime()
    return deliver(config, db, get_redis(config), notification_id,
                   final_attempt=_last_attempt())


@told_safely
def act_on_stripe(action_id: int) -> str:
    """Carry out one confirmed action on Stripe (workers/stripe_side/actions.py)."""
    config, db = runtime()
    return carry_out(config, db, action_id)


@functools.cache
def _sender(timeout: float) -> Sender:
    return Sender(timeout)


@told_safely
def deliver_messages(destination_id: int) -> str:
    """One turn of a destination's deliveries (workers/outbound/drain.py), then the next
    turn queued: now if more is due, else when its next retry is."""
    config, db = runtime()
    done = drain(config, db, destination_id, _sender(config.outbound_timeout))
    for notification_id in done.alerts:
        try_enqueue(config, NOTICE, notification_id)
    if done.busy:
        return "busy"  # its holder looks again once it lets go
    # As a job of its own id: this job's id is deleted when it returns, with anything queued
    # under it meanwhile.
    if done.more or (done.next_due is not None and done.next_due <= utcnow()):
        try_enqueue(config, OUTBOUND_TURN, destination_id)
    elif done.next_due is not None:
        try_enqueue(config, OUTBOUND_TURN, destination_id, at=done.next_due)
    return f"{done.delivered} delivered, {done.retrying} retrying, {done.failed} failed"


def queue_deliveries(config: Config, destination_ids: set[int]) -> None:
    """After a commit that gave destinations new deliveries (Database's on_deliveries)."""
    for destination_id in sorted(destination_ids):
        try_enqueue(config, OUTBOUND, destination_id)


# --- the table of durable work ----------------------------------------------------------------
# Each stale query: the keys of rows stored before the cutoff whose work is not done. Sweeping
# is always safe: a second run of a job finds its row done.


def _stale_events(cutoff: datetime) -> Select[Any]:
    return (select(StripeEvent.event_id)
            .where(StripeEvent.status == EventStatus.RECEIVED, StripeEvent.received_at <= cutoff)
            .order_by(StripeEvent.created))


def _stale_thin_events(cutoff: datetime) -> Select[Any]:
    return select(ThinEvent.event_id).where(ThinEvent.status == "received",
                                            ThinEvent.received_at <= cutoff)


def _stale_rechecks(cutoff: datetime) -> Select[Any]:
    return select(Venue.id).where(Venue.recheck_requested_at.is_not(None),
                                  Venue.recheck_requested_at <= cutoff)


def _stale_notices(cutoff: datetime) -> Select[Any]:
    return select(Notification.id).where(Notification.status == NotificationStatus.PENDING,
                                         Notification.created_at <= cutoff)


def _stale_actions(cutoff: datetime) -> Select[Any]:
    """Asked for but not carried out (a worker killed mid-call): their idempotency keys make
    the second call Stripe's first answer. Endpoint set-up is the CLI's own (stripe_setup)."""
    return select(StripeAction.id).where(StripeAction.status == "queued",
                                         StripeAction.kind.not_like("%_webhook_endpoint"),
                                         StripeAction.requested_at <= cutoff)


def _stale_deliveries(cutoff: datetime) -> Select[Any]:
    """Destinations with deliveries overdue and nobody draining them (a killed worker's
    lease runs out; Redis lost the job)."""
    return (select(Delivery.destination_id).distinct()
            .join(Destination, Destination.id == Delivery.destination_id)
            .where(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= cutoff,
                   Destination.enabled,
                   or_(Destination.draining_until.is_(None),
                       Destination.draining_until <= utcnow())))


WEEK = 7 * 24 * 3600
EVENT = Kind("event", process_event, "events", _stale_events, failure_ttl=WEEK)
THIN_EVENT = Kind("thin", fetch_thin_event, "thin_events", _stale_thin_events,
                  failure_ttl=WEEK)
VENUE_RECHECK = Kind("recheck", recheck_venue, "rechecks", _stale_rechecks, unique=False)
MISMATCH_RECHECK = Kind("recheck-mismatch", recheck_mismatch, unique=False)  # on request only
NOTICE = Kind("notice", send_notification, "notifications", _stale_notices)
ACTION = Kind("action", act_on_stripe, "actions", _stale_actions)
OUTBOUND = Kind("outbound", deliver_messages, "outbound", _stale_deliveries, queue="outbound",
                retried=False)
OUTBOUND_TURN = Kind("outbound-turn", deliver_messages, queue="outbound", unique=False,
                     retried=False)  # a destination's next turn, queued by its last one
WORK = (EVENT, THIN_EVENT, VENUE_RECHECK, MISMATCH_RECHECK, NOTICE, ACTION, OUTBOUND,
        OUTBOUND_TURN)
