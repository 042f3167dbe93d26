"""The entry points other packages use to hand work to the workers: Redis and RQ queues."""

from __future__ import annotations

import functools
import logging

import redis
from rq import Queue, Retry

from config import Config

log = logging.getLogger(__name__)


@functools.cache
def _redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def redis_url(config: Config) -> str:
    if config.redis_url:
        return config.redis_url
    from workers.embedded_redis import ensure_embedded_redis

    return ensure_embedded_redis(config.instance_path)


def get_redis(config: Config) -> redis.Redis:
    return _redis_for(redis_url(config))


def get_queue(config: Config) -> Queue:
    return Queue(config.queue_name, connection=get_redis(config))


def _retry(config: Config) -> Retry:
    intervals = list(config.job_retry_intervals)
    return Retry(max=len(intervals), interval=intervals)


def enqueue_event(config: Config, event_id: str) -> None:
    """Queue processing of one stored inbox event (by Stripe event id)."""
    get_queue(config).enqueue_call(
        "workers.jobs.process_event",
        args=(event_id,),
        retry=_retry(config),
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
        description=f"process {event_id}",
    )


def enqueue_recheck(config: Config, venue_id: int) -> None:
    """Queue a re-check of a venue's open mismatches after its members changed."""
    get_queue(config).enqueue_call(
        "workers.jobs.recheck_venue",
        args=(venue_id,),
        retry=_retry(config),
        result_ttl=0,
        description=f"recheck venue {venue_id}",
    )


def enqueue_notification(config: Config, notification_id: int) -> None:
    """Queue sending of one outbox row."""
    get_queue(config).enqueue_call(
        "workers.jobs.send_notification",
        args=(notification_id,),
        retry=_retry(config),
        result_ttl=0,
        description=f"send notification {notification_id}",
    )
