"""Retention: the inbox keeps every event's row forever (a redelivery years later is still a
duplicate; timelines and tallies read the rows) but not its payload. Payloads of finished
events older than PAYLOAD_RETENTION_DAYS (default 90: past Stripe's 3-day retries and its
30-day Events API window, so `replay` never needs one) are emptied in small transactions;
refused deliveries and fetched thin events that old are deleted. Outbound messages are kept
at least MESSAGE_RETENTION_DAYS (30: the pull feed's catching-up window) and while any
destination is still owed them.

`mismatch prune` runs it; workers run it daily (one worker, a Redis key). The walk resumes
from where the last one stopped (kept in Redis; lost, it starts again from the oldest row)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import click
import redis as redis_lib
from sqlalchemy import delete, exists, select

from config import Config
from db import (
    Database,
    Delivery,
    DeliveryStatus,
    Message,
    RejectedDelivery,
    ThinEvent,
    rowcount,
    utcnow,
)
from db.history import prune_batch
from workers.cli import state
from workers.queue import get_redis

log = logging.getLogger(__name__)

PRUNE_AFTER_KEY = "mismatch:prune:after-id"
PRUNE_DUE_KEY = "mismatch:prune:due"
PRUNE_EVERY = 24 * 3600
BATCH = 5000  # rows per transaction: a short lock, a small WAL burst
MESSAGE_RETENTION_DAYS = 30


@dataclass
class Pruned:
    payloads: int = 0
    rejected: int = 0
    thin: int = 0
    messages: int = 0


def prune(config: Config, db: Database, *, days: int | None = None,
          from_start: bool = False) -> Pruned:
    before = utcnow() - timedelta(days=days if days is not None
                                  else config.payload_retention_days)
    done = Pruned()
    after = 0 if from_start else _watermark(config)
    while True:
        with db.session() as s:
            freed, last = prune_batch(s, before, after, BATCH)
        done.payloads += freed
        if last is None:
            break
        after = last
        _keep_watermark(config, after)
    with db.session() as s:
        done.rejected = rowcount(s.execute(delete(RejectedDelivery)
                                           .where(RejectedDelivery.received_at < before)))
        done.thin = rowcount(s.execute(delete(ThinEvent).where(
            ThinEvent.status == "fetched", ThinEvent.received_at < before)))
    done.messages = prune_messages(db, days)
    return done


def prune_messages(db: Database, days: int | None) -> int:
    """Delete outbound messages (and their finished deliveries) older than `days`, never
    fewer than 30, and none a destination is still owed; in batches, by id."""
    keep = max(MESSAGE_RETENTION_DAYS, days or 0)
    before = utcnow() - timedelta(days=keep)
    owed = exists().where(Delivery.message_id == Message.id,
                          Delivery.status == DeliveryStatus.PENDING)
    deleted = 0
    while True:
        with db.session() as s:
            ids = s.scalars(select(Message.id).where(Message.created_at < before, ~owed)
                            .order_by(Message.id).limit(BATCH)).all()
            if not ids:
                return deleted
            s.execute(delete(Delivery).where(Delivery.message_id.in_(ids)))
            deleted += rowcount(s.execute(delete(Message).where(Message.id.in_(ids))))


def prune_if_due(config: Config, db: Database) -> Pruned | None:
    """The workers' daily run."""
    connection = get_redis(config)
    if not connection.set(PRUNE_DUE_KEY, "1", nx=True, ex=PRUNE_EVERY):
        return None
    try:
        return prune(config, db)
    except Exception:
        connection.delete(PRUNE_DUE_KEY)  # not pruned: the next sweep tries again
        raise


def _watermark(config: Config) -> int:
    try:
        return int(get_redis(config).get(PRUNE_AFTER_KEY) or 0)
    except (redis_lib.RedisError, ValueError):
        return 0


def _keep_watermark(config: Config, after: int) -> None:
    try:
        get_redis(config).set(PRUNE_AFTER_KEY, after)
    except redis_lib.RedisError:
        log.warning("prune: could not keep where it stopped (Redis); the next run starts over")


# --- the command ---------------------------------------------------------------------------

@click.command("prune")
@click.option("--older-than-days", "days", type=click.IntRange(min=1), default=None,
              help="Default PAYLOAD_RETENTION_DAYS (90).")
@click.option("--from-start", is_flag=True,
              help="Walk the whole inbox, not only from where the last run stopped.")
def prune_cmd(days: int | None, from_start: bool) -> None:
    """Empty the payloads of finished events past the retention age; their rows stay
    (dedup, timelines, tallies). Workers also run this daily."""
    config, db = state()
    done = prune(config, db, days=days, from_start=from_start)
    click.echo(f"{done.payloads} payloads emptied (events received over "
               f"{days or config.payload_retention_days} days ago, processed or ignored); "
               f"{done.rejected} refused deliveries, {done.thin} fetched thin events and "
               f"{done.messages} outbound messages (over "
               f"{max(MESSAGE_RETENTION_DAYS, days or 0)} days old, delivered or failed) "
               f"deleted")
