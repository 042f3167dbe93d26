"""RQ job functions: thin entry points that load their rows by ID, so a job can run twice,
late or after a crash and still leave the same state."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError
from rq import get_current_job

from config import Config
from db import Mismatch, MismatchStatus, Venue
from db.errors import scrubbed
from workers import inbox
from workers.batch import Batch
from workers.matching import recheck_open_mismatches
from workers.queue import discard_event_jobs, get_redis, try_enqueue
from workers.runtime import runtime
from workers.stripe_api import StripeApi

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

    return run  # type: ignore[return-value]


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
        outcomes = inbox.run(config, db, StripeApi(config), event_id, final_attempt=final)
    except Exception as exc:
        inbox.record_failure(db, event_id, exc, final=final)
        raise
    others = [other for other, o in outcomes.items() if other != event_id and o.done]
    if others:
        try:  # their jobs would only find their events done
            discard_event_jobs(config, others)
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
    from workers.thin import fetch

    config, db = runtime()
    return fetch(config, db, StripeApi(config), event_id)


def _queue_after_commit(config: Config, batch: Batch) -> None:
    for work, key in batch.after_commit:
        try_enqueue(work, config, key)


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
    _queue_after_commit(config, batch)
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
    _queue_after_commit(config, batch)
    log.info("mismatch %s re-checked: %s", mismatch_id, counts)
    return counts


@told_safely
def send_notification(notification_id: int) -> str:
    from notifications.send import deliver

    config, db = runtime()
    return deliver(config, db, get_redis(config), notification_id,
                   final_attempt=_last_attempt())


@told_safely
def act_on_stripe(action_id: int) -> str:
    """Carry out one confirmed action on Stripe (workers/actions.py)."""
    from workers.actions import carry_out

    config, db = runtime()
    return carry_out(config, db, action_id)
